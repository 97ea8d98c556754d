"""Providers (public), the ones a user manages, their availability and open slots."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from accounts.models import Role, User
from consultations.lifecycle import ACTIVE_STATUSES
from consultations.models import (
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationStatus,
    Slot,
)
from medease.exceptions import NotFound


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


def provider_managed_by(*, user: User, provider: User) -> bool:
    """Whether the user runs this provider's calendar and queue: the provider themself or
    staff of the provider's clinic."""
    if provider.pk == user.pk:
        return True
    return user.role == Role.STAFF and user.organization_id == provider.organization_id


def provider_get_managed(*, user: User, provider_id: int) -> User:
    """A provider the user manages (themself, or staff of the provider's clinic), or NotFound."""
    provider = provider_get(provider_id=provider_id)
    if provider_managed_by(user=user, provider=provider):
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
