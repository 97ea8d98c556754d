"""Builders for the front desk's tests: slots, bookings, a console client signed in as staff."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from consultations import services
from consultations.models import Slot


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def in_hours(hours: float):
    return (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)


@pytest.fixture
def make_slot(db):
    """A slot of a provider starting ``hours`` from now (test data, not materialized)."""

    def make(provider, *, hours: float = 24, minutes: int = 30, start=None) -> Slot:
        start = start or in_hours(hours)
        return Slot.objects.create(
            provider=provider, start=start, end=start + timedelta(minutes=minutes)
        )

    return make


@pytest.fixture
def book(db):
    def do(patient, slot, *, reason: str = "Checkup"):
        consultation, _created = services.consultation_book(
            patient=patient, slot_id=slot.pk, reason=reason
        )
        return consultation

    return do


@pytest.fixture
def desk(staff) -> Client:
    """The console, signed in as the clinic's staff member."""
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def other_staff(make_user, other_organization):
    return make_user(Role.STAFF, organization=other_organization)


@pytest.fixture
def other_provider(make_user, other_organization):
    return make_user(Role.PROVIDER, organization=other_organization)


@pytest.fixture
def token_client():
    """An APIClient with a freshly issued token."""
    from rest_framework.test import APIClient

    from accounts import services as account_services

    def make(user) -> APIClient:
        raw, _token = account_services.token_issue(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make
