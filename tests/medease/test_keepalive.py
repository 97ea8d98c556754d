"""Keepalive pings in batches (medease/keepalive.py): due at the end of a slot, never early,
and still a keepalive: a socket that answers stays open, one that does not is closed."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from medease.keepalive import PING_SLOT_SECONDS, BatchedKeepaliveProtocol, ping_due
from tests.procfile import procfile_web_command

ROOT = Path(__file__).resolve().parents[2]
PING_INTERVAL = 0.3
# Generous: an answering client on a loaded CI box must never look silent.
PING_TIMEOUT = 3.0


def test_the_procfile_serves_websockets_with_batched_keepalive():
    command = procfile_web_command(8000)
    assert command[command.index("--ws") + 1] == "medease.keepalive:BatchedKeepaliveProtocol"


def test_a_ping_is_due_at_the_end_of_its_slot_never_early():
    rng = random.Random(12)
    for _ in range(2000):
        now = rng.uniform(0, 1e6)
        interval = rng.choice([5.0, 20.0, 20.3])
        rtt = rng.uniform(0, 0.2)
        unbatched = now + interval - rtt
        due = ping_due(now, interval, rtt)
        assert unbatched <= due < unbatched + PING_SLOT_SECONDS + 1e-6
        assert abs(due / PING_SLOT_SECONDS - round(due / PING_SLOT_SECONDS)) < 1e-6


def test_sockets_whose_pings_fall_due_in_one_slot_share_one_timer_deadline():
    loop = asyncio.new_event_loop()
    try:
        config = Config(app="tests.medease.echo_app:app", ws_ping_interval=20.0)
        config.load()
        protocols = [
            BatchedKeepaliveProtocol(config, ServerState(), {}, _loop=loop) for _ in range(3)
        ]
        start = loop.time()
        # Scheduled moments apart, as sockets that opened moments apart.
        whens = []
        for protocol in protocols:
            protocol.schedule_ping()
            whens.append(protocol.ping_timer.when())
            protocol.ping_timer.cancel()
        if len({round(w, 6) for w in whens}) > 1:
            # The slot boundary fell between two of them: then at most two deadlines.
            assert len({round(w, 6) for w in whens}) == 2
        assert all(w >= start + 20.0 for w in whens)
        assert all(w < loop.time() + 20.0 + PING_SLOT_SECONDS for w in whens)
    finally:
        loop.close()


# --- A real server: the Procfile's command serving a bare echo app ----------------------


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def _pings_until_closed(reader, writer, *, answer: bool, enough: int) -> tuple[int, bool]:
    """Read server frames: count pings (answering them if told to) until ``enough`` pings
    or the server closes the socket. Returns (pings, closed by the server)."""
    pings = 0
    while pings < enough:
        try:
            first, second = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            return pings, True
        payload = await reader.readexactly(second & 0x7F)
        opcode = first & 0x0F
        if opcode == 0x8:  # close
            return pings, True
        if opcode == 0x9:
            pings += 1
            if answer:
                writer.write(_masked(0xA, payload))
                await writer.drain()
    return pings, False


@pytest.fixture
def echo_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = procfile_web_command(port)
    command[command.index("config.asgi:application")] = "tests.medease.echo_app:app"
    command += ["--ws-ping-interval", str(PING_INTERVAL), "--ws-ping-timeout", str(PING_TIMEOUT)]
    log = tmp_path / "web.log"
    process = subprocess.Popen(command, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_socket_that_answers_pings_stays_open_and_a_silent_one_is_closed(echo_server):
    async def scenario():
        answering = await _open(echo_server)
        silent = await _open(echo_server)
        (answered, answered_closed), (ignored, silent_closed) = await asyncio.wait_for(
            asyncio.gather(
                # Four pings in a row: each one needed the pong to the one before.
                _pings_until_closed(*answering, answer=True, enough=4),
                _pings_until_closed(*silent, answer=False, enough=10),
            ),
            timeout=30,
        )
        # The answering socket still echoes after the silent one was dropped.
        reader, writer = answering
        writer.write(_masked(0x1, b"still here"))
        await writer.drain()
        while True:
            first, second = await reader.readexactly(2)
            payload = await reader.readexactly(second & 0x7F)
            if first & 0x0F == 0x1:
                break
        for _, w in (answering, silent):
            w.close()
        return answered, answered_closed, ignored, silent_closed, payload

    answered, answered_closed, ignored, silent_closed, echoed = asyncio.run(scenario())
    assert (answered, answered_closed) == (4, False)
    assert silent_closed and ignored == 1  # one ping, no pong, then the close
    assert echoed == b"still here"
