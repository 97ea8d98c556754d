"""MFA over the API: enrolment, the two-step login, recovery codes, limits, a clinic's rule.

Codes are computed here from the secret the API hands out (RFC 6238 through
django_otp.oath), with the clock held by time_machine so each step is a fresh code.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from accounts import mfa
from accounts.models import AuthToken, RecoveryCode, Role
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Clock:
    """A held clock; ``step()`` moves to the next 30 s TOTP window (a code not used yet)."""

    def __init__(self, traveller) -> None:
        self.traveller = traveller
        # Ahead of the real clock: rows written before the fixture (users) are in the past.
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.traveller.move_to(self.now)

    def step(self) -> None:
        self.advance(30)


@pytest.fixture
def clock():
    with time_machine.travel(datetime.now(UTC), tick=False) as traveller:
        clock = Clock(traveller)
        traveller.move_to(clock.now)
        yield clock


def code_for(secret: str) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{totp(key, step=30, t0=0, digits=6, drift=0):06d}"


def wrong_code(secret: str) -> str:
    return f"{(int(code_for(secret)) + 1) % 1_000_000:06d}"


def password_login(user) -> dict:
    response = APIClient().post(
        "/api/v1/auth/login", {"email": user.email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def second_step(mfa_token: str, code: str):
    return APIClient().post(
        "/api/v1/auth/login/mfa", {"mfa_token": mfa_token, "code": code}, format="json"
    )


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def enrol(client: APIClient, clock: Clock | None) -> tuple[str, list[str]]:
    """Add and confirm an authenticator; the secret and the recovery codes."""
    start = client.post("/api/v1/auth/mfa/totp")
    assert start.status_code == 201, start.content
    secret = start.json()["secret"]
    confirm = client.post(
        "/api/v1/auth/mfa/totp/confirm", {"code": code_for(secret)}, format="json"
    )
    assert confirm.status_code == 200, confirm.content
    if clock is not None:
        clock.step()
    return secret, confirm.json()["recovery_codes"]


def test_enrol_then_log_in_with_a_code_and_with_recovery_codes(auth_client, staff, clock):
    client = auth_client(staff)
    start = client.post("/api/v1/auth/mfa/totp")
    assert start.status_code == 201
    assert start["Cache-Control"] == "no-store"
    uri, secret = start.json()["otpauth_uri"], start.json()["secret"]
    parsed = urlsplit(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert parsed.path == f"/MedEase%3A{staff.email.replace('@', '%40')}"
    assert parse_qs(parsed.query)["secret"] == [secret]
    # Not confirmed yet: the password alone still logs in.
    assert "token" in password_login(staff)

    wrong = client.post(
        "/api/v1/auth/mfa/totp/confirm", {"code": wrong_code(secret)}, format="json"
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "invalid_code"
    clock.advance(2)  # past django-otp's back-off after one failure
    confirmed = client.post(
        "/api/v1/auth/mfa/totp/confirm", {"code": code_for(secret)}, format="json"
    )
    assert confirmed.status_code == 200, confirmed.content
    assert confirmed["Cache-Control"] == "no-store"
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    # Kept hashed: no stored value contains a code.
    digests = list(RecoveryCode.objects.values_list("digest", flat=True))
    assert len(digests) == 10
    assert not any(code.replace("-", "") in digest for code in codes for digest in digests)
    assert client.post("/api/v1/auth/mfa/totp").status_code == 409
    clock.step()

    # The password gives a challenge, not a token.
    first = password_login(staff)
    assert set(first) == {"mfa_required", "mfa_token", "expires_in"}
    assert first["mfa_required"] is True
    bad = second_step(first["mfa_token"], wrong_code(secret))
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_code"
    clock.step()
    good = second_step(first["mfa_token"], code_for(secret))
    assert good.status_code == 200, good.content
    body = good.json()
    assert set(body) == {"token", "expires_at", "idle_expires_at", "user"}
    assert body["user"]["email"] == staff.email
    assert bearer(body["token"]).get("/api/v1/me").status_code == 200

    # The mfa_token is single use, even with another right code.
    clock.step()
    reused = second_step(first["mfa_token"], code_for(secret))
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "mfa_token_invalid"

    # A recovery code works in place of a code, once (dashes and case do not matter).
    used = second_step(password_login(staff)["mfa_token"], codes[0].upper().replace("-", " "))
    assert used.status_code == 200, used.content
    clock.advance(2)
    again = second_step(password_login(staff)["mfa_token"], codes[0])
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_code"
    status = bearer(used.json()["token"]).get("/api/v1/auth/mfa").json()
    assert status == {"enabled": True, "required": False, "recovery_codes_left": 9}


def test_a_totp_code_is_not_accepted_twice(auth_client, provider, clock):
    secret, _codes = enrol(auth_client(provider), clock)
    code = code_for(secret)
    assert second_step(password_login(provider)["mfa_token"], code).status_code == 200
    clock.advance(2)
    replay = second_step(password_login(provider)["mfa_token"], code)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_code"


def test_an_expired_or_forged_mfa_token_is_refused(auth_client, staff, clock, settings):
    secret, _codes = enrol(auth_client(staff), clock)
    mfa_token = password_login(staff)["mfa_token"]
    clock.advance(settings.MFA_TOKEN_SECONDS + 1)
    expired = second_step(mfa_token, code_for(secret))
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "mfa_token_invalid"
    for forged in ("not-a-token", mfa_token[:-2] + "xx", ""):
        response = second_step(forged, code_for(secret))
        assert response.status_code in (400, 401), forged
        if forged:
            assert response.json()["error"]["code"] == "mfa_token_invalid"


def _race(*calls):
    """Run the calls at the same moment, each in its own thread and database connection."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        try:
            barrier.wait(timeout=10)
            return call().status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(len(calls)) as pool:
        return sorted(pool.map(run, calls))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_mfa_token_gives_one_api_token_when_raced(auth_client, staff):
    _secret, codes = enrol(auth_client(staff), None)
    mfa_token = password_login(staff)["mfa_token"]
    statuses = _race(
        lambda: second_step(mfa_token, codes[0]), lambda: second_step(mfa_token, codes[1])
    )
    assert statuses == [200, 401]
    assert AuthToken.objects.filter(user=staff).count() == 2  # enrolment's and one more


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_recovery_code_signs_in_once_when_raced(auth_client, staff):
    _secret, codes = enrol(auth_client(staff), None)
    first, second = password_login(staff)["mfa_token"], password_login(staff)["mfa_token"]
    statuses = _race(lambda: second_step(first, codes[0]), lambda: second_step(second, codes[0]))
    assert statuses == [200, 401]
    assert RecoveryCode.objects.filter(device__user=staff).count() == 9


def test_a_password_change_ends_a_pending_mfa_login(auth_client, staff, clock):
    from accounts import services

    secret, _codes = enrol(auth_client(staff), clock)
    mfa_token = password_login(staff)["mfa_token"]
    services.user_set_password(user=staff, password=PASSWORD)
    response = second_step(mfa_token, code_for(secret))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "mfa_token_invalid"


def test_wrong_codes_are_limited_per_account_with_retry_after(auth_client, staff, clock, settings):
    # The account's Redis limit alone (django-otp's own back-off is tested below).
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "mfa_user": ("3/15m", False)}
    client = auth_client(staff)
    secret, _codes = enrol(client, clock)
    mfa_token = password_login(staff)["mfa_token"]
    for _ in range(2):
        assert second_step(mfa_token, wrong_code(secret)).status_code == 401
    # Guesses on the enrolment endpoints count toward the same limit.
    regenerate = client.post(
        "/api/v1/auth/mfa/recovery-codes", {"code": wrong_code(secret)}, format="json"
    )
    assert regenerate.status_code == 400
    locked = second_step(mfa_token, code_for(secret))
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "rate_limited"
    assert 0 < int(locked["Retry-After"]) <= 15 * 60


def test_django_otp_back_off_answers_429_until_it_passes(auth_client, staff, clock):
    secret, _codes = enrol(auth_client(staff), clock)
    mfa_token = password_login(staff)["mfa_token"]
    assert second_step(mfa_token, wrong_code(secret)).status_code == 401
    throttled = second_step(mfa_token, code_for(secret))
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) >= 1
    clock.advance(2)
    assert second_step(mfa_token, code_for(secret)).status_code == 200


def test_a_clinic_that_requires_mfa_lets_its_clinicians_only_enrol(
    auth_client, organization, provider, staff, patient, clock
):
    organization.mfa_required = True
    organization.save(update_fields=["mfa_required"])
    client = auth_client(provider)
    for path in ("/api/v1/me", "/api/v1/dashboard", "/api/v1/consultations"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "mfa_enrolment_required"
    assert client.post("/api/v1/ws-ticket").status_code == 403
    assert client.get("/api/v1/auth/mfa").json()["required"] is True
    # Patients are not concerned.
    assert auth_client(patient).get("/api/v1/me").status_code == 200

    enrol(client, clock)
    assert client.get("/api/v1/me").status_code == 200
    # Logout stays open to the one who has not enrolled yet.
    staff_client = auth_client(staff)
    assert staff_client.get("/api/v1/me").status_code == 403
    assert staff_client.post("/api/v1/auth/logout").status_code == 204


def test_patients_cannot_enrol(auth_client, patient):
    response = auth_client(patient).post("/api/v1/auth/mfa/totp")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "mfa_not_available"


def test_confirm_without_a_started_enrolment_is_a_conflict(auth_client, staff):
    response = auth_client(staff).post(
        "/api/v1/auth/mfa/totp/confirm", {"code": "123456"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "mfa_enrolment_not_started"


def test_regenerating_recovery_codes_needs_a_code_and_ends_the_old_ones(auth_client, staff, clock):
    client = auth_client(staff)
    secret, old_codes = enrol(client, clock)
    response = client.post(
        "/api/v1/auth/mfa/recovery-codes", {"code": code_for(secret)}, format="json"
    )
    assert response.status_code == 200
    new_codes = response.json()["recovery_codes"]
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    clock.step()
    assert second_step(password_login(staff)["mfa_token"], old_codes[0]).status_code == 401
    clock.advance(2)
    assert second_step(password_login(staff)["mfa_token"], new_codes[0]).status_code == 200


def test_removing_the_authenticator_needs_a_code(auth_client, staff, clock):
    client = auth_client(staff)
    secret, _codes = enrol(client, clock)
    refused = client.delete("/api/v1/auth/mfa/totp", {"code": wrong_code(secret)}, format="json")
    assert refused.status_code == 400
    clock.advance(2)
    missing = client.delete("/api/v1/auth/mfa/totp", {}, format="json")
    assert missing.status_code == 400
    removed = client.delete("/api/v1/auth/mfa/totp", {"code": code_for(secret)}, format="json")
    assert removed.status_code == 204
    assert "token" in password_login(staff)


def test_staff_reset_of_a_lost_device_ends_sessions_and_mfa(auth_client, staff, clock):
    client = auth_client(staff)
    enrol(client, clock)
    mfa.mfa_reset(user=staff)
    assert client.get("/api/v1/me").status_code == 401
    assert AuthToken.objects.filter(user=staff, revoked_at__isnull=True).count() == 0
    assert "token" in password_login(staff)
    assert not mfa.mfa_enabled(user=staff)


def test_administrators_can_enrol(make_user, auth_client, clock):
    admin = make_user(Role.ADMIN)
    enrol(auth_client(admin), clock)
    assert password_login(admin)["mfa_required"] is True


# --- The console (Django's test client; the real browser is in test_mfa_browser.py) -------

VERIFY_URL = "/admin/accounts/user/mfa/verify/"


def console_password(user) -> tuple[Client, object]:
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": user.email, "password": PASSWORD, "next": "/admin/"},
    )
    return client, response


def confirmed_device(user) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)


def device_code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=30, t0=0, digits=6, drift=0):06d}"


def test_console_login_asks_for_the_code_and_then_verifies_the_session(staff, clock):
    device = confirmed_device(staff)
    client, response = console_password(staff)
    assert response.status_code == 302
    assert response["Location"].startswith(VERIFY_URL)
    assert "_auth_user_id" not in client.session  # not logged in by the password alone
    assert client.get("/admin/").status_code == 302

    wrong = client.post(VERIFY_URL, {"code": "000000" if device_code(device) != "000000" else "1"})
    assert wrong.status_code == 200
    assert "incorrect" in wrong.content.decode()
    assert "_auth_user_id" not in client.session
    clock.advance(2)
    right = client.post(VERIFY_URL + "?next=/admin/", {"code": device_code(device)})
    assert right.status_code == 302 and right["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    # The pending sign-in is spent.
    assert client.get(VERIFY_URL).status_code == 302


def test_console_accepts_a_recovery_code_once(auth_client, staff, clock):
    _secret, codes = enrol(auth_client(staff), clock)
    client, _ = console_password(staff)
    assert client.post(VERIFY_URL, {"code": codes[1]}).status_code == 302
    assert client.get("/admin/").status_code == 200
    clock.advance(2)
    other, _ = console_password(staff)
    again = other.post(VERIFY_URL, {"code": codes[1]})
    assert again.status_code == 200 and "incorrect" in again.content.decode()


def test_console_and_api_share_the_code_limit(staff, clock, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "mfa_user": ("2/15m", False)}
    device = confirmed_device(staff)
    client, _ = console_password(staff)
    for _ in range(2):
        client.post(VERIFY_URL, {"code": f"{(int(device_code(device)) + 7) % 10**6:06d}"})
    locked = client.post(VERIFY_URL, {"code": device_code(device)})
    assert locked.status_code == 200
    assert "Too many wrong codes" in locked.content.decode()
    api_step = second_step(password_login(staff)["mfa_token"], device_code(device))
    assert api_step.status_code == 429


def test_a_console_session_without_its_second_factor_is_refused(staff, clock):
    # Logged in by password, then an authenticator is added elsewhere (the API).
    client, response = console_password(staff)
    assert client.get("/admin/").status_code == 200
    confirmed_device(staff)
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert "_auth_user_id" not in client.session


def test_a_clinic_that_requires_mfa_sends_its_staff_to_the_setup_page(organization, staff):
    organization.mfa_required = True
    organization.save(update_fields=["mfa_required"])
    client, _ = console_password(staff)
    for path in ("/admin/", "/admin/accounts/user/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == "/admin/accounts/user/mfa/setup/"
    setup = client.get("/admin/accounts/user/mfa/setup/")
    assert setup.status_code == 200
    assert b"<svg" in setup.content
    assert "no-store" in setup["Cache-Control"]
    assert client.post("/admin/logout/").status_code in (200, 302)


def test_staff_reset_a_clinicians_mfa_from_the_console(make_user, organization, staff, clock):
    provider = make_user(Role.PROVIDER, organization=organization)
    confirmed_device(provider)
    device = confirmed_device(staff)
    client, _ = console_password(staff)
    client.post(VERIFY_URL, {"code": device_code(device)})
    response = client.post(
        "/admin/accounts/user/",
        {"action": "mfa_reset", "_selected_action": [provider.pk, staff.pk]},
    )
    assert response.status_code == 302
    assert not mfa.mfa_enabled(user=provider)
    assert mfa.mfa_enabled(user=staff)  # not one's own


def test_a_reset_ends_the_console_sessions_it_verified(make_user, organization, staff, clock):
    colleague = make_user(Role.STAFF, organization=organization)
    theirs = confirmed_device(colleague)
    their_console, _ = console_password(colleague)
    their_console.post(VERIFY_URL, {"code": device_code(theirs)})
    assert their_console.get("/admin/").status_code == 200
    mine = confirmed_device(staff)
    client, _ = console_password(staff)
    client.post(VERIFY_URL, {"code": device_code(mine)})
    client.post(
        "/admin/accounts/user/", {"action": "mfa_reset", "_selected_action": [colleague.pk]}
    )
    assert not mfa.mfa_enabled(user=colleague)
    response = their_console.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert "_auth_user_id" not in their_console.session
