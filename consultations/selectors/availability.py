"""Which booked visits an availability edit would leave outside the provider's hours."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from zoneinfo import ZoneInfo

from django.utils import timezone

from accounts.models import User
from consultations.models import (
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationStatus,
)
from consultations.slotting import DayException, Window, interval_covered


def _current(provider: User, from_date) -> tuple[list[Window], list[DayException]]:
    windows = [
        Window(w.weekday, w.start_time, w.end_time)
        for w in Availability.objects.filter(provider=provider)
    ]
    exceptions = [
        DayException(e.date, e.kind, e.start_time, e.end_time)
        for e in AvailabilityException.objects.filter(provider=provider, date__gte=from_date)
    ]
    return windows, exceptions


def availability_conflicts(
    *,
    provider: User,
    windows: Sequence[Window] | None,
    exceptions: Sequence[DayException] | None,
) -> list[Consultation]:
    """Upcoming scheduled consultations of a provider (the caller has scoped the provider to
    the editor) that today's availability covers and the proposed one would not.

    ``None`` keeps that part as it is; proposed exceptions replace those from today on, as
    ``availability_replace`` does. Visits already outside the hours are not this edit's doing.
    """
    tz = ZoneInfo(provider.timezone)
    now = timezone.now()
    today = now.astimezone(tz).date()
    # Yesterday's exceptions too: a visit late tonight in UTC may sit on yesterday's local date.
    since = today - timedelta(days=1)
    old_windows, old_exceptions = _current(provider, since)
    new_windows = old_windows if windows is None else list(windows)
    if exceptions is None:
        new_exceptions = old_exceptions
    else:
        new_exceptions = [e for e in old_exceptions if e.date < today]
        new_exceptions += [e for e in exceptions if e.date >= today]
    booked = (
        Consultation.objects.filter(
            provider=provider, status=ConsultationStatus.SCHEDULED, scheduled_end__gt=now
        )
        .select_related("patient")
        .order_by("scheduled_start", "id")
    )
    affected = []
    for consultation in booked:
        span = {"start": consultation.scheduled_start, "end": consultation.scheduled_end, "tz": tz}
        if interval_covered(
            windows=old_windows, exceptions=old_exceptions, **span
        ) and not interval_covered(windows=new_windows, exceptions=new_exceptions, **span):
            affected.append(consultation)
    return affected
