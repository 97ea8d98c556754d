"""Reads of the clinic core. Anything holding patient data takes the requesting user and is
scoped by it here, so a view cannot forget: another user's object is ``NotFound``."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Role, User
from consultations import conf
from consultations.models import (
    ACTIVE_STATUSES,
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationStatus,
    MedicalRecordEntry,
    QueueEntry,
    QueueStatus,
    Slot,
)
from medease.exceptions import NotFound

# Consultations that make a provider one of the patient's treating providers.
TREATING_STATUSES = (
    ConsultationStatus.SCHEDULED,
    ConsultationStatus.IN_PROGRESS,
    ConsultationStatus.COMPLETED,
)


# --- Consultations -------------------------------------------------------------------------


def consultation_visibility(user: User) -> Q:
    """Patients see their own, providers theirs, staff their organization's; no one else."""
    if user.role == Role.PATIENT:
        return Q(patient_id=user.pk)
    if user.role == Role.PROVIDER:
        return Q(provider_id=user.pk)
    if user.role == Role.STAFF and user.organization_id:
        return Q(organization_id=user.organization_id)
    # Administrators use the staff console, not the API.
    return Q(pk__in=[])


def consultations_for_user(*, user: User, status: str | None = None) -> QuerySet[Consultation]:
    """The consultations the user may see, optionally of one status."""
    queryset = Consultation.objects.filter(consultation_visibility(user)).select_related(
        "patient", "provider"
    )
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def consultation_get_for_user(*, user: User, consultation_id: int) -> Consultation:
    """One consultation the user may see, or NotFound (also when it exists but is not theirs).

    The chat (messaging) relies on this name and behaviour.
    """
    consultation = (
        consultations_for_user(user=user)
        .select_related("organization")
        .filter(pk=consultation_id)
        .first()
    )
    if consultation is None:
        raise NotFound("Consultation not found.")
    return consultation


def unread_count_for(*, user: User, consultation: Consultation) -> int:
    """Messages in the consultation the user has not read (from the chat's read markers)."""
    return unread_counts_for(user=user, consultation_ids=[consultation.pk]).get(consultation.pk, 0)


def unread_counts_for(*, user: User, consultation_ids: Iterable[int]) -> dict[int, int]:
    """Unread counts for many consultations in one query (lists, dashboard).

    The chat owns messages and read markers; imported here, not at module level, because
    messaging imports this module (consultation_get_for_user).
    """
    from messaging import selectors as chat_selectors

    return chat_selectors.unread_counts_for(user=user, consultation_ids=consultation_ids)


# --- Providers, availability, slots ---------------------------------------------------------


def provider_get(*, provider_id: int) -> User:
    """An active provider (any user may see providers), or NotFound."""
    provider = (
        User.objects.filter(pk=provider_id, role=Role.PROVIDER, is_active=True)
        .select_related("provider_profile", "organization")
        .first()
    )
    if provider is None:
        raise NotFound("Provider not found.")
    return provider


def provider_get_managed(*, user: User, provider_id: int) -> User:
    """A provider the user manages (themself, or staff of the provider's clinic), or NotFound."""
    provider = provider_get(provider_id=provider_id)
    if provider.pk == user.pk:
        return provider
    if user.role == Role.STAFF and user.organization_id == provider.organization_id:
        return provider
    raise NotFound("Provider not found.")


def provider_today_bounds(*, tz: ZoneInfo, day: date | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day, as aware datetimes (23 or 25 hours on DST days)."""
    day = day or timezone.now().astimezone(tz).date()
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start, end


def availability_windows(*, provider: User) -> QuerySet[Availability]:
    """The provider's weekly windows, Monday first (callers scope the provider first)."""
    return Availability.objects.filter(provider=provider).order_by("weekday", "start_time")


def availability_exceptions(
    *, provider: User, from_date: date | None = None
) -> QuerySet[AvailabilityException]:
    """The provider's exceptions by date, optionally from a date on."""
    queryset = AvailabilityException.objects.filter(provider=provider)
    if from_date is not None:
        queryset = queryset.filter(date__gte=from_date)
    return queryset.order_by("date", "start_time", "id")


def slots_open(*, provider_id: int, start: datetime, end: datetime) -> QuerySet[Slot]:
    """Slots starting in [start, end) that are in the future and bookable right now.

    A slot is open when no booking holds it and no active consultation of the provider
    (e.g. a walk-in) overlaps it. The database still decides at booking time.
    """
    held = Consultation.objects.filter(slot_id=OuterRef("pk")).exclude(
        status=ConsultationStatus.CANCELLED
    )
    overlapping = Consultation.objects.filter(
        provider_id=OuterRef("provider_id"),
        status__in=ACTIVE_STATUSES,
        scheduled_start__lt=OuterRef("end"),
        scheduled_end__gt=OuterRef("start"),
    )
    return Slot.objects.filter(
        provider_id=provider_id,
        start__gte=max(start, timezone.now()),
        start__lt=end,
    ).filter(~Exists(held), ~Exists(overlapping))


# --- Walk-in queue ----------------------------------------------------------------------------


def _position_subquery() -> Subquery:
    """How many waiting entries of the same provider are ahead of this one, plus one."""
    ahead = (
        QueueEntry.objects.filter(provider_id=OuterRef("provider_id"), status=QueueStatus.WAITING)
        .filter(
            Q(joined_at__lt=OuterRef("joined_at"))
            | Q(joined_at=OuterRef("joined_at"), id__lt=OuterRef("id"))
        )
        .order_by()
        .values("provider_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(ahead, output_field=IntegerField()), 0) + 1


def queue_entries_with_position() -> QuerySet[QueueEntry]:
    """Queue entries annotated with ``position`` (meaningful while waiting), in one query."""
    return QueueEntry.objects.annotate(position=_position_subquery())


def queue_entry_get_for_user(*, user: User, entry_id: int) -> QueueEntry:
    """A queue entry the user may see (the patient; the provider or their clinic's staff)."""
    if user.role == Role.PATIENT:
        scope = Q(patient_id=user.pk)
    elif user.role == Role.PROVIDER:
        scope = Q(provider_id=user.pk)
    elif user.role == Role.STAFF and user.organization_id:
        scope = Q(organization_id=user.organization_id)
    else:
        scope = Q(pk__in=[])
    entry = (
        queue_entries_with_position()
        .filter(scope, pk=entry_id)
        .select_related("provider__provider_profile")
        .first()
    )
    if entry is None:
        raise NotFound("Queue entry not found.")
    return entry


def queue_waiting(*, provider_id: int) -> QuerySet[QueueEntry]:
    """The provider's waiting entries, head first (callers scope the provider first)."""
    return (
        queue_entries_with_position()
        .filter(provider_id=provider_id, status=QueueStatus.WAITING)
        .select_related("patient")
    )


def queue_typical_minutes(*, provider: User) -> float:
    """Median length of the provider's recent consultations, or their configured length."""
    since = timezone.now() - conf.queue_history_window()
    rows = list(
        Consultation.objects.filter(
            provider=provider,
            status=ConsultationStatus.COMPLETED,
            started_at__isnull=False,
            completed_at__gte=since,
        )
        .order_by("-completed_at")
        .values_list("started_at", "completed_at")[: conf.queue_history_size()]
    )
    durations = [(done - begun).total_seconds() / 60 for begun, done in rows if done > begun]
    if not durations:
        return float(provider.provider_profile.consultation_minutes)
    return statistics.median(durations)


def queue_current_remaining_minutes(*, provider: User, typical: float) -> float:
    """Expected minutes left of the provider's consultation in progress (0 when free)."""
    started = (
        Consultation.objects.filter(provider=provider, status=ConsultationStatus.IN_PROGRESS)
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    if started is None:
        return 0.0
    elapsed = (timezone.now() - started).total_seconds() / 60
    return max(0.0, typical - elapsed)


def queue_wait_estimator(*, provider: User):
    """A function position → estimated wait in minutes (two queries, whatever the count)."""
    typical = queue_typical_minutes(provider=provider)
    current = queue_current_remaining_minutes(provider=provider, typical=typical)

    def estimate(position: int | None) -> int | None:
        if position is None:
            return None
        return round((position - 1) * typical + current)

    return estimate


# --- Medical records ----------------------------------------------------------------------


def _treats(*, user: User, patient_id: int) -> bool:
    """Whether the provider has or had a consultation with the patient, or the staff
    member's clinic has."""
    related = Consultation.objects.filter(patient_id=patient_id, status__in=TREATING_STATUSES)
    if user.role == Role.PROVIDER:
        return related.filter(provider_id=user.pk).exists()
    if user.role == Role.STAFF and user.organization_id:
        return related.filter(organization_id=user.organization_id).exists()
    return False


def patient_get_for_records(*, user: User, patient_id: int) -> User:
    """The patient whose record the user may open (themself, a treating provider, the
    clinic's staff), or NotFound."""
    patient = User.objects.filter(pk=patient_id, role=Role.PATIENT).first()
    if patient is None:
        raise NotFound("Patient not found.")
    if user.pk == patient.pk or _treats(user=user, patient_id=patient.pk):
        return patient
    raise NotFound("Patient not found.")


def records_for_user(
    *, user: User, patient: User, kind: str | None = None, current_only: bool = False
) -> QuerySet[MedicalRecordEntry]:
    """The patient's entries this user may read: all of them for the patient, their own
    clinic's entries for clinicians (call ``patient_get_for_records`` first)."""
    queryset = MedicalRecordEntry.objects.filter(patient=patient).select_related(
        "author", "superseded_by"
    )
    if user.pk != patient.pk:
        queryset = queryset.filter(organization_id=user.organization_id)
    if kind:
        queryset = queryset.filter(kind=kind)
    if current_only:
        queryset = queryset.filter(superseded_by__isnull=True)
    return queryset


# --- Dashboard ----------------------------------------------------------------------------


def dashboard_upcoming_for_patient(*, patient: User, limit: int = 10) -> list[Consultation]:
    """The patient's next active consultations, soonest first."""
    return list(
        consultations_for_user(user=patient)
        .filter(status__in=ACTIVE_STATUSES, scheduled_end__gte=timezone.now())
        .order_by("scheduled_start", "id")[:limit]
    )


def dashboard_queue_for_patient(*, patient: User) -> list[QueueEntry]:
    """The walk-in queues the patient is waiting in, with their position."""
    return list(
        queue_entries_with_position()
        .filter(patient=patient, status=QueueStatus.WAITING)
        .select_related("provider")
        .order_by("joined_at", "id")[:10]
    )


def dashboard_day(
    *, scope: Q, tz: ZoneInfo, limit: int = 200
) -> tuple[list[Consultation], dict[str, int]]:
    """Consultations of a local day matching ``scope`` and their counts by status."""
    start, end = provider_today_bounds(tz=tz)
    day = Consultation.objects.filter(scope, scheduled_start__gte=start, scheduled_start__lt=end)
    rows = list(day.select_related("patient", "provider").order_by("scheduled_start", "id")[:limit])
    counts = dict.fromkeys(ConsultationStatus.values, 0)
    for row in day.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return rows, counts


def queue_lengths(*, scope: Q) -> dict[int, int]:
    """Waiting entries per provider for the providers matching ``scope``."""
    return {
        row["provider_id"]: row["n"]
        for row in QueueEntry.objects.filter(scope, status=QueueStatus.WAITING)
        .order_by()
        .values("provider_id")
        .annotate(n=Count("id"))
    }
