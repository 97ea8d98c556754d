"""Authentication's one Redis round trip for a token this process knows: the token's cache
entries, the request's api_user event and the read-your-writes marker in one script
(accounts.token_cache.read_counting), with every guarantee of the separate reads kept."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings
from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts import services, token_cache
from accounts.authentication import BearerTokenAuthentication
from accounts.tokens import token_digest
from medease import context, ratelimit
from medease import db as db_routing
from tests.redis_commands import command_calls, command_delta, ratelimit_redis

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


def _api_user_count(user) -> int:
    counter = ratelimit.counter("api_user", str(user.pk))
    value = ratelimit_redis().get(caches["ratelimit"].make_key(counter.key))
    return int(value) if value is not None else 0


@pytest.fixture
def long_window(settings):
    """api_user counted per day: no window ends between two reads of one test."""
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "api_user": ("1000/d", True)}


def _authenticate(raw: str):
    request = Request(APIRequestFactory().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}"))
    return request, BearerTokenAuthentication().authenticate(request)


def test_a_known_token_costs_one_script_and_counts_once(api, login, patient, long_window):
    raw = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/me").status_code == 200  # this process learns the token's user
    assert token_cache.user_of(token_digest(raw)) == patient.pk
    # Once on the script path, so a Redis that has not seen the script yet loads it here
    # (NOSCRIPT, SCRIPT LOAD, EVALSHA again), not in the request measured below.
    assert api.get("/api/v1/me").status_code == 200
    client = ratelimit_redis()
    count = _api_user_count(patient)
    before = command_calls(client)
    assert api.get("/api/v1/me").status_code == 200
    delta = command_delta(before, command_calls(client))
    # The script's MGET and INCRBY, and no second script (the throttle's) nor a GET.
    assert delta.get("evalsha") == 1 and delta.get("mget") == 1, delta
    assert delta.get("incrby") == 1 and not {"get", "exists"} & set(delta), delta
    assert _api_user_count(patient) == count + 1  # counted once, not by the throttle again


def test_a_token_revoked_elsewhere_stops_at_once_and_counts_nothing(
    api, login, patient, long_window
):
    raw = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    for _ in range(2):  # learnt, then served by the one round trip
        assert api.get("/api/v1/me").status_code == 200
    # Another node revokes it: the tombstone is in Redis, this process still knows the user.
    _user, token = _authenticate(raw)[1]
    services.token_revoke(token=token)
    count = _api_user_count(patient)
    assert api.get("/api/v1/me").status_code == 401
    assert _api_user_count(patient) == count


def test_the_budget_is_shared_with_other_nodes(api, login, patient, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "api_user": ("3/d", True)}
    raw = login(patient)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/me").status_code == 200  # 1, counted by the throttle
    assert api.get("/api/v1/me").status_code == 200  # 2, counted in the token's round trip
    # Another node, with a client of its own, counts the same user's third request.
    counter = ratelimit.counter("api_user", str(patient.pk))
    other = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        assert other.incr(caches["ratelimit"].make_key(counter.key)) == 3
    finally:
        other.close()
    response = api.get("/api/v1/me")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1


def test_the_marker_is_read_in_the_same_round_trip(login, patient, settings, long_window):
    raw = login(patient)
    _authenticate(raw)  # learnt
    settings.DATABASES = {**settings.DATABASES, "replica1": dict(settings.DATABASES["default"])}
    client = ratelimit_redis()
    for wrote, pinned in ((False, False), (True, True)):
        if wrote:
            db_routing.remember_recent_write(patient.pk)
        state_token = context.begin(context.RequestState(request_id="t"))
        try:
            before = command_calls(client)
            _request, (user, _token) = _authenticate(raw)
            delta = command_delta(before, command_calls(client))
            assert user.pk == patient.pk
            assert context.current_state().use_primary is pinned
        finally:
            context.end(state_token)
        assert delta.get("evalsha") == 1 and delta.get("exists") == 1, delta
        assert "get" not in delta, delta


def test_without_a_shared_redis_the_reads_go_their_own_ways(login, patient, settings):
    """The rate-limit cache on another server: no script, each read degrades its own way
    (here the limit's Redis is down, and api_user fails open)."""
    raw = login(patient)
    _authenticate(raw)
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    assert (
        token_cache.read_counting(
            token_digest(raw), counter_key="k", counter_ttl_ms=1000, marker_key=None
        )
        is None
    )
    request, (user, _token) = _authenticate(raw)
    assert user.pk == patient.pk
    assert not hasattr(request, ratelimit.API_USER_COUNTED)  # the throttle counts (or not)
