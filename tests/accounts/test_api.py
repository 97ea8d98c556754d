"""Register, login, logout, me, password change: the accounts API contract."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from accounts.models import AuthToken, Role, User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_register_creates_a_patient(api):
    response = api.post(
        "/api/v1/auth/register",
        {"email": "New.Person@Example.test", "password": PASSWORD, "full_name": "New Person"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"id", "email", "full_name", "role", "organization", "timezone"}
    assert body["email"] == "new.person@example.test"
    assert body["role"] == "patient"
    assert body["organization"] is None
    user = User.objects.get(pk=body["id"])
    assert user.patient_profile.deleted_at is None
    assert user.password.startswith("argon2")


def test_register_ignores_a_requested_role(api):
    response = api.post(
        "/api/v1/auth/register",
        {"email": "sneaky@example.test", "password": PASSWORD, "full_name": "S", "role": "admin"},
        format="json",
    )
    assert response.status_code == 201
    assert User.objects.get(email="sneaky@example.test").role == Role.PATIENT


def test_register_rejects_a_weak_password_with_field_errors(api):
    response = api.post(
        "/api/v1/auth/register",
        {"email": "weak@example.test", "password": "123", "full_name": "Weak"},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "password" in error["fields"]
    assert not User.objects.filter(email="weak@example.test").exists()


def test_register_duplicate_email_is_a_conflict_whatever_the_case(api, patient):
    response = api.post(
        "/api/v1/auth/register",
        {"email": patient.email.upper(), "password": PASSWORD, "full_name": "Twin"},
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "email_taken"


def test_register_with_missing_fields_lists_them(api):
    response = api.post("/api/v1/auth/register", {"email": "not-an-email"}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"email", "password", "full_name"}


def test_register_with_unknown_timezone_is_rejected(api):
    response = api.post(
        "/api/v1/auth/register",
        {
            "email": "tz@example.test",
            "password": PASSWORD,
            "full_name": "T",
            "timezone": "Mars/Base",
        },
        format="json",
    )
    assert response.status_code == 400
    assert "timezone" in response.json()["error"]["fields"]


def test_login_returns_token_expiry_and_user(api, patient):
    response = api.post(
        "/api/v1/auth/login", {"email": patient.email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["id"] == patient.id
    assert len(body["token"]) >= 40
    assert body["expires_at"]
    # Only a digest is stored, never the token itself.
    stored = AuthToken.objects.get(user=patient)
    assert body["token"] not in stored.digest
    assert len(stored.digest) == 64


def test_wrong_password_and_unknown_email_get_the_same_answer(api, patient):
    wrong = api.post(
        "/api/v1/auth/login", {"email": patient.email, "password": "nope-nope"}, format="json"
    )
    unknown = api.post(
        "/api/v1/auth/login",
        {"email": "ghost@example.test", "password": "nope-nope"},
        format="json",
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_me_requires_a_token(api):
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_me_with_a_token(auth_client, provider):
    response = auth_client(provider).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {
        "id": provider.id,
        "email": provider.email,
        "full_name": provider.full_name,
        "role": "provider",
        "organization": provider.organization_id,
        "timezone": "UTC",
    }


def test_me_patch_updates_name_and_timezone(auth_client, patient):
    client = auth_client(patient)
    response = client.patch(
        "/api/v1/me", {"full_name": "Renamed", "timezone": "Asia/Tokyo"}, format="json"
    )
    assert response.status_code == 200
    patient.refresh_from_db()
    assert (patient.full_name, patient.timezone) == ("Renamed", "Asia/Tokyo")


def test_garbage_token_is_401(api):
    api.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_logout_revokes_only_that_token(api, login, patient):
    first, second = login(patient), login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {first}")
    assert api.post("/api/v1/auth/logout").status_code == 204
    assert api.get("/api/v1/me").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {second}")
    assert api.get("/api/v1/me").status_code == 200


def test_token_expires_after_idle_timeout(api, login, patient, settings):
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    idle = settings.TOKEN_IDLE_TIMEOUT
    with time_machine.travel(timezone.now() + idle - timedelta(seconds=30), tick=False):
        assert api.get("/api/v1/me").status_code == 200  # use slides the idle window
    with time_machine.travel(timezone.now() + idle * 2 - timedelta(seconds=60), tick=False):
        assert api.get("/api/v1/me").status_code == 200
    with time_machine.travel(timezone.now() + idle * 3 + timedelta(seconds=60), tick=False):
        assert api.get("/api/v1/me").status_code == 401


def test_token_expires_at_absolute_lifetime_even_when_used(api, login, patient, settings):
    settings.TOKEN_IDLE_TIMEOUT = timedelta(hours=1)
    settings.TOKEN_ABSOLUTE_LIFETIME = timedelta(hours=2)
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    start = timezone.now()
    for minutes in (50, 100):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            assert api.get("/api/v1/me").status_code == 200
    with time_machine.travel(start + timedelta(minutes=121), tick=False):
        assert api.get("/api/v1/me").status_code == 401


def test_password_change_revokes_every_token(api, login, patient):
    token_a, token_b = login(patient), login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_a}")
    response = api.post(
        "/api/v1/auth/password",
        {"old_password": PASSWORD, "new_password": "a-new-long-passphrase-42"},
        format="json",
    )
    assert response.status_code == 204
    for token in (token_a, token_b):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert api.get("/api/v1/me").status_code == 401
    assert login(patient, password="a-new-long-passphrase-42")


def test_password_changed_outside_the_api_also_revokes_tokens(api, login, patient):
    token = login(patient)
    patient.set_password("changed-in-the-admin-99")
    patient.save()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 401


def test_password_change_with_wrong_old_password(auth_client, patient):
    response = auth_client(patient).post(
        "/api/v1/auth/password",
        {"old_password": "wrong", "new_password": "a-new-long-passphrase-42"},
        format="json",
    )
    assert response.status_code == 400
    assert "old_password" in response.json()["error"]["fields"]


def test_deactivated_user_token_stops_working(api, login, patient):
    from accounts import services

    token = login(patient)
    services.user_deactivate(user=patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 401


def test_a_patient_reading_their_profile_is_audited(auth_client, patient, provider):
    from medease.models import AuditEvent

    auth_client(patient).get("/api/v1/me")
    auth_client(provider).get("/api/v1/me")  # a provider's profile is not PHI
    events = list(AuditEvent.objects.values_list("user_id", "object_type", "patient_id"))
    assert events == [(patient.pk, "patient_profile", patient.pk)]
