"""A provider's consultation length must be a positive, sane number of minutes everywhere:
the console refuses it, the database refuses it, and slot generation never loops on it
(issue 10, #5: 0 minutes made materialization spin forever)."""

from __future__ import annotations

from datetime import date, time
from zoneinfo import ZoneInfo

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from accounts import services as account_services
from accounts.models import ProviderProfile, Role, User
from consultations.slotting import Window, slot_times
from medease.exceptions import InvalidInput


def _browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _provider_page_form(provider, minutes: str) -> dict:
    """The provider's console page as posted, with the inlines' management forms."""
    profile = provider.provider_profile
    return {
        "email": provider.email,
        "full_name": provider.full_name,
        "role": provider.role,
        "timezone": provider.timezone,
        "organization": provider.organization_id,
        "is_active": "on",
        "provider_profile-TOTAL_FORMS": "1",
        "provider_profile-INITIAL_FORMS": "1",
        "provider_profile-0-user": provider.pk,
        "provider_profile-0-specialty": profile.specialty or "General practice",
        "provider_profile-0-bio": "",
        "provider_profile-0-consultation_minutes": minutes,
        "availability_windows-TOTAL_FORMS": "0",
        "availability_windows-INITIAL_FORMS": "0",
        "availability_exceptions-TOTAL_FORMS": "0",
        "availability_exceptions-INITIAL_FORMS": "0",
    }


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root@example.test", "x-very-long-pass-123")


@pytest.mark.parametrize("minutes", ["0", "-15", "481"])
def test_the_console_refuses_a_consultation_length_out_of_range(superuser, provider, minutes):
    url = f"/admin/accounts/user/{provider.pk}/change/"
    response = _browser(superuser).post(url, _provider_page_form(provider, minutes))
    assert response.status_code == 200  # the form again, not a redirect
    profile_errors = [
        error
        for formset in response.context["inline_admin_formsets"]
        if formset.formset.prefix == "provider_profile"
        for form_errors in formset.formset.errors
        for error in form_errors.get("consultation_minutes", [])
    ]
    assert profile_errors, "expected an error on the consultation length"
    provider.provider_profile.refresh_from_db()
    assert provider.provider_profile.consultation_minutes == 30


def test_the_console_accepts_a_sane_consultation_length(superuser, provider):
    url = f"/admin/accounts/user/{provider.pk}/change/"
    response = _browser(superuser).post(url, _provider_page_form(provider, "45"))
    assert response.status_code == 302
    provider.provider_profile.refresh_from_db()
    assert provider.provider_profile.consultation_minutes == 45


@pytest.mark.postgres
@pytest.mark.parametrize("minutes", [0, 481])
def test_the_database_refuses_a_consultation_length_out_of_range(provider, minutes):
    with pytest.raises(IntegrityError), transaction.atomic():
        ProviderProfile.objects.filter(pk=provider.pk).update(consultation_minutes=minutes)
    provider.provider_profile.refresh_from_db()
    assert provider.provider_profile.consultation_minutes == 30


@pytest.mark.timeout(10)  # today's bug is an endless loop: the guard turns it into a failure
@pytest.mark.parametrize("minutes", [0, -30])
def test_slot_generation_refuses_a_non_positive_length_instead_of_looping(minutes):
    with pytest.raises(ValueError, match="positive"):
        list(
            slot_times(
                windows=[Window(0, time(9), time(17))],
                exceptions=[],
                tz=ZoneInfo("UTC"),
                first_day=date(2026, 5, 4),  # a Monday
                days=1,
                minutes=minutes,
            )
        )


@pytest.mark.parametrize("minutes", [0, 481])
def test_creating_a_provider_with_a_length_out_of_range_says_why(organization, minutes):
    with pytest.raises(InvalidInput) as raised:
        account_services.user_create(
            email=f"len{minutes}@example.test",
            password=None,
            full_name="Dr. Length",
            role=Role.PROVIDER,
            organization=organization,
            consultation_minutes=minutes,
        )
    assert "consultation_minutes" in raised.value.fields
