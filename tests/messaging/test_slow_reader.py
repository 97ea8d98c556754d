"""A socket that cannot keep up is told, never left with a silent gap (issue 12).

One real node (the Procfile's web command) with a tiny channel-layer capacity; a patient's
socket stops reading (a small TCP receive buffer, a client queue of one frame) while the
provider sends many large messages over REST. Once the reader reads again, every message
is either delivered to it or it got ``{"type": "resync", "after": id}`` and close 4408;
a reconnect with ``?after=`` then replays exactly the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid

import pytest
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from accounts import services as account_services
from messaging import events, services
from messaging.models import Message
from tests.messaging.test_cross_node import (
    START_TIMEOUT,
    Node,
    RedisServer,
    database_url,
    stop_process,
    wait_until,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

CAPACITY = 8
MESSAGES = 600
# 6 MB in all: more than a stalled reader's loopback buffers hold (the server's send buffer
# grows to tcp_wmem's 4 MB), so the server's writes to it block and its queues overflow.
BODY = "x" * 10_000


def node_env(tmp_path, layer: RedisServer, **extra) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CHANNEL_LAYER_REDIS_URL": layer.url,
        "MEDEASE_REQUIRE_SERVICES": "1",
        "MEDEASE_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_REPLICA_URLS": "",
        "DATABASE_POOL_MAX_SIZE": "4",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
        "RATE_MESSAGE_USER": "100000/m",
        "RATE_API_USER": "100000/m",
        "MESSAGING_WS_RATE_EVENTS": "100000",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@pytest.fixture
def node(transactional_db, tmp_path):
    layer = RedisServer(tmp_path)
    layer.start()
    server = Node(
        # The stalled reader reads again only after the whole flood; on a loaded machine
        # that can outlast uvicorn's keepalive (20 s ping + 20 s timeout), which would drop
        # it (1006: its client reconnects with after=, but this test is about the flag).
        env=node_env(
            tmp_path, layer, CHANNEL_LAYER_CAPACITY=str(CAPACITY), UVICORN_WS_PING_INTERVAL="300"
        ),
        log=tmp_path / "node.log",
    )
    try:
        wait_until(server.ready, timeout=START_TIMEOUT, what="the node")
        yield server
    finally:
        server.stop()
        stop_process(layer.process)


def ticket(user) -> str:
    _raw, token = account_services.token_issue(user=user)
    return services.ws_ticket_issue(user=user, token=token)


def stalled_socket() -> socket.socket:
    """A connected TCP socket whose receive window is tiny (set before connecting)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def read_all(ws, *, quiet: float = 10.0) -> tuple[list[int], list[dict], int | None]:
    """Message ids and resync events until the server closes (or says nothing for
    ``quiet`` seconds); and the close code."""
    ids, resyncs = [], []
    try:
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), quiet))
            if event["type"] == "message":
                ids.append(event["message"]["id"])
            elif event["type"] == "resync":
                resyncs.append(event)
    except (ConnectionClosed, TimeoutError):
        pass
    return ids, resyncs, ws.close_code


async def test_a_reader_that_falls_behind_is_told_and_replays_exactly(node, chat):
    cid = chat.consultation.pk
    first = await asyncio.to_thread(ticket, chat.patient)
    flooder = await asyncio.to_thread(ticket, chat.provider)
    url = f"{node.ws}/ws/consultations/{cid}/?ticket="

    sock = stalled_socket()
    await asyncio.to_thread(sock.connect, ("127.0.0.1", node.port))
    # No client pings (as browsers): a stalled client's own keepalive would drop it first.
    reader = await ws_connect(url + first, sock=sock, max_queue=1, ping_interval=None)
    await asyncio.sleep(0.5)  # joined and present before the flood

    # The provider floods over its own socket with a window of unacknowledged sends: the
    # server reads a socket's frames one at a time, so a pong queued behind hundreds of
    # sends would time its keepalive out on a loaded machine.
    async with ws_connect(url + flooder, max_size=2**22) as provider:
        window = asyncio.Semaphore(16)

        async def acknowledgements() -> None:
            acknowledged = 0
            while acknowledged < MESSAGES:
                event = json.loads(await asyncio.wait_for(provider.recv(), 60))
                assert event["type"] in ("message", "presence", "typing"), event
                if event["type"] == "message":
                    acknowledged += 1
                    window.release()

        reading = asyncio.ensure_future(acknowledgements())
        for n in range(MESSAGES):
            await window.acquire()
            await provider.send(
                json.dumps({"type": "message.send", "body": BODY, "client_id": f"f{n}"})
            )
        await reading
    sent = await asyncio.to_thread(
        lambda: list(Message.objects.filter(consultation_id=cid).order_by("id").values_list(
            "id", flat=True
        ))
    )  # fmt: skip
    assert len(sent) == MESSAGES

    # The reader reads again: what it gets is a prefix of the conversation, then the flag.
    delivered, resyncs, code = await read_all(reader)
    log = node.log.read_text()[-3000:]
    assert len(delivered) < MESSAGES, f"no overflow, the test proves nothing:\n{log}"
    assert code == 4408, (len(delivered), resyncs, code, log)
    assert len(resyncs) == 1
    after = resyncs[0]["after"]
    assert delivered == sent[: len(delivered)]
    assert after == (delivered[-1] if delivered else None)

    # The replay after the flagged id fills the gap exactly.
    query = f"&after={after}" if after is not None else "&after=0"
    second = await asyncio.to_thread(ticket, chat.patient)  # fresh: tickets live 30 s
    async with ws_connect(url + second + query, max_size=2**22) as again:
        replayed: list[int] = []
        while len(delivered) + len(replayed) < MESSAGES:
            event = json.loads(await asyncio.wait_for(again.recv(), 15))
            if event["type"] == "message":
                replayed.append(event["message"]["id"])
    assert delivered + replayed == sent


async def test_a_full_process_queue_gets_an_overflow_note_instead_of_a_silent_drop():
    layer = events.ChatChannelLayer(
        hosts=[{"address": settings.REDIS_URL}], prefix=f"test-{uuid.uuid4().hex}", capacity=3
    )
    channel = await layer.new_channel()
    try:
        # A channel-layer group (consultation and user groups are the hub's).
        await layer.group_add("session.1", channel)
        for n in range(10):  # nobody receives meanwhile: 7 of them find the queue full
            await layer.group_send("session.1", {"type": "session.note", "n": n})
        received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(4)]
        assert [event.get("n") for event in received[:3]] == [0, 1, 2]
        assert received[3] == events.overflow_event()
        # One note however many sends overflowed.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 1)
    finally:
        await layer.flush()


def test_a_socket_buffer_that_overflows_hands_out_the_overflow_event_first():
    queue = events._FlaggingQueue(2)
    for n in range(4):
        queue.put_nowait({"n": n})
    assert queue.get_nowait() == events.overflow_event()
    assert [queue.get_nowait()["n"] for _ in range(2)] == [2, 3]
    assert queue.empty()
