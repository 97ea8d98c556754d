"""Rate limits kept in the shared cache (Redis in production), so they hold across nodes.

Each limit is named in ``settings.RATE_LIMITS`` as ``(rate, fail_open)``. When the cache
cannot be reached a fail-open limit lets the request through and a fail-closed one answers
503 (see docs/adr/0003-rate-limits.md for which is which and why).

Fixed windows, counted in Redis: counting an event is one round trip (a Lua script that
increments the counter and sets its expiry when it created it), checking one is a GET. The
``api_user`` event of a bearer-token request is counted in the token look-up's own round
trip (accounts.token_cache.read_counting) when it can be; ApiUserThrottle then only decides.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from rest_framework.throttling import BaseThrottle

from medease import redis_line
from medease.exceptions import RateLimited, ServiceUnavailable

logger = logging.getLogger("medease.ratelimit")

KeyFunc = Callable[[str, object], str]
_UNAVAILABLE = "This action is temporarily unavailable (rate limiting is down). Try again shortly."


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _trusted(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request) -> str:
    """The client address: the one function rate limits, audit rows and sockets use.

    ``X-Forwarded-For`` is believed only when the direct peer is in TRUSTED_PROXIES; then
    the client is the right-most hop that is not itself a trusted proxy (hops to its left
    were written by the client and prove nothing).
    """
    peer = request.META.get("REMOTE_ADDR") or "unknown"
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            # A malformed hop where a proxy should have written an address: trust nothing.
            return hop if _is_ip(hop) else peer
    # Every hop is a trusted proxy (an internal client): the left-most one is closest to it.
    return hops[0] if hops else peer


_PERIODS = {"s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60}
_RATE_RE = re.compile(r"^(\d+)/(\d*)([smhd]?)$")
# A counter outlives its window by a few seconds, so a late increment still finds it.
_EXPIRY_FUDGE_SECONDS = 5
# One round trip per counted event: the increment, and the expiry when it created the key.
_INCREMENT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""
_increment_script: Script | None = None


@functools.lru_cache(maxsize=64)
def _split_rate(rate: str) -> tuple[int, int]:
    """``"20/10s"`` -> (20, 10): events allowed, window in seconds."""
    match = _RATE_RE.match(rate.strip())
    if match is None:
        raise ValueError(f"bad rate {rate!r}: expected e.g. 10/15m")
    count, multiplier, unit = match.groups()
    return int(count), _PERIODS[unit or "s"] * int(multiplier or 1)


def _window_end(value: str, period: int, now: int) -> int:
    """When the current fixed window of this key ends.

    The windows of django-ratelimit, which these limits used before (docs/adr/0003): aligned
    on the epoch, shifted per key by a stable jitter so that all windows do not end at once.
    """
    if period == 1:
        return now
    end = now - (now % period) + (zlib.crc32(value.encode()) % period)
    return end + period if end < now else end


@functools.lru_cache(maxsize=4096)  # a user's sends in one window share their key
def _counter_key(name: str, rate: tuple[int, int], value: str, window: int) -> str:
    # Hashed: key values can be e-mail addresses, which stay out of Redis key names. The
    # same key as django-ratelimit's, so counters carry over a rolling deploy.
    digest = hashlib.sha256(f"{name}{rate[0]}/{rate[1]}s{value}{window}".encode()).hexdigest()
    return "rl:" + digest


def _redis_client(cache):
    """The raw Redis client behind a django-redis cache (None for other backends)."""
    client = getattr(cache, "client", None)
    get_client = getattr(client, "get_client", None)
    return get_client(write=True) if get_client is not None else None


def _count(key: str, *, increment: bool, period: int) -> int:
    """The counter's value after adding 1 (``increment``) or 0, in one round trip."""
    global _increment_script
    cache = caches[settings.RATELIMIT_USE_CACHE]
    client = _redis_client(cache)
    if client is None:  # the local-memory cache of development without Redis
        ttl = period + _EXPIRY_FUDGE_SECONDS
        if cache.add(key, int(increment), ttl):
            return int(increment)
        return cache.incr(key) if increment else int(cache.get(key, 0))
    full_key = cache.make_key(key)
    if not increment:
        value = client.get(full_key)
        return int(value) if value is not None else 0
    if _increment_script is None:
        _increment_script = client.register_script(_INCREMENT)
    ttl_ms = (period + _EXPIRY_FUDGE_SECONDS) * 1000
    return int(_increment_script(keys=[full_key], args=[1, ttl_ms], client=client))


@dataclass(frozen=True)
class Counter:
    """One limit's counter for one key in the current window (what an event counts into)."""

    name: str
    key: str  # the cache key, before the cache's prefix
    limit: int
    period: int
    window: int
    now: int
    fail_open: bool

    @property
    def ttl_ms(self) -> int:
        return (self.period + _EXPIRY_FUDGE_SECONDS) * 1000

    def usage(self, count: int) -> dict:
        return {
            "count": count,
            "limit": self.limit,
            "should_limit": count > self.limit,
            "time_left": self.window - self.now,
        }


def counter(name: str, value: str) -> Counter | None:
    """The counter an event of limit ``name`` for ``value`` goes to (None: limits are off)."""
    if not settings.RATELIMIT_ENABLE:
        return None
    rate, fail_open = settings.RATE_LIMITS[name]
    limit, period = parsed = _split_rate(rate)
    now = int(time.time())
    window = _window_end(value, period, now)
    key = _counter_key(name, parsed, value, window)
    return Counter(name, key, limit, period, window, now, fail_open)


def _usage(request, *, name: str, key: KeyFunc, increment: bool) -> dict | None:
    if not settings.RATELIMIT_ENABLE:
        return None
    limit = counter(name, key(name, request))
    try:
        count = _count(limit.key, increment=increment, period=limit.period)
    except Exception as exc:  # Redis down or timing out: decide per limit.
        return _unavailable(limit, exc)
    return limit.usage(count)


def _unavailable(limit: Counter, exc: Exception) -> None:
    """The cache could not count: let the event through (fail-open) or raise 503."""
    if limit.fail_open:
        logger.warning("rate limit %s skipped, cache unavailable: %s", limit.name, exc)
        return None
    logger.error("rate limit %s failed closed, cache unavailable: %s", limit.name, exc)
    raise ServiceUnavailable(_UNAVAILABLE) from exc


_INCREMENT_SHA = hashlib.sha1(_INCREMENT.encode()).hexdigest()  # noqa: S324 - Redis's name for it


# The rate-limit cache's backends that keep counters in Redis (medease.redis_clients wraps
# django-redis's).
_REDIS_BACKENDS = ("django_redis.", "medease.redis_clients.")


@functools.cache
def _make_key():
    # The cache's own make_key (prefix, version, key function), from the process's first
    # cache object: looking the cache up per call costs a context-local read each time.
    return caches[settings.RATELIMIT_USE_CACHE].make_key


async def ahit(request, *, name: str, key: KeyFunc) -> None:
    """:func:`hit` from the event loop, without a thread (a chat socket's send): the same
    counter, script and fail-open or fail-closed rule, on the loop's line to that Redis
    (medease.redis_line: EVALSHA without redis-py's per-command wrapping)."""
    if not settings.RATELIMIT_ENABLE:
        return
    cache = settings.CACHES[settings.RATELIMIT_USE_CACHE]
    if not cache["BACKEND"].startswith(_REDIS_BACKENDS):  # no I/O to wait for
        return hit(request, name=name, key=key)
    limit = counter(name, key(name, request))
    # django-redis writes to the first of its servers.
    location = cache["LOCATION"]
    first = location.split(",")[0] if isinstance(location, str) else location[0]
    redis = redis_line.line(first, timeout=settings.CACHE_SOCKET_TIMEOUT)
    args = ("EVALSHA", _INCREMENT_SHA, 1, _make_key()(limit.key), 1, limit.ttl_ms)
    try:
        try:
            count = int(await redis.call(*args))
        except NoScriptError:  # a Redis that has not seen the script yet (or restarted)
            await redis.call("SCRIPT", "LOAD", _INCREMENT)
            count = int(await redis.call(*args))
    except Exception as exc:  # Redis down or timing out: decide per limit.
        return _unavailable(limit, exc)
    usage = limit.usage(count)
    if usage["should_limit"]:
        raise RateLimited(retry_after=usage["time_left"])


def check(request, *, name: str, key: KeyFunc) -> None:
    """Raise RateLimited if the limit is already used up (without counting this call)."""
    usage = _usage(request, name=name, key=key, increment=False)
    if usage and usage["count"] >= usage["limit"]:
        raise RateLimited(retry_after=usage["time_left"])


def hit(request, *, name: str, key: KeyFunc) -> None:
    """Count one event against the limit; raise RateLimited if that goes over it."""
    usage = _usage(request, name=name, key=key, increment=True)
    if usage and usage["should_limit"]:
        raise RateLimited(retry_after=usage["time_left"])


def count(request, *, name: str, key: KeyFunc) -> None:
    """Count one event without raising (e.g. a failed login after the answer is decided)."""
    with contextlib.suppress(ServiceUnavailable):
        _usage(request, name=name, key=key, increment=True)


def by_ip(group: str, request) -> str:
    return client_ip(request)


def by_user(group: str, request) -> str:
    return str(request.user.pk)


# Set on the DRF request, to the event's usage, by an authentication that already counted
# its api_user event (accounts.authentication counts it in the token look-up's round trip).
API_USER_COUNTED = "_medease_api_user_usage"


class ApiUserThrottle(BaseThrottle):
    """DRF throttle: the general per-user API budget (``RATE_LIMITS["api_user"]``)."""

    def allow_request(self, request, view):
        if not request.user or not request.user.is_authenticated:
            return True
        usage = getattr(request, API_USER_COUNTED, None)
        if usage is None:
            hit(request, name="api_user", key=by_user)
        elif usage["should_limit"]:
            raise RateLimited(retry_after=usage["time_left"])
        return True
