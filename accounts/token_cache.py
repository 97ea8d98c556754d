"""A short-lived cache of token facts in the shared cache (Redis in production).

It spares the primary one query per authenticated request. Entries live
TOKEN_CACHE_SECONDS. Revocation writes a tombstone under a key of its own, which fills and
refreshes never write: whatever they store and whenever they store it, a tombstone wins
(see docs/adr/0002-api-tokens.md). The tombstone outlives any entry written by a request
that was already in flight when the token was revoked. Every call degrades to "no entry"
when the cache is unreachable.

Next to the facts, a snapshot of the token's user (and organization) spares the user row's
query too. It is versioned per token: a change to the user or its organization writes a new
version (``users_changed``, after the change commits), and a snapshot counts only while the
version it was filled under is still the current one. A request that read the old row
before the commit and stores it after the new version was written therefore stores a
snapshot nobody accepts. The password hash is never cached (it is loaded on demand).

Authentication also counts the request's ``api_user`` rate-limit event and reads the user's
read-your-writes marker: :func:`read_counting` does both in the token read's round trip
(one Lua script) once this process knows which user the token belongs to. A token's user
never changes, so that is a plain per-process map; revocation is still seen on every
request, since the script reads the tombstone first and counts nothing when it is there.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache, caches

logger = logging.getLogger("accounts.tokens")

REVOKED = "revoked"


def _key(digest: str) -> str:
    return f"tok:{digest}"


def _tombstone_key(digest: str) -> str:
    return f"tok-revoked:{digest}"


def _user_key(digest: str) -> str:
    return f"tok-user:{digest}"


def _user_version_key(digest: str) -> str:
    return f"tok-userv:{digest}"


@dataclass(frozen=True)
class Read:
    """One round trip's worth: the facts (or REVOKED, or None), the user snapshot if it is
    still current, and the version a fresh snapshot is to be stored under."""

    facts: object
    user: object = None
    user_version: str | None = None


def _enabled() -> bool:
    return settings.TOKEN_CACHE_SECONDS > 0


def get(digest: str):
    """The cached facts, REVOKED, or None (miss, disabled or cache down)."""
    return read(digest).facts


def read(digest: str) -> Read:
    """Facts and user snapshot in one round trip; the tombstone is looked at first."""
    if not _enabled():
        return Read(None)
    keys = [_tombstone_key(digest), _key(digest), _user_version_key(digest), _user_key(digest)]
    try:
        values = cache.get_many(keys)
    except Exception as exc:  # a backend without IGNORE_EXCEPTIONS
        logger.warning("token cache unavailable: %s", exc)
        return Read(None)
    if values.get(keys[0]) is not None:
        return Read(REVOKED)
    version = values.get(keys[2])
    snapshot = values.get(keys[3])
    user = None
    if isinstance(snapshot, tuple) and len(snapshot) == 2 and snapshot[0] == version:
        user = snapshot[1]
    return Read(values.get(keys[1]), user, version)


def _decode(values: list, decode) -> Read:
    tombstone, facts, version, snapshot = (None if v is None else decode(v) for v in values)
    if tombstone is not None:
        return Read(REVOKED)
    user = None
    if isinstance(snapshot, tuple) and len(snapshot) == 2 and snapshot[0] == version:
        user = snapshot[1]
    return Read(facts, user, version)


# The token's keys, then the rate-limit counter (counted only when the facts are there and
# the tombstone is not: a revoked or unknown token counts against nobody), then optionally
# the read-your-writes marker.
_READ_COUNTING = """
local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local n = false
if not v[1] and v[2] then
  n = redis.call('INCRBY', KEYS[5], 1)
  if n == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[1]) end
end
local m = false
if KEYS[6] then m = redis.call('EXISTS', KEYS[6]) end
return {v[1], v[2], v[3], v[4], n, m}
"""
_read_counting_script = None
# digest -> user id, for tokens this process authenticated (bounded: cleared when full).
_token_users: dict[str, int] = {}
_TOKEN_USERS_MAX = 50_000


def user_of(digest: str) -> int | None:
    """The user of a token this process has authenticated before (a token's user is fixed)."""
    return _token_users.get(digest)


def remember_user(digest: str, user_id: int) -> None:
    if digest not in _token_users:
        if len(_token_users) >= _TOKEN_USERS_MAX:
            _token_users.clear()
        _token_users[digest] = user_id


def _shared_client():
    """The raw Redis client when the token cache and the rate-limit cache are one Redis
    with one key scheme (else None: the reads take their separate ways)."""
    default, limits = caches["default"], caches[settings.RATELIMIT_USE_CACHE]
    get_default = getattr(getattr(default, "client", None), "get_client", None)
    get_limits = getattr(getattr(limits, "client", None), "get_client", None)
    if get_default is None or get_limits is None:
        return None
    client = get_limits(write=True)
    if client is not get_default(write=True) or default.make_key("k") != limits.make_key("k"):
        return None
    return client


@dataclass(frozen=True)
class Counted:
    """What read_counting found: the token read, the counter's value after this request's
    event (None: not counted, the token is revoked or not cached), and whether the marker
    was there (None: not asked for)."""

    read: Read
    count: int | None
    marker: bool | None


def read_counting(
    digest: str, *, counter_key: str, counter_ttl_ms: int, marker_key: str | None
) -> Counted | None:
    """The token read, a rate-limit event and a marker read in one round trip.

    None when that is not possible (cache off, not Redis, two servers) or Redis failed: the
    caller then reads, counts and checks the marker one by one, each with its own way of
    degrading (a miss, fail-open or closed, the primary).
    """
    global _read_counting_script
    if not _enabled():
        return None
    client = _shared_client()
    if client is None:
        return None
    make_key = caches["default"].make_key
    keys = [
        make_key(_tombstone_key(digest)),
        make_key(_key(digest)),
        make_key(_user_version_key(digest)),
        make_key(_user_key(digest)),
        make_key(counter_key),
    ]
    if marker_key is not None:
        keys.append(make_key(marker_key))
    try:
        if _read_counting_script is None:
            _read_counting_script = client.register_script(_READ_COUNTING)
        values = _read_counting_script(keys=keys, args=[counter_ttl_ms], client=client)
        read = _decode(values[:4], caches["default"].client.decode)
    except Exception as exc:
        logger.warning("token cache and rate limit read failed, reading them apart: %s", exc)
        return None
    count, marker = values[4], values[5] if len(values) > 5 else None
    return Counted(
        read,
        None if count is None else int(count),
        None if marker_key is None else bool(marker),
    )


def user_add(digest: str, user, *, version: str | None) -> None:
    """Store a user snapshot read from the primary, under the version read before it."""
    if not _enabled():
        return
    snapshot = _without_password(user)
    try:
        cache.set(_user_key(digest), (version, snapshot), timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token user cache fill failed: %s", exc)


def _without_password(user):
    """A copy whose password is a deferred field: the hash stays out of the cache, and
    whoever needs it (a password change) loads it from the database."""
    copy = user.__class__.__new__(user.__class__)
    copy.__dict__ = {key: value for key, value in user.__dict__.items() if key != "password"}
    return copy


def users_changed(digests: list[str]) -> None:
    """Outdate the user snapshots of these tokens on every node (after the change commits)."""
    if not _enabled() or not digests:
        return
    version = uuid.uuid4().hex
    try:
        # Outlives any snapshot stored by a request in flight (as tombstones do).
        cache.set_many(
            {_user_version_key(digest): version for digest in digests},
            timeout=2 * settings.TOKEN_CACHE_SECONDS,
        )
        cache.delete_many([_user_key(digest) for digest in digests])
    except Exception as exc:
        logger.error("token user snapshots not outdated: %s", exc)


def add(digest: str, facts) -> None:
    """Fill an empty entry after a read of the primary."""
    if not _enabled():
        return
    try:
        cache.add(_key(digest), facts, timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token cache fill failed: %s", exc)


def replace(digest: str, facts) -> None:
    """Refresh an entry (after last_used_at moved); a tombstone still wins over it."""
    if not _enabled():
        return
    try:
        cache.set(_key(digest), facts, timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token cache refresh failed: %s", exc)


def forget(digests: list[str]) -> None:
    """Tombstone revoked tokens on every node at once."""
    if not _enabled() or not digests:
        return
    try:
        # Twice the entry lifetime: an entry written by a request in flight at revocation
        # expires before its tombstone does.
        cache.set_many(
            {_tombstone_key(digest): REVOKED for digest in digests},
            timeout=2 * settings.TOKEN_CACHE_SECONDS,
        )
        cache.delete_many([_key(digest) for digest in digests] + [_user_key(d) for d in digests])
    except Exception as exc:
        # The primary already says revoked; entries expire within TOKEN_CACHE_SECONDS.
        logger.error("token cache tombstones not written: %s", exc)
