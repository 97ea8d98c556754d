"""Routing decisions of the primary/replica router (a real replica is exercised in
tests/scale/; here the decisions themselves)."""

from __future__ import annotations

import time

import pytest
from django.db import transaction
from django.test import RequestFactory

from accounts.models import User
from medease import context
from medease import db as db_routing

# No django_db mark on purpose: the test transaction would be an atomic block, which
# routes every read to the primary (test_reads_inside_atomic_blocks shows that rule).
router = db_routing.PrimaryReplicaRouter()


@pytest.fixture
def with_replica(settings):
    settings.DATABASES = {**settings.DATABASES, "replica1": dict(settings.DATABASES["default"])}
    settings.READ_YOUR_WRITES_SECONDS = 1
    settings.REPLICA_RETRY_SECONDS = 0.3
    return "replica1"


@pytest.fixture
def request_state():
    token = context.begin(context.RequestState(request_id="t"))
    yield context.current_state()
    context.end(token)


def test_without_replicas_everything_uses_the_primary():
    assert router.db_for_read(User) == "default"
    assert router.db_for_write(User) == "default"


def test_reads_go_to_the_replica(with_replica, request_state):
    assert router.db_for_read(User) == "replica1"


def test_after_a_write_the_request_reads_the_primary(with_replica, request_state):
    assert router.db_for_read(User) == "replica1"
    assert router.db_for_write(User) == "default"
    assert router.db_for_read(User) == "default"
    assert request_state.wrote


@pytest.mark.django_db(transaction=True)
def test_reads_inside_atomic_blocks_use_the_primary(with_replica, request_state):
    with transaction.atomic():
        assert router.db_for_read(User) == "default"
    assert router.db_for_read(User) == "replica1"


def test_use_primary_in_a_request_and_outside_one(with_replica, request_state):
    with db_routing.use_primary():
        assert router.db_for_read(User) == "default"
    assert router.db_for_read(User) == "replica1"
    context.end(context.begin(None))  # no request state: a Celery task or a shell


def test_use_primary_outside_a_request(with_replica):
    assert context.current_state() is None
    with db_routing.use_primary():
        assert router.db_for_read(User) == "default"
    assert router.db_for_read(User) == "replica1"


def test_an_unhealthy_replica_is_skipped_then_retried(with_replica, request_state):
    db_routing.mark_replica_unhealthy("replica1", reason="test")
    assert router.db_for_read(User) == "default"
    time.sleep(0.35)
    assert router.db_for_read(User) == "replica1"


def test_a_users_recent_write_pins_their_next_requests(with_replica, request_state):
    db_routing.remember_recent_write(41)
    db_routing.pin_if_user_wrote_recently(42)
    assert router.db_for_read(User) == "replica1"  # another user is not pinned
    db_routing.pin_if_user_wrote_recently(41)
    assert router.db_for_read(User) == "default"


def test_the_pin_expires_after_the_window(with_replica, request_state):
    db_routing.remember_recent_write(41)
    time.sleep(1.1)
    db_routing.pin_if_user_wrote_recently(41)
    assert router.db_for_read(User) == "replica1"


def test_middleware_sets_a_cookie_after_a_write_and_honours_it(with_replica):
    seen = {}

    def writing_view(request):
        db_routing.note_write()
        from django.http import HttpResponse

        return HttpResponse("ok")

    def reading_view(request):
        seen["alias"] = router.db_for_read(User)
        from django.http import HttpResponse

        return HttpResponse("ok")

    factory = RequestFactory()

    def run(view, request):
        token = context.begin(context.RequestState())
        try:
            return db_routing.ReadYourWritesMiddleware(view)(request)
        finally:
            context.end(token)

    response = run(writing_view, factory.post("/x"))
    cookie = response.cookies[db_routing.RECENT_WRITE_COOKIE]
    assert int(cookie["max-age"]) >= 1
    request = factory.get("/y")
    request.COOKIES[db_routing.RECENT_WRITE_COOKIE] = "1"
    run(reading_view, request)
    assert seen["alias"] == "default"
    run(reading_view, factory.get("/z"))
    assert seen["alias"] == "replica1"


def test_migrations_only_run_on_the_primary(with_replica):
    assert router.allow_migrate("default", "accounts")
    assert not router.allow_migrate("replica1", "accounts")
