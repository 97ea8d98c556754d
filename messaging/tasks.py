"""Chat's periodic jobs (adapters: they only call services)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from messaging import services


@shared_task(
    name="messaging.ensure_partitions",
    queue="maintenance",
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=45,
    time_limit=60,
)
def ensure_partitions() -> list[str]:
    """Keep monthly message partitions ahead (idempotent; overlapping runs are safe)."""
    return services.message_partitions_ensure()
