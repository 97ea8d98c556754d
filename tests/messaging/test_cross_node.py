"""Two real ASGI server processes ("nodes") sharing PostgreSQL and Redis, chatting.

Each node is a uvicorn process serving config.asgi on its own port, on this test's
database, with the cache on REDIS_URL and the channel layer on a redis-server of its own
(started here on a spare port) so that the layer can be killed without touching the shared
Redis. The participants connect with the `websockets` client library, one to each node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from accounts import services as account_services
from messaging.models import Message
from tests.procfile import procfile_web_command

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

BASE_DIR = Path(settings.BASE_DIR)
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 90  # two slow cores, two Django processes importing at once
EVENT_TIMEOUT = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class RedisServer:
    """A throwaway redis-server (no persistence) that a test may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ping, timeout=20, what=f"redis-server on {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        wait_until(lambda: not self._ping(), timeout=10, what="redis-server to stop")


class Node:
    """One uvicorn process serving the real application."""

    def __init__(self, *, env: dict, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            procfile_web_command(self.port),
            cwd=BASE_DIR,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"node on {self.port} exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.http}/health/live", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self._log_file.close()


def database_url() -> str:
    params = connection.settings_dict
    auth = params["USER"] or ""
    if params.get("PASSWORD"):
        auth += f":{params['PASSWORD']}"
    return (
        f"postgres://{auth}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}/"
        f"{params['NAME']}"
    )


@pytest.fixture(scope="module")
def _started_cluster(django_db_setup, tmp_path_factory):
    """The two nodes and the layer, started once for the module's tests."""
    tmp_path = tmp_path_factory.mktemp("cross-node")
    layer = RedisServer(tmp_path)
    layer.start()
    env = {
        **os.environ,
        # The test database (committed data: transaction=True), shared Redis for the cache
        # and tickets, a redis-server of our own for the channel layer.
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CHANNEL_LAYER_REDIS_URL": layer.url,
        "MEDEASE_REQUIRE_SERVICES": "1",
        "MEDEASE_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_REPLICA_URLS": "",
        "DATABASE_POOL_MAX_SIZE": "4",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
        "MESSAGING_FANOUT_TIMEOUT_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    nodes = [Node(env=env, log=tmp_path / f"node{n}.log") for n in (1, 2)]
    try:
        for node in nodes:
            wait_until(node.ready, timeout=START_TIMEOUT, what=f"node on {node.port}")
        yield nodes, layer
    finally:
        for node in nodes:
            node.stop()
        stop_process(layer.process)


@pytest.fixture
def cluster(transactional_db, _started_cluster):
    """The module's nodes, with the channel layer up (a test before may have killed it)."""
    _nodes, layer = _started_cluster
    if layer.process is None or layer.process.poll() is not None:
        layer.start()
    return _started_cluster


# --- A small websocket client --------------------------------------------------------


class ChatClient:
    """A websocket to one node; events are read in the background into a queue."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: asyncio.Queue = asyncio.Queue()
        self.close_code: int | None = None
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                await self.events.put(json.loads(frame))
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    @classmethod
    async def open(cls, url: str) -> ChatClient:
        return cls(await ws_connect(url))

    async def send(self, data: dict) -> None:
        await self.ws.send(json.dumps(data))

    async def next(self, kind: str, timeout: float = EVENT_TIMEOUT) -> dict:
        """The next event of a kind, skipping presence and typing."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} event within {timeout}s")
            event = await asyncio.wait_for(self.events.get(), remaining)
            if event["type"] == kind:
                return event

    async def quiet(self, seconds: float = 1.0) -> list[dict]:
        """Events other than presence/typing that arrive within ``seconds``."""
        await asyncio.sleep(seconds)
        extra = []
        while not self.events.empty():
            event = self.events.get_nowait()
            if event["type"] not in ("presence", "typing"):
                extra.append(event)
        return extra

    async def closed(self, timeout: float = EVENT_TIMEOUT) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)


def ticket_from(node: Node, token: str) -> str:
    response = httpx.post(
        f"{node.http}/api/v1/ws-ticket", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["ticket"]


async def open_stable(
    node: Node, consultation_id: int, token: str, *, after: int | None = None
) -> ChatClient:
    """Connect, retrying while the node answers "try again" (1013: a dependency is down or
    coming back), as a real client does."""
    deadline = time.monotonic() + 30
    while True:
        ticket = await asyncio.to_thread(ticket_from, node, token)
        query = f"?ticket={ticket}" + (f"&after={after}" if after is not None else "")
        client = await ChatClient.open(f"{node.ws}/ws/consultations/{consultation_id}/{query}")
        await asyncio.sleep(0.5)
        if client.close_code is None and not client.ws.close_code:
            return client
        assert client.close_code in (None, 1011, 1013), client.close_code
        await client.close()
        if time.monotonic() > deadline:
            raise AssertionError("could not open a stable websocket")
        await asyncio.sleep(0.5)


@pytest.fixture
def participants(chat):
    """Raw API tokens of the patient and the provider (issued here, used on the nodes)."""
    patient_token, _ = account_services.token_issue(user=chat.patient)
    provider_token, _ = account_services.token_issue(user=chat.provider)
    return patient_token, provider_token


def send_event(body: str, client_id: str) -> dict:
    return {"type": "message.send", "body": body, "client_id": client_id}


async def test_two_nodes_deliver_both_ways_and_resync_after_a_gap(cluster, chat, participants):
    (node_a, node_b), _layer = cluster
    patient_token, provider_token = participants
    patient = await open_stable(node_a, chat.consultation.pk, patient_token)
    provider = await open_stable(node_b, chat.consultation.pk, provider_token)
    try:
        # Presence crosses nodes too: the patient sees the provider arrive on node B.
        assert (await patient.next("presence"))["user"] == chat.provider.pk

        # Stay idle past the layer's 5 s blocking receive: the sockets must still be there
        # (redis-py 8's default 5 s read timeout used to tear idle consumers down).
        await asyncio.sleep(7)
        assert patient.close_code is None and provider.close_code is None

        await patient.send(send_event("Hello from node A", "a-1"))
        ack = (await patient.next("message"))["message"]
        got = (await provider.next("message"))["message"]
        assert got == ack and got["body"] == "Hello from node A"

        await provider.send(send_event("Hello from node B", "b-1"))
        reply = (await patient.next("message"))["message"]
        assert reply["sender"] == chat.provider.pk and reply["id"] > ack["id"]
        assert (await provider.next("message"))["message"]["id"] == reply["id"]  # its ack
        assert await provider.quiet(0.5) == []  # ...and only once

        await provider.send({"type": "typing"})
        assert (await patient.next("typing"))["user"] == chat.provider.pk

        # The provider drops off; the patient keeps writing; the provider comes back on
        # the *other* node with after=<last seen> and gets exactly what it missed.
        last_seen = reply["id"]
        await provider.close()
        missed = []
        for n in range(3):
            await patient.send(send_event(f"while you were away {n}", f"a-gap-{n}"))
            missed.append((await patient.next("message"))["message"]["id"])
        provider = await open_stable(node_a, chat.consultation.pk, provider_token, after=last_seen)
        replayed = [(await provider.next("message"))["message"]["id"] for _ in missed]
        assert replayed == missed
        assert await provider.quiet(1.0) == []  # no gaps, no duplicates

        # Live again after the replay, across nodes.
        await patient.send(send_event("back to live", "a-live"))
        assert (await provider.next("message"))["message"]["body"] == "back to live"
    finally:
        await patient.close()
        await provider.close()


async def test_send_stores_and_answers_with_the_channel_layer_down(cluster, chat, participants):
    (node_a, node_b), layer = cluster
    patient_token, provider_token = participants
    patient = await open_stable(node_a, chat.consultation.pk, patient_token)
    provider = await open_stable(node_b, chat.consultation.pk, provider_token)
    await patient.send(send_event("before the outage", "pre"))
    last_seen = (await provider.next("message"))["message"]["id"]

    layer.kill()
    started = time.monotonic()
    response = await asyncio.to_thread(
        httpx.post,
        f"{node_a.http}/api/v1/consultations/{chat.consultation.pk}/messages",
        json={"body": "during the outage", "client_id": "outage-1"},
        headers={"Authorization": f"Bearer {patient_token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert time.monotonic() - started < 10  # the fan-out failure did not hold it up
    stored = response.json()
    assert await database_sync_to_async(
        lambda: Message.objects.filter(pk=stored["id"], body="during the outage").exists()
    )()
    # The live path is gone, and the sockets say so: each node closes its sockets with
    # 1013 ("try again later") when their channel-layer receive fails, so clients know to
    # reconnect with after= instead of silently missing messages.
    assert await provider.closed() == 1013
    assert await patient.closed() == 1013
    assert stored["id"] not in [
        e["message"]["id"] for e in await provider.quiet(0.1) if e["type"] == "message"
    ]

    # Resync over REST works with the layer still down...
    history = await asyncio.to_thread(
        httpx.get,
        f"{node_b.http}/api/v1/consultations/{chat.consultation.pk}/messages",
        params={"after": last_seen},
        headers={"Authorization": f"Bearer {provider_token}"},
        timeout=10,
    )
    assert [m["id"] for m in history.json()["results"]] == [stored["id"]]

    # ...and, once the layer is back, a reconnect with after= replays exactly that message.
    layer.start()
    await patient.close()
    await provider.close()
    provider = await open_stable(node_b, chat.consultation.pk, provider_token, after=last_seen)
    try:
        assert (await provider.next("message"))["message"]["id"] == stored["id"]
        assert await provider.quiet(1.0) == []
        patient = await open_stable(node_a, chat.consultation.pk, patient_token)
        await patient.send(send_event("after the outage", "post"))
        assert (await provider.next("message"))["message"]["body"] == "after the outage"
    finally:
        await patient.close()
        await provider.close()
