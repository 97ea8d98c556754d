"""Who has a chat open: per consultation, per user, across tabs and nodes.

Each open socket is one member ``"<user id>|<channel name>"`` of a Redis sorted set per
consultation, scored with the time its entry expires. A socket renews its entry every third
of MESSAGING_PRESENCE_TTL_SECONDS; when a node dies its sockets stop renewing and their
entries expire, and the next heartbeat of any socket in that consultation removes them and
announces the users who are gone. A user is online while any of their entries is live, so
closing one of two tabs changes nothing.

Joining, leaving and pruning each run as one Lua script, so "was this the user's first /
last live socket?" is answered atomically: two tabs closing at once on two nodes announce
"offline" once, and a tab opening while another closes never ends in a wrong "offline".

Without Redis (the embedded default, one web process) the same logic runs in memory.
Presence is advisory: callers treat a failure as "unknown" and carry on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref

from django.conf import settings
from redis import asyncio as aioredis

from medease import redis_line

logger = logging.getLogger("medease.messaging")

_KEY = "medease:presence:consultation:{consultation_id}"

# KEYS[1] zset; ARGV: member, user prefix "<uid>|", now, expires, key ttl → 1 if the user
# already had a live socket here.
_JOIN = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
local had = 0
for _, member in ipairs(live) do
  if member ~= ARGV[1] and string.sub(member, 1, string.len(ARGV[2])) == ARGV[2] then
    had = 1
    break
  end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return had
"""

# KEYS[1] zset; ARGV: member, user prefix, now → 1 if that was the user's last live socket.
_LEAVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
for _, member in ipairs(live) do
  if string.sub(member, 1, string.len(ARGV[2])) == ARGV[2] then
    return 0
  end
end
return 1
"""

# KEYS[1] zset; ARGV: member, user prefix, now, expires, key ttl.
# Renews this socket's entry and removes expired ones. Returns {back, gone...}: back is 1
# when this socket's entry had expired (pruned by someone) and the user was not otherwise
# online, i.e. they come back; gone lists users whose last live entry just expired.
_HEARTBEAT = """
local now = tonumber(ARGV[3])
local back = 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  back = 1
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
  for _, member in ipairs(live) do
    if string.sub(member, 1, string.len(ARGV[2])) == ARGV[2] then
      back = 0
      break
    end
  end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local result = {back}
if #expired == 0 then
  return result
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
local online = {}
for _, member in ipairs(live) do
  online[string.match(member, '^(%d+)|')] = true
end
local seen = {}
for _, member in ipairs(expired) do
  local uid = string.match(member, '^(%d+)|')
  if uid and not online[uid] and not seen[uid] then
    seen[uid] = true
    table.insert(result, uid)
  end
end
return result
"""


# The heartbeat of many entries in one script (one command per batch instead of one per
# entry: the server's Python packs and parses one reply). KEYS: the consultations' zsets;
# ARGV: now, expires, key ttl, then per key its member and user prefix. Returns, per key,
# back, the number of users gone, then their ids (see _HEARTBEAT).
_HEARTBEAT_MANY = """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local key, member, prefix = KEYS[i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local back = 0
  if redis.call('ZSCORE', key, member) == false then
    back = 1
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf')) do
      if string.sub(other, 1, string.len(prefix)) == prefix then
        back = 0
        break
      end
    end
  end
  redis.call('ZADD', key, ARGV[2], member)
  redis.call('EXPIRE', key, ARGV[3])
  local gone = {}
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
    local online = {}
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf')) do
      online[string.match(other, '^(%d+)|')] = true
    end
    local seen = {}
    for _, other in ipairs(expired) do
      local uid = string.match(other, '^(%d+)|')
      if uid and not online[uid] and not seen[uid] then
        seen[uid] = true
        table.insert(gone, uid)
      end
    end
  end
  table.insert(out, back)
  table.insert(out, #gone)
  for _, uid in ipairs(gone) do
    table.insert(out, uid)
  end
end
return out
"""
# Entries per heartbeat script call: bounds how long Redis runs one script.
_HEARTBEAT_BATCH = 500


def _member(user_id: int, connection: str) -> str:
    return f"{user_id}|{connection}"


def _prefix(user_id: int) -> str:
    return f"{user_id}|"


class RedisPresence:
    """Presence in Redis (the `default` cache's server), shared by every node."""

    def __init__(self) -> None:
        self._scripts: dict[str, object] = {}
        self._lock = threading.Lock()

    def _client(self):
        from django_redis import get_redis_connection

        return get_redis_connection("default")

    def _script(self, source: str):
        with self._lock:
            if source not in self._scripts:
                self._scripts[source] = self._client().register_script(source)
            return self._scripts[source]

    @staticmethod
    def _ttl() -> int:
        return settings.MESSAGING_PRESENCE_TTL_SECONDS

    def join(self, *, consultation_id: int, user_id: int, connection: str) -> bool:
        """Add a socket; True when the user was not online here before (announce them)."""
        now = time.time()
        had = self._script(_JOIN)(
            keys=[_KEY.format(consultation_id=consultation_id)],
            args=[
                _member(user_id, connection),
                _prefix(user_id),
                now,
                now + self._ttl(),
                2 * self._ttl(),
            ],
        )
        return not int(had)

    def leave(self, *, consultation_id: int, user_id: int, connection: str) -> bool:
        """Remove a socket; True when it was the user's last one here (announce them gone)."""
        gone = self._script(_LEAVE)(
            keys=[_KEY.format(consultation_id=consultation_id)],
            args=[_member(user_id, connection), _prefix(user_id), time.time()],
        )
        return bool(int(gone))

    def heartbeat(
        self, *, consultation_id: int, user_id: int, connection: str
    ) -> tuple[bool, list[int]]:
        """Renew a socket; (user came back, users whose last socket expired)."""
        now = time.time()
        result = self._script(_HEARTBEAT)(
            keys=[_KEY.format(consultation_id=consultation_id)],
            args=[
                _member(user_id, connection),
                _prefix(user_id),
                now,
                now + self._ttl(),
                2 * self._ttl(),
            ],
        )
        return bool(int(result[0])), [int(uid) for uid in result[1:]]

    def online_users(self, *, consultation_id: int) -> set[int]:
        """Users with a live socket in the consultation."""
        members = self._client().zrangebyscore(
            _KEY.format(consultation_id=consultation_id), time.time(), "+inf"
        )
        return {int(member.split(b"|", 1)[0]) for member in members}


class LocalPresence:
    """The same semantics in process memory, for the embedded default (one web process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # consultation id → {(user id, connection): expires}
        self._entries: dict[int, dict[tuple[int, str], float]] = {}

    @staticmethod
    def _live_users(entries: dict[tuple[int, str], float], now: float) -> set[int]:
        return {uid for (uid, _), expires in entries.items() if expires >= now}

    def join(self, *, consultation_id: int, user_id: int, connection: str) -> bool:
        now = time.time()
        with self._lock:
            entries = self._entries.setdefault(consultation_id, {})
            others = {key: exp for key, exp in entries.items() if key != (user_id, connection)}
            had = user_id in self._live_users(others, now)
            entries[(user_id, connection)] = now + settings.MESSAGING_PRESENCE_TTL_SECONDS
            return not had

    def leave(self, *, consultation_id: int, user_id: int, connection: str) -> bool:
        now = time.time()
        with self._lock:
            entries = self._entries.get(consultation_id, {})
            if entries.pop((user_id, connection), None) is None:
                return False
            if not entries:
                self._entries.pop(consultation_id, None)
            return user_id not in self._live_users(entries, now)

    def heartbeat(
        self, *, consultation_id: int, user_id: int, connection: str
    ) -> tuple[bool, list[int]]:
        now = time.time()
        with self._lock:
            entries = self._entries.setdefault(consultation_id, {})
            back = (user_id, connection) not in entries and user_id not in self._live_users(
                entries, now
            )
            entries[(user_id, connection)] = now + settings.MESSAGING_PRESENCE_TTL_SECONDS
            expired = [key for key, exp in entries.items() if exp < now]
            for key in expired:
                del entries[key]
            online = self._live_users(entries, now)
            gone = sorted({uid for uid, _ in expired if uid not in online})
            return back, gone

    def online_users(self, *, consultation_id: int) -> set[int]:
        with self._lock:
            return self._live_users(self._entries.get(consultation_id, {}), time.time())


_backend: RedisPresence | LocalPresence | None = None
_backend_lock = threading.Lock()


def backend() -> RedisPresence | LocalPresence:
    """The presence store for this configuration (Redis when REDIS_URL is set)."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = RedisPresence() if settings.REDIS_URL else LocalPresence()
        return _backend


# --- From the event loop (the chat hub, messaging.hub) ------------------------------------
# One async client per event loop on the cache's Redis, from a blocking pool: a burst (a
# node's sockets all closing at once) waits for a connection instead of failing.
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ASYNC_POOL = 20
_LINE_TIMEOUT = 5


def _async_client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=_ASYNC_POOL,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def _args(user_id: int, connection: str, now: float) -> list:
    return [_member(user_id, connection), _prefix(user_id), now, now + RedisPresence._ttl()]


async def ajoin(*, consultation_id: int, user_id: int, connection: str) -> bool:
    """:meth:`RedisPresence.join` without a thread (in memory without Redis)."""
    store = backend()
    if isinstance(store, LocalPresence):
        return store.join(consultation_id=consultation_id, user_id=user_id, connection=connection)
    now = time.time()
    had = await _async_client().eval(
        _JOIN,
        1,
        _KEY.format(consultation_id=consultation_id),
        *_args(user_id, connection, now),
        2 * RedisPresence._ttl(),
    )
    return not int(had)


async def aleave_many(keys: list[tuple[int, int]], *, connection: str) -> list[bool]:
    """Remove the entries of many (consultation, user) pairs in one round trip; for each,
    whether it was the user's last entry there (announce them gone)."""
    store = backend()
    if isinstance(store, LocalPresence):
        return [
            store.leave(consultation_id=cid, user_id=uid, connection=connection)
            for cid, uid in keys
        ]
    now = time.time()
    pipe = _async_client().pipeline(transaction=False)
    script = pipe.register_script(_LEAVE)
    for cid, uid in keys:
        await script(
            keys=[_KEY.format(consultation_id=cid)],
            args=[_member(uid, connection), _prefix(uid), now],
            client=pipe,
        )
    return [bool(int(result)) for result in await pipe.execute()]


async def aheartbeat_many(
    keys: list[tuple[int, int]], *, connection: str
) -> list[tuple[bool, list[int]]]:
    """Renew the entries of many (consultation, user) pairs in one round trip;
    :meth:`RedisPresence.heartbeat`'s answer for each."""
    store = backend()
    if isinstance(store, LocalPresence):
        return [
            store.heartbeat(consultation_id=cid, user_id=uid, connection=connection)
            for cid, uid in keys
        ]
    client = _async_client()
    script = client.register_script(_HEARTBEAT_MANY)
    now = time.time()
    answers: list[tuple[bool, list[int]]] = []
    for start in range(0, len(keys), _HEARTBEAT_BATCH):
        batch = keys[start : start + _HEARTBEAT_BATCH]
        args = [now, now + RedisPresence._ttl(), 2 * RedisPresence._ttl()]
        for _cid, uid in batch:
            args += [_member(uid, connection), _prefix(uid)]
        flat = await script(
            keys=[_KEY.format(consultation_id=cid) for cid, _uid in batch], args=args
        )
        position = 0
        for _ in batch:
            back, count = int(flat[position]), int(flat[position + 1])
            gone = [int(uid) for uid in flat[position + 2 : position + 2 + count]]
            answers.append((bool(back), gone))
            position += 2 + count
    return answers


async def aonline_users(*, consultation_id: int) -> set[int]:
    store = backend()
    if isinstance(store, LocalPresence):
        return store.online_users(consultation_id=consultation_id)
    members = await _async_client().zrangebyscore(
        _KEY.format(consultation_id=consultation_id), time.time(), "+inf"
    )
    return {int(member.split(b"|", 1)[0]) for member in members}


async def ais_online(*, consultation_id: int, user_id: int) -> bool:
    """Whether the user has a socket open in the consultation (on any node), for a send.

    Over the loop's line to Redis (medease.redis_line): half the CPU of redis-py's client
    per command, on every send whose recipient is on another node. A socket's handshake
    keeps to :func:`aonline_users`: a burst of handshakes queued on the one line held
    their buffers longer and left 3 KiB more RSS per idle socket (bench/ws_bench.py)."""
    store = backend()
    if isinstance(store, LocalPresence):
        return user_id in store.online_users(consultation_id=consultation_id)
    members = await redis_line.line(settings.REDIS_URL, timeout=_LINE_TIMEOUT).call(
        "ZRANGEBYSCORE", _KEY.format(consultation_id=consultation_id), time.time(), "+inf"
    )
    prefix = _prefix(user_id).encode()
    return any(member.startswith(prefix) for member in members)


def online_users(*, consultation_id: int) -> set[int] | None:
    """Users online in the consultation, or None when presence cannot be read."""
    try:
        return backend().online_users(consultation_id=consultation_id)
    except Exception as exc:  # Redis down: callers decide what "unknown" means.
        logger.warning("presence unavailable: %s", exc)
        return None
