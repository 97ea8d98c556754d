"""The audit stream write path in one process: a read appends to the Redis Stream, the
flusher moves it into the table once, a redelivered batch inserts nothing twice, a write
inside a transaction joins it, and a dead Redis falls back to the synchronous INSERT.
The kill test across real processes is tests/medease/test_audit_durability.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import Slot
from medease import audit_stream
from medease.audit import AuditAction, audit_log, audit_log_typed_rows
from medease.audit_stream import GROUP, Flusher
from medease.models import AuditEvent

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stream(settings):
    """The stream path on a key of this test's own, removed afterwards."""
    settings.AUDIT_WRITE_PATH = "stream"
    settings.AUDIT_REDIS_URL = settings.REDIS_URL
    settings.AUDIT_STREAM_KEY = f"medease-test:audit:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.AUDIT_REDIS_URL)
    yield client
    client.delete(settings.AUDIT_STREAM_KEY, f"{settings.AUDIT_STREAM_KEY}:unreadable")


@pytest.fixture
def consultation(make_user, organization):
    provider = make_user(Role.PROVIDER, organization=organization)
    patient = make_user(Role.PATIENT)
    start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
    booked, _created = consultation_services.consultation_book(
        patient=patient, slot_id=slot.pk, reason="Checkup", idempotency_key=""
    )
    return booked


@pytest.fixture
def patient_client(consultation):
    from rest_framework.test import APIClient

    raw, _token = account_services.token_issue(user=consultation.patient)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def reads_of(consultation):
    return AuditEvent.objects.filter(
        action=AuditAction.READ, object_type="consultation", object_id=str(consultation.pk)
    )


def test_a_read_goes_through_the_stream_into_the_table_once(stream, consultation, patient_client):
    response = patient_client.get(f"/api/v1/consultations/{consultation.pk}")
    assert response.status_code == 200, response.content
    request_id = response["X-Request-ID"]

    assert not reads_of(consultation).exists()  # queued, not yet written
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 1

    assert Flusher(consumer="one").drain() == 1
    event = reads_of(consultation).get()
    assert event.request_id == request_id
    assert event.user_id == consultation.patient_id
    assert event.patient_id == consultation.patient_id
    assert event.organization_id == consultation.organization_id
    assert event.ip == "127.0.0.1"
    assert event.event_id is not None
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 0  # acknowledged and deleted
    assert Flusher(consumer="one").drain() == 0


def test_a_batch_replayed_after_a_crash_inserts_nothing_twice(
    stream, consultation, patient_client, settings
):
    for _ in range(3):
        assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200
    # A flusher reads the batch and commits the rows, then dies before XACK.
    dying = Flusher(consumer="dying")
    entries = dying._read(block=False)
    assert len(entries) == 3
    events = [
        audit_stream.event_decode(item)
        for _id, fields in entries
        for item in audit_stream.json.loads(fields[audit_stream.FIELD.encode()])
    ]
    AuditEvent.objects.bulk_create(events)
    assert reads_of(consultation).count() == 3
    assert stream.xpending(settings.AUDIT_STREAM_KEY, GROUP)["pending"] == 3

    # Another flusher claims the dead one's entries once they are idle long enough.
    settings.AUDIT_FLUSH_CLAIM_IDLE_SECONDS = 0.05
    survivor = Flusher(consumer="survivor")
    pending = stream.xpending_range(settings.AUDIT_STREAM_KEY, GROUP, "-", "+", 10)
    assert {entry["consumer"] for entry in pending} == {b"dying"}
    deadline = timezone.now() + timedelta(seconds=5)
    while stream.xlen(settings.AUDIT_STREAM_KEY) and timezone.now() < deadline:
        survivor.drain()
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 0
    assert reads_of(consultation).count() == 3  # the replay was a no-op


def test_a_failed_database_write_leaves_the_events_pending(
    stream, consultation, patient_client, monkeypatch
):
    assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200
    flusher = Flusher(consumer="one")

    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(AuditEvent.objects, "bulk_create", refuse)
        with pytest.raises(OperationalError):
            flusher.flush_once(block=False)
    assert not reads_of(consultation).exists()
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 1

    # The same consumer re-reads its own pending entry first.
    assert flusher.drain() == 1
    assert reads_of(consultation).count() == 1
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 0


def test_an_event_inside_a_transaction_joins_it(stream, consultation):
    with transaction.atomic():
        audit_log(
            request=None,
            action=AuditAction.UPDATE,
            object_type="consultation",
            object_ids=[consultation.pk],
        )
        assert AuditEvent.objects.filter(action=AuditAction.UPDATE).count() == 1
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 0

    with pytest.raises(RuntimeError), transaction.atomic():
        audit_log(
            request=None,
            action=AuditAction.DELETE,
            object_type="consultation",
            object_ids=[consultation.pk],
        )
        raise RuntimeError("the write it records failed")
    assert not AuditEvent.objects.filter(action=AuditAction.DELETE).exists()


def test_redis_down_writes_synchronously_and_the_request_succeeds(
    stream, consultation, patient_client, settings
):
    settings.AUDIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = patient_client.get(f"/api/v1/consultations/{consultation.pk}")
    assert response.status_code == 200, response.content
    event = reads_of(consultation).get()
    assert event.request_id == response["X-Request-ID"]
    assert event.event_id is not None


def test_an_unreadable_entry_is_set_aside_not_dropped(stream, consultation, patient_client):
    key = settings.AUDIT_STREAM_KEY
    stream.xadd(key, {audit_stream.FIELD: "not json"})
    assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200
    assert Flusher(consumer="one").drain() == 1
    assert reads_of(consultation).count() == 1
    assert stream.xlen(key) == 0
    [(_id, fields)] = stream.xrange(f"{key}:unreadable")
    assert fields == {audit_stream.FIELD.encode(): b"not json"}


def test_the_sync_path_writes_at_once(settings, consultation, patient_client):
    settings.AUDIT_WRITE_PATH = "sync"
    response = patient_client.get(f"/api/v1/consultations/{consultation.pk}")
    assert response.status_code == 200
    assert reads_of(consultation).get().request_id == response["X-Request-ID"]


def _settings_in_a_new_process(**env: str) -> subprocess.CompletedProcess:
    """AUDIT_WRITE_PATH as a fresh process reads it with only ``env``'s AUDIT_* variables."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("AUDIT_")}
    code = "import django; django.setup(); from django.conf import settings; "
    code += "print(settings.AUDIT_WRITE_PATH)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # The cache's Redis alone does not turn the stream on: it may evict and forget.
        ({}, "sync"),
        ({"AUDIT_REDIS_URL": "redis://127.0.0.1:6379/3"}, "stream"),
        ({"AUDIT_REDIS_URL": "redis://127.0.0.1:6379/3", "AUDIT_WRITE_PATH": "sync"}, "sync"),
    ],
)
def test_the_write_path_follows_the_audit_redis(env, expected):
    result = _settings_in_a_new_process(**env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("env", [{"AUDIT_WRITE_PATH": "stream"}, {"AUDIT_WRITE_PATH": "later"}])
def test_a_bad_write_path_stops_start_up(env):
    result = _settings_in_a_new_process(**env)
    assert result.returncode != 0
    assert "AUDIT_WRITE_PATH" in result.stderr


def test_an_event_the_table_refuses_is_set_aside_and_the_rest_written(
    stream, consultation, patient_client
):
    key = settings.AUDIT_STREAM_KEY
    refused = audit_stream.event_encode(
        AuditEvent(action="read", object_type="consultation", object_id="x" * 65)
    )
    stream.xadd(key, {audit_stream.FIELD: audit_stream.json.dumps([refused])})
    assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200
    assert Flusher(consumer="one").drain() == 1
    assert reads_of(consultation).count() == 1
    assert stream.xlen(key) == 0
    [(_id, fields)] = stream.xrange(f"{key}:unreadable")
    assert audit_stream.json.loads(fields[audit_stream.FIELD.encode()]) == [refused]


def test_mixed_types_go_through_the_stream_in_one_entry(stream, consultation):
    audit_log_typed_rows(
        request=None,
        action=AuditAction.READ,
        rows=[
            ("consultation", consultation.pk, consultation.patient_id, None),
            ("queue_entry", 7, consultation.patient_id, None),
        ],
    )
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 1
    assert Flusher(consumer="one").drain() == 2
    assert sorted(AuditEvent.objects.values_list("object_type", "object_id")) == [
        ("consultation", str(consultation.pk)),
        ("queue_entry", "7"),
    ]


# The flusher's round trips per batch: its own pending entries are read again only when it
# may hold some (at start, after a failed write), not before every batch.


def _xreadgroups(client) -> int:
    return client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0)


def test_a_steady_flusher_reads_new_entries_only(stream, consultation, patient_client):
    url = f"/api/v1/consultations/{consultation.pk}"
    flusher = Flusher(consumer="one")
    flusher._next_claim = float("inf")  # no XAUTOCLAIM in this test
    assert patient_client.get(url).status_code == 200
    before = _xreadgroups(stream)
    assert flusher.flush_once(block=False) == (1, 1)
    # At start: its own pending entries (none), then the new ones.
    assert _xreadgroups(stream) - before == 2
    assert patient_client.get(url).status_code == 200
    before = _xreadgroups(stream)
    assert flusher.flush_once(block=False) == (1, 1)
    assert _xreadgroups(stream) - before == 1
    assert reads_of(consultation).count() == 2


def test_after_a_failed_write_its_own_entries_come_first(
    stream, consultation, patient_client, monkeypatch
):
    flusher = Flusher(consumer="one")
    flusher._next_claim = float("inf")
    assert flusher.flush_once(block=False) == (0, 0)  # settles: nothing of its own
    assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200

    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(AuditEvent.objects, "bulk_create", refuse)
        with pytest.raises(OperationalError):
            flusher.flush_once(block=False)
    # Not ">" (nothing new): the entry it read and could not write.
    assert flusher.flush_once(block=False) == (1, 1)
    assert reads_of(consultation).count() == 1


def test_run_writes_and_stops(stream, consultation, patient_client, settings):
    settings.AUDIT_FLUSH_LINGER_MS = 50
    settings.AUDIT_FLUSH_BLOCK_MS = 100
    for _ in range(3):
        assert patient_client.get(f"/api/v1/consultations/{consultation.pk}").status_code == 200
    stop = threading.Event()
    flusher = Flusher(consumer="one")
    worker = threading.Thread(target=flusher.run, args=(stop,))
    worker.start()
    try:
        for _ in range(200):
            if reads_of(consultation).count() == 3:
                break
            stop.wait(0.05)  # polling the table for the flusher's thread, not a fixed sleep
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert reads_of(consultation).count() == 3
    assert stream.xlen(settings.AUDIT_STREAM_KEY) == 0
