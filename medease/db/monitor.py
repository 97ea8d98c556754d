"""The per-process replica monitor: reachability and lag of every replica, off the request path."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import connections
from django.db.utils import ConnectionDoesNotExist

from medease.db.replicas import (
    PRIMARY,
    _is_primary_itself,
    _quarantined,
    _settings_dict,
    replica_aliases,
)

logger = logging.getLogger("medease.db")


@dataclass(frozen=True)
class ReplicaStatus:
    """What the last probe of one replica found."""

    alias: str
    reachable: bool
    lag_seconds: float | None
    checked_at: float  # time.monotonic()
    in_recovery: bool = True
    error: str = ""

    @property
    def healthy(self) -> bool:
        return (
            self.reachable
            and self.lag_seconds is not None
            and self.lag_seconds <= settings.MAX_REPLICA_LAG
        )

    def as_dict(self) -> dict:
        return {
            "reachable": self.reachable,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "in_recovery": self.in_recovery,
            "error": self.error,
            "checked_seconds_ago": round(time.monotonic() - self.checked_at, 3),
        }


# Replay position, and while WAL it has received waits to be replayed, how old the last
# transaction it replayed is (an upper bound of its staleness, NULL when it is caught up
# with what it received).
_REPLICA_PROBE_SQL = """
SELECT pg_is_in_recovery(),
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
       CASE WHEN pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
            THEN EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
       END::float8
"""
_PRIMARY_LSN_SQL = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
# Keys of Django's OPTIONS that are not libpq connection parameters.
_DJANGO_ONLY_OPTIONS = {
    "pool",
    "isolation_level",
    "assume_role",
    "server_side_binding",
    "prepare_threshold",
}


def _probe_connect(alias: str) -> psycopg.Connection:
    params = _settings_dict(alias)
    kwargs = {
        key: value
        for key, value in params.get("OPTIONS", {}).items()
        if key not in _DJANGO_ONLY_OPTIONS
    }
    kwargs.update(
        dbname=params["NAME"],
        user=params.get("USER") or None,
        password=params.get("PASSWORD") or None,
        host=params.get("HOST") or None,
        port=params.get("PORT") or None,
        connect_timeout=max(2, round(settings.DATABASE_REPLICA_TIMEOUT)),
        application_name="medease-replica-monitor",
        autocommit=True,
    )
    # A probe never hangs the monitor: the server cancels it after this long.
    kwargs["options"] = (kwargs.get("options", "") + " -c statement_timeout=2000").strip()
    return psycopg.connect(**kwargs)


class ReplicaMonitor:
    """Per-process background prober of replica reachability and lag.

    Lag is measured against the primary too: each round records the primary's flushed WAL
    position (what a replica can have received) with the time it was read, and
    :meth:`_lag` combines that with the replica's own view. Unlike
    ``now() - pg_last_xact_replay_timestamp()`` alone, this does not report a large lag
    for a replica of an idle primary, and it does see a replica whose WAL stream stopped:
    its replay position stays behind while the primary moves on.

    Started lazily by the first read that has replicas to choose from, and again in a
    forked child (Celery prefork), since threads do not survive ``fork()``.
    """

    HISTORY = 240

    def __init__(self) -> None:
        self._start_lock = threading.Lock()
        # One prober at a time: the monitor thread and /health/ready share the connections.
        self._probe_lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: dict[str, ReplicaStatus] = {}
        self._conns: dict[str, psycopg.Connection] = {}
        self._primary_history: deque[tuple[float, int]] = deque(maxlen=self.HISTORY)

    # Reading the state (request path: no I/O once running) -------------------------------

    def status(self, alias: str) -> ReplicaStatus | None:
        self.ensure_running()
        return self._status.get(alias)

    def is_healthy(self, alias: str) -> bool:
        status = self.status(alias)
        if status is None:
            return False
        # A prober that stopped reporting (thread died, network hangs) is not trusted.
        stale_after = 3 * settings.REPLICA_CHECK_INTERVAL + 2 * max(
            2.0, settings.DATABASE_REPLICA_TIMEOUT
        )
        if time.monotonic() - status.checked_at > stale_after:
            return False
        return status.healthy

    # Lifecycle -----------------------------------------------------------------------

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if self._pid is not None:
                # Forked: the parent's sockets are not ours to use or to close.
                self._conns = {}
                self._status = {}
                self._primary_history.clear()
            self._stop = threading.Event()
            # The first round runs inline so that the first read already knows the state.
            self.probe_all()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="medease-replica-monitor", daemon=True
            )
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        """Stop the thread and close its connections (tests, shutdown)."""
        with self._start_lock:
            self._stop.set()
            thread, self._thread = self._thread, None
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
            with self._probe_lock:
                for conn in self._conns.values():
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conns.clear()
                self._status.clear()
                self._primary_history.clear()
            self._pid = None

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(settings.REPLICA_CHECK_INTERVAL):
            try:
                self.probe_all()
            except Exception:  # The monitor must outlive any single failure.
                logger.exception("replica monitor round failed")

    # Probing -------------------------------------------------------------------------

    def _execute(self, alias: str, sql: str) -> tuple:
        conn = self._conns.get(alias)
        if conn is None or conn.closed:
            conn = self._conns[alias] = _probe_connect(alias)
        try:
            return conn.execute(sql).fetchone()
        except Exception:
            self._conns.pop(alias, None)
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _sample_primary(self) -> None:
        try:
            (lsn,) = self._execute(PRIMARY, _PRIMARY_LSN_SQL)
        except Exception as exc:
            logger.warning("replica monitor cannot read the primary's WAL position: %s", exc)
            return
        self._primary_history.append((time.monotonic(), int(lsn)))

    def _lag(self, replay_lsn: int | None, pending_age: float | None, now: float) -> float:
        """Seconds the replica is behind at most (two upper bounds, the smaller wins).

        * From the primary's samples: the replica holds everything the primary had
          flushed at the newest sample it has replayed, taken at ``t``: ``now - t``. This
          catches a replica whose WAL stream stopped, but is only as fine as the samples
          (a starved monitor thread samples less often and would overstate the lag).
        * From the replica, while received WAL waits to be replayed: the age of the last
          transaction it replayed (``pending_age``). Fine-grained, but blind to a stream
          that stopped, which the first bound covers.
        """
        history = self._primary_history
        if replay_lsn is None:
            return pending_age or 0.0
        if history and history[-1][1] <= replay_lsn:
            return 0.0  # it has replayed all the primary had flushed at the last sample
        bound = next((now - t for t, lsn in reversed(history) if lsn <= replay_lsn), None)
        if bound is None:
            # Behind every sample we hold: at least this far behind.
            at_least = now - history[0][0] if history else 0.0
            return max(at_least, pending_age) if pending_age is not None else at_least
        bound = max(0.0, bound)
        return min(bound, pending_age) if pending_age is not None else bound

    def _probe_one(self, alias: str) -> ReplicaStatus:
        previous = self._status.get(alias)
        try:
            in_recovery, replay_lsn, pending_age = self._execute(alias, _REPLICA_PROBE_SQL)
        except Exception as exc:
            status = ReplicaStatus(
                alias=alias,
                reachable=False,
                lag_seconds=None,
                checked_at=time.monotonic(),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
        else:
            now = time.monotonic()
            if in_recovery:
                replay = None if replay_lsn is None else int(replay_lsn)
                lag = self._lag(replay, None if pending_age is None else float(pending_age), now)
                error = ""
            else:
                # Promoted, or not a replica at all: it cannot be behind. /health/ready
                # reports it so that an operator notices the configuration.
                lag, error = 0.0, "server is not in recovery (not a replica)"
            status = ReplicaStatus(
                alias=alias,
                reachable=True,
                lag_seconds=lag,
                checked_at=now,
                in_recovery=bool(in_recovery),
                error=error,
            )
        self._status[alias] = status
        self._on_change(previous, status)
        return status

    def probe(self, alias: str) -> ReplicaStatus:
        """Probe one replica now and record the result (/health/ready)."""
        with self._probe_lock:
            self._sample_primary()
            return self._probe_one(alias)

    def probe_all(self) -> None:
        aliases = [alias for alias in replica_aliases() if not _is_primary_itself(alias)]
        if not aliases:
            return
        with self._probe_lock:
            self._sample_primary()
            for alias in aliases:
                self._probe_one(alias)

    def _on_change(self, previous: ReplicaStatus | None, status: ReplicaStatus) -> None:
        was_healthy = previous is not None and previous.healthy
        if previous is not None and status.reachable != previous.reachable:
            # Its pool may hold dead connections, or be backing off its reconnection
            # attempts for minutes: the next read gets a fresh pool instead.
            _reset_pool(status.alias)
        if previous is not None and status.healthy == was_healthy:
            return
        if status.healthy:
            logger.info("replica %s in rotation (lag %.2fs)", status.alias, status.lag_seconds)
        elif not status.reachable:
            logger.warning("replica %s out of rotation: %s", status.alias, status.error)
        else:
            logger.warning(
                "replica %s out of rotation: lag %.2fs exceeds MAX_REPLICA_LAG %.2fs",
                status.alias,
                status.lag_seconds,
                settings.MAX_REPLICA_LAG,
            )


def _reset_pool(alias: str) -> None:
    """Drop the alias's connection pool; Django creates a new one on the next connection.

    Popped before it is closed so that no thread can pick the closed pool up again in
    between; a thread holding a connection from it gets it closed when it gives it back.
    """
    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        return
    pools = getattr(type(wrapper), "_connection_pools", None)
    pool = pools.pop(alias, None) if isinstance(pools, dict) else None
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=1)


monitor = ReplicaMonitor()


def replica_status(alias: str, *, refresh: bool = False) -> ReplicaStatus | None:
    """The last probe result for a replica (a fresh probe with ``refresh``)."""
    if _is_primary_itself(alias):
        return ReplicaStatus(alias=alias, reachable=True, lag_seconds=0.0, checked_at=0.0)
    monitor.ensure_running()
    return monitor.probe(alias) if refresh else monitor.status(alias)


def healthy_replicas() -> list[str]:
    """Replicas a read may use now: not quarantined, and healthy at the last probe."""
    now = time.monotonic()
    healthy = []
    for alias in replica_aliases():
        if _quarantined(alias, now):
            continue
        if not _is_primary_itself(alias) and not monitor.is_healthy(alias):
            continue
        healthy.append(alias)
    return healthy
