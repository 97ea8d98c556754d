"""Providers' weekly availability, its exceptions, and the slots materialized from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import Role, User
from consultations import caching, selectors
from consultations.models import (
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationStatus,
    ExceptionKind,
    Slot,
)
from consultations.selectors.availability import availability_conflicts
from consultations.services._common import _lock_provider, logger
from consultations.services.transitions import consultation_cancel
from consultations.slotting import DayException, Window, slot_times, windows_overlap
from medease.exceptions import Conflict, InvalidInput


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


# What availability_replace does with scheduled visits the edit leaves outside the hours:
# "keep" them (seeding, scripts), "refuse" the edit with the list, or "cancel" them.
OnConflict = Literal["keep", "refuse", "cancel"]
PROVIDER_UNAVAILABLE = "provider unavailable"


class AvailabilityConflicts(Conflict):
    """The edit would block time with booked visits; ``consultations`` lists them."""

    def __init__(self, consultations: Sequence[Consultation]) -> None:
        self.consultations = list(consultations)
        super().__init__(
            f"This change blocks time booked by {len(self.consultations)} consultation(s); "
            "confirm to cancel them.",
            code="availability_conflicts",
            fields={"conflicts": [_conflict_row(c) for c in self.consultations]},
        )


def _conflict_row(consultation: Consultation) -> dict:
    # Times in the active time zone (the caller's, in clinic-core views), like the outputs.
    return {
        "id": consultation.pk,
        "patient": consultation.patient_id,
        "patient_name": consultation.patient.full_name,
        "scheduled_start": timezone.localtime(consultation.scheduled_start).isoformat(),
        "scheduled_end": timezone.localtime(consultation.scheduled_end).isoformat(),
    }


def availability_replace(
    *,
    provider: User,
    windows: Sequence[Window] | None = None,
    exceptions: Sequence[ExceptionSpec] | None = None,
    actor: User | None = None,
    on_conflict: OnConflict = "keep",
) -> list[Consultation]:
    """Replace a provider's weekly windows and/or upcoming exceptions, then re-materialize
    their slots (``None`` leaves that part unchanged; past exceptions are kept).

    Scheduled visits the new hours no longer cover are kept, refused with
    ``AvailabilityConflicts`` or cancelled by ``actor`` ("provider unavailable", patients
    notified), as ``on_conflict`` says; returns the cancelled ones.
    """
    if provider.role != Role.PROVIDER:
        raise InvalidInput("Only providers have availability.")
    if on_conflict not in ("keep", "refuse", "cancel"):
        raise ValueError(f"unknown on_conflict: {on_conflict!r}")
    availability_validate(windows=windows, exceptions=exceptions)
    cancelled: list[Consultation] = []
    with transaction.atomic():
        provider = _lock_provider(provider)
        if on_conflict != "keep":
            # Under the provider lock, so the list matches what this edit does.
            affected = availability_conflicts(
                provider=provider,
                windows=windows,
                exceptions=None
                if exceptions is None
                else [DayException(e.date, e.kind, e.start_time, e.end_time) for e in exceptions],
            )
            if affected and on_conflict == "refuse":
                raise AvailabilityConflicts(affected)
            for consultation in affected:
                try:
                    cancelled.append(
                        consultation_cancel(
                            consultation=consultation, actor=actor, reason=PROVIDER_UNAVAILABLE
                        )
                    )
                except Conflict as exc:
                    # Started or cancelled meanwhile (its savepoint rolled back): not ours.
                    if exc.code != "invalid_transition":
                        raise
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
        _materialize_locked(provider=provider, days=settings.SLOTS_MATERIALIZE_DAYS)
    return cancelled


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
        return _materialize_locked(provider=locked, days=days or settings.SLOTS_MATERIALIZE_DAYS)


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
