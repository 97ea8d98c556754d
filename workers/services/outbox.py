"""Recording: one outbox row per event, written in the caller's transaction.

A rolled-back event notifies nobody; the delivery task is enqueued with
``transaction.on_commit``. A unique ``dedupe_key`` makes each event idempotent: two beat
processes, a retried request or a job run twice write one row.

The delivery task is enqueued by its registered name, not imported: workers.tasks imports
these services, never the other way round.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

from celery import signature
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from workers.models import Notification, NotificationChannel, NotificationStatus
from workers.services.preferences import preference_of, quiet_hours_end, user_timezone

logger = logging.getLogger("medease.notifications")

DELIVERY_TASK = "workers.deliver_notification"


def enqueue_delivery(notification_id: int, countdown: float | None = None) -> None:
    """Ask a worker to deliver one row now (or after ``countdown`` seconds)."""
    try:
        # A signature by name runs the registered task (eagerly too, in tests) and falls
        # back to a plain send when this process has not imported workers.tasks.
        signature(DELIVERY_TASK, args=[notification_id], countdown=countdown).apply_async()
    except Exception:  # Broker down: the row is committed and the sweeper enqueues it later.
        logger.warning(
            "could not enqueue notification %s; the outbox sweeper will",
            notification_id,
            exc_info=True,
        )


def enqueue_on_commit(notification_id: int, countdown: float | None = None) -> None:
    """Enqueue delivery once the current transaction commits (at once outside one)."""
    transaction.on_commit(partial(enqueue_delivery, notification_id, countdown), robust=True)


def nudge_plan(*, due_at: datetime, now: datetime) -> tuple[bool, float | None, datetime | None]:
    """Whether to enqueue delivery now, with which countdown, and the matching ``nudged_at``.

    Work due further ahead than CELERY_MAX_COUNTDOWN_SECONDS is not counted down (the
    broker would redeliver it early); the sweeper enqueues it when it is due.
    """
    delay = (due_at - now).total_seconds()
    if delay > settings.CELERY_MAX_COUNTDOWN_SECONDS:
        return False, None, None
    return True, (delay if delay > 0 else None), max(due_at, now)


def notification_record(
    *,
    user,
    kind: str,
    dedupe_key: str,
    payload: dict,
    consultation_id: int | None = None,
    expires_at: datetime | None = None,
    channel: str = NotificationChannel.EMAIL,
    now: datetime | None = None,
) -> Notification | None:
    """Write one outbox row in the current transaction; None when the key exists already.

    A muted kind is recorded as ``skipped`` (the list shows what was held back); quiet
    hours move ``next_attempt_at`` to their end. ``expires_at``: never deliver after it.
    """
    now = now or timezone.now()
    preference = preference_of(user)
    status = NotificationStatus.PENDING
    last_error = ""
    if preference is not None and preference.is_muted(kind):
        status, last_error = NotificationStatus.SKIPPED, "muted by the user"
    due_at = quiet_hours_end(preference=preference, tz=user_timezone(user), now=now) or now
    enqueue, countdown, nudged_at = nudge_plan(due_at=due_at, now=now)
    if status != NotificationStatus.PENDING:
        enqueue, countdown, nudged_at = False, None, None
    notification = Notification(
        user=user,
        kind=kind,
        channel=channel,
        payload=payload,
        dedupe_key=dedupe_key[:200],
        consultation_id=consultation_id,
        status=status,
        last_error=last_error,
        created_at=now,
        next_attempt_at=due_at,
        expires_at=expires_at,
        nudged_at=nudged_at,
    )
    try:
        # A savepoint: a duplicate key rolls back this insert only, not the caller's event.
        # Two concurrent writers of one key: the second waits on the unique index and
        # gets IntegrityError once the first commits.
        with transaction.atomic():
            notification.save(force_insert=True)
    except IntegrityError:
        if Notification.objects.filter(dedupe_key=notification.dedupe_key).exists():
            return None
        raise
    if enqueue:
        enqueue_on_commit(notification.pk, countdown)
    return notification
