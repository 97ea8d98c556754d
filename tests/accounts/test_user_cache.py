"""The token cache's user snapshot: authentication reads no user row while it is current,
and every change to the user or its clinic outdates it at once, on every node."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import selectors, services, token_cache
from accounts.models import Role
from accounts.tokens import token_digest

pytestmark = pytest.mark.django_db


def user_queries(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if 'FROM "accounts_user"' in q["sql"]]


@pytest.fixture
def cached(api, login):
    """Log the user in and make one request, so the token and its user are cached."""

    def make(user) -> str:
        raw = login(user)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert api.get("/api/v1/me").status_code == 200
        assert token_cache.read(token_digest(raw)).user is not None
        return raw

    return make


def test_a_cached_user_is_not_read_from_the_database(api, cached, provider):
    cached(provider)
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["email"] == provider.email
    assert user_queries(queries) == []


def test_the_password_hash_is_not_cached_but_still_checked(api, cached, patient):
    raw = cached(patient)
    snapshot = token_cache.read(token_digest(raw)).user
    assert "password" not in snapshot.__dict__
    # A password change checks the old password against the row, loaded on demand.
    response = api.post(
        "/api/v1/auth/password",
        {"old_password": "wrong-password-here", "new_password": "x-new-pass-2026!"},
        format="json",
    )
    assert response.status_code == 400
    response = api.post(
        "/api/v1/auth/password",
        {"old_password": "correct-horse-battery-staple", "new_password": "x-new-pass-2026!"},
        format="json",
    )
    assert response.status_code in (200, 204), response.content


def test_console_deactivation_makes_the_next_request_401(api, cached, provider, staff):
    cached(provider)
    provider.is_active = False
    # What the console's user form calls.
    services.user_save_by_staff(user=provider, changed_fields=["is_active"])
    assert api.get("/api/v1/me").status_code == 401


def test_a_deactivation_through_a_plain_save_is_seen_too(api, cached, provider):
    raw = cached(provider)
    provider.is_active = False
    provider.save(update_fields=["is_active"])  # no service, no revocation
    assert token_cache.read(token_digest(raw)).user is None
    assert api.get("/api/v1/me").status_code == 401


def test_console_role_and_clinic_changes_end_the_token(api, cached, staff, other_organization):
    cached(staff)
    staff.organization = other_organization
    services.user_save_by_staff(user=staff, changed_fields=["organization"])
    assert api.get("/api/v1/me").status_code == 401


def test_a_console_name_change_is_seen_without_revoking(api, cached, provider):
    cached(provider)
    provider.full_name = "Dr Renamed"
    services.user_save_by_staff(user=provider, changed_fields=["full_name"])
    response = api.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["full_name"] == "Dr Renamed"


def test_a_profile_change_is_visible_on_the_next_get_me(api, cached, patient):
    cached(patient)
    response = api.patch(
        "/api/v1/me", {"full_name": "New Name", "timezone": "Europe/Paris"}, format="json"
    )
    assert response.status_code == 200
    body = api.get("/api/v1/me").json()
    assert (body["full_name"], body["timezone"]) == ("New Name", "Europe/Paris")


def test_a_clinic_setting_change_is_seen_at_once(api, cached, provider, organization):
    raw = cached(provider)
    organization.mfa_required = True
    organization.save()
    assert token_cache.read(token_digest(raw)).user is None
    user, _token = selectors.token_resolve(raw=raw)
    assert user.organization.mfa_required is True


def test_a_user_cached_on_one_node_is_outdated_by_another(api, cached, patient, monkeypatch):
    """Two cache clients (two web nodes) on the same Redis: node B's change, node A's read."""
    node_a = token_cache.cache
    node_b = caches.create_connection("default")
    raw = cached(patient)  # cached through node A
    monkeypatch.setattr(token_cache, "cache", node_b)
    services.user_update_profile(user=patient, full_name="Changed On B")
    monkeypatch.setattr(token_cache, "cache", node_a)
    assert token_cache.read(token_digest(raw)).user is None
    assert api.get("/api/v1/me").json()["full_name"] == "Changed On B"


def test_a_snapshot_read_before_a_change_and_stored_after_it_is_refused(cached, patient):
    raw = cached(patient)
    digest = token_digest(raw)
    before = token_cache.read(digest)
    stale = before.user
    # The change commits (and outdates snapshots) between a request's read and its store.
    services.user_update_profile(user=patient, full_name="After")
    token_cache.user_add(digest, stale, version=before.user_version)
    assert token_cache.read(digest).user is None
    user, _token = selectors.token_resolve(raw=raw)
    assert user.full_name == "After"


def test_logout_drops_the_snapshot(api, cached, make_user):
    user = make_user(Role.PATIENT)
    raw = cached(user)
    assert api.post("/api/v1/auth/logout").status_code == 204
    assert token_cache.read(token_digest(raw)).facts is token_cache.REVOKED
    assert api.get("/api/v1/me").status_code == 401


def test_a_snapshot_stored_before_the_change_commits_is_outdated_on_commit(
    cached, patient, django_capture_on_commit_callbacks
):
    raw = cached(patient)
    digest = token_digest(raw)
    old_row = token_cache.read(digest).user
    with django_capture_on_commit_callbacks(execute=True):
        services.user_update_profile(user=patient, full_name="Committed")
        # Before the commit another request reads the row as it still is for others and
        # stores it under the version current then.
        token_cache.user_add(digest, old_row, version=token_cache.read(digest).user_version)
        assert token_cache.read(digest).user is not None
    assert token_cache.read(digest).user is None
