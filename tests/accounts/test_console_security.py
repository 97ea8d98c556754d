"""The staff console under attack: login limits shared with the API, password guessing."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-long-passphrase-42"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def console_user(make_user, organization):
    return make_user(Role.STAFF, organization=organization)


def console_login(email: str, password: str, ip: str = "10.0.0.1"):
    """Post the real admin login view; returns (response, client)."""
    client = Client(REMOTE_ADDR=ip)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": email, "password": password, "next": "/admin/"},
    )
    return response, client


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def api_login(api, email: str, password: str, ip: str = "10.0.0.1"):
    return api.post(
        "/api/v1/auth/login",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR=ip,
    )


def test_console_login_works(console_user):
    response, client = console_login(console_user.email, PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def test_console_locks_the_account_after_ten_failures_even_for_the_right_password(console_user):
    for attempt in range(10):
        response, client = console_login(console_user.email, "wrong", ip=f"10.0.1.{attempt}")
        assert response.status_code == 200
        assert not logged_in(client)
    response, client = console_login(console_user.email, PASSWORD, ip="10.0.2.1")
    assert response.status_code == 200
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()


def test_console_failures_lock_the_api_login(api, console_user):
    for _ in range(10):
        console_login(console_user.email.upper(), "wrong")
    response = api_login(api, console_user.email, PASSWORD, ip="10.9.9.9")
    assert response.status_code == 429
    assert int(response["Retry-After"]) in range(1, 15 * 60 + 1)


def test_api_failures_lock_the_console_login(api, console_user):
    for _ in range(10):
        assert api_login(api, console_user.email, "wrong").status_code == 401
    response, client = console_login(console_user.email, PASSWORD, ip="10.9.9.9")
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()


def test_console_per_ip_limit_across_accounts(console_user, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_ip": ("5/15m", False)}
    for n in range(5):
        console_login(f"nobody{n}@example.test", "wrong", ip="10.5.5.5")
    response, client = console_login(console_user.email, PASSWORD, ip="10.5.5.5")
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()
    _response, client = console_login(console_user.email, PASSWORD, ip="10.5.5.6")
    assert logged_in(client)


def test_a_patients_right_password_on_the_console_is_not_counted(patient, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_account": ("2/15m", False)}
    for _ in range(3):
        _response, client = console_login(patient.email, PASSWORD)
        assert not logged_in(client)  # not staff
    api = Client(REMOTE_ADDR="10.0.0.1")
    response = api.post(
        "/api/v1/auth/login",
        {"email": patient.email, "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 200


# --- auth/password: guessing the current password ----------------------------------------


def change_password(client, old: str, new: str = NEW_PASSWORD):
    return client.post(
        "/api/v1/auth/password", {"old_password": old, "new_password": new}, format="json"
    )


def test_guessing_the_current_password_is_limited(auth_client, patient):
    client = auth_client(patient)
    for _ in range(10):
        assert change_password(client, "wrong").status_code == 400
    response = change_password(client, PASSWORD)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response["Retry-After"]) in range(1, 15 * 60 + 1)
    patient.refresh_from_db()
    assert patient.check_password(PASSWORD)


def test_password_change_guesses_count_toward_the_login_lockout(api, auth_client, patient):
    client = auth_client(patient)
    for _ in range(10):
        change_password(client, "wrong")
    assert api_login(api, patient.email, PASSWORD, ip="10.9.9.9").status_code == 429


def test_a_right_password_change_is_not_counted(auth_client, patient, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_account": ("1/15m", False)}
    assert change_password(auth_client(patient), PASSWORD).status_code == 204
    # Signed out by the change; sign in with the new password and change it back.
    api = APIClient()
    response = api_login(api, patient.email, NEW_PASSWORD)
    assert response.status_code == 200
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    assert change_password(api, NEW_PASSWORD, PASSWORD).status_code == 204
