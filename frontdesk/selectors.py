"""The desk's reads, composed from the domain selectors and the models' ``visible_to``: every
query starts from what the signed-in staff member may see, then narrows to their clinic."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Replace
from django.utils import timezone

from accounts.models import Organization, Role, User
from consultations import selectors as clinic
from consultations.models import (
    Consultation,
    ConsultationStatus,
    MedicalRecordEntry,
    QueueEntry,
    QueueStatus,
    Slot,
)
from medease.exceptions import NotFound
from workers.models import Notification, NotificationStatus

PATIENTS_PAGE = 50


def desk_organization(*, user: User, organization_id: str | None = None) -> Organization | None:
    """The clinic the desk works for: a staff member's own; a superuser picks one (or the
    first)."""
    if not user.is_superuser:
        return user.organization
    organizations = Organization.objects.order_by("name")
    if organization_id and organization_id.isdigit():
        return organizations.filter(pk=int(organization_id)).first()
    return organizations.first()


def desk_zone(organization: Organization | None) -> ZoneInfo:
    return ZoneInfo(organization.timezone if organization else "UTC")


def _digits(expression):
    """The phone column without the usual separators, so "+1 (555) 010-2030" matches 5550102030
    (portable: nested REPLACE rather than a PostgreSQL-only regexp)."""
    for separator in (" ", "-", "(", ")", ".", "+", "/"):
        expression = Replace(expression, Value(separator), Value(""))
    return expression


def _as_date(text: str) -> date | None:
    for pattern in ("%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    return None


def desk_patients(*, user: User, organization: Organization, query: str = "") -> QuerySet[User]:
    """Patients known to the clinic: with a consultation, a queue entry or a record entry
    there (as the staff member may see them), or registered by its desk; optionally matching
    ``query`` (name, e-mail, phone or date of birth)."""
    patient = OuterRef("pk")
    known = (
        Q(
            Exists(
                Consultation.objects.visible_to(user).filter(
                    organization=organization, patient=patient
                )
            )
        )
        | Q(
            Exists(
                QueueEntry.objects.visible_to(user).filter(
                    organization=organization, patient=patient
                )
            )
        )
        | Q(
            Exists(
                MedicalRecordEntry.objects.visible_to(user).filter(
                    organization=organization, patient=patient
                )
            )
        )
        | Q(patient_profile__registered_by_organization=organization)
    )
    patients = User.objects.filter(
        known, role=Role.PATIENT, patient_profile__deleted_at__isnull=True
    ).select_related("patient_profile")
    query = query.strip()
    if query:
        match = Q(full_name__icontains=query) | Q(email__icontains=query)
        digits = re.sub(r"\D", "", query)
        if len(digits) >= 3 and not re.search(r"[A-Za-z@]", query):
            patients = patients.annotate(phone_digits=_digits(F("patient_profile__phone")))
            match |= Q(phone_digits__contains=digits)
        born = _as_date(query)
        if born is not None:
            match |= Q(patient_profile__date_of_birth=born)
        patients = patients.filter(match)
    return patients.order_by("full_name", "id")


def desk_patient_get(*, user: User, organization: Organization, patient_id: int) -> User:
    """One patient known to the clinic, or NotFound (an unknown patient looks missing)."""
    patient = desk_patients(user=user, organization=organization).filter(pk=patient_id).first()
    if patient is None:
        raise NotFound("Patient not found.")
    return patient


@dataclass
class PatientOverview:
    patient: User
    upcoming: list[Consultation] = field(default_factory=list)
    past: list[Consultation] = field(default_factory=list)
    queue: list[QueueEntry] = field(default_factory=list)
    records: list[MedicalRecordEntry] = field(default_factory=list)


def desk_patient_overview(
    *, user: User, organization: Organization, patient: User, limit: int = 50
) -> PatientOverview:
    """A patient's visits, queue places and record entries at the clinic."""
    now = timezone.now()
    visits = (
        Consultation.objects.visible_to(user)
        .filter(organization=organization, patient=patient)
        .select_related("provider")
    )
    return PatientOverview(
        patient=patient,
        upcoming=list(
            visits.filter(
                scheduled_end__gte=now,
                status__in=[ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS],
            ).order_by("scheduled_start", "id")[:limit]
        ),
        past=list(
            visits.exclude(
                scheduled_end__gte=now,
                status__in=[ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS],
            ).order_by("-scheduled_start", "-id")[:limit]
        ),
        queue=list(
            clinic.queue_entries_with_position()
            .visible_to(user)
            .filter(organization=organization, patient=patient)
            .select_related("provider")
            .order_by("-joined_at", "-id")[:limit]
        ),
        records=list(
            MedicalRecordEntry.objects.visible_to(user)
            .filter(organization=organization, patient=patient)
            .select_related("author")
            .order_by("-id")[:limit]
        ),
    )


def desk_providers(*, organization: Organization) -> list[User]:
    """The clinic's active providers, by name."""
    return list(
        User.objects.filter(role=Role.PROVIDER, organization=organization, is_active=True)
        .select_related("provider_profile")
        .order_by("full_name", "id")
    )


def desk_provider_get(*, user: User, organization: Organization, provider_id) -> User:
    """An active provider of the clinic the user runs (clinic.provider_get_managed), or
    NotFound."""
    try:
        provider = clinic.provider_get(provider_id=int(provider_id))
    except (TypeError, ValueError) as exc:
        raise NotFound("Provider not found.") from exc
    if provider.organization_id != organization.pk or not (
        user.is_superuser or clinic.provider_managed_by(user=user, provider=provider)
    ):
        raise NotFound("Provider not found.")
    return provider


def desk_open_slots(*, provider: User, day: date, tz: ZoneInfo) -> list[Slot]:
    """The provider's open slots of a local day (clinic.slots_open)."""
    start, end = clinic.provider_today_bounds(tz=tz, day=day)
    return list(clinic.slots_open(provider_id=provider.pk, start=start, end=end).order_by("start"))


def desk_consultation_get(
    *, user: User, organization: Organization, consultation_id
) -> Consultation:
    """A consultation of the clinic the user may see, or NotFound."""
    try:
        return (
            Consultation.objects.visible_to(user)
            .select_related("patient", "provider")
            .get(pk=int(consultation_id), organization=organization)
        )
    except (TypeError, ValueError, Consultation.DoesNotExist) as exc:
        raise NotFound("Consultation not found.") from exc


def desk_consultations(
    *, user: User, organization: Organization, ids: list[int]
) -> list[Consultation]:
    """Visible consultations of the clinic among ``ids`` (others are left out)."""
    return list(
        Consultation.objects.visible_to(user)
        .filter(organization=organization, pk__in=ids)
        .select_related("patient", "provider")
        .order_by("scheduled_start", "id")
    )


@dataclass
class BoardRow:
    provider: User
    consultations: list[Consultation]
    queue: list[QueueEntry]


def desk_day(
    *, user: User, organization: Organization, day: date, provider_id: int | None = None
) -> list[BoardRow]:
    """Each provider's consultations of a local day and their waiting walk-ins, with positions
    and estimated waits (today only)."""
    tz = desk_zone(organization)
    start, end = clinic.provider_today_bounds(tz=tz, day=day)
    providers = desk_providers(organization=organization)
    if provider_id is not None:
        providers = [p for p in providers if p.pk == provider_id]
    consultations = list(
        Consultation.objects.visible_to(user)
        .filter(organization=organization, scheduled_start__gte=start, scheduled_start__lt=end)
        .select_related("patient")
        .order_by("scheduled_start", "id")
    )
    waiting: list[QueueEntry] = []
    if day == timezone.now().astimezone(tz).date():
        waiting = list(
            clinic.queue_entries_with_position()
            .visible_to(user)
            .filter(organization=organization, status=QueueStatus.WAITING)
            .select_related("patient")
            .order_by("joined_at", "id")
        )
    rows = []
    for provider in providers:
        queue = [e for e in waiting if e.provider_id == provider.pk]
        if queue:
            estimate = clinic.queue_wait_estimator(provider=provider)
            for entry in queue:
                entry.estimated_wait_minutes = estimate(entry.position)
        rows.append(
            BoardRow(
                provider=provider,
                consultations=[c for c in consultations if c.provider_id == provider.pk],
                queue=queue,
            )
        )
    return rows


def desk_week(
    *, user: User, organization: Organization, provider: User, monday: date
) -> list[tuple[date, list[Consultation]]]:
    """A provider's consultations for the seven local days from ``monday``."""
    tz = desk_zone(organization)
    start, _ = clinic.provider_today_bounds(tz=tz, day=monday)
    _, end = clinic.provider_today_bounds(tz=tz, day=monday + timedelta(days=6))
    consultations = list(
        Consultation.objects.visible_to(user)
        .filter(provider=provider, scheduled_start__gte=start, scheduled_start__lt=end)
        .select_related("patient")
        .order_by("scheduled_start", "id")
    )
    days = []
    for offset in range(7):
        day = monday + timedelta(days=offset)
        days.append(
            (day, [c for c in consultations if c.scheduled_start.astimezone(tz).date() == day])
        )
    return days


def desk_queue_entry_get(*, user: User, organization: Organization, entry_id) -> QueueEntry:
    """A waiting or past queue entry of the clinic the user may see, or NotFound."""
    try:
        return (
            QueueEntry.objects.visible_to(user)
            .select_related("patient", "provider")
            .get(pk=int(entry_id), organization=organization)
        )
    except (TypeError, ValueError, QueueEntry.DoesNotExist) as exc:
        raise NotFound("Queue entry not found.") from exc


def desk_slot_get(*, organization: Organization, slot_id: int) -> Slot:
    """A slot of one of the clinic's providers (the booking service checks it is open)."""
    slot = (
        Slot.objects.filter(pk=slot_id, provider__organization=organization)
        .select_related("provider")
        .first()
    )
    if slot is None:
        raise NotFound("Slot not found.")
    return slot


def desk_parse_day(raw: str | None, *, tz: ZoneInfo) -> date:
    """A YYYY-MM-DD day from the query string; missing or malformed: today in the clinic."""
    if raw:
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    return timezone.now().astimezone(tz).date()


OUTBOX_PAGE = 50


def desk_outbox(*, user: User, organization: Organization, status: str = "") -> QuerySet:
    """The clinic's outbox: notifications about its consultations (as the staff member sees
    them) and those to its own providers and staff; newest first, optionally by status."""
    clinic_visits = (
        Consultation.objects.visible_to(user).filter(organization=organization).values("pk")
    )
    rows = Notification.objects.filter(
        Q(consultation_id__in=clinic_visits) | Q(user__organization=organization)
    ).select_related("user")
    if status in NotificationStatus.values:
        rows = rows.filter(status=status)
    return rows.order_by("-id")
