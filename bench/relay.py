"""The chat benchmark's floor: a bare ASGI websocket relay over Redis pub/sub.

What any chat fan-out has to do at least, and nothing more: each process subscribes once
per room to a Redis channel (when the room's first socket arrives), and writes every
message published there, as received, to that room's sockets. A socket's
``{"type": "message.send", ...}`` frame is published to its room as a ``message`` event
shaped like MedEase's (an id, the client's ``client_id`` and ``body``). No
authentication, storage, presence or rate limits.

Served by the Procfile's web command with ``bench.relay:app`` in place of
``config.asgi:application`` (bench/ws_bench.py does that). Paths are MedEase's,
``/ws/consultations/<room>/``; any HTTP request answers 200 (readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os

from redis import asyncio as aioredis

# Served as MedEase's web process is (config/asgi.py): what start-up made is out of the
# collector's sight, and the collector works in the same batches (WEB_GC_THRESHOLDS).
gc.freeze()
gc.set_threshold(*(int(n) for n in os.environ.get("WEB_GC_THRESHOLDS", "50000,20,10").split(",")))

_redis = None
_pubsub = None
_listener: asyncio.Task | None = None
_publisher: asyncio.Task | None = None
_outbox: asyncio.Queue | None = None  # (channel, text) waiting to be published
_rooms: dict[str, set] = {}  # channel → the ASGI send callables of its sockets
_ids = itertools.count(1)


def _client():
    global _redis, _pubsub
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ["REDIS_URL"])
        _pubsub = _redis.pubsub(ignore_subscribe_messages=True)
    return _redis


async def _listen() -> None:
    # One reader per process for every room: the frame is written as published.
    while True:
        message = await _pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        text = message["data"].decode()
        for send in list(_rooms.get(message["channel"].decode(), ())):
            # A socket that went away: its disconnect event follows.
            with contextlib.suppress(Exception):
                await send({"type": "websocket.send", "text": text})


async def _publish() -> None:
    # One writer per process: whatever queued meanwhile goes out as one pipeline on one
    # connection (a publish per socket each borrowing a pooled connection exhausted the pool
    # on a starved core, and the sockets whose publish failed were closed).
    while True:
        batch = [await _outbox.get()]
        while not _outbox.empty() and len(batch) < 1000:
            batch.append(_outbox.get_nowait())
        async with _redis.pipeline(transaction=False) as pipe:
            for channel, text in batch:
                pipe.publish(channel, text)
            with contextlib.suppress(Exception):
                await pipe.execute()


def _enqueue(channel: str, text: str) -> None:
    global _outbox, _publisher
    if _publisher is None:
        _client()
        _outbox = asyncio.Queue()
        _publisher = asyncio.ensure_future(_publish())
    _outbox.put_nowait((channel, text))


async def _join(channel: str, send) -> None:
    global _listener
    _client()
    sockets = _rooms.setdefault(channel, set())
    if not sockets:
        await _pubsub.subscribe(channel)
    sockets.add(send)
    if _listener is None:
        _listener = asyncio.ensure_future(_listen())


async def _leave(channel: str, send) -> None:
    sockets = _rooms.get(channel)
    if sockets is None:
        return
    sockets.discard(send)
    if not sockets:
        del _rooms[channel]
        await _pubsub.unsubscribe(channel)


async def _websocket(scope, receive, send) -> None:
    parts = scope["path"].strip("/").split("/")
    channel = f"relay:{parts[-1] if parts else 'default'}"
    joined = False
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await _join(channel, send)
                joined = True
            elif event["type"] == "websocket.receive":
                data = json.loads(event.get("text") or "{}")
                if data.get("type") == "message.send":
                    payload = {
                        "type": "message",
                        "message": {
                            "id": next(_ids),
                            "client_id": data.get("client_id"),
                            "body": data.get("body"),
                        },
                    }
                    _enqueue(channel, json.dumps(payload, separators=(",", ":")))
            elif event["type"] == "websocket.disconnect":
                return
    finally:
        if joined:
            await _leave(channel, send)


async def app(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        return await _websocket(scope, receive, send)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
