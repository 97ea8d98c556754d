"""The walk-in queue: join, leave, call next (claimed with SKIP LOCKED), expire."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Role, User
from consultations import caching, notifications, selectors
from consultations.lifecycle import ACTIVE_STATUSES
from consultations.models import (
    Consultation,
    ConsultationKind,
    ConsultationStatus,
    QueueEntry,
    QueueStatus,
)
from consultations.services._common import _conflict_from, _guard_provider_overlap
from medease.exceptions import Conflict, Forbidden, InvalidInput, NotFound


def queue_join(*, patient: User, provider: User, reason: str = "") -> QueueEntry:
    """Put a patient in a provider's walk-in queue (once: a second join is a Conflict)."""
    if patient.role != Role.PATIENT:
        raise Forbidden("Only patients join the walk-in queue.")
    if provider.role != Role.PROVIDER or not provider.is_active:
        raise NotFound("Provider not found.")
    try:
        with transaction.atomic():
            entry = QueueEntry.objects.create(
                provider=provider,
                organization_id=provider.organization_id,
                patient=patient,
                reason=reason,
            )
            caching.invalidate_on_commit(
                provider_ids=[provider.pk],
                user_ids=[patient.pk],
                organization_ids=[provider.organization_id],
            )
    except IntegrityError as exc:
        # The partial unique index decides, also for two joins sent at once.
        raise Conflict(
            "You are already waiting for this provider.", code="already_in_queue"
        ) from exc
    return entry


def queue_leave(*, entry: QueueEntry, actor: User) -> QueueEntry:
    """The patient leaves the queue. Leaving twice is fine; leaving once called is not."""
    if actor.pk != entry.patient_id:
        raise Forbidden("Only the patient may leave the queue.")
    now = timezone.now()
    with transaction.atomic():
        changed = QueueEntry.objects.filter(pk=entry.pk, status=QueueStatus.WAITING).update(
            status=QueueStatus.LEFT, left_at=now
        )
        if changed != 1:
            current = QueueEntry.objects.filter(pk=entry.pk).values_list("status", flat=True)
            status = current.first()
            if status == QueueStatus.LEFT:
                return entry
            raise Conflict(f"This entry is {status} and cannot be left.", code="invalid_transition")
        entry.status, entry.left_at = QueueStatus.LEFT, now
        caching.invalidate_on_commit(
            provider_ids=[entry.provider_id],
            user_ids=[entry.patient_id],
            organization_ids=[entry.organization_id],
        )
    return entry


def queue_head_for_update(*, provider: User) -> QueueEntry | None:
    """Lock the first waiting entry no one else has locked (call inside a transaction).

    SKIP LOCKED: a concurrent call-next holding the head makes this one take the next entry
    instead of waiting and then finding nothing (LIMIT 1 with FOR UPDATE can return no row
    once the locked head stops matching).
    """
    return (
        QueueEntry.objects.select_for_update(skip_locked=True)
        .filter(provider=provider, status=QueueStatus.WAITING)
        .order_by("joined_at", "id")
        .first()
    )


def _walk_in_end(*, provider: User, now, minutes: int):
    """When a walk-in called now is planned to end: its nominal length, or the start of the
    provider's next booked visit if that comes first (the walk-in fits in the gap).

    Busy means in a consultation; a booked visit whose time has come but that nobody started
    (the patient is late) must be started or marked a no-show first, since the two would
    overlap."""
    if Consultation.objects.filter(
        provider=provider, status=ConsultationStatus.IN_PROGRESS
    ).exists():
        raise Conflict("The provider is in a consultation.", code="provider_busy")
    due = (
        Consultation.objects.filter(
            provider=provider,
            status=ConsultationStatus.SCHEDULED,
            scheduled_start__lte=now,
            scheduled_end__gt=now,
        )
        .order_by("scheduled_start")
        .first()
    )
    if due is not None:
        raise Conflict(
            "A booked visit is due now: start it or mark it a no-show before calling a walk-in.",
            code="booking_due",
        )
    end = now + timedelta(minutes=minutes)
    next_start = (
        Consultation.objects.filter(
            provider=provider, status__in=ACTIVE_STATUSES, scheduled_start__gt=now
        )
        .order_by("scheduled_start")
        .values_list("scheduled_start", flat=True)
        .first()
    )
    return min(end, next_start) if next_start is not None else end


def queue_call_next(*, provider: User, actor: User) -> Consultation:
    """Start an in-progress walk-in consultation for the head of the provider's queue.

    Two concurrent calls never take the same entry: the head is claimed with
    ``FOR UPDATE SKIP LOCKED`` and the claim is a conditional UPDATE. The walk-in is planned
    to end by the provider's next booked visit (``scheduled_end``); a provider in a
    consultation is refused (provider_busy), and the database still refuses an overlap
    that a concurrent booking would make (the exclusion constraint: provider_busy).
    """
    if not selectors.provider_managed_by(user=actor, provider=provider):
        raise NotFound("Provider not found.")
    minutes = provider.provider_profile.consultation_minutes
    try:
        with transaction.atomic():
            entry = queue_head_for_update(provider=provider)
            if entry is None:
                raise Conflict("Nobody is waiting.", code="queue_empty")
            now = timezone.now()
            end = _walk_in_end(provider=provider, now=now, minutes=minutes)
            consultation = Consultation.objects.create(
                patient_id=entry.patient_id,
                provider=provider,
                organization_id=provider.organization_id,
                kind=ConsultationKind.WALK_IN,
                status=ConsultationStatus.IN_PROGRESS,
                reason=entry.reason,
                scheduled_start=now,
                scheduled_end=end,
                started_at=now,
            )
            _guard_provider_overlap(
                provider_id=provider.pk, start=now, end=end, exclude_id=consultation.pk
            )
            claimed = QueueEntry.objects.filter(pk=entry.pk, status=QueueStatus.WAITING).update(
                status=QueueStatus.CALLED, called_at=now, consultation=consultation
            )
            if claimed != 1:  # left or expired between the lock and now (SQLite has no lock)
                raise Conflict("The queue changed; try again.", code="queue_changed")
            entry.status, entry.called_at = QueueStatus.CALLED, now
            entry.consultation = consultation
            notifications.notify_queue_called(entry=entry)
            caching.invalidate_on_commit(
                provider_ids=[provider.pk],
                user_ids=[entry.patient_id],
                organization_ids=[provider.organization_id],
                slots=True,
            )
    except IntegrityError as exc:
        raise _conflict_from(exc) from exc
    return (
        Consultation.objects.select_related("patient", "provider", "organization")
        .filter(pk=consultation.pk)
        .get()
    )


def queue_remove(*, entry: QueueEntry, actor: User, reason: str) -> QueueEntry:
    """Clinic staff (or the provider) take a waiting patient out of the queue, saying why."""
    provider = User.objects.get(pk=entry.provider_id)
    if not (actor.is_superuser or selectors.provider_managed_by(user=actor, provider=provider)):
        raise NotFound("Queue entry not found.")
    reason = reason.strip()[:200]
    if not reason:
        raise InvalidInput("Say why.", fields={"reason": ["This field is required."]})
    now = timezone.now()
    with transaction.atomic():
        # Conditional: an entry called or left meanwhile is not touched.
        changed = QueueEntry.objects.filter(pk=entry.pk, status=QueueStatus.WAITING).update(
            status=QueueStatus.LEFT, left_at=now, removed_by=actor, removal_reason=reason
        )
        if changed != 1:
            status = QueueEntry.objects.filter(pk=entry.pk).values_list("status", flat=True)
            raise Conflict(
                f"This entry is {status.first()} and cannot be removed.",
                code="invalid_transition",
            )
        entry.status, entry.left_at = QueueStatus.LEFT, now
        entry.removed_by, entry.removal_reason = actor, reason
        caching.invalidate_on_commit(
            provider_ids=[entry.provider_id],
            user_ids=[entry.patient_id],
            organization_ids=[entry.organization_id],
        )
    return entry


def queue_expire_stale() -> int:
    """Beat job: waiting entries older than the stale limit expire. Idempotent."""
    now = timezone.now()
    stale = QueueEntry.objects.filter(
        status=QueueStatus.WAITING,
        joined_at__lt=now - timedelta(minutes=settings.QUEUE_ENTRY_STALE_MINUTES),
    )
    rows = list(stale.values_list("pk", "provider_id", "patient_id", "organization_id")[:1000])
    if not rows:
        return 0
    with transaction.atomic():
        # Conditional: an entry called or left meanwhile is not touched.
        expired = QueueEntry.objects.filter(
            pk__in=[row[0] for row in rows], status=QueueStatus.WAITING
        ).update(status=QueueStatus.EXPIRED, expired_at=now)
        caching.invalidate_on_commit(
            provider_ids=[row[1] for row in rows],
            user_ids=[row[2] for row in rows],
            organization_ids=[row[3] for row in rows],
        )
    return expired
