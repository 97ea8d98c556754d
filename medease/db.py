"""Primary/replica routing with read-your-writes and replica health.

Writes always go to the primary (``default``). Reads go to a healthy replica from
``DATABASE_REPLICA_URLS`` unless one of these holds, in which case they read the primary:

* the code is inside an atomic block (a transaction must see its own writes);
* the current request (or Celery task) has written already;
* the same user wrote within ``READ_YOUR_WRITES_SECONDS`` (a marker in the shared cache,
  or a short-lived cookie for browser sessions); when the cache cannot say, the primary;
* a Celery task was enqueued by code that had written (see medease/celery_routing.py);
* the request is an authentication one (``PRIMARY_PATH_PREFIXES``);
* the code asked for it with :func:`use_primary`.

Replica health, per process:

* a :class:`ReplicaMonitor` thread probes every replica each ``REPLICA_CHECK_INTERVAL``
  seconds (one dedicated connection per server, never the request pools) and measures
  its lag against the primary's WAL position; a replica that is unreachable or further
  behind than ``MAX_REPLICA_LAG`` leaves the rotation at the next probe and comes back
  at the first probe that finds it healthy again;
* the router opens the replica connection itself, before handing out the alias, so a
  replica that refuses connections costs one short ``DATABASE_REPLICA_TIMEOUT`` wait and
  the read goes to the primary instead of failing;
* a query that fails on a replica with a connection error quarantines that replica for
  ``REPLICA_RETRY_SECONDS``, and :class:`ReadYourWritesMiddleware` answers a safe
  (GET/HEAD) request that failed that way by running it once more on the primary.

With no healthy replica every read uses the primary. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.db.utils import ConnectionDoesNotExist, InterfaceError, OperationalError

from medease import context

logger = logging.getLogger("medease.db")

PRIMARY = DEFAULT_DB_ALIAS
RECENT_WRITE_COOKIE = "medease_rw"
_RECENT_WRITE_KEY = "rw:user:{user_id}"
# The cache alias whose errors surface (the default one hides them by design): a
# read-your-writes marker we cannot read must pin to the primary, not look like "no write".
_MARKER_CACHE = "ratelimit"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DIAGNOSTICS_HEADER = "X-DB-Queries"
DIAGNOSTICS_SELECTS_HEADER = "X-DB-Selects"
DIAGNOSTICS_RECOVERY_HEADER = "X-DB-Recovery"

# Append-only records that no request reads back (the PHI audit log, written on every
# PHI read). Writing one does not make the request, or its user for
# READ_YOUR_WRITES_SECONDS, read the primary: otherwise every audited read would pin its
# reader to the primary and the replicas would serve almost nothing.
WRITE_ONLY_MODELS = frozenset({"medease.AuditEvent"})

# Requests under these paths read only the primary. Authentication decides on the current
# password, active flag and tokens, never on a replica's older copy (a password changed or
# an account disabled a moment ago), and a login usually follows a sign-up made a moment
# earlier by a client that has no token yet to be recognised by.
PRIMARY_PATH_PREFIXES = ("/api/v1/auth/", "/admin/login/")

# Process-wide state for replicas: alias → monotonic time until which it is skipped after
# a query or connection failed on it.
_replica_skip_until: dict[str, float] = {}
_replica_lock = threading.Lock()
# Outside a request (shell, Celery task) this flags "read the primary" for the thread.
_local = threading.local()


# --- Which aliases are replicas, and which of them to use ----------------------------------


def replica_aliases() -> list[str]:
    return [alias for alias in settings.DATABASES if alias != PRIMARY]


def _settings_dict(alias: str) -> dict:
    try:
        return connections[alias].settings_dict
    except ConnectionDoesNotExist:  # an alias added by a test's settings override
        return settings.DATABASES[alias]


def _is_primary_itself(alias: str) -> bool:
    """True for a "replica" that is the primary's own database (tests' TEST MIRROR).

    Such an alias can never lag, so it is neither probed nor pre-connected.
    """
    replica, primary = _settings_dict(alias), _settings_dict(PRIMARY)
    if replica is primary:
        return True
    return all(replica.get(key) == primary.get(key) for key in ("HOST", "PORT", "NAME"))


def _quarantined(alias: str, now: float) -> bool:
    return _replica_skip_until.get(alias, 0) > now


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


def mark_replica_unhealthy(alias: str, *, reason: str) -> None:
    """Take a replica out of rotation for REPLICA_RETRY_SECONDS."""
    with _replica_lock:
        already = _quarantined(alias, time.monotonic())
        _replica_skip_until[alias] = time.monotonic() + settings.REPLICA_RETRY_SECONDS
    if not already:
        logger.warning("replica %s skipped: %s", alias, reason)


def mark_replica_healthy(alias: str) -> None:
    with _replica_lock:
        _replica_skip_until.pop(alias, None)


# --- The replica monitor -------------------------------------------------------------------


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


# --- Request and task state -------------------------------------------------------------


def _primary_forced() -> bool:
    state = context.current_state()
    if state is not None and state.use_primary:
        return True
    return getattr(_local, "depth", 0) > 0


def primary_forced() -> bool:
    """Whether reads here go to the primary (used to tag Celery tasks enqueued here)."""
    state = context.current_state()
    return _primary_forced() or (state is not None and state.wrote)


def note_write() -> None:
    """Record that the current request wrote: its later reads go to the primary."""
    state = context.current_state()
    if state is not None:
        state.wrote = True
        state.use_primary = True


@contextlib.contextmanager
def use_primary():
    """Read from the primary inside this block (Celery tasks, read-after-write code paths)."""
    state = context.current_state()
    if state is not None:
        previous = state.use_primary
        state.use_primary = True
        try:
            yield
        finally:
            state.use_primary = previous or state.wrote
    else:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            yield
        finally:
            _local.depth -= 1


def remember_recent_write(user_id: int) -> None:
    """Send this user's reads to the primary for READ_YOUR_WRITES_SECONDS (all nodes)."""
    if not replica_aliases():
        return
    try:
        caches[_MARKER_CACHE].set(
            _RECENT_WRITE_KEY.format(user_id=user_id),
            1,
            timeout=settings.READ_YOUR_WRITES_SECONDS,
        )
    except Exception as exc:  # Cache down: readers cannot check either, they pin anyway.
        logger.warning("read-your-writes marker not stored: %s", exc)


def pin_if_user_wrote_recently(user_id: int) -> None:
    """Called once the request's user is known (after authentication)."""
    state = context.current_state()
    if state is None or state.use_primary or not replica_aliases():
        return
    try:
        marker = caches[_MARKER_CACHE].get(_RECENT_WRITE_KEY.format(user_id=user_id))
    except Exception as exc:
        # We cannot tell whether this user just wrote, so we read where the write is.
        logger.warning("read-your-writes marker unreadable, reading the primary: %s", exc)
        marker = 1
    if marker:
        state.use_primary = True


# --- Query tracking ----------------------------------------------------------------------


def _failure_is_the_servers(exc: BaseException) -> bool:
    """A lost or refused connection, or a server shutting down (not a bad query)."""
    cause = exc.__cause__ or exc
    sqlstate = getattr(cause, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def _track_queries(execute, sql, params, many, context_):
    """Counts queries per alias for the current request, and notices replica failures."""
    alias = context_["connection"].alias
    state = context.current_state()
    if state is not None:
        counts = state.extra.setdefault("db_queries", {})
        counts[alias] = counts.get(alias, 0) + 1
        if sql.lstrip()[:6].upper() == "SELECT":
            selects = state.extra.setdefault("db_selects", {})
            selects[alias] = selects.get(alias, 0) + 1
    try:
        return execute(sql, params, many, context_)
    except (OperationalError, InterfaceError) as exc:
        if alias != PRIMARY:
            if state is not None:
                state.extra["replica_error"] = alias
            if _failure_is_the_servers(exc):
                mark_replica_unhealthy(alias, reason=f"query failed: {exc}"[:200])
        raise


def _install_query_tracking(sender, connection, **kwargs) -> None:
    if _track_queries not in connection.execute_wrappers:
        connection.execute_wrappers.append(_track_queries)


connection_created.connect(_install_query_tracking, dispatch_uid="medease.db.track_queries")


def queries_by_alias(*, selects_only: bool = False) -> dict[str, int]:
    """How many queries (or SELECTs) the current request or task ran on each alias so far."""
    state = context.current_state()
    if state is None:
        return {}
    return dict(state.extra.get("db_selects" if selects_only else "db_queries", {}))


# --- The router -------------------------------------------------------------------------


def _holds_connection(alias: str) -> bool:
    if _is_primary_itself(alias):
        return False
    return connections[alias].connection is not None


def _connectable(alias: str) -> bool:
    """Open the replica connection now, so a dead replica sends the read to the primary."""
    if _is_primary_itself(alias):
        return True
    wrapper = connections[alias]
    if wrapper.connection is not None:
        return True
    try:
        wrapper.ensure_connection()
    except (OperationalError, InterfaceError) as exc:
        mark_replica_unhealthy(alias, reason=f"cannot connect: {exc}"[:200])
        return False
    return True


class PrimaryReplicaRouter:
    """Django database router implementing the policy in this module's docstring."""

    def db_for_read(self, model, **hints):
        if not replica_aliases():
            return PRIMARY
        if _primary_forced() or connections[PRIMARY].in_atomic_block:
            return PRIMARY
        candidates = healthy_replicas()
        # Stay on a replica this request already holds a connection to: one connection
        # per request, and one replica's view of the data within a request.
        held = [alias for alias in candidates if _holds_connection(alias)]
        if held:
            return held[0]
        random.shuffle(candidates)  # load spreading, not security
        for alias in candidates:
            if _connectable(alias):
                return alias
        return PRIMARY

    def db_for_write(self, model, **hints):
        if model is None or model._meta.label not in WRITE_ONLY_MODELS:
            note_write()
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints):
        # Replicas hold the same data as the primary, so relations across aliases are fine.
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == PRIMARY


class ReadYourWritesMiddleware:
    """Pins a request to the primary when its user wrote recently, and records new writes.

    API clients are recognised by user id (after token authentication, see
    accounts.authentication); browsers also get a short-lived cookie, which covers the
    admin's post-redirect-get before the session user is loaded.

    A safe request that failed because a replica went away is run once more on the
    primary. With ``DB_ROUTING_DIAGNOSTICS`` (tests, never production) the response says
    how many queries and SELECTs ran on each alias, and whether that connection was a
    server in recovery (``pg_is_in_recovery()`` on the very connection the router used).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        state = context.current_state()
        if state is not None and (
            request.COOKIES.get(RECENT_WRITE_COOKIE)
            or request.path.startswith(PRIMARY_PATH_PREFIXES)
        ):
            state.use_primary = True
        response = self.get_response(request)
        if (
            state is not None
            and state.extra.get("replica_error")
            and request.method in SAFE_METHODS
            and not state.wrote
            and response.status_code >= 500
            and not response.streaming
        ):
            logger.warning(
                "replica %s failed during a %s: answering it from the primary",
                state.extra["replica_error"],
                request.method,
            )
            state.extra.pop("replica_error")
            state.use_primary = True
            response = self.get_response(request)
            response["X-DB-Retried"] = "primary"
        if state is not None and state.wrote and replica_aliases():
            user = getattr(request, "user", None)
            if user is not None and getattr(user, "is_authenticated", False):
                remember_recent_write(user.pk)
            response.set_cookie(
                RECENT_WRITE_COOKIE,
                "1",
                max_age=int(settings.READ_YOUR_WRITES_SECONDS) or 1,
                httponly=True,
                samesite="Lax",
            )
        if settings.DB_ROUTING_DIAGNOSTICS and state is not None:
            _add_diagnostics(response, state)
        return response


def _add_diagnostics(response, state) -> None:
    counts = dict(state.extra.get("db_queries", {}))
    selects = dict(state.extra.get("db_selects", {}))
    response[DIAGNOSTICS_HEADER] = ",".join(f"{a}={n}" for a, n in sorted(counts.items()))
    response[DIAGNOSTICS_SELECTS_HEADER] = ",".join(f"{a}={n}" for a, n in sorted(selects.items()))
    recovery = []
    for alias in sorted(counts):
        wrapper = connections[alias]
        if wrapper.vendor != "postgresql" or wrapper.connection is None:
            continue
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                recovery.append(f"{alias}={'t' if cursor.fetchone()[0] else 'f'}")
        except Exception:  # Diagnostics only; the answer itself is already decided.
            recovery.append(f"{alias}=?")
    response[DIAGNOSTICS_RECOVERY_HEADER] = ",".join(recovery)
