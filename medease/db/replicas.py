"""Which database aliases are replicas, and which are quarantined after a failure.

The quarantine (:data:`_replica_skip_until`) is process-wide state: one dict, mutated in
place, that the monitor, the router and the query tracker all consult.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import ConnectionDoesNotExist

logger = logging.getLogger("medease.db")

PRIMARY = DEFAULT_DB_ALIAS

# Process-wide state for replicas: alias → monotonic time until which it is skipped after
# a query or connection failed on it.
_replica_skip_until: dict[str, float] = {}
_replica_lock = threading.Lock()


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
