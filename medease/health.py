"""Readiness checks for /health/ready: each dependency with its latency.

Each check is bounded by a short timeout so a dead dependency makes the endpoint answer
503 quickly instead of hanging the load balancer's probe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import psycopg
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from medease import db as db_routing

CHECK_TIMEOUT_SECONDS = 2

# How far behind the primary a replica is: 0 when it has replayed all it received.
REPLICA_LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END
"""


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
    """Connect directly (not through the pool, which would wait its full timeout)."""
    params = settings.DATABASES[alias]
    with psycopg.connect(
        dbname=params["NAME"],
        user=params.get("USER") or None,
        password=params.get("PASSWORD") or None,
        host=params.get("HOST") or None,
        port=params.get("PORT") or None,
        connect_timeout=CHECK_TIMEOUT_SECONDS,
    ) as conn:
        in_recovery, lag = conn.execute(REPLICA_LAG_SQL).fetchone()
    if not in_recovery:
        raise RuntimeError("server is not in recovery (not a replica)")
    return float(lag)


def _check_replica(alias: str) -> Callable[[], dict]:
    def check() -> dict:
        lag = replica_lag_seconds(alias)
        if lag > settings.MAX_REPLICA_LAG:
            db_routing.mark_replica_unhealthy(alias, reason=f"lag {lag:.1f}s")
            raise RuntimeError(f"lag {lag:.1f}s exceeds MAX_REPLICA_LAG")
        db_routing.mark_replica_healthy(alias)
        return {"lag_seconds": round(lag, 3)}

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
