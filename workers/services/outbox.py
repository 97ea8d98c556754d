"""Recording: one outbox row per event, written in the caller's transaction.

A rolled-back event notifies nobody; delivery is asked for with ``transaction.on_commit``.
A unique ``dedupe_key`` makes each event idempotent: two beat processes, a retried request
or a job run twice write one row.

Asking for delivery now ("the kick"): on a Redis broker the committed row's id is LPUSHed
onto a plain list next to the broker's queues (``KICK_KEY``, one command), and every
Celery worker's dispatcher (workers/dispatch.py) turns ids popped from it into delivery
tasks. Publishing the task itself from the request cost about a tenth of a booking's CPU
(kombu's message building, routing and producer pool). The kick is only a hint: a lost
one (Redis down, a worker killed between pop and publish) leaves the row ``pending`` and
the outbox sweeper enqueues it (NOTIFICATION_RENUDGE_SECONDS after ``nudged_at``). Eager
tasks, another broker, and deliveries counted down (quiet hours, retries) still go through
Celery directly.

The delivery task is enqueued by its registered name, not imported: workers.tasks imports
these services, never the other way round.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

import redis
from celery import current_app, signature
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from workers.models import Notification, NotificationChannel, NotificationStatus
from workers.services.preferences import preference_of, quiet_hours_end, user_timezone

logger = logging.getLogger("medease.notifications")

DELIVERY_TASK = "workers.deliver_notification"
# The list of notification ids waiting for a dispatcher, under the broker's key prefix.
KICK_KEY = "medease:outbox:kick"
# A kick gives up fast: the row is committed and the sweeper has it anyway.
KICK_SOCKET_TIMEOUT = 0.5

_kick_clients: dict[str, redis.Redis] = {}
# notification_record's default: read the user's preferences itself.
LOOK_UP = object()


def kick_location(app=None) -> tuple[str, str] | None:
    """The broker's Redis URL and the kick list's key there; None when there is no such
    list (eager tasks, or a broker that is not one Redis server)."""
    conf = (app or current_app).conf
    if conf.task_always_eager:
        return None
    url = conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://", "unix://")) or ";" in url:
        return None
    prefix = (conf.broker_transport_options or {}).get("global_keyprefix") or ""
    return url, f"{prefix}{KICK_KEY}"


def kick_target(app=None) -> tuple[redis.Redis, str] | None:
    """A client of the broker's Redis for kicks (short timeouts), and the kick list's key."""
    location = kick_location(app)
    if location is None:
        return None
    url, key = location
    client = _kick_clients.get(url)
    if client is None:
        # Thread-safe (a pool of connections); one per broker for the process.
        client = _kick_clients.setdefault(
            url,
            redis.Redis.from_url(
                url,
                socket_timeout=KICK_SOCKET_TIMEOUT,
                socket_connect_timeout=KICK_SOCKET_TIMEOUT,
            ),
        )
    return client, key


def kick_delivery(notification_id: int) -> None:
    """Ask for delivery now: one LPUSH for the workers' dispatchers (Celery's publish when
    there is no kick list)."""
    target = kick_target()
    if target is None:
        enqueue_delivery(notification_id)
        return
    client, key = target
    try:
        client.lpush(key, notification_id)
    except Exception:  # Redis down: the row is committed and the sweeper enqueues it later.
        logger.warning(
            "could not kick notification %s; the outbox sweeper will",
            notification_id,
            exc_info=True,
        )


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
    preference=LOOK_UP,
    new_key: bool = False,
) -> Notification | None:
    """Write one outbox row in the current transaction; None when the key exists already.

    A muted kind is recorded as ``skipped`` (the list shows what was held back); quiet
    hours move ``next_attempt_at`` to their end. ``expires_at``: never deliver after it.
    ``preference``: the user's NotificationPreference or None, when the caller has read
    it already (one query less). ``new_key``: the key names a row the caller created in
    this transaction, so no other row can hold it: no savepoint around the INSERT.
    """
    now = now or timezone.now()
    if preference is LOOK_UP:
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
    if new_key:
        notification.save(force_insert=True)
    else:
        try:
            # A savepoint: a duplicate key rolls back this insert only, not the caller's
            # event. Two concurrent writers of one key: the second waits on the unique
            # index and gets IntegrityError once the first commits.
            with transaction.atomic():
                notification.save(force_insert=True)
        except IntegrityError:
            if Notification.objects.filter(dedupe_key=notification.dedupe_key).exists():
                return None
            raise
    if enqueue:
        if countdown is None:
            transaction.on_commit(partial(kick_delivery, notification.pk), robust=True)
        else:
            enqueue_on_commit(notification.pk, countdown)
    return notification
