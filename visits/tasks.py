"""Periodic jobs of the video visit: thin adapters over services, safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from medease import db as db_routing
from visits import services


@shared_task(
    name="visits.attribute_no_shows",
    queue="maintenance",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=90,
    time_limit=120,
    # A database briefly unreachable (failover, pool exhausted) is worth retrying.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_jitter=True,
    max_retries=5,
)
def attribute_no_shows() -> dict:
    """Past the end plus the grace: a patient who never joined a visit the provider joined
    is a no-show; a provider who never joined one the patient joined is reported."""
    with db_routing.use_primary():
        return {
            "patient_no_shows": services.visits_mark_patient_no_shows(),
            "absent_providers": services.visits_report_absent_providers(),
        }
