"""The base of every MedEase Celery task, and the decorator that declares one.

Tasks are thin adapters (take ids, call one service) and safe to run twice: messages are
acknowledged late and redelivered when a worker dies, so any task may run again after a
partial run. Work is claimed in the database, never by trusting the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from medease import db as db_routing

QUEUES = ("default", "notifications", "maintenance")


class MedEaseTask(Task):
    """Late acknowledgement, retries with jittered backoff on database hiccups, primary reads."""

    acks_late = True
    reject_on_worker_lost = True
    # A database that is briefly unreachable (failover, pool exhausted) is worth retrying;
    # anything else is a bug and is logged, not retried blindly.
    autoretry_for = (OperationalError, InterfaceError)
    retry_backoff = 5
    retry_jitter = True
    max_retries = 5
    ignore_result = True
    soft_time_limit = 90
    time_limit = 120

    @property
    def retry_backoff_max(self) -> int:
        # Never count down past what the broker's visibility timeout allows.
        return int(settings.CELERY_MAX_COUNTDOWN_SECONDS)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A task reads what it (or the request that enqueued it) just wrote: replicas may
        # lag behind, so tasks read the primary.
        with db_routing.use_primary():
            return super().__call__(*args, **kwargs)


def medease_task(*, name: str, queue: str, **options: Any) -> Callable:
    """Declare a task with an explicit name and queue (both required, so routing is visible)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; use one of {QUEUES}")
    return shared_task(name=name, queue=queue, base=MedEaseTask, bind=False, **options)
