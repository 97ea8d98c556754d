"""Fan-out: group names, event shapes, failure-proof sends.

Consultation and user groups travel through the chat hub (messaging.hub: one Redis
pub/sub subscription per group per process, each event encoded once); other groups (a
console session's sockets) through the channel layer. The database is the truth and the
live path the fast one (delivery is at-most-once, and a socket that may have missed
something is told to resync): a failed or slow fan-out is logged and dropped, never raised
into the write that caused it. Clients resync with ``?after=<last seen id>``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import transaction
from redis import asyncio as aioredis

from messaging import hub

logger = logging.getLogger("medease.messaging")


def consultation_group(consultation_id: int) -> str:
    return f"consultation.{consultation_id}"


def user_group(user_id: int) -> str:
    """Every socket of a user, whatever the consultation (closing on revocation)."""
    return f"user.{user_id}"


async def agroup_send(group: str, event: dict) -> bool:
    """group_send bounded by MESSAGING_FANOUT_TIMEOUT_SECONDS; False (logged) on failure."""
    layer = get_channel_layer()
    if layer is None and hub.channel_of(group) is None:
        return False
    try:
        # A timeout scope, not wait_for: no task per fan-out.
        async with asyncio.timeout(settings.MESSAGING_FANOUT_TIMEOUT_SECONDS):
            if hub.channel_of(group) is not None:
                await hub.apublish(group, event)
            else:
                await layer.group_send(group, event)
    except Exception as exc:  # Redis down, slow or full: the stored data is the truth.
        logger.warning(
            "fan-out of %s to %s failed: %r", event.get("type"), group, exc, exc_info=False
        )
        return False
    return True


def group_send(group: str, event: dict) -> bool:
    """Synchronous :func:`agroup_send` (services, listeners). Never raises."""
    if hub.channel_of(group) is not None:
        try:
            hub.publish(group, event)  # bounded by the client's socket timeout
        except Exception as exc:  # Redis down or slow: the stored data is the truth.
            logger.warning("fan-out of %s to %s failed: %r", event.get("type"), group, exc)
            return False
        return True
    try:
        return async_to_sync(agroup_send)(group, event)
    except Exception as exc:  # e.g. no usable event loop; same rule: log, do not fail.
        logger.warning("fan-out of %s to %s failed: %r", event.get("type"), group, exc)
        return False


def group_send_on_commit(group: str, event: dict) -> None:
    """Send after the current transaction commits; a rolled-back write sends nothing."""
    transaction.on_commit(lambda: group_send(group, event))


# --- Event shapes (channel layer → consumer). Handlers are named after ``type``. ---------


def message_event(payload: dict) -> dict:
    return {"type": "chat.message", "message": payload}


def read_event(*, user_id: int, message_id: int) -> dict:
    return {"type": "chat.read", "user": user_id, "message_id": message_id}


def typing_event(*, user_id: int) -> dict:
    return {"type": "chat.typing", "user": user_id}


def presence_event(*, user_id: int, online: bool) -> dict:
    return {"type": "chat.presence", "user": user_id, "online": online}


def revoked_event() -> dict:
    return {"type": "session.revoked"}


def overflow_event() -> dict:
    """The layer's own note to a consumer: events meant for it were dropped."""
    return {"type": "chat.overflow"}


# --- The channel layer: channels_redis' core layer that never drops silently ------------


class _FlaggingQueue(asyncio.Queue):
    """channels_redis' per-socket buffer, which drops its oldest event when the consumer
    does not keep up; this one then hands out :func:`overflow_event` first."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = False

    def put_nowait(self, item) -> None:
        if self.full():
            super().get_nowait()
            self.dropped = True
        super().put_nowait(item)

    def get_nowait(self):
        # asyncio.Queue.get() ends in get_nowait(), so both paths see the flag.
        if self.dropped:
            self.dropped = False
            return overflow_event()
        return super().get_nowait()


# KEYS: channel keys. ARGV: n messages, n capacities, now, expiry. Like channels_redis'
# group send, but it returns the keys that missed something: full, or with old events
# that just expired unread. Those get an overflow note instead (see group_send).
_GROUP_SEND = """
local n = #KEYS
local now = tonumber(ARGV[2 * n + 1])
local expiry = tonumber(ARGV[2 * n + 2])
local missed = {}
for i = 1, n do
  local expired = redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
  if expired == 0 and redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
    redis.call('ZADD', KEYS[i], now, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    table.insert(missed, i)
  end
end
return missed
"""


class ChatChannelLayer(RedisChannelLayer):
    """channels_redis' ``RedisChannelLayer`` with delivery either complete or flagged.

    Upstream drops events silently in two places: a process's Redis queue at ``capacity``
    (group_send skips it) and a socket's local buffer at ``capacity`` (oldest dropped).
    Here both leave a ``chat.overflow`` event for the affected consumers instead, which
    closes the socket with 4408 so the client replays with ``?after=``. Connections come
    from a blocking pool: a burst (thousands of sockets closing at once) waits for a
    connection instead of failing with MaxConnectionsError.
    """

    def __init__(self, *args, max_connections: int = 100, pool_timeout: float = 10.0, **kw):
        super().__init__(*args, **kw)
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.receive_buffer = collections.defaultdict(
            functools.partial(_FlaggingQueue, self.capacity)
        )

    def create_pool(self, index):
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        address = host.pop("address")
        host.setdefault("max_connections", self.max_connections)
        host.setdefault("timeout", self.pool_timeout)
        return aioredis.BlockingConnectionPool.from_url(address, **host)

    def _overflow_note(self, channels: list[str]) -> bytes:
        # Zero prefix instead of a random one: the same member every time, so repeated
        # overflows of one key by one group update one entry.
        body = self._serializer.as_bytes({**overflow_event(), "__asgi_channel__": channels})
        return bytes(self._serializer.random_prefix_length) + body

    async def group_send(self, group, message):
        assert self.require_valid_group_name(group), "Group name not valid"
        if hub.channel_of(group) is not None:
            # Consultation and user groups are the hub's (visits' call events arrive here).
            return await hub.apublish(group, message)
        connection = self.connection(self.consistent_hash(group))
        key = self._group_key(group)
        await connection.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        channel_names = [name.decode("utf8") for name in await connection.zrange(key, 0, -1)]
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            channel_names, message
        )
        for index, keys in by_connection.items():
            args = [messages[k] for k in keys] + [capacities[k] for k in keys]
            redis = self.connection(index)
            missed = await redis.eval(
                _GROUP_SEND, len(keys), *keys, *args, time.time(), self.expiry
            )
            if not missed:
                continue
            logger.warning("chat fan-out to %s: %s process queue(s) full", group, len(missed))
            # The note goes in even above capacity (one member per key and group, so it
            # cannot grow the set), after what is queued: the consumers deliver those, then
            # close with 4408 and their clients replay the rest with ?after=.
            pipe = redis.pipeline()
            for position in missed:
                channel_key = keys[int(position) - 1]
                channels = self._serializer.deserialize(messages[channel_key])["__asgi_channel__"]
                pipe.zadd(channel_key, {self._overflow_note(sorted(channels)): time.time()})
                pipe.expire(channel_key, self.expiry)
            await pipe.execute()
