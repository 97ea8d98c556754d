"""Readiness checks for /health/ready: each dependency with its latency.

Each check is bounded by a short timeout so a dead dependency makes the endpoint answer
503 quickly instead of hanging the load balancer's probe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from medease import db as db_routing

CHECK_TIMEOUT_SECONDS = 2


def _timed(check: Callable[[], dict | None]) -> dict:
    started = time.perf_counter()
    try:
        extra = check() or {}
        result = {"status": "ok", **extra}
    except Exception as exc:  # Any failure of a dependency is a "down", reported as text.
        result = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _check_primary() -> dict:
    with connections[db_routing.PRIMARY].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"engine": connections[db_routing.PRIMARY].vendor}


def replica_lag_seconds(alias: str) -> float:
    """Probe the replica now (its own connection, never the request pool's wait)."""
    status = db_routing.replica_status(alias, refresh=True)
    if status is None or not status.reachable:
        raise RuntimeError(status.error if status else "replica not probed")
    return float(status.lag_seconds or 0.0)


def _check_replica(alias: str) -> Callable[[], dict]:
    # The replica monitor (medease/db.py) takes a lagging or unreachable replica out of
    # rotation and puts it back; this check only reports what a fresh probe finds.
    def check() -> dict:
        status = db_routing.replica_status(alias, refresh=True)
        if status is None or not status.reachable:
            raise RuntimeError(status.error if status else "replica not probed")
        if status.lag_seconds > settings.MAX_REPLICA_LAG:
            raise RuntimeError(
                f"lag {status.lag_seconds:.1f}s exceeds MAX_REPLICA_LAG "
                f"{settings.MAX_REPLICA_LAG:.1f}s"
            )
        result = {
            "lag_seconds": round(status.lag_seconds, 3),
            "in_rotation": alias in db_routing.healthy_replicas(),
        }
        if status.error:
            result["warning"] = status.error
        return result

    return check


def _check_cache() -> None:
    # The rate-limit cache raises on errors (the default cache hides them by design).
    cache = caches["ratelimit"]
    key = f"health:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("cache did not return the value just written")
    cache.delete(key)


def _check_channel_layer() -> dict:
    layer = get_channel_layer()

    async def roundtrip() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT_SECONDS)
        if message.get("type") != "health.ping":
            raise RuntimeError("channel layer returned an unexpected message")

    async_to_sync(roundtrip)()
    return {"backend": type(layer).__name__}


def _check_broker() -> dict:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
        transport = conn.transport_cls
    return {"transport": str(transport)}


def readiness() -> tuple[bool, dict]:
    """Run every check; ready when all required ones are ok (replicas are optional)."""
    checks: dict[str, dict] = {"database": _timed(_check_primary)}
    for alias in db_routing.replica_aliases():
        checks[alias] = {**_timed(_check_replica(alias)), "required": False}
    checks["cache"] = _timed(_check_cache)
    checks["channel_layer"] = _timed(_check_channel_layer)
    checks["broker"] = _timed(_check_broker)
    ready = all(
        result["status"] == "ok" for result in checks.values() if result.get("required", True)
    )
    return ready, checks
