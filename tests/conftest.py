"""Shared fixtures. With DATABASE_URL/REDIS_URL set (CI always) tests run on real PostgreSQL
and Redis; MEDEASE_REQUIRE_SERVICES=1 turns "not reachable" into a failed run."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import connection
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from medease import db as db_routing
from medease.cache import breaker as cache_breaker
from messaging import consumers as chat_consumers

PASSWORD = "correct-horse-battery-staple"

# The browser fixtures (``browser``, ``step``) for every test that drives Chromium.
pytest_plugins = ["tests.browser"]


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def on_redis() -> bool:
    return "redis" in settings.CACHES["default"]["BACKEND"].lower()


def pytest_collection_modifyitems(config, items):
    """Tests marked postgres/redis skip on the embedded default, and fail under CI."""
    if settings.REQUIRE_SERVICES:
        return
    for item in items:
        if "postgres" in item.keywords and not settings.DATABASE_URL:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL (DATABASE_URL unset)"))
        if "redis" in item.keywords and not settings.REDIS_URL:
            item.add_marker(pytest.mark.skip(reason="needs Redis (REDIS_URL unset)"))


@pytest.fixture(scope="session", autouse=True)
def _services_reachable(django_db_setup, django_db_blocker):
    """Under MEDEASE_REQUIRE_SERVICES, fail the whole run if PostgreSQL or Redis is down."""
    if not settings.REQUIRE_SERVICES:
        return
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql", "expected PostgreSQL under CI"
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    caches["ratelimit"].set("medease-ci-ping", 1, 5)  # raises if Redis is unreachable
    assert caches["ratelimit"].get("medease-ci-ping") == 1


def _clear_cache(alias: str) -> None:
    cache = caches[alias]
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")  # only keys under our KEY_PREFIX, not the whole Redis
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def _fresh_state():
    # A test that points a cache at a dead Redis must not leave the breaker open.
    cache_breaker.reset()
    for alias in settings.CACHES:
        _clear_cache(alias)
    db_routing._replica_skip_until.clear()
    yield
    cache_breaker.reset()
    # The chat send lanes keep their connections between sends: not past a test, whose
    # database is flushed or dropped next.
    chat_consumers.close_lane_connections()


ACCOUNTS_TESTS = Path(__file__).parent / "accounts"


@pytest.fixture(autouse=True)
def _cheap_password_hashing(request, settings):
    """Argon2 at its minimum cost (tests/hashers.py): a user made at the product's cost
    took seconds on the shared CI box. Directories that want MD5 still override this; the
    accounts suite, which tests hashing itself, keeps the product's hashers."""
    if ACCOUNTS_TESTS in Path(request.node.path).parents:
        return
    settings.PASSWORD_HASHERS = [
        "tests.hashers.FastArgon2PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]


@pytest.fixture(autouse=True)
def _audit_sync(settings):
    """Audit rows are in the table when a request returns, as tests that count them expect;
    the stream path's own tests (tests/medease/test_audit_stream.py) switch it back on."""
    settings.AUDIT_WRITE_PATH = "sync"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def organization(db):
    return account_services.organization_create(
        name="Riverside Clinic", slug="riverside", timezone_name="America/New_York"
    )


@pytest.fixture
def other_organization(db):
    return account_services.organization_create(
        name="Hilltop Clinic", slug="hilltop", timezone_name="Europe/Paris"
    )


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(role: str = Role.PATIENT, organization=None, **kwargs):
        counter["n"] += 1
        kwargs.setdefault("email", f"{role}{counter['n']}@example.test")
        kwargs.setdefault("full_name", f"{role.title()} {counter['n']}")
        kwargs.setdefault("password", PASSWORD)
        if role == Role.PROVIDER:
            kwargs.setdefault("specialty", "General Practice")
        return account_services.user_create(role=role, organization=organization, **kwargs)

    return make


@pytest.fixture
def patient(make_user):
    return make_user(Role.PATIENT)


@pytest.fixture
def provider(make_user, organization):
    return make_user(Role.PROVIDER, organization=organization)


@pytest.fixture
def staff(make_user, organization):
    return make_user(Role.STAFF, organization=organization)


@pytest.fixture
def login(api):
    """Log a user in through the API; returns the raw token."""

    def do(user, password: str = PASSWORD) -> str:
        response = api.post(
            "/api/v1/auth/login", {"email": user.email, "password": password}, format="json"
        )
        assert response.status_code == 200, response.content
        return response.json()["token"]

    return do


@pytest.fixture
def auth_client(login):
    """An APIClient authenticated as the given user."""

    def make(user) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)}")
        return client

    return make
