"""Token look-ups are cached in the shared cache; revocation wins over any cached entry."""

from __future__ import annotations

import socket

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import selectors, services, token_cache
from accounts.tokens import token_digest

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


class RevokeBeforeWrite:
    """The cache, except that a revocation lands just before the first write of an entry:
    between a refresh's (or a fill's) read and its write."""

    def __init__(self, cache, revoke) -> None:
        self._cache = cache
        self._revoke = revoke

    def _race(self, key: str) -> None:
        if self._revoke is not None and key.startswith("tok:"):
            revoke, self._revoke = self._revoke, None
            revoke()

    def set(self, key, *args, **kwargs):
        self._race(key)
        return self._cache.set(key, *args, **kwargs)

    def add(self, key, *args, **kwargs):
        self._race(key)
        return self._cache.add(key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cache, name)


@pytest.mark.redis
def test_a_refresh_racing_with_logout_cannot_overwrite_the_tombstone(
    api, login, patient, settings, monkeypatch
):
    raw = login(patient)
    facts = selectors.token_lookup(raw=raw)
    _user, token = selectors.token_user(facts=facts, raw=raw)
    race = RevokeBeforeWrite(token_cache.cache, lambda: services.token_revoke(token=token))
    monkeypatch.setattr(token_cache, "cache", race)
    token_cache.replace(token_digest(raw), facts)  # what token_touch writes
    assert race._revoke is None  # the revocation did land between read and write
    assert token_cache.get(token_digest(raw)) is token_cache.REVOKED
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/me").status_code == 401


def test_a_fill_racing_with_logout_cannot_overwrite_the_tombstone(api, login, patient, monkeypatch):
    raw = login(patient)
    facts = selectors.token_lookup(raw=raw)
    token_cache.cache.delete(token_cache._key(token_digest(raw)))  # cold: the next one fills
    _user, token = selectors.token_user(facts=facts, raw=raw)
    race = RevokeBeforeWrite(token_cache.cache, lambda: services.token_revoke(token=token))
    monkeypatch.setattr(token_cache, "cache", race)
    selectors.token_lookup(raw=raw)  # read the primary (live), revoked, then fill
    assert race._revoke is None
    assert token_cache.get(token_digest(raw)) is token_cache.REVOKED


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
