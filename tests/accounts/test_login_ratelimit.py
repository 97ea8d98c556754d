"""Login and registration rate limits: per account, per IP, shared through the cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings as django_settings

from accounts.models import Role
from medease import ratelimit
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def login(api, email, password, ip="10.0.0.1"):
    return api.post(
        "/api/v1/auth/login",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR=ip,
    )


@pytest.fixture
def limits(settings):
    def set_limit(name: str, rate: str):
        settings.RATE_LIMITS = {**settings.RATE_LIMITS, name: (rate, settings.RATE_LIMITS[name][1])}

    return set_limit


def test_account_is_locked_after_ten_failures_even_for_the_right_password(api, patient):
    for attempt in range(10):
        # Different IPs: the per-account limit must hold whatever the address.
        assert login(api, patient.email, "wrong", ip=f"10.0.1.{attempt}").status_code == 401
    response = login(api, patient.email, PASSWORD, ip="10.0.2.1")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response["Retry-After"]) in range(1, 15 * 60 + 1)


def test_the_account_limit_is_per_account(api, patient, make_user):
    other = make_user()
    for _ in range(10):
        login(api, patient.email, "wrong")
    assert login(api, other.email, PASSWORD, ip="10.9.9.9").status_code == 200


def test_the_account_key_ignores_email_case(api, patient):
    for _ in range(10):
        login(api, patient.email.upper(), "wrong")
    assert login(api, patient.email, PASSWORD).status_code == 429


def test_successful_logins_do_not_count(api, patient, limits):
    limits("login_account", "3/15m")
    for _ in range(5):
        assert login(api, patient.email, PASSWORD).status_code == 200


def test_ip_limit_across_accounts(api, make_user, limits):
    limits("login_ip", "5/15m")
    for n in range(5):
        assert login(api, f"nobody{n}@example.test", "wrong", ip="10.5.5.5").status_code == 401
    assert login(api, "someone@example.test", "wrong", ip="10.5.5.5").status_code == 429
    assert login(api, "someone@example.test", "wrong", ip="10.5.5.6").status_code == 401


def test_registration_limit_per_ip(api, limits):
    limits("register_ip", "2/h")
    for n in range(2):
        response = api.post(
            "/api/v1/auth/register",
            {"email": f"r{n}@example.test", "password": PASSWORD, "full_name": "R"},
            format="json",
            REMOTE_ADDR="10.7.7.7",
        )
        assert response.status_code == 201
    blocked = api.post(
        "/api/v1/auth/register",
        {"email": "r9@example.test", "password": PASSWORD, "full_name": "R"},
        format="json",
        REMOTE_ADDR="10.7.7.7",
    )
    assert blocked.status_code == 429
    assert "Retry-After" in blocked


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_login_fails_closed_when_the_rate_limit_cache_is_down(api, patient, settings):
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    response = login(api, patient.email, PASSWORD)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in response


def test_general_api_limit_fails_open_when_the_cache_is_down(auth_client, patient, settings):
    client = auth_client(patient)
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    assert client.get("/api/v1/me").status_code == 200


def test_general_api_limit_per_user(auth_client, patient, limits):
    client = auth_client(patient)
    limits("api_user", "3/m")
    statuses = [client.get("/api/v1/me").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def _account_with_a_long_window(make_user):
    """A patient whose login_account window has minutes left: the two processes below must
    count in the same fixed window, which a window ending mid-test would split."""
    _, period = ratelimit._split_rate(django_settings.RATE_LIMITS["login_account"][0])
    for n in range(1000):
        email = f"patient-w{n}@example.test"
        now = int(time.time())
        if ratelimit._window_end(email, period, now) - now > 120:
            return make_user(Role.PATIENT, email=email)
    raise AssertionError("no e-mail address with a long enough window")


@pytest.mark.redis
def test_the_counter_is_shared_across_processes(api, make_user):
    """Another process counts failures for the same account in the same Redis: together
    they reach the limit (what a second web node would do)."""
    patient = _account_with_a_long_window(make_user)
    for _ in range(7):
        login(api, patient.email, "wrong")
    script = textwrap.dedent(
        f"""
        import django
        django.setup()
        from django.test import RequestFactory
        from accounts import limits
        request = RequestFactory().post("/api/v1/auth/login")
        for _ in range(3):
            limits.password_attempt_failed(request, email={patient.email!r})
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert django_settings.REDIS_URL
    assert login(api, patient.email, PASSWORD).status_code == 429
