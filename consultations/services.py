"""Every write of the clinic core. Each public function owns its transaction.

Concurrency is decided by the database (see consultations/models.py for the constraints):
a booking is an INSERT that the partial unique index (and, on PostgreSQL, the exclusion
constraint) accepts or refuses; a transition is a conditional UPDATE that must change exactly
one row; call-next claims the queue head with ``SELECT ... FOR UPDATE SKIP LOCKED``.
Notifications are written by ``workers.services`` inside the same transaction (outbox);
cache invalidation runs after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import Role, User
from consultations import caching, conf, selectors
from consultations.models import (
    ACTIVE_STATUSES,
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationKind,
    ConsultationStatus,
    ExceptionKind,
    MedicalRecordEntry,
    QueueEntry,
    QueueStatus,
    RecordKind,
    Slot,
)
from consultations.slotting import DayException, Window, slot_times, windows_overlap
from medease import db as db_routing
from medease.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from workers import services as notifications

logger = logging.getLogger("consultations")

SLOT_CONSTRAINT = "consultations_slot_booked_once"
OVERLAP_CONSTRAINT = "consultations_provider_no_overlap"
IDEMPOTENCY_CONSTRAINT = "consultations_patient_idempotency_key"


# --- Helpers ------------------------------------------------------------------------------


def _constraint_name(exc: IntegrityError) -> str:
    """Which constraint refused a write (PostgreSQL names it; SQLite names the columns)."""
    diag = getattr(exc.__cause__, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return name
    message = str(exc)
    for known in (SLOT_CONSTRAINT, OVERLAP_CONSTRAINT, IDEMPOTENCY_CONSTRAINT):
        if known in message:
            return known
    if "idempotency_key" in message:
        return IDEMPOTENCY_CONSTRAINT
    if "slot_id" in message:
        return SLOT_CONSTRAINT
    return ""


def _conflict_from(exc: IntegrityError) -> Conflict:
    name = _constraint_name(exc)
    if name == OVERLAP_CONSTRAINT:
        return Conflict(
            "The provider already has a consultation at that time.", code="provider_busy"
        )
    if name == SLOT_CONSTRAINT:
        return Conflict("This slot has just been booked by someone else.", code="slot_taken")
    logger.warning("unexpected integrity error: %s", exc)
    return Conflict("The request conflicts with the current state.")


def _guard_provider_overlap(*, provider_id: int, start, end, exclude_id: int | None = None) -> None:
    """SQLite stand-in for the PostgreSQL exclusion constraint (call it after the INSERT).

    PostgreSQL decides with ``consultations_provider_no_overlap``; nothing to do there.
    SQLite has no exclusion constraints, but MedEase opens its transactions with BEGIN
    IMMEDIATE (one writer at a time), so this check inside the caller's transaction cannot
    race with another write there.
    """
    if connection.vendor == "postgresql":
        return
    clash = Consultation.objects.filter(
        provider_id=provider_id,
        status__in=ACTIVE_STATUSES,
        scheduled_start__lt=end,
        scheduled_end__gt=start,
    )
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise IntegrityError(OVERLAP_CONSTRAINT)


def _lock_provider(provider: User) -> User:
    """Serialize availability edits and slot materialization of one provider; returns a fresh
    copy (timezone, consultation length) read under the lock."""
    return (
        User.objects.select_for_update(of=("self",))
        .select_related("provider_profile")
        .get(pk=provider.pk)
    )


def _invalidate_for(consultation: Consultation, *, slots: bool = True) -> None:
    caching.invalidate_on_commit(
        provider_ids=[consultation.provider_id],
        user_ids=[consultation.patient_id],
        organization_ids=[consultation.organization_id],
        slots=slots,
    )


# --- Availability and slots ---------------------------------------------------------------


@dataclass(frozen=True)
class ExceptionSpec:
    """Input for one availability exception."""

    date: object
    kind: str = ExceptionKind.OFF
    start_time: object = None
    end_time: object = None
    note: str = ""


def _check_windows(windows: Sequence[Window]) -> None:
    errors: dict[str, list[str]] = {}
    for index, window in enumerate(windows):
        if not 0 <= window.weekday <= 6:
            errors[f"windows.{index}.weekday"] = ["Must be 0 (Monday) to 6 (Sunday)."]
        if window.start_time >= window.end_time:
            errors[f"windows.{index}.end"] = ["Must be after the start, on the same day."]
    if errors:
        raise InvalidInput("Some windows are invalid.", fields=errors)
    clashes = windows_overlap(windows)
    if clashes:
        before, after = clashes[0]
        raise InvalidInput(
            "Windows on the same day must not overlap.",
            fields={
                "windows": [
                    f"Weekday {before.weekday}: {before.start_time:%H:%M}-{before.end_time:%H:%M}"
                    f" overlaps {after.start_time:%H:%M}-{after.end_time:%H:%M}."
                ]
            },
        )


def _check_exceptions(exceptions: Sequence[ExceptionSpec]) -> None:
    errors: dict[str, list[str]] = {}
    for index, exc in enumerate(exceptions):
        if exc.kind not in ExceptionKind.values:
            errors[f"exceptions.{index}.kind"] = ["Must be 'off' or 'extra'."]
        elif (exc.start_time is None) != (exc.end_time is None):
            errors[f"exceptions.{index}"] = ["Give both start and end, or neither."]
        elif exc.start_time is not None and exc.start_time >= exc.end_time:
            errors[f"exceptions.{index}.end"] = ["Must be after the start."]
        elif exc.kind == ExceptionKind.EXTRA and exc.start_time is None:
            errors[f"exceptions.{index}"] = ["Extra hours need a start and an end."]
    if errors:
        raise InvalidInput("Some exceptions are invalid.", fields=errors)


def availability_validate(
    *, windows: Sequence[Window] | None = None, exceptions: Sequence[ExceptionSpec] | None = None
) -> None:
    """Raise InvalidInput for windows or exceptions that availability_replace would refuse."""
    if windows is not None:
        _check_windows(windows)
    if exceptions is not None:
        _check_exceptions(exceptions)


def availability_replace(
    *,
    provider: User,
    windows: Sequence[Window] | None = None,
    exceptions: Sequence[ExceptionSpec] | None = None,
) -> None:
    """Replace a provider's weekly windows and/or upcoming exceptions, then re-materialize
    their slots (``None`` leaves that part unchanged; past exceptions are kept)."""
    if provider.role != Role.PROVIDER:
        raise InvalidInput("Only providers have availability.")
    availability_validate(windows=windows, exceptions=exceptions)
    with transaction.atomic():
        provider = _lock_provider(provider)
        if windows is not None:
            Availability.objects.filter(provider=provider).delete()
            Availability.objects.bulk_create(
                Availability(
                    provider=provider,
                    weekday=w.weekday,
                    start_time=w.start_time,
                    end_time=w.end_time,
                )
                for w in windows
            )
        if exceptions is not None:
            today = timezone.now().astimezone(ZoneInfo(provider.timezone)).date()
            AvailabilityException.objects.filter(provider=provider, date__gte=today).delete()
            AvailabilityException.objects.bulk_create(
                AvailabilityException(
                    provider=provider,
                    date=e.date,
                    kind=e.kind,
                    start_time=e.start_time,
                    end_time=e.end_time,
                    note=e.note,
                )
                for e in exceptions
                if e.date >= today
            )
        _materialize_locked(provider=provider, days=conf.slots_horizon_days())


@dataclass
class MaterializeResult:
    """What one materialization run changed (``created`` counts slots it tried to insert)."""

    created: int = 0
    removed: int = 0


def _materialize_locked(*, provider: User, days: int) -> MaterializeResult:
    """Body of slots_materialize; the caller holds the provider lock inside a transaction."""
    tz = ZoneInfo(provider.timezone)
    now = timezone.now()
    first_day = now.astimezone(tz).date()
    minutes = provider.provider_profile.consultation_minutes
    horizon_end = selectors.provider_today_bounds(tz=tz, day=first_day + timedelta(days=days))[0]
    windows = [
        Window(w.weekday, w.start_time, w.end_time)
        for w in Availability.objects.filter(provider=provider)
    ]
    exceptions = [
        DayException(e.date, e.kind, e.start_time, e.end_time)
        for e in AvailabilityException.objects.filter(
            provider=provider, date__gte=first_day, date__lte=first_day + timedelta(days=days)
        )
    ]
    wanted = dict(
        slot_times(
            windows=windows,
            exceptions=exceptions,
            tz=tz,
            first_day=first_day,
            days=days,
            minutes=minutes,
            not_before=now,
        )
    )
    existing = {
        start: (pk, end)
        for pk, start, end in Slot.objects.filter(
            provider=provider, start__gte=now, start__lt=horizon_end
        ).values_list("pk", "start", "end")
    }
    stale = [pk for start, (pk, end) in existing.items() if wanted.get(start) != end]
    removed = 0
    if stale:
        # A slot that holds a booking stays: availability changes never cancel bookings.
        holding = Consultation.objects.filter(slot_id=OuterRef("pk")).exclude(
            status=ConsultationStatus.CANCELLED
        )
        removable = list(
            Slot.objects.filter(pk__in=stale).exclude(Exists(holding)).values_list("pk", flat=True)
        )
        if removable:
            Slot.objects.filter(pk__in=removable).delete()
            removed = len(removable)
    kept = {start for start, (pk, _end) in existing.items() if wanted.get(start) == _end}
    new_slots = [
        Slot(provider=provider, start=start, end=end)
        for start, end in wanted.items()
        if start not in kept
    ]
    # ignore_conflicts: a booked slot kept above may share a start with a new shape.
    created = Slot.objects.bulk_create(new_slots, ignore_conflicts=True)
    caching.invalidate_on_commit(provider_ids=[provider.pk], slots=True)
    return MaterializeResult(created=len(created), removed=removed)


def slots_materialize(*, provider: User, days: int | None = None) -> MaterializeResult:
    """Make the provider's future slots for the next N days match their availability.

    Idempotent: a second run changes nothing. Slots holding a booking are never removed.
    """
    with transaction.atomic():
        locked = _lock_provider(provider)
        return _materialize_locked(provider=locked, days=days or conf.slots_horizon_days())


def slots_materialize_all(*, days: int | None = None) -> int:
    """Materialize slots of every active provider, one transaction each; returns the count."""
    provider_ids = list(
        User.objects.filter(role=Role.PROVIDER, is_active=True).values_list("pk", flat=True)
    )
    for provider_id in provider_ids:
        try:
            slots_materialize(provider=User(pk=provider_id), days=days)
        except Exception:
            # One provider's bad data must not stop the others; the next run retries.
            logger.exception("slot materialization failed for provider %s", provider_id)
    return len(provider_ids)


# --- Booking ------------------------------------------------------------------------------


def _replay(existing: Consultation, slot_id: int) -> tuple[Consultation, bool]:
    if existing.slot_id != slot_id:
        raise Conflict(
            "This Idempotency-Key was already used for a different booking.",
            code="idempotency_key_reused",
        )
    return existing, False


def _by_idempotency_key(*, patient: User, key: str) -> Consultation | None:
    return (
        Consultation.objects.select_related("patient", "provider")
        .filter(patient=patient, idempotency_key=key)
        .first()
    )


def consultation_book(
    *, patient: User, slot_id: int, reason: str = "", idempotency_key: str = ""
) -> tuple[Consultation, bool]:
    """Book a slot for a patient. Returns (consultation, created).

    A retry with the same ``idempotency_key`` returns the first booking (created=False).
    The database refuses a second booking of the slot, also under concurrency: Conflict.
    """
    if patient.role != Role.PATIENT:
        raise Forbidden("Only patients book consultations.")
    if idempotency_key:
        existing = _by_idempotency_key(patient=patient, key=idempotency_key)
        if existing is not None:
            return _replay(existing, slot_id)
    slot = (
        Slot.objects.select_related("provider__organization")
        .filter(pk=slot_id, provider__is_active=True, provider__role=Role.PROVIDER)
        .first()
    )
    if slot is None:
        raise InvalidInput("Unknown slot.", fields={"slot": ["No such slot."]})
    if slot.start <= timezone.now():
        raise Conflict("This slot has already started.", code="slot_unavailable")
    try:
        with transaction.atomic():
            # The INSERT is the check: the partial unique index admits one active booking.
            consultation = Consultation.objects.create(
                patient=patient,
                provider=slot.provider,
                organization_id=slot.provider.organization_id,
                slot=slot,
                kind=ConsultationKind.BOOKED,
                status=ConsultationStatus.SCHEDULED,
                reason=reason,
                scheduled_start=slot.start,
                scheduled_end=slot.end,
                idempotency_key=idempotency_key,
            )
            _guard_provider_overlap(
                provider_id=slot.provider_id,
                start=slot.start,
                end=slot.end,
                exclude_id=consultation.pk,
            )
            notifications.notify_consultation_event(
                consultation=consultation, kind="booking_confirmed"
            )
            _invalidate_for(consultation)
    except IntegrityError as exc:
        if idempotency_key:
            # A concurrent retry of the same request won the race: answer with its booking,
            # read from the primary (a replica may not have it yet).
            with db_routing.use_primary():
                existing = _by_idempotency_key(patient=patient, key=idempotency_key)
            if existing is not None:
                return _replay(existing, slot_id)
        raise _conflict_from(exc) from exc
    return consultation, True


# --- Lifecycle ----------------------------------------------------------------------------

_TIMESTAMP = {
    ConsultationStatus.IN_PROGRESS: "started_at",
    ConsultationStatus.COMPLETED: "completed_at",
    ConsultationStatus.CANCELLED: "cancelled_at",
    ConsultationStatus.NO_SHOW: "no_show_at",
}
_VERB = {
    ConsultationStatus.IN_PROGRESS: "started",
    ConsultationStatus.COMPLETED: "completed",
    ConsultationStatus.CANCELLED: "cancelled",
    ConsultationStatus.NO_SHOW: "marked as a no-show",
}


def _transition(
    *,
    consultation: Consultation,
    to: str,
    allowed_from: Sequence[str],
    extra: dict | None = None,
) -> Consultation:
    """The one writer of ``Consultation.status`` after creation.

    A conditional UPDATE: of two concurrent transitions from the same state exactly one
    changes the row; the other sees 0 rows and answers 409.
    """
    now = timezone.now()
    values = {"status": to, _TIMESTAMP[to]: now, **(extra or {})}
    changed = Consultation.objects.filter(pk=consultation.pk, status__in=allowed_from).update(
        **values
    )
    if changed != 1:
        current = (
            Consultation.objects.filter(pk=consultation.pk).values_list("status", flat=True).first()
        )
        raise Conflict(
            f"A consultation that is {current or 'gone'} cannot be {_VERB[to]}.",
            code="invalid_transition",
        )
    for field, value in values.items():
        setattr(consultation, field, value)
    return consultation


def _authorize(*, actor: User | None, consultation: Consultation, action: str) -> None:
    """Who may do what: patients cancel/reschedule their own; providers anything on their
    own; staff anything in their clinic. ``actor=None`` is the system (beat jobs).
    Someone who may not see the consultation gets NotFound, never a hint that it exists."""
    if actor is None or actor.is_superuser:
        return
    if actor.role == Role.PATIENT and consultation.patient_id == actor.pk:
        if action not in ("cancel", "reschedule"):
            raise Forbidden("Patients may only cancel or reschedule their consultations.")
        return
    if actor.role == Role.PROVIDER and consultation.provider_id == actor.pk:
        return
    if actor.role == Role.STAFF and consultation.organization_id == actor.organization_id:
        return
    raise NotFound("Consultation not found.")


def _check_patient_cutoff(*, actor: User | None, consultation: Consultation) -> None:
    if actor is not None and actor.role == Role.PATIENT:
        cutoff = consultation.scheduled_start - conf.patient_cancel_cutoff()
        if timezone.now() >= cutoff:
            raise Conflict(
                "It is too late to change this consultation; contact the clinic.",
                code="cancellation_closed",
            )


def consultation_cancel(
    *, consultation: Consultation, actor: User | None, reason: str = ""
) -> Consultation:
    """Cancel a scheduled consultation; its slot becomes bookable again."""
    _authorize(actor=actor, consultation=consultation, action="cancel")
    _check_patient_cutoff(actor=actor, consultation=consultation)
    with transaction.atomic():
        _transition(
            consultation=consultation,
            to=ConsultationStatus.CANCELLED,
            allowed_from=[ConsultationStatus.SCHEDULED],
            extra={"cancelled_by": actor, "cancellation_reason": reason[:200]},
        )
        notifications.notify_consultation_event(
            consultation=consultation, kind="consultation_cancelled"
        )
        _invalidate_for(consultation)
    return consultation


def consultation_start(*, consultation: Consultation, actor: User | None) -> Consultation:
    """Start a scheduled consultation (a provider may start early)."""
    _authorize(actor=actor, consultation=consultation, action="start")
    with transaction.atomic():
        _transition(
            consultation=consultation,
            to=ConsultationStatus.IN_PROGRESS,
            allowed_from=[ConsultationStatus.SCHEDULED],
        )
        notifications.notify_consultation_event(
            consultation=consultation, kind="consultation_started"
        )
        _invalidate_for(consultation, slots=False)
    return consultation


def consultation_complete(
    *, consultation: Consultation, actor: User | None, provider_notes: str | None = None
) -> Consultation:
    """Complete a consultation in progress, optionally with the provider's notes."""
    _authorize(actor=actor, consultation=consultation, action="complete")
    extra = {"provider_notes": provider_notes} if provider_notes is not None else {}
    with transaction.atomic():
        _transition(
            consultation=consultation,
            to=ConsultationStatus.COMPLETED,
            allowed_from=[ConsultationStatus.IN_PROGRESS],
            extra=extra,
        )
        # Slots: a finished consultation no longer blocks overlapping slots.
        _invalidate_for(consultation)
    return consultation


def consultation_mark_no_show(*, consultation: Consultation, actor: User | None) -> Consultation:
    """Mark a scheduled consultation whose start has passed as a no-show."""
    _authorize(actor=actor, consultation=consultation, action="no_show")
    if timezone.now() < consultation.scheduled_start:
        raise Conflict(
            "A consultation cannot be a no-show before its start time.", code="too_early"
        )
    with transaction.atomic():
        _transition(
            consultation=consultation,
            to=ConsultationStatus.NO_SHOW,
            allowed_from=[ConsultationStatus.SCHEDULED],
        )
        notifications.notify_consultation_event(consultation=consultation, kind="no_show_marked")
        _invalidate_for(consultation)
    return consultation


def consultation_reschedule(
    *, consultation: Consultation, actor: User | None, slot_id: int
) -> Consultation:
    """Move a scheduled consultation to another slot of the same provider, atomically:
    the old one is cancelled and the new one booked in one transaction, or neither."""
    _authorize(actor=actor, consultation=consultation, action="reschedule")
    _check_patient_cutoff(actor=actor, consultation=consultation)
    slot = Slot.objects.filter(pk=slot_id).first()
    if slot is None or slot.provider_id != consultation.provider_id:
        raise InvalidInput(
            "Choose another slot of the same provider.",
            fields={"slot": ["No such slot for this provider."]},
        )
    if slot.start <= timezone.now():
        raise Conflict("This slot has already started.", code="slot_unavailable")
    try:
        with transaction.atomic():
            old = _transition(
                consultation=consultation,
                to=ConsultationStatus.CANCELLED,
                allowed_from=[ConsultationStatus.SCHEDULED],
                extra={"cancelled_by": actor, "cancellation_reason": "rescheduled"},
            )
            new = Consultation.objects.create(
                patient_id=old.patient_id,
                provider_id=old.provider_id,
                organization_id=old.organization_id,
                slot=slot,
                kind=ConsultationKind.BOOKED,
                status=ConsultationStatus.SCHEDULED,
                reason=old.reason,
                scheduled_start=slot.start,
                scheduled_end=slot.end,
                rescheduled_from=old,
            )
            _guard_provider_overlap(
                provider_id=slot.provider_id, start=slot.start, end=slot.end, exclude_id=new.pk
            )
            notifications.notify_consultation_event(
                consultation=new, kind="consultation_rescheduled"
            )
            _invalidate_for(new)
    except IntegrityError as exc:
        # Rolled back: the original consultation is still scheduled; drop in-memory changes.
        consultation.refresh_from_db()
        raise _conflict_from(exc) from exc
    return (
        Consultation.objects.select_related("patient", "provider", "organization")
        .filter(pk=new.pk)
        .get()
    )


def consultations_mark_overdue_no_shows() -> int:
    """Beat job: scheduled consultations never started by the end of their slot plus a grace
    period become no-shows. Safe to run twice (each transition is conditional)."""
    deadline = timezone.now() - conf.no_show_grace()
    overdue = list(
        Consultation.objects.filter(
            status=ConsultationStatus.SCHEDULED, scheduled_end__lt=deadline
        ).order_by("id")[:500]
    )
    marked = 0
    for consultation in overdue:
        try:
            consultation_mark_no_show(consultation=consultation, actor=None)
            marked += 1
        except Conflict:
            pass  # started or cancelled meanwhile: nothing to do
    return marked


# --- Walk-in queue ------------------------------------------------------------------------


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


def queue_call_next(*, provider: User, actor: User) -> Consultation:
    """Start an in-progress walk-in consultation for the head of the provider's queue.

    Two concurrent calls never take the same entry: the head is claimed with
    ``FOR UPDATE SKIP LOCKED`` and the claim is a conditional UPDATE. A provider who already
    has an active consultation overlapping now is refused by the database (provider_busy).
    """
    if not (
        actor.pk == provider.pk
        or (actor.role == Role.STAFF and actor.organization_id == provider.organization_id)
    ):
        raise NotFound("Provider not found.")
    minutes = provider.provider_profile.consultation_minutes
    try:
        with transaction.atomic():
            entry = queue_head_for_update(provider=provider)
            if entry is None:
                raise Conflict("Nobody is waiting.", code="queue_empty")
            now = timezone.now()
            end = now + timedelta(minutes=minutes)
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


def queue_expire_stale() -> int:
    """Beat job: waiting entries older than the stale limit expire. Idempotent."""
    now = timezone.now()
    stale = QueueEntry.objects.filter(
        status=QueueStatus.WAITING, joined_at__lt=now - conf.queue_stale_after()
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


# --- Medical records ----------------------------------------------------------------------


def medical_record_add(
    *,
    author: User,
    patient: User,
    kind: str,
    text: str,
    consultation_id: int | None = None,
    supersedes_id: int | None = None,
) -> MedicalRecordEntry:
    """Append an entry to a patient's record (a treating provider or the clinic's staff).

    A correction names the entry it ``supersedes``; an entry is superseded at most once
    (one-to-one in the database, also for two corrections sent at once).
    """
    if author.role not in (Role.PROVIDER, Role.STAFF):
        raise Forbidden("Only providers and clinic staff write medical records.")
    if kind not in RecordKind.values:
        raise InvalidInput("Unknown kind.", fields={"kind": [f"One of {RecordKind.values}."]})
    if not text.strip():
        raise InvalidInput("The entry is empty.", fields={"text": ["This field is required."]})
    # Raises NotFound unless the author treats the patient (or their clinic does).
    selectors.patient_get_for_records(user=author, patient_id=patient.pk)
    consultation = None
    if consultation_id is not None:
        consultation = (
            selectors.consultations_for_user(user=author)
            .filter(pk=consultation_id, patient=patient)
            .first()
        )
        if consultation is None:
            raise InvalidInput(
                "Unknown consultation.",
                fields={"consultation": ["No such consultation of this patient."]},
            )
    supersedes = None
    if supersedes_id is not None:
        supersedes = MedicalRecordEntry.objects.filter(
            pk=supersedes_id, patient=patient, organization_id=author.organization_id
        ).first()
        if supersedes is None:
            raise InvalidInput(
                "Unknown entry to supersede.",
                fields={"supersedes": ["No such entry in this patient's record."]},
            )
    try:
        with transaction.atomic():
            return MedicalRecordEntry.objects.create(
                patient=patient,
                author=author,
                organization_id=author.organization_id,
                consultation=consultation,
                kind=kind,
                text=text,
                supersedes=supersedes,
            )
    except IntegrityError as exc:
        raise Conflict(
            "That entry has already been corrected; correct the newer entry.",
            code="already_superseded",
        ) from exc
