"""Periodic jobs of the clinic core: thin adapters over services, safe to run twice.

Each job claims its work in the database (unique slots, conditional updates), so a job run
twice, or two overlapping runs, change nothing the first run did not.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from consultations import notifications, services
from medease import db as db_routing
from workers.base import medease_task

_COMMON = {
    "queue": "maintenance",
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    # A database briefly unreachable (failover, pool exhausted) is worth retrying.
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(name="consultations.materialize_slots", soft_time_limit=540, time_limit=600, **_COMMON)
def materialize_slots() -> int:
    """Keep every active provider's slots materialized for the next N days."""
    # Reads the primary: a replica may not have the availability change that was just made.
    with db_routing.use_primary():
        return services.slots_materialize_all()


@shared_task(
    name="consultations.expire_queue_entries", soft_time_limit=90, time_limit=120, **_COMMON
)
def expire_queue_entries() -> int:
    """Expire walk-in entries that have waited longer than the stale limit."""
    with db_routing.use_primary():
        return services.queue_expire_stale()


@shared_task(name="consultations.mark_no_shows", soft_time_limit=90, time_limit=120, **_COMMON)
def mark_no_shows() -> int:
    """Mark scheduled consultations that were never started as no-shows."""
    with db_routing.use_primary():
        return services.consultations_mark_overdue_no_shows()


# The outbox's base task: late acknowledgement, primary reads, retry_backoff_max bounded by
# the broker's visibility timeout, like the other notification jobs.
@medease_task(name="consultations.send_reminders", queue="maintenance")
def send_reminders() -> int:
    """Write the 24 h and 1 h reminders that are due (each consultation and kind once)."""
    return notifications.reminders_create_due()
