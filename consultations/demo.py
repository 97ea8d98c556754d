"""Demo data of the clinic core for ``manage.py seed_demo`` (see medease/seeding.py).

Acts only on the demo accounts that accounts/demo.py provides, never on other providers of
the demo clinic (a provider added in the console keeps the hours it was given). Every demo
provider works 08:00-18:00 every day of the week (so a demo on any day has open
slots for the next weeks), and each has a few past consultations with demo patients, which
also gives the walk-in wait estimate some history. patient1 also has a video visit with
provider1 today that can be joined now (README, "Hold a demo visit"). Safe to run again:
nothing is duplicated.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from accounts.models import User
from consultations import services
from consultations.models import (
    Availability,
    Consultation,
    ConsultationKind,
    ConsultationStatus,
    Slot,
)
from consultations.slotting import Window
from medease.seeding import SeedContext

DEMO_HOURS = (time(8), time(18))
MIN_DEMO_DAYS = 14
# (days ago, local hour, minutes it lasted or None for a no-show) per past consultation.
PAST = [(1, 10, 18), (2, 11, 25), (3, 14, 32), (4, 9, None)]
# Today's demo visit is written (not booked) so that it can start now, within its slot.
JOINABLE = (ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS)
VISIT_REASON = "Demo video visit"


def _past_consultations(*, provider: User, patients: list[User], context: SeedContext) -> int:
    """Historic rows written directly: the lifecycle services refuse to act in the past."""
    tz = ZoneInfo(provider.timezone)
    today = timezone.now().astimezone(tz).date()
    minutes = provider.provider_profile.consultation_minutes
    created = 0
    for index, (days_ago, hour, lasted) in enumerate(PAST):
        patient = patients[index % len(patients)]
        start = datetime.combine(today - timedelta(days=days_ago), time(hour), tzinfo=tz)
        slot, _ = Slot.objects.get_or_create(
            provider=provider, start=start, defaults={"end": start + timedelta(minutes=minutes)}
        )
        if Consultation.objects.filter(slot=slot).exists():
            continue
        common = {
            "patient": patient,
            "provider": provider,
            "organization_id": provider.organization_id,
            "slot": slot,
            "kind": ConsultationKind.BOOKED,
            "reason": "Follow-up" if index % 2 else "First visit",
            "scheduled_start": slot.start,
            "scheduled_end": slot.end,
        }
        if lasted is None:
            Consultation.objects.create(
                **common, status=ConsultationStatus.NO_SHOW, no_show_at=slot.end
            )
        else:
            Consultation.objects.create(
                **common,
                status=ConsultationStatus.COMPLETED,
                started_at=slot.start,
                completed_at=slot.start + timedelta(minutes=lasted),
                provider_notes="Demo visit.",
            )
        created += 1
    context.created += created
    context.existing += len(PAST) - created
    if created:
        context.progress(f"created {created} past consultations for {provider.email}")
    return created


def _first(users: list[User], prefix: str) -> User:
    return next((user for user in users if user.email.startswith(prefix)), users[0])


def _visit_url(consultation: Consultation) -> str:
    return f"{settings.SITE_URL}/visit/{consultation.pk}/"


def _todays_visit(*, provider: User, patient: User, context: SeedContext) -> None:
    """A scheduled visit of this patient with this provider that can be joined right now.

    The provider's free slot that is running now (or the next one today); after hours a
    slot from now on. Another one is written only once the previous one is over.
    """
    now = timezone.now()
    existing = (
        Consultation.objects.filter(
            patient=patient, provider=provider, status__in=JOINABLE, scheduled_end__gt=now
        )
        .order_by("scheduled_start")
        .first()
    )
    if existing is not None:
        context.existing += 1
        context.progress(f"today's video visit: {_visit_url(existing)}")
        return
    tz = ZoneInfo(provider.timezone)
    end_of_day = datetime.combine(now.astimezone(tz).date() + timedelta(days=1), time(0), tz)
    booked = Consultation.objects.exclude(status=ConsultationStatus.CANCELLED).values("slot")
    slot = (
        Slot.objects.filter(provider=provider, end__gt=now + timedelta(minutes=10))
        .filter(start__lt=end_of_day)
        .exclude(pk__in=booked)
        .order_by("start")
        .first()
    )
    if slot is None:
        start = now.replace(second=0, microsecond=0)
        start -= timedelta(minutes=start.minute % 5)
        minutes = provider.provider_profile.consultation_minutes
        slot, _ = Slot.objects.get_or_create(
            provider=provider, start=start, defaults={"end": start + timedelta(minutes=minutes)}
        )
    visit = Consultation.objects.create(
        patient=patient,
        provider=provider,
        organization_id=provider.organization_id,
        slot=slot,
        kind=ConsultationKind.BOOKED,
        reason=VISIT_REASON,
        scheduled_start=slot.start,
        scheduled_end=slot.end,
        status=ConsultationStatus.SCHEDULED,
    )
    context.created += 1
    context.progress(
        f"created today's video visit of {patient.email} with {provider.email} "
        f"at {slot.start.astimezone(tz):%H:%M}: {_visit_url(visit)}"
    )


def seed_demo(*, context: SeedContext) -> None:
    """Availability, slots and a few past consultations for the demo providers (idempotent)."""
    days = max(settings.SLOTS_MATERIALIZE_DAYS, MIN_DEMO_DAYS)
    patients = context.require("patients")
    providers = User.objects.filter(
        pk__in=[provider.pk for provider in context.require("providers")]
    ).select_related("provider_profile")
    for provider in providers.order_by("pk"):
        if not Availability.objects.filter(provider=provider).exists():
            services.availability_replace(
                provider=provider, windows=[Window(day, *DEMO_HOURS) for day in range(7)]
            )
            context.created += 1
            context.progress(f"gave {provider.email} availability 08:00-18:00 every day")
        else:
            context.existing += 1
        result = services.slots_materialize(provider=provider, days=days)
        if result.created:
            context.progress(f"materialized {result.created} slots for {provider.email}")
        if patients:
            _past_consultations(provider=provider, patients=patients, context=context)
    if patients and providers:
        _todays_visit(
            provider=_first(list(providers.order_by("pk")), "provider1@"),
            patient=_first(patients, "patient1@"),
            context=context,
        )
