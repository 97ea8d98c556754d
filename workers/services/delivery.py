"""Delivering an outbox row exactly once per claim, and retrying transient failures.

Delivering (``notification_deliver``)
    1. *Claim*: ``UPDATE ... SET status='sending', claim_token=<new>, lease_expires_at=now+lease
       WHERE id=? AND status='pending' AND next_attempt_at<=now``, committed on its own. It
       must change exactly one row; otherwise another worker has it, it was sent, or it is
       not due, and the task stops. A redelivered message (``acks_late`` after SIGKILL, or
       ``reject_on_worker_lost``) therefore finds the row ``sending`` and sends nothing.
    2. *Send*: render and connect first, then hand the message over.
    3. *Record*: ``sent_at`` is written, conditional on our claim token, immediately after
       the SMTP server accepted the message, before closing the connection or anything else.
    4. *Recover*: a row left ``sending`` past its lease (its worker was killed or hung) is
       handed back to ``pending`` by the sweeper and tried again. The lease is longer than
       the task's hard time limit (checked at start-up), so a live worker is never
       overtaken.

    What remains is at-least-once in one window: if the process dies after the server
    accepted the message (the reply to the final ``.`` of DATA) and before step 3 commits,
    the row is retried after its lease and the recipient may get the email twice. (So can
    a timeout while waiting for that reply: the server may have taken the message, but we
    cannot know, and we retry.) The window
    is one round-trip plus one single-row UPDATE (milliseconds); the retry carries the same
    Message-ID, which lets receiving systems that deduplicate by it show one copy. Closing
    that window entirely would need the receiver to deduplicate (idempotency keys), which
    SMTP does not offer. The opposite choice (never retry a row found stuck) would lose
    every email whose worker died before sending, which is the far more likely case.

    Before the claim, a row that is muted, expired, or no longer relevant (the checks that
    domain apps register in workers.relevance) is recorded as ``skipped``.

Retrying
    A transient failure (connection refused, 4xx, timeout) puts the row back to ``pending``
    with an exponential, jittered ``next_attempt_at``; after NOTIFICATION_MAX_ATTEMPTS it is
    ``failed`` (counted in /metrics, resent from the admin). A permanent refusal (5xx for
    the recipient or the message) fails at once. Nothing is counted down past
    CELERY_MAX_COUNTDOWN_SECONDS (below the broker's visibility timeout): longer waits are
    picked up by the sweeper.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import timedelta
from enum import StrEnum

from django.conf import settings
from django.db import DatabaseError
from django.db.models import F
from django.utils import timezone

from medease import metrics
from workers import relevance
from workers.channels import PermanentDeliveryError, channel_for
from workers.models import Notification, NotificationStatus
from workers.services.outbox import enqueue_on_commit, nudge_plan
from workers.services.preferences import preference_of, quiet_hours_end, user_timezone

logger = logging.getLogger("medease.notifications")

# A countdown may fire a hair before its ETA by the worker's clock: count that as due
# rather than leave the row to the sweeper.
DUE_TOLERANCE = timedelta(seconds=1)


class DeliveryOutcome(StrEnum):
    SENT = "sent"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # quiet hours
    NOT_DUE = "not_due"
    NOT_PENDING = "not_pending"  # sent, failed, or in flight elsewhere
    CLAIM_LOST = "claim_lost"  # another worker claimed it between our read and our update
    MISSING = "missing"


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential, jittered.

    "Equal jitter": a random point in the upper half of the exponential step, so retries of
    many rows that failed together (an SMTP outage) spread out instead of returning at once.
    """
    ceiling = min(
        settings.NOTIFICATION_RETRY_MAX_SECONDS,
        settings.NOTIFICATION_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - spreading load, not security


def _finish(notification_id: int, *, token: uuid.UUID | None, **changes) -> bool:
    """Conditional final write of an attempt: only while our claim still holds."""
    queryset = Notification.objects.filter(pk=notification_id)
    if token is None:
        queryset = queryset.filter(status=NotificationStatus.PENDING)
    else:
        queryset = queryset.filter(status=NotificationStatus.SENDING, claim_token=token)
    return queryset.update(**changes) == 1


def _mark_sent(notification: Notification, token: uuid.UUID) -> bool:
    """Record the acceptance at once; a database blip is retried here, briefly.

    Giving up leaves the row ``sending``: after its lease the sweeper retries it, which
    is the at-least-once window documented above, so it is worth a few tries.
    """
    for pause in (0.1, 0.5, 2.0, None):
        try:
            recorded = _finish(
                notification.pk,
                token=token,
                status=NotificationStatus.SENT,
                sent_at=timezone.now(),
                last_error="",
                lease_expires_at=None,
            )
        except DatabaseError:
            if pause is None:
                raise
            time.sleep(pause)
            continue
        if not recorded:
            # Only possible if our lease expired while we were sending (a frozen process);
            # the lease is longer than the task's hard limit, so this is an anomaly.
            logger.error(
                "notification %s was sent but its claim had been taken over", notification.pk
            )
        return recorded
    return False  # unreachable


def _fail_or_retry(
    notification: Notification, token: uuid.UUID, *, error: str, permanent: bool
) -> DeliveryOutcome:
    now = timezone.now()
    error = error[:2000]
    if permanent or notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
        if _finish(
            notification.pk,
            token=token,
            status=NotificationStatus.FAILED,
            last_error=error,
            lease_expires_at=None,
            claim_token=None,
        ):
            metrics.NOTIFICATIONS_FAILED.labels(notification.kind, notification.channel).inc()
            logger.warning(
                "notification %s failed after %s attempt(s): %s",
                notification.pk,
                notification.attempts,
                error,
            )
        return DeliveryOutcome.FAILED
    due_at = now + timedelta(seconds=retry_delay(notification.attempts))
    enqueue, countdown, nudged_at = nudge_plan(due_at=due_at, now=now)
    handed_back = _finish(
        notification.pk,
        token=token,
        status=NotificationStatus.PENDING,
        next_attempt_at=due_at,
        nudged_at=nudged_at,
        last_error=error,
        lease_expires_at=None,
        claim_token=None,
    )
    if handed_back and enqueue:
        enqueue_on_commit(notification.pk, countdown)
    metrics.NOTIFICATIONS_RETRIED.labels(notification.kind, notification.channel).inc()
    logger.info(
        "notification %s attempt %s failed (%s); next attempt at %s",
        notification.pk,
        notification.attempts,
        error,
        due_at.isoformat(),
    )
    return DeliveryOutcome.RETRY_SCHEDULED


def notification_deliver(*, notification_id: int) -> DeliveryOutcome:
    """Deliver one outbox row if it is pending and due; safe to call any number of times.

    Not one transaction, on purpose: the claim must be committed before the message leaves
    (so that a second worker sees it) and ``sent_at`` right after (so that a crash cannot
    forget it). Each step is a single-row conditional UPDATE in autocommit mode.
    """
    now = timezone.now()
    notification = (
        Notification.objects.select_related("user", "user__notification_preference")
        .filter(pk=notification_id)
        .first()
    )
    if notification is None:
        return DeliveryOutcome.MISSING
    if notification.status != NotificationStatus.PENDING:
        return DeliveryOutcome.NOT_PENDING
    if notification.next_attempt_at > now + DUE_TOLERANCE:
        return DeliveryOutcome.NOT_DUE

    user = notification.user
    preference = preference_of(user)
    reason = "muted by the user" if preference and preference.is_muted(notification.kind) else None
    reason = reason or relevance.reason_not_to_send(notification, now=now)
    if reason is not None:
        _finish(notification.pk, token=None, status=NotificationStatus.SKIPPED, last_error=reason)
        return DeliveryOutcome.SKIPPED
    quiet_until = quiet_hours_end(preference=preference, tz=user_timezone(user), now=now)
    if quiet_until is not None:
        enqueue, countdown, nudged_at = nudge_plan(due_at=quiet_until, now=now)
        deferred = _finish(
            notification.pk, token=None, next_attempt_at=quiet_until, nudged_at=nudged_at
        )
        if deferred and enqueue:
            enqueue_on_commit(notification.pk, countdown)
        return DeliveryOutcome.DEFERRED

    # The claim: exactly one row changes, or this attempt is not ours to make.
    token = uuid.uuid4()
    claimed = Notification.objects.filter(
        pk=notification.pk,
        status=NotificationStatus.PENDING,
        next_attempt_at__lte=now + DUE_TOLERANCE,
    ).update(
        status=NotificationStatus.SENDING,
        attempts=F("attempts") + 1,
        claim_token=token,
        lease_expires_at=now + timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS),
    )
    if claimed != 1:
        return DeliveryOutcome.CLAIM_LOST
    notification.attempts += 1

    accepted = False
    try:
        channel = channel_for(notification.channel)
        message = channel.render(notification=notification)
        with channel.open() as sender:
            sender.send(message)
            accepted = True
            recorded = _mark_sent(notification, token)
    except Exception as exc:
        if accepted:
            # Handed over already: never retry from here. Reaching this means recording
            # it failed; the row stays `sending` and the lease decides (see module doc).
            logger.exception("notification %s accepted but not recorded", notification.pk)
            raise
        return _fail_or_retry(
            notification,
            token,
            error=f"{type(exc).__name__}: {exc}",
            permanent=isinstance(exc, PermanentDeliveryError),
        )
    if recorded:
        metrics.NOTIFICATIONS_SENT.labels(notification.kind, notification.channel).inc()
    return DeliveryOutcome.SENT
