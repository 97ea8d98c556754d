"""The real parts: two headless WebRTC peers (aiortc) join a consultation's call through the
API of a real server (the Procfile's uvicorn), signal over its websockets, and connect
through a real coturn with a relay-only ICE policy, which proves the TURN credentials the
API hands out work; video frames arrive on the other side.

Needs coturn's ``turnserver`` (Debian ``coturn``): skipped without it on a laptop, failed
under MEDEASE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from aiortc import (  # requirements-dev.txt pins it; missing is a failure, not a skip
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from channels.db import database_sync_to_async
from django.conf import settings

from accounts import services as account_services
from accounts.models import Role
from tests.messaging.conftest import make_consultation
from tests.webserver import START_TIMEOUT, free_port, stop, web_node

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

TURN_SECRET = "medease-test-turn-secret"
FRAMES = 10
PINGS = 20  # within the per-connection event budget (30 per 10 s by default)

db = database_sync_to_async


def wait_for_tcp(port: int, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not up in {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def coturn(tmp_path):
    """coturn on a free loopback port, with the TURN REST shared secret; its turn: URL."""
    binary = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None
    )
    if binary is None:
        message = "coturn's turnserver is not installed (apt-get install coturn)"
        if settings.REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    relay_low = free_port(socket.SOCK_DGRAM)
    log = tmp_path / "turnserver.log"
    command = [
        binary,
        "-n",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        # A narrow relay range of its own (any free ports will do on loopback).
        f"--min-port={min(relay_low, 65000)}",
        f"--max-port={min(relay_low, 65000) + 200}",
        "--use-auth-secret",
        f"--static-auth-secret={TURN_SECRET}",
        "--realm=medease.test",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
        "--no-cli",
        "--log-file=stdout",
        "--simple-log",
        f"--db={tmp_path / 'turndb'}",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_for_tcp(port, process, log, "turnserver")
        yield f"turn:127.0.0.1:{port}?transport=udp", log
    finally:
        stop(process)


@pytest.fixture
def server(transactional_db, tmp_path, coturn):
    """One web node configured with the coturn above."""
    turn_url, _log = coturn
    with web_node(tmp_path, "a", TURN_URLS=turn_url, TURN_SECRET=TURN_SECRET) as node:
        yield node


def make_visit(make_user, organization):
    patient = make_user(Role.PATIENT)
    provider = make_user(Role.PROVIDER, organization=organization)
    consultation = make_consultation(patient=patient, provider=provider, hours=0)
    tokens = {
        "patient": account_services.token_issue(user=patient)[0],
        "provider": account_services.token_issue(user=provider)[0],
    }
    return patient, provider, consultation, tokens


class Peer:
    """One side of the visit: its API client, its websocket and its RTCPeerConnection."""

    def __init__(self, *, base: str, token: str, consultation_id: int) -> None:
        self.base = base
        self.http = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.consultation_id = consultation_id
        self.ws = None
        self.pc: RTCPeerConnection | None = None
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.reader: asyncio.Task | None = None

    async def join(self) -> dict:
        answer = await self.http.post(f"/api/v1/consultations/{self.consultation_id}/call")
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def connect_socket(self) -> None:
        from websockets.asyncio.client import connect

        ticket = (await self.http.post("/api/v1/ws-ticket")).json()["ticket"]
        ws_base = self.base.replace("http://", "ws://")
        self.ws = await connect(
            f"{ws_base}/ws/consultations/{self.consultation_id}/?ticket={ticket}"
        )
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            await self.inbox.put(json.loads(frame))

    async def next_event(self, kind: str, timeout: float = 30) -> dict:
        async def wait() -> dict:
            while True:
                event = await self.inbox.get()
                if event["type"] == kind:
                    return event
                assert event["type"] != "error", event

        return await asyncio.wait_for(wait(), timeout)

    async def signal(self, to: int, data: dict) -> None:
        await self.ws.send(json.dumps({"type": "call.signal", "to": to, "data": data}))

    def peer_connection(self, ice_servers: list[dict]) -> RTCPeerConnection:
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(
                        urls=server["urls"],
                        username=server["username"],
                        credential=server["credential"],
                    )
                    for server in ice_servers
                ],
                # Relay only: a connection can only come up through the TURN server.
                iceTransportPolicy=RTCIceTransportPolicy.RELAY,
            )
        )
        return self.pc

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
        await self.http.aclose()


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if " typ " in line}


async def test_two_peers_connect_through_coturn_relay_only(server, make_user, organization):
    base, web_log = server
    patient, provider, consultation, tokens = await db(make_visit)(make_user, organization)
    caller = Peer(base=base, token=tokens["patient"], consultation_id=consultation.pk)
    callee = Peer(base=base, token=tokens["provider"], consultation_id=consultation.pk)
    try:
        await caller.connect_socket()
        await callee.connect_socket()
        joined = await caller.join()
        [turn] = joined["ice_servers"]
        assert turn["username"].endswith(f":{patient.pk}")
        assert (await caller.next_event("call.state"))["call"]["status"] == "waiting"
        callee_joined = await callee.join()
        assert callee_joined["call"]["status"] == "active"
        assert (await caller.next_event("call.state"))["call"]["status"] == "active"

        # Signaling latency over the real server: round trips through the channel layer.
        round_trips = []
        for i in range(PINGS):
            sent = time.perf_counter()
            await caller.signal(provider.pk, {"ping": i})
            ping = await callee.next_event("call.signal")
            assert ping == {"type": "call.signal", "from": patient.pk, "data": {"ping": i}}
            await callee.signal(patient.pk, {"pong": i})
            pong = await caller.next_event("call.signal")
            assert pong["data"] == {"pong": i}
            round_trips.append(time.perf_counter() - sent)
        one_way_ms = sorted(rt * 1000 / 2 for rt in round_trips)
        print(
            f"\ncall.signal one-way latency over {PINGS} round trips: "
            f"p50 {statistics.median(one_way_ms):.1f} ms, max {one_way_ms[-1]:.1f} ms"
        )

        pc_caller = caller.peer_connection(joined["ice_servers"])
        pc_callee = callee.peer_connection(callee_joined["ice_servers"])
        pc_caller.addTrack(VideoStreamTrack())
        received: asyncio.Future = asyncio.get_running_loop().create_future()

        @pc_callee.on("track")
        def on_track(track):
            if track.kind == "video" and not received.done():
                received.set_result(track)

        # Offer/answer as the browsers do it; aiortc gathers before the SDP is final.
        await pc_caller.setLocalDescription(await pc_caller.createOffer())
        offer = pc_caller.localDescription
        assert candidate_types(offer.sdp) == {"relay"}, offer.sdp
        await caller.signal(provider.pk, {"type": offer.type, "sdp": offer.sdp})

        event = await callee.next_event("call.signal")
        assert event["from"] == patient.pk
        await pc_callee.setRemoteDescription(RTCSessionDescription(**event["data"]))
        await pc_callee.setLocalDescription(await pc_callee.createAnswer())
        answer = pc_callee.localDescription
        assert candidate_types(answer.sdp) == {"relay"}, answer.sdp
        await callee.signal(patient.pk, {"type": answer.type, "sdp": answer.sdp})

        event = await caller.next_event("call.signal")
        await pc_caller.setRemoteDescription(RTCSessionDescription(**event["data"]))

        track = await asyncio.wait_for(received, 60)
        frames = [await asyncio.wait_for(track.recv(), 30) for _ in range(FRAMES)]
        assert len(frames) == FRAMES
        assert all(frame.width > 0 and frame.height > 0 for frame in frames)
        assert pc_caller.connectionState == "connected"
        assert pc_callee.connectionState == "connected"
        # The pair ICE nominated runs through coturn on both sides.
        for pc in (pc_caller, pc_callee):
            ice = pc.getTransceivers()[0].receiver.transport.transport
            nominated = list(ice._connection._nominated.values())
            assert nominated, "no nominated candidate pair"
            assert {pair.local_candidate.type for pair in nominated} == {"relay"}
    finally:
        await caller.close()
        await callee.close()
    assert "Traceback" not in web_log.read_text()


async def test_signaling_across_two_nodes(transactional_db, tmp_path, make_user, organization):
    """Caller on one web node, callee on another: call.state and call.signal cross through
    the Redis channel layer. Prints the one-way signaling latency (half the round trip)."""
    round_trips_wanted = 200
    budget = {"MESSAGING_WS_RATE_EVENTS": "100000"}  # the measurement, not the limit
    patient, provider, consultation, tokens = await db(make_visit)(make_user, organization)
    with (
        web_node(tmp_path, "a", **budget) as (base_a, log_a),
        web_node(tmp_path, "b", **budget) as (base_b, log_b),
    ):
        caller = Peer(base=base_a, token=tokens["patient"], consultation_id=consultation.pk)
        callee = Peer(base=base_b, token=tokens["provider"], consultation_id=consultation.pk)
        try:
            await caller.connect_socket()
            await callee.connect_socket()
            await caller.join()
            for peer in (caller, callee):
                assert (await peer.next_event("call.state"))["call"]["status"] == "waiting"
            await callee.join()
            for peer in (caller, callee):
                assert (await peer.next_event("call.state"))["call"]["status"] == "active"
            round_trips = []
            for i in range(round_trips_wanted):
                sent = time.perf_counter()
                await caller.signal(provider.pk, {"ping": i})
                ping = await callee.next_event("call.signal")
                assert ping == {"type": "call.signal", "from": patient.pk, "data": {"ping": i}}
                await callee.signal(patient.pk, {"pong": i})
                assert (await caller.next_event("call.signal"))["data"] == {"pong": i}
                round_trips.append(time.perf_counter() - sent)
        finally:
            await caller.close()
            await callee.close()
    one_way_ms = sorted(rt * 1000 / 2 for rt in round_trips)
    p50 = statistics.median(one_way_ms)
    p99 = one_way_ms[int(len(one_way_ms) * 0.99) - 1]
    print(
        f"\ncall.signal across two nodes, one-way over {len(one_way_ms)} round trips: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {one_way_ms[-1]:.1f} ms"
    )
    for log in (log_a, log_b):
        assert "Traceback" not in log.read_text()
