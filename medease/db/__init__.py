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

The package's modules, in the order they depend on each other: ``replicas`` (which aliases
are replicas, quarantine marks), ``monitor`` (:class:`ReplicaMonitor`, healthy replicas),
``state`` (request/task pinning, read-your-writes marks), ``tracking`` (query counts,
failure detection), ``router`` (:class:`PrimaryReplicaRouter`) and ``middleware``
(:class:`ReadYourWritesMiddleware`). Callers import from ``medease.db``; the names below
are the very objects of those modules (process state such as ``_replica_skip_until``
exists once), so patch a function where it is used, in its own module.
"""

from __future__ import annotations

from medease.db.middleware import (
    DIAGNOSTICS_HEADER,
    DIAGNOSTICS_RECOVERY_HEADER,
    DIAGNOSTICS_SELECTS_HEADER,
    PRIMARY_PATH_PREFIXES,
    SAFE_METHODS,
    ReadYourWritesMiddleware,
)
from medease.db.monitor import (
    ReplicaMonitor,
    ReplicaStatus,
    healthy_replicas,
    monitor,
    replica_status,
)
from medease.db.replicas import (
    PRIMARY,
    _replica_lock,
    _replica_skip_until,
    mark_replica_healthy,
    mark_replica_unhealthy,
    replica_aliases,
)
from medease.db.router import WRITE_ONLY_MODELS, PrimaryReplicaRouter
from medease.db.state import (
    _MARKER_CACHE,
    RECENT_WRITE_COOKIE,
    _local,
    marker_key_to_read,
    note_write,
    pin_if_marked,
    pin_if_user_wrote_recently,
    primary_forced,
    remember_recent_write,
    use_primary,
)
from medease.db.tracking import _failure_is_the_servers, queries_by_alias

__all__ = [
    "DIAGNOSTICS_HEADER",
    "DIAGNOSTICS_RECOVERY_HEADER",
    "DIAGNOSTICS_SELECTS_HEADER",
    "PRIMARY",
    "PRIMARY_PATH_PREFIXES",
    "RECENT_WRITE_COOKIE",
    "SAFE_METHODS",
    "WRITE_ONLY_MODELS",
    "_MARKER_CACHE",
    "PrimaryReplicaRouter",
    "ReadYourWritesMiddleware",
    "ReplicaMonitor",
    "ReplicaStatus",
    "_failure_is_the_servers",
    "_local",
    "_replica_lock",
    "_replica_skip_until",
    "healthy_replicas",
    "mark_replica_healthy",
    "mark_replica_unhealthy",
    "marker_key_to_read",
    "monitor",
    "note_write",
    "pin_if_marked",
    "pin_if_user_wrote_recently",
    "primary_forced",
    "queries_by_alias",
    "remember_recent_write",
    "replica_aliases",
    "replica_status",
    "use_primary",
]
