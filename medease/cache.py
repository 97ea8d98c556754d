"""A per-process circuit breaker for the cache's Redis (django-redis ``REDIS_CLIENT_CLASS``).

Short socket timeouts bound each cache call, but a request makes several (the API
throttle, the read-your-writes marker, hot-read lookups, invalidations), so a Redis that
hangs instead of refusing connections would cost every request a few timeouts. After a
connection error or a timeout the breaker skips that Redis server for
``CACHE_CIRCUIT_BREAKER_SECONDS`` in this process: calls fail at once with a
``ConnectionError``, which the caches treat exactly like the outage it is (the default
cache answers a miss, a fail-closed rate limit answers 503, a fail-open one lets the
request through). The first call after that tries Redis again and closes the circuit if it
answers. See docs/adr/0004-cache-and-rate-limit-faults.md.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("medease.cache")

_FAILURES = (RedisConnectionError, RedisTimeoutError)


class CircuitBreaker:
    """Open (skipped) until a moment, per Redis server, for this process."""

    def __init__(self) -> None:
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, server: str) -> None:
        until = self._open_until.get(server)
        if until is not None and time.monotonic() < until:
            raise RedisConnectionError(
                f"Redis {server} skipped for a few seconds after a failure (circuit open)"
            )

    def failed(self, server: str, exc: BaseException) -> None:
        seconds = settings.CACHE_CIRCUIT_BREAKER_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            was_open = server in self._open_until
            self._open_until[server] = time.monotonic() + seconds
        if not was_open:
            logger.warning("Redis %s unavailable, skipped for %.1fs: %s", server, seconds, exc)

    def succeeded(self, server: str) -> None:
        if server in self._open_until:
            with self._lock:
                closed = self._open_until.pop(server, None) is not None
            if closed:
                logger.info("Redis %s answers again", server)

    def reset(self) -> None:
        with self._lock:
            self._open_until.clear()


breaker = CircuitBreaker()


def _server(pool) -> str:
    kwargs = getattr(pool, "connection_kwargs", {})
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class CircuitBreakerRedis(redis.Redis):
    """``redis.Redis`` whose commands and pipelines go through the process's breaker."""

    def execute_command(self, *args, **options):
        server = _server(self.connection_pool)
        breaker.check(server)
        try:
            result = super().execute_command(*args, **options)
        except _FAILURES as exc:
            breaker.failed(server, exc)
            raise
        breaker.succeeded(server)
        return result

    def pipeline(self, transaction=True, shard_hint=None):
        return CircuitBreakerPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class CircuitBreakerPipeline(Pipeline):
    def execute(self, raise_on_error=True):
        server = _server(self.connection_pool)
        breaker.check(server)
        try:
            result = super().execute(raise_on_error=raise_on_error)
        except _FAILURES as exc:
            breaker.failed(server, exc)
            raise
        breaker.succeeded(server)
        return result
