"""The Django database router: writes to the primary, reads to a healthy replica when safe."""

from __future__ import annotations

import random

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from medease.db.monitor import healthy_replicas
from medease.db.replicas import (
    PRIMARY,
    _is_primary_itself,
    mark_replica_unhealthy,
    replica_aliases,
)
from medease.db.state import _primary_forced, note_write

# Append-only records that no request reads back (the PHI audit log, written on every
# PHI read). Writing one does not make the request, or its user for
# READ_YOUR_WRITES_SECONDS, read the primary: otherwise every audited read would pin its
# reader to the primary and the replicas would serve almost nothing.
WRITE_ONLY_MODELS = frozenset({"medease.AuditEvent"})


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
