"""The chat's live fan-out: one Redis pub/sub subscription per group per process.

Events for a consultation (``consultation.<id>``) or a user (``user.<id>``) are encoded
once, by whoever publishes them, as the exact JSON text a client receives, behind a short
routing header; they are PUBLISHed to ``medease:hub:<group>``. Each web process (one
:class:`Hub` per event loop) subscribes to a group's channel while it has a socket in the
group (subscribing on the first, unsubscribing after the last), and one reader task writes
each published text to the local sockets directly: no channel-layer message, no per-socket
dispatch and no per-socket encode (docs/adr/0005-chat-transport.md, "The hub").

Header (ASCII, up to the first newline): ``m<id>`` a stored message (every socket; the
sockets de-duplicate), ``a`` every socket, ``x<user>`` every socket but that user's (their
own typing or presence), ``t<user>`` that user's sockets only (call signals), ``c`` a
control event for the sockets (the text names it: ``revoked``).

Pub/sub is at-most-once, so a lost subscription is never silent: when the reader's
connection breaks, every local socket is told to resync (:meth:`HubSocket.hub_lost`) and
the reader starts afresh on the next join. Without a channel-layer Redis (the embedded
default, one process) the same hub delivers in process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
import uuid
import weakref
from typing import Protocol

import redis
from django.conf import settings
from redis import asyncio as aioredis

from medease import redis_line

logger = logging.getLogger("medease.messaging")

PREFIX = "medease:hub:"
MESSAGE, ALL, EXCEPT, ONLY, CONTROL = (ord(kind) for kind in "maxtc")
# The reader pings its connection this often; one unanswered ping means it is gone.
PING_SECONDS = 10.0
# Close codes a lost subscription ends sockets with: the connection came straight back
# (resync now), or Redis is unreachable (try again later).
LOST_RECONNECT = 4408
LOST_UNAVAILABLE = 1013
# This process's name in presence entries (one entry per process and user).
NODE = uuid.uuid4().hex[:16]


class HubSocket(Protocol):
    user_id: int

    def hub_push(self, kind: int, ident: int, frame: dict) -> None: ...

    def hub_lost(self, code: int) -> None: ...


def channel_of(group: str) -> str | None:
    """The pub/sub channel of a group the hub carries; None for channel-layer groups."""
    if group.startswith(("consultation.", "user.")):
        return PREFIX + group
    return None


def _dumps(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def encode(event: dict) -> bytes | None:
    """The wire form of a channel-layer style event (messaging.events), None if unknown."""
    kind = event.get("type")
    if kind == "chat.message":
        message = event["message"]
        return b"m%d\n" % message["id"] + _dumps({"type": "message", "message": message})
    if kind == "chat.read":
        return b"a\n" + _dumps(
            {"type": "read", "user": event["user"], "message_id": event["message_id"]}
        )
    if kind == "chat.typing":
        return b"x%d\n" % event["user"] + _dumps({"type": "typing", "user": event["user"]})
    if kind == "chat.presence":
        return b"x%d\n" % event["user"] + _dumps(
            {"type": "presence", "user": event["user"], "online": event["online"]}
        )
    if kind == "call.signal":
        return b"t%d\n" % event["to"] + _dumps(
            {"type": "call.signal", "from": event["from"], "data": event["data"]}
        )
    if kind == "call.state":
        return b"a\n" + _dumps({"type": "call.state", "call": event["call"]})
    if kind == "session.revoked":
        return b"c\nrevoked"
    return None


def _wire(group: str, event: dict) -> tuple[str, bytes]:
    channel = channel_of(group)
    data = encode(event)
    if channel is None or data is None:
        raise ValueError(f"the hub does not carry {event.get('type')!r} to {group!r}")
    return channel, data


# --- Publishing ----------------------------------------------------------------------------

_sync_client: redis.Redis | None = None
_sync_lock = threading.Lock()


def _redis_url() -> str:
    return settings.CHANNEL_LAYER_REDIS_URL


def _sync_redis() -> redis.Redis:
    global _sync_client
    with _sync_lock:
        if _sync_client is None:
            _sync_client = redis.Redis.from_url(
                _redis_url(),
                socket_timeout=settings.MESSAGING_FANOUT_TIMEOUT_SECONDS,
                socket_connect_timeout=2,
            )
        return _sync_client


def publish(group: str, event: dict) -> None:
    """Publish from synchronous code (services, after commit). Raises on failure."""
    channel, data = _wire(group, event)
    if _redis_url():
        _sync_redis().publish(channel, data)
        return
    for loop, hub in list(_hubs.items()):
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens there
            loop.call_soon_threadsafe(hub.dispatch, channel.encode(), data)


async def apublish(group: str, event: dict) -> None:
    """Publish from the event loop (consumers). Raises on failure."""
    channel, data = _wire(group, event)
    await current().publish(channel, data)


# --- The per-loop hub ------------------------------------------------------------------

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def locally_present(consultation_id: int, user_id: int) -> bool:
    """Whether a socket of this process has the user in the consultation (any thread)."""
    try:
        hubs = list(_hubs.values())
    except RuntimeError:  # a hub added meanwhile (tests: one loop each); ask Redis instead
        return False
    return any((consultation_id, user_id) in hub.presence.counts for hub in hubs)


def current() -> Hub:
    """This event loop's hub (a server has one loop; tests have one per test)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub


class _Room(set):
    """The local sockets of one channel, the subscription that carries it, and that
    subscription's confirmation until it came (or its failure: later joins are refused)."""

    __slots__ = ("ready", "subscription")

    def __init__(self) -> None:
        super().__init__()
        self.ready: asyncio.Future | None = None
        self.subscription: _Subscription | None = None


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[bytes, _Room] = {}
        self.subscription: _Subscription | None = None
        self._client: aioredis.Redis | None = None
        self.presence = _Presence(self)

    async def publish(self, channel: str, data: bytes) -> None:
        if not _redis_url():
            self.dispatch(channel.encode(), data)
            return
        # On the loop's line to Redis (medease.redis_line), not redis-py's client: a
        # chat send publishes once, and the client's per-command wrapping doubled the cost.
        line = redis_line.line(_redis_url(), timeout=settings.MESSAGING_FANOUT_TIMEOUT_SECONDS)
        await line.call("PUBLISH", channel, data)

    async def join(self, group: str, socket: HubSocket) -> None:
        """Add a socket; returns once events published from now on reach it (raises if the
        subscription cannot be made: the caller refuses the socket)."""
        channel = channel_of(group).encode()
        room = self.rooms.get(channel)
        if room is None:
            room = self.rooms[channel] = _Room()
            if _redis_url():
                if self.subscription is None:
                    self.subscription = _Subscription(self)
                room.subscription = self.subscription
                room.ready = self.subscription.subscribe(channel)
        room.add(socket)
        if room.ready is not None and not room.ready.done():
            try:
                await asyncio.shield(room.ready)
            except BaseException:
                self.leave(group, socket)
                raise
            room.ready = None  # confirmed: a future per room is not kept while it is open
        elif room.ready is not None and room.ready.exception() is not None:
            self.leave(group, socket)
            raise room.ready.exception()

    def leave(self, group: str, socket: HubSocket) -> None:
        channel = channel_of(group).encode()
        room = self.rooms.get(channel)
        if room is None or socket not in room:
            return
        room.discard(socket)
        if room:
            return
        del self.rooms[channel]
        subscription = self.subscription
        if subscription is None:
            return
        if self.rooms:
            subscription.unsubscribe(channel)
        else:  # nothing left to listen to: let the connection go
            self.subscription = None
            subscription.close()

    def dispatch(self, channel: bytes, data: bytes) -> None:
        """Write one published event to this process's sockets in its channel."""
        room = self.rooms.get(channel)
        if not room:
            return
        newline = data.find(b"\n")
        kind = data[0]
        ident = int(data[1:newline]) if newline > 1 else 0
        # One ASGI message for all sockets: servers only read it.
        frame = {"type": "websocket.send", "text": data[newline + 1 :].decode()}
        for socket in tuple(room):
            try:
                socket.hub_push(kind, ident, frame)
            except Exception:  # one socket's bug must not starve the others
                logger.exception("chat delivery to a socket failed")

    def lost(self, subscription: _Subscription, code: int) -> None:
        """The reader's connection broke: what was published meanwhile is gone, so every
        socket it served is told to resync."""
        if self.subscription is subscription:
            self.subscription = None
        sockets = set()
        for channel in list(self.rooms):
            room = self.rooms[channel]
            if room.subscription is subscription:
                sockets.update(room)
                del self.rooms[channel]
        logger.warning(
            "chat subscription lost: %s socket(s) told to resync (close %s)", len(sockets), code
        )
        for socket in sockets:
            try:
                socket.hub_lost(code)
            except Exception:
                logger.exception("telling a socket to resync failed")


class _Subscription:
    """One pub/sub connection and its reader task (per hub, while it has rooms)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # RESP2: published messages are plain replies (RESP3 would hand them to a push
        # handler instead).
        self.pool = aioredis.ConnectionPool.from_url(
            _redis_url(), protocol=2, socket_timeout=None, socket_connect_timeout=2
        )
        self.connection = self.pool.make_connection()
        # Confirmations awaited per channel, in the order its SUBSCRIBEs went out (more than
        # one when the channel was left and joined again before the first was confirmed).
        self.pending: dict[bytes, list[asyncio.Future]] = {}
        self.commands: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.last_seen = time.monotonic()
        self.closed = False
        self.task = asyncio.ensure_future(self._run())

    def subscribe(self, channel: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.setdefault(channel, []).append(future)
        self.commands.put_nowait(("SUBSCRIBE", channel))
        return future

    def unsubscribe(self, channel: bytes) -> None:
        self.commands.put_nowait(("UNSUBSCRIBE", channel))

    def close(self) -> None:
        self.closed = True
        self.commands.put_nowait(None)

    async def _run(self) -> None:
        code = LOST_RECONNECT
        writer = reader = None
        try:
            await self.connection.connect()
            writer = asyncio.ensure_future(self._write())
            reader = asyncio.ensure_future(self._read())
            pinger = asyncio.ensure_future(self._ping())
            done, _ = await asyncio.wait(
                {writer, reader, pinger}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in (writer, reader, pinger):
                task.cancel()
            if self.closed:
                return
            error = next((t.exception() for t in done if not t.cancelled()), None)
            logger.warning("chat subscription connection lost: %r", error)
        except Exception as exc:
            logger.warning("chat subscription could not connect: %r", exc)
            code = LOST_UNAVAILABLE
        finally:
            with contextlib.suppress(Exception):
                await self.connection.disconnect(nowait=True)
            with contextlib.suppress(Exception):
                await self.pool.disconnect()
            failure = ConnectionError("chat subscription lost")
            for queue in self.pending.values():
                for future in queue:
                    if not future.done():
                        future.set_exception(failure)
                        future.exception()  # retrieved: a refused join already logged it
        if code == LOST_RECONNECT and not await _reachable():
            code = LOST_UNAVAILABLE
        self.hub.lost(self, code)

    async def _write(self) -> None:
        while True:
            command = await self.commands.get()
            if command is None:
                return
            await self.connection.send_command(*command, check_health=False)

    async def _read(self) -> None:
        connection = self.connection
        dispatch = self.hub.dispatch
        while True:
            response = await connection.read_response(timeout=float("inf"))
            self.last_seen = time.monotonic()
            kind = response[0]
            if kind == b"message":
                dispatch(response[1], response[2])
            elif kind == b"subscribe":
                queue = self.pending.get(response[1])
                if queue:
                    future = queue.pop(0)
                    if not queue:
                        del self.pending[response[1]]
                    if not future.done():
                        future.set_result(None)

    async def _ping(self) -> None:
        # A connection that died without a reset (a partitioned node) answers nothing.
        while True:
            await asyncio.sleep(PING_SECONDS)
            if time.monotonic() - self.last_seen > 2 * PING_SECONDS:
                raise ConnectionError("chat subscription did not answer its ping")
            await self.connection.send_command("PING", check_health=False)


async def _reachable() -> bool:
    client = aioredis.Redis.from_url(_redis_url(), socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


# --- Presence: one entry per process and user, renewed by one pipeline per interval --------


class _Presence:
    """Counts this process's sockets per (consultation, user); Redis (messaging.presence)
    holds one entry per process and user, added on the first socket, removed after the
    last (removals batched), and renewed for all of them in one pipeline per interval."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.counts: collections.Counter[tuple[int, int]] = collections.Counter()
        self.leaving: set[tuple[int, int]] = set()
        self._flush: asyncio.Task | None = None
        self._beat: asyncio.Task | None = None

    @staticmethod
    def connection() -> str:
        return f"node:{NODE}"

    async def join(self, consultation_id: int, user_id: int) -> bool:
        """Count a socket; True when the user was not online in the consultation before."""
        from messaging import presence

        key = (consultation_id, user_id)
        self.counts[key] += 1
        if self.counts[key] > 1:
            return False
        if key in self.leaving:  # back before the removal went out: nothing changed
            self.leaving.discard(key)
            return False
        if self._beat is None or self._beat.done():
            self._beat = asyncio.ensure_future(self._heartbeat())
        try:
            return await presence.ajoin(
                consultation_id=consultation_id, user_id=user_id, connection=self.connection()
            )
        except BaseException:
            self._uncount(key)
            raise

    def _uncount(self, key) -> bool:
        self.counts[key] -= 1
        if self.counts[key] > 0:
            return False
        del self.counts[key]
        return True

    def leave(self, consultation_id: int, user_id: int) -> None:
        key = (consultation_id, user_id)
        if key not in self.counts or not self._uncount(key):
            return
        self.leaving.add(key)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._leave_batch())

    async def _leave_batch(self) -> None:
        from messaging import presence

        await asyncio.sleep(0)  # let a burst of disconnects gather
        while self.leaving:
            batch, self.leaving = list(self.leaving), set()
            try:
                gone = await presence.aleave_many(batch, connection=self.connection())
            except Exception as exc:  # Redis down: the entries expire on their own
                logger.warning("presence leave failed: %r", exc)
                continue
            for (consultation_id, user_id), last in zip(batch, gone, strict=True):
                if last:
                    await _announce(consultation_id, user_id, online=False)

    async def _heartbeat(self) -> None:
        from messaging import presence

        interval = max(1.0, settings.MESSAGING_PRESENCE_TTL_SECONDS / 3)
        while self.counts:
            await asyncio.sleep(interval)
            keys = list(self.counts)
            if not keys:
                break
            try:
                results = await presence.aheartbeat_many(keys, connection=self.connection())
            except Exception as exc:
                logger.warning("presence heartbeat failed: %r", exc)
                continue
            for (consultation_id, user_id), (back, gone) in zip(keys, results, strict=True):
                if back and (consultation_id, user_id) in self.counts:
                    await _announce(consultation_id, user_id, online=True)
                for other in gone:  # their node died without saying goodbye
                    await _announce(consultation_id, other, online=False)


async def _announce(consultation_id: int, user_id: int, *, online: bool) -> None:
    event = {"type": "chat.presence", "user": user_id, "online": online}
    try:
        await apublish(f"consultation.{consultation_id}", event)
    except Exception as exc:
        logger.warning("presence fan-out failed: %r", exc)
