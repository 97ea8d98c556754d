"""Celery tasks of the workers app: thin adapters over workers.services, safe to run twice."""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings

from workers import dispatch, services
from workers.base import medease_task

# Imported for its signal handlers: every worker runs the outbox kick's dispatcher.
__all__ = ["deliver_notification", "dispatch", "sweep_outbox"]


@medease_task(
    name="workers.deliver_notification",
    queue="notifications",
    soft_time_limit=settings.NOTIFICATION_TASK_TIME_LIMIT * 0.8,
    time_limit=settings.NOTIFICATION_TASK_TIME_LIMIT,
)
def deliver_notification(notification_id: int) -> str:
    """Deliver one outbox row; the service claims it, so a duplicate message sends nothing."""
    return services.notification_deliver(notification_id=notification_id).value


@medease_task(name="workers.sweep_outbox", queue="maintenance")
def sweep_outbox() -> dict:
    """Recover rows stuck past their lease and re-enqueue due rows nobody is delivering."""
    return asdict(services.outbox_sweep())
