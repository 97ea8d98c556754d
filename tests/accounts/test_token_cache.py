"""Token look-ups are cached in the shared cache; revocation wins over any cached entry."""

from __future__ import annotations

import socket

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import selectors, services, token_cache
from accounts.services import token_digest

pytestmark = pytest.mark.django_db


def token_queries(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "accounts_authtoken" in q["sql"]]


def test_a_used_token_is_served_from_the_cache(api, login, patient):
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 200  # fills the cache
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/v1/me").status_code == 200
    assert token_queries(queries) == []


def test_logout_beats_a_cached_entry(api, login, patient):
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 200
    assert token_cache.get(token_digest(token)) is not None
    assert api.post("/api/v1/auth/logout").status_code == 204
    assert api.get("/api/v1/me").status_code == 401


def test_a_lookup_racing_with_logout_cannot_recache_the_token(api, login, patient):
    token = login(patient)
    stale = selectors.token_lookup(raw=token)  # read before the logout commits...
    services.token_revoke(token=selectors.token_user(facts=stale, raw=token)[1])
    token_cache.add(token_digest(token), stale)  # ...and cached after it: add() loses
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 401


def test_password_change_tombstones_every_token_of_the_user(api, login, patient):
    tokens = [login(patient) for _ in range(3)]
    for token in tokens:
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert api.get("/api/v1/me").status_code == 200
    services.user_change_password(
        user=patient, old_password="correct-horse-battery-staple", new_password="x-new-pass-2026!"
    )
    for token in tokens:
        assert token_cache.get(token_digest(token)) is token_cache.REVOKED
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert api.get("/api/v1/me").status_code == 401


def test_deactivation_in_the_console_is_seen_despite_a_cached_token(api, login, patient):
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 200
    patient.is_active = False
    patient.save(update_fields=["is_active"])  # no service: the user row is still checked
    assert api.get("/api/v1/me").status_code == 401


def test_the_cache_can_be_turned_off(api, login, patient, settings):
    settings.TOKEN_CACHE_SECONDS = 0
    token = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    api.get("/api/v1/me")
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/v1/me").status_code == 200
    assert len(token_queries(queries)) == 1


def test_authentication_works_with_the_cache_down(api, login, patient, settings):
    token = login(patient)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "IGNORE_EXCEPTIONS": True,
            },
        },
    }
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 200


def test_authenticating_does_not_count_as_a_write(login, patient):
    """Read-your-writes pins a request to the primary after any write; resolving a token
    (from the cache or not) must not look like one."""
    from medease import context

    raw = login(patient)
    for _ in range(2):  # a miss, then a cache hit
        token = context.begin(context.RequestState(request_id="t"))
        try:
            selectors.token_resolve(raw=raw)
            assert context.current_state().wrote is False
        finally:
            context.end(token)
