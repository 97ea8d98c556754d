"""Replica health and the routing rules around it (medease/db/), without a real replica:
the monitor's lag arithmetic, when a replica is in rotation, the retry on the primary, and
which writes and paths pin a request. A real replica is exercised in tests/scale/."""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError
from django.http import HttpResponse
from django.test import RequestFactory

from accounts.models import User
from medease import context
from medease import db as db_routing
from medease.db import router as router_module
from medease.db import state as state_module
from medease.models import AuditEvent

router = db_routing.PrimaryReplicaRouter()


@pytest.fixture
def request_state():
    token = context.begin(context.RequestState(request_id="t"))
    yield context.current_state()
    context.end(token)


@pytest.fixture
def monitor():
    monitor = db_routing.ReplicaMonitor()
    yield monitor
    monitor.stop()


@pytest.fixture
def remote_replica(settings, monkeypatch):
    """A replica on another server, whose health the test decides."""
    settings.DATABASES = {
        **settings.DATABASES,
        "replica1": {**settings.DATABASES["default"], "HOST": "10.255.255.1", "PORT": "5999"},
    }
    settings.MAX_REPLICA_LAG = 2.0
    statuses: dict[str, db_routing.ReplicaStatus] = {}
    monkeypatch.setattr(db_routing.monitor, "ensure_running", lambda: None)
    monkeypatch.setattr(db_routing.monitor, "_status", statuses)
    monkeypatch.setattr(router_module, "_connectable", lambda alias: True)
    monkeypatch.setattr(router_module, "_holds_connection", lambda alias: False)

    def set_status(*, reachable: bool = True, lag: float | None = 0.0, age: float = 0.0):
        statuses["replica1"] = db_routing.ReplicaStatus(
            alias="replica1",
            reachable=reachable,
            lag_seconds=lag,
            checked_at=time.monotonic() - age,
        )

    return set_status


# --- Lag arithmetic -------------------------------------------------------------------


def test_a_replica_that_replayed_the_last_primary_sample_has_no_lag(monitor):
    now = time.monotonic()
    monitor._primary_history.extend([(now - 2, 100), (now - 1, 200)])
    assert monitor._lag(200, pending_age=7.0, now=now) == 0.0
    assert monitor._lag(250, pending_age=None, now=now) == 0.0


def test_lag_is_bounded_by_the_newest_sample_the_replica_has_replayed(monitor):
    now = time.monotonic()
    monitor._primary_history.extend([(now - 3, 100), (now - 2, 200), (now - 1, 300)])
    # Caught up with what it received, so only the samples say how old its data is:
    # this is how a replica whose WAL stream stopped shows its lag.
    assert monitor._lag(250, pending_age=None, now=now) == pytest.approx(2, abs=0.01)
    assert monitor._lag(100, pending_age=None, now=now) == pytest.approx(3, abs=0.01)


def test_a_finer_bound_from_the_replica_wins(monitor):
    """Sparse samples (a starved monitor thread) must not overstate the lag."""
    now = time.monotonic()
    monitor._primary_history.extend([(now - 4, 100), (now - 0.1, 300)])
    assert monitor._lag(250, pending_age=0.6, now=now) == 0.6
    # Both are upper bounds: whichever is smaller is the better one.
    assert monitor._lag(250, pending_age=9.0, now=now) == pytest.approx(4, abs=0.01)


def test_a_replica_behind_every_sample_is_at_least_that_old(monitor):
    now = time.monotonic()
    monitor._primary_history.extend([(now - 5, 100), (now - 1, 200)])
    assert monitor._lag(50, pending_age=1.0, now=now) == pytest.approx(5, abs=0.01)
    assert monitor._lag(50, pending_age=9.0, now=now) == 9.0


def test_without_primary_samples_the_replicas_own_estimate_is_used(monitor):
    assert monitor._lag(50, pending_age=1.5, now=time.monotonic()) == 1.5


def test_a_status_is_healthy_within_max_replica_lag(settings):
    settings.MAX_REPLICA_LAG = 2.0
    status = db_routing.ReplicaStatus
    assert status("r", reachable=True, lag_seconds=2.0, checked_at=0).healthy
    assert not status("r", reachable=True, lag_seconds=2.1, checked_at=0).healthy
    assert not status("r", reachable=False, lag_seconds=None, checked_at=0).healthy


# --- Rotation ----------------------------------------------------------------------------


def test_a_healthy_replica_takes_reads(remote_replica, request_state):
    remote_replica(lag=0.5)
    assert router.db_for_read(User) == "replica1"


def test_a_lagging_replica_is_skipped_and_readmitted_when_it_catches_up(
    remote_replica, request_state
):
    remote_replica(lag=5.0)
    assert router.db_for_read(User) == "default"
    remote_replica(lag=0.1)
    assert router.db_for_read(User) == "replica1"


def test_an_unreachable_replica_is_skipped(remote_replica, request_state):
    remote_replica(reachable=False, lag=None)
    assert router.db_for_read(User) == "default"


def test_a_status_the_monitor_stopped_refreshing_is_not_trusted(
    remote_replica, request_state, settings
):
    settings.REPLICA_CHECK_INTERVAL = 1
    settings.DATABASE_REPLICA_TIMEOUT = 2
    remote_replica(lag=0.0, age=60)
    assert router.db_for_read(User) == "default"


def test_a_replica_that_refuses_connections_sends_the_read_to_the_primary(
    remote_replica, request_state, monkeypatch
):
    remote_replica(lag=0.0)
    monkeypatch.setattr(router_module, "_connectable", lambda alias: False)
    assert router.db_for_read(User) == "default"


# --- What pins a request to the primary ---------------------------------------------------


def test_audit_log_writes_do_not_pin_the_request(request_state):
    router.db_for_write(AuditEvent)
    assert not request_state.wrote
    router.db_for_write(User)
    assert request_state.wrote and request_state.use_primary


def _run_middleware(view, request):
    token = context.begin(context.RequestState())
    try:
        return db_routing.ReadYourWritesMiddleware(view)(request)
    finally:
        context.end(token)


def test_authentication_requests_read_the_primary(remote_replica):
    remote_replica(lag=0.0)
    seen = {}

    def view(request):
        seen[request.path] = router.db_for_read(User)
        return HttpResponse("ok")

    factory = RequestFactory()
    _run_middleware(view, factory.post("/api/v1/auth/login"))
    _run_middleware(view, factory.get("/api/v1/providers"))
    assert seen == {"/api/v1/auth/login": "default", "/api/v1/providers": "replica1"}


def test_an_unreadable_write_marker_reads_the_primary(remote_replica, request_state, monkeypatch):
    remote_replica(lag=0.0)

    class Down:
        def get(self, *args, **kwargs):
            raise ConnectionError("redis down")

        def set(self, *args, **kwargs):
            raise ConnectionError("redis down")

    monkeypatch.setattr(state_module, "caches", {db_routing._MARKER_CACHE: Down()})
    db_routing.remember_recent_write(7)  # logged, not raised
    db_routing.pin_if_user_wrote_recently(7)
    assert request_state.use_primary


# --- Retry on the primary ------------------------------------------------------------------


def _failing_once(replica_error: str | None = "replica1"):
    calls = []

    def view(request):
        state = context.current_state()
        calls.append(state.use_primary)
        if len(calls) == 1 and replica_error:
            state.extra["replica_error"] = replica_error
            return HttpResponse("boom", status=500)
        return HttpResponse("ok")

    return view, calls


def test_a_get_that_failed_on_a_replica_is_answered_from_the_primary(remote_replica):
    remote_replica(lag=0.0)
    view, calls = _failing_once()
    response = _run_middleware(view, RequestFactory().get("/api/v1/providers"))
    assert response.status_code == 200
    assert response["X-DB-Retried"] == "primary"
    assert calls == [False, True]


def test_a_post_is_never_run_twice(remote_replica):
    remote_replica(lag=0.0)
    view, calls = _failing_once()
    response = _run_middleware(view, RequestFactory().post("/api/v1/consultations"))
    assert response.status_code == 500
    assert len(calls) == 1


def test_an_application_error_is_not_retried(remote_replica):
    remote_replica(lag=0.0)
    view, calls = _failing_once(replica_error=None)

    def buggy(request):
        view(request)
        return HttpResponse("bug", status=500)

    response = _run_middleware(buggy, RequestFactory().get("/api/v1/providers"))
    assert response.status_code == 500
    assert len(calls) == 1


def test_connection_failures_quarantine_a_replica_but_query_errors_do_not():
    class Cause(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    def error(sqlstate):
        exc = OperationalError("x")
        exc.__cause__ = Cause(sqlstate)
        return exc

    assert db_routing._failure_is_the_servers(error(None))  # connection lost
    assert db_routing._failure_is_the_servers(error("08006"))
    assert db_routing._failure_is_the_servers(error("57P01"))  # admin shutdown
    assert not db_routing._failure_is_the_servers(error("40001"))  # recovery conflict
    assert not db_routing._failure_is_the_servers(error("57014"))  # statement timeout
