"""seed_demo's clinic-core part: availability every day, slots ahead, some history."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Organization, Role, User
from consultations.models import Availability, Consultation, ConsultationStatus, Slot
from consultations.selectors import slots_open

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _debug_on(settings):
    settings.DEBUG = True  # seed_demo refuses to run with DEBUG off


def test_demo_providers_have_open_slots_every_day_for_two_weeks():
    call_command("seed_demo", stdout=StringIO())
    providers = list(User.objects.filter(role=Role.PROVIDER, email__endswith="@demo.medease.test"))
    assert len(providers) == 3
    for provider in providers:
        assert sorted(
            Availability.objects.filter(provider=provider).values_list("weekday", flat=True)
        ) == list(range(7))
        tz = ZoneInfo(provider.timezone)
        now = timezone.now()
        open_days = {
            slot.start.astimezone(tz).date()
            for slot in slots_open(provider_id=provider.pk, start=now, end=now + timedelta(days=15))
        }
        tomorrow = now.astimezone(tz).date() + timedelta(days=1)
        assert {tomorrow + timedelta(days=n) for n in range(14)} <= open_days
        past = Consultation.objects.filter(provider=provider, scheduled_end__lt=now)
        assert past.filter(status=ConsultationStatus.COMPLETED).count() >= 3


def test_seeding_twice_duplicates_nothing():
    call_command("seed_demo", stdout=StringIO())
    counts = (Slot.objects.count(), Consultation.objects.count(), Availability.objects.count())
    call_command("seed_demo", stdout=StringIO())
    assert (
        Slot.objects.count(),
        Consultation.objects.count(),
        Availability.objects.count(),
    ) == counts


def test_seeding_leaves_the_clinics_other_accounts_alone():
    """Issue 10 #14: a provider added in the console got weekly hours and invented visits."""
    call_command("seed_demo", stdout=StringIO())
    demo_org = Organization.objects.get(slug="demo")
    other_org = account_services.organization_create(name="Real Clinic", slug="real")
    outsiders = [
        account_services.user_create(
            email=email,
            password="a-long-enough-password",
            full_name="Outsider",
            role=Role.PROVIDER,
            organization=organization,
        )
        for email, organization in [
            ("console-provider@clinic.test", demo_org),
            ("other-provider@clinic.test", other_org),
        ]
    ]
    # Signed up with an address in the demo domain, but not one of the demo patients.
    lookalike = account_services.user_create(
        email="someone@demo.medease.test",
        password="a-long-enough-password",
        full_name="Look Alike",
    )

    out = StringIO()
    call_command("seed_demo", stdout=out)

    for provider in outsiders:
        assert not Availability.objects.filter(provider=provider).exists(), provider.email
        assert not Slot.objects.filter(provider=provider).exists(), provider.email
        assert not Consultation.objects.filter(provider=provider).exists(), provider.email
        assert provider.email not in out.getvalue()
    assert not Consultation.objects.filter(patient=lookalike).exists()
    demo_provider = User.objects.get(email="provider1@demo.medease.test")
    assert Availability.objects.filter(provider=demo_provider).exists()
