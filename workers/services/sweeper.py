"""The outbox sweeper, and resending failed rows from the staff console."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from medease import metrics
from workers.models import Notification, NotificationStatus
from workers.services.outbox import enqueue_delivery

logger = logging.getLogger("medease.notifications")


@dataclass
class SweepResult:
    recovered: int = 0  # `sending` past the lease, handed back to `pending`
    failed: int = 0  # `sending` past the lease with no attempts left
    enqueued: int = 0  # due `pending` rows whose delivery task was (re-)enqueued


def outbox_sweep(*, now: datetime | None = None, batch: int | None = None) -> SweepResult:
    """Recover rows whose worker died mid-send, and enqueue due rows nobody is delivering.

    Safe when two sweeps overlap: each recovery is a conditional update on the claim that
    was seen, and an extra enqueue is harmless (the delivery claims the row or stops). On
    PostgreSQL overlapping sweeps also split the due rows between them (SKIP LOCKED).
    """
    now = now or timezone.now()
    batch = batch or settings.NOTIFICATION_SWEEP_BATCH
    result = SweepResult()

    stuck = list(
        Notification.objects.filter(status=NotificationStatus.SENDING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values("pk", "kind", "channel", "attempts", "claim_token")[:batch]
    )
    for row in stuck:
        lost = Notification.objects.filter(
            pk=row["pk"], status=NotificationStatus.SENDING, claim_token=row["claim_token"]
        )
        error = "lease expired: the worker died or hung during the attempt"
        if row["attempts"] >= settings.NOTIFICATION_MAX_ATTEMPTS:
            if lost.update(
                status=NotificationStatus.FAILED,
                last_error=error,
                claim_token=None,
                lease_expires_at=None,
            ):
                result.failed += 1
                metrics.NOTIFICATIONS_FAILED.labels(row["kind"], row["channel"]).inc()
        elif lost.update(
            status=NotificationStatus.PENDING,
            next_attempt_at=now,
            nudged_at=None,
            last_error=error,
            claim_token=None,
            lease_expires_at=None,
        ):
            result.recovered += 1
            logger.warning("notification %s: %s; retrying", row["pk"], error)

    renudge_before = now - timedelta(seconds=settings.NOTIFICATION_RENUDGE_SECONDS)
    with transaction.atomic():
        due_ids = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(status=NotificationStatus.PENDING, next_attempt_at__lte=now)
            .exclude(nudged_at__gt=renudge_before)
            .order_by("next_attempt_at", "id")
            .values_list("pk", flat=True)[:batch]
        )
        if due_ids:
            Notification.objects.filter(pk__in=due_ids).update(nudged_at=now)
            for notification_id in due_ids:
                transaction.on_commit(partial(enqueue_delivery, notification_id), robust=True)
    result.enqueued = len(due_ids)
    return result


def notifications_resend(*, notification_ids: list[int]) -> int:
    """Put failed notifications back in the outbox with a fresh set of attempts."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Notification.objects.select_for_update()
            .filter(pk__in=notification_ids, status=NotificationStatus.FAILED)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.FAILED).update(
            status=NotificationStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            nudged_at=now,
            claim_token=None,
            lease_expires_at=None,
        )
        for notification_id in ids:
            transaction.on_commit(partial(enqueue_delivery, notification_id), robust=True)
    return len(ids)
