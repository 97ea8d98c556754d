"""Builders for clinic-core tests: slots, bookings and clients, made through the services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from consultations import services
from consultations.models import Slot


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """These tests create many users; Argon2 is tested by the accounts suite."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def in_hours(hours: float):
    """A whole-minute instant some hours from now (UTC)."""
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
    """Book through the service, as the API does."""

    def do(patient, slot, *, reason: str = "Checkup", key: str = ""):
        consultation, _created = services.consultation_book(
            patient=patient, slot_id=slot.pk, reason=reason, idempotency_key=key
        )
        return consultation

    return do


@pytest.fixture
def other_provider(make_user, other_organization):
    """A provider of another clinic (must never see this clinic's patients)."""
    return make_user(Role.PROVIDER, organization=other_organization)


@pytest.fixture
def other_patient(make_user):
    """A patient with nothing to do with the objects under test."""
    return make_user(Role.PATIENT)


@pytest.fixture
def other_staff(make_user, other_organization):
    return make_user(Role.STAFF, organization=other_organization)


@pytest.fixture
def token_client():
    """An APIClient with a freshly issued token (no password hashing: fast for many users)."""
    from rest_framework.test import APIClient

    def make(user) -> APIClient:
        raw, _token = account_services.token_issue(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make
