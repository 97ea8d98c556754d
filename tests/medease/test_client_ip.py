"""The client address: X-Forwarded-For is believed only from TRUSTED_PROXIES, everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import RequestFactory

from medease.models import AuditEvent
from medease.ratelimit import client_ip
from messaging.scope import ScopeRequest

ROOT = Path(__file__).resolve().parents[2]


def request(peer: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_nothing_is_trusted_by_default_not_even_loopback(settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip(request("127.0.0.1", "203.0.113.9")) == "127.0.0.1"
    assert client_ip(request("198.51.100.4", "203.0.113.9")) == "198.51.100.4"


def test_a_peer_outside_the_trusted_proxies_is_the_client(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(request("198.51.100.4", "203.0.113.9, 10.0.0.2")) == "198.51.100.4"


def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "127.0.0.1"]
    # The client wrote "6.6.6.6"; the proxies appended the address they saw.
    assert client_ip(request("10.0.0.5", "6.6.6.6, 203.0.113.7")) == "203.0.113.7"
    assert client_ip(request("127.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.9")) == "203.0.113.7"
    assert client_ip(request("10.0.0.5", "2001:db8::1")) == "2001:db8::1"


def test_edge_cases_behind_a_trusted_proxy(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(request("10.0.0.5")) == "10.0.0.5"  # no header: the peer
    assert client_ip(request("10.0.0.5", "10.1.1.1, 10.2.2.2")) == "10.1.1.1"  # all internal
    # A proxy that appended garbage proves nothing: fall back to the peer.
    assert client_ip(request("10.0.0.5", "203.0.113.7, not-an-ip")) == "10.0.0.5"


@pytest.mark.django_db
def test_a_spoofed_header_does_not_reset_the_per_ip_login_limit(api, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_ip": ("3/15m", False)}
    statuses = [
        api.post(
            "/api/v1/auth/login",
            {"email": f"nobody{n}@example.test", "password": "wrong"},
            format="json",
            REMOTE_ADDR="10.0.0.5",
            HTTP_X_FORWARDED_FOR=f"6.6.6.{n}, 203.0.113.7",
        ).status_code
        for n in range(4)
    ]
    assert statuses == [401, 401, 401, 429]


@pytest.mark.django_db
def test_audit_rows_record_the_resolved_client(auth_client, patient, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    client = auth_client(patient)
    response = client.get(
        "/api/v1/me", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7"
    )
    assert response.status_code == 200
    assert AuditEvent.objects.get(object_type="patient_profile").ip == "203.0.113.7"


def test_websocket_scopes_resolve_the_client_the_same_way(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    scope = {
        "client": ("127.0.0.1", 50000),
        "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")],
    }
    assert client_ip(ScopeRequest(scope)) == "203.0.113.7"
    settings.TRUSTED_PROXIES = []
    assert client_ip(ScopeRequest(scope)) == "127.0.0.1"


def test_a_malformed_trusted_proxy_stops_start_up():
    env = {
        **{k: v for k, v in os.environ.items() if k != "MEDEASE_REQUIRE_SERVICES"},
        "TRUSTED_PROXIES": "10.0.0.0/8,proxy.internal",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr
    assert "proxy.internal" in result.stderr
