"""Races decided by PostgreSQL: real threads, real connections, committed transactions.

Each thread uses its own database connection (Django opens one per thread) and closes it
when done, so the pool gets it back.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import close_old_connections, connection, transaction

from accounts import services as account_services
from accounts.models import Role
from consultations import services
from consultations.models import Consultation, ConsultationStatus, QueueEntry, QueueStatus
from tests.conftest import on_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _run_concurrently(calls):
    """Run callables at the same moment (a barrier), each in its own thread and connection."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        try:
            barrier.wait(timeout=30)
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _client_for(user):
    from rest_framework.test import APIClient

    raw, _ = account_services.token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_fifty_patients_race_for_one_slot(make_user, provider, make_slot):
    assert on_postgres()
    slot = make_slot(provider, hours=30)
    clients = [_client_for(make_user(Role.PATIENT)) for _ in range(50)]

    def booking(client):
        return lambda: client.post("/api/v1/consultations", {"slot": slot.pk}, format="json")

    responses = _run_concurrently([booking(c) for c in clients])
    codes = Counter(r.status_code for r in responses)
    print(f"\nBOOKING RACE: {dict(codes)}")
    assert codes == {201: 1, 409: 49}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"slot_taken"}
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert Consultation.objects.count() == 1
    active = Consultation.objects.filter(slot=slot).exclude(status=ConsultationStatus.CANCELLED)
    assert list(active.values_list("pk", flat=True)) == [winner["id"]]


def test_a_retried_booking_raced_against_itself_makes_one_consultation(
    patient, provider, make_slot
):
    """Ten copies of one request (same Idempotency-Key) in flight at once."""
    slot = make_slot(provider, hours=30)
    client = _client_for(patient)

    def booking():
        return client.post(
            "/api/v1/consultations",
            {"slot": slot.pk},
            format="json",
            headers={"Idempotency-Key": "double-tap-7f3a"},
        )

    responses = _run_concurrently([booking] * 10)
    codes = Counter(r.status_code for r in responses)
    assert codes[201] == 1
    assert codes[200] == 9
    assert len({r.json()["id"] for r in responses}) == 1
    assert Consultation.objects.count() == 1


def test_concurrent_call_next_never_takes_the_same_entry(make_user, provider, staff):
    for _ in range(10):
        services.queue_join(patient=make_user(Role.PATIENT), provider=provider)
    callers = [_client_for(provider), _client_for(staff)] * 5

    def call_next(client):
        return lambda: client.post(f"/api/v1/providers/{provider.pk}/queue/next")

    responses = _run_concurrently([call_next(c) for c in callers])
    codes = Counter(r.status_code for r in responses)
    print(f"\nCALL-NEXT RACE: {dict(codes)}")
    # One consultation can be in progress for the provider: one 201, the rest 409.
    assert codes[201] == 1
    assert codes[409] == 9
    called = QueueEntry.objects.filter(status=QueueStatus.CALLED)
    assert called.count() == 1
    assert Consultation.objects.filter(status=ConsultationStatus.IN_PROGRESS).count() == 1
    started = next(r.json() for r in responses if r.status_code == 201)
    assert called.get().consultation_id == started["id"]
    assert QueueEntry.objects.filter(status=QueueStatus.WAITING).count() == 9


def test_the_claim_skips_an_entry_another_transaction_holds(make_user, provider):
    """Two call-next transactions open at once each lock a different entry, without
    waiting for each other."""
    first, second = (
        services.queue_join(patient=make_user(Role.PATIENT), provider=provider) for _ in range(2)
    )
    holding = threading.Event()
    release = threading.Event()
    claimed = {}

    def hold_the_head():
        try:
            with transaction.atomic():
                claimed["a"] = services.queue_head_for_update(provider=provider).pk
                holding.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    def claim_while_held():
        try:
            holding.wait(timeout=30)
            with transaction.atomic():
                claimed["b"] = services.queue_head_for_update(provider=provider).pk
        finally:
            release.set()
            connection.close()

    threads = [threading.Thread(target=hold_the_head), threading.Thread(target=claim_while_held)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    close_old_connections()
    assert claimed == {"a": first.pk, "b": second.pk}


def test_concurrent_cancel_and_start_one_wins(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider, hours=5))

    def attempt(action, actor):
        def run():
            fresh = Consultation.objects.get(pk=consultation.pk)
            try:
                action(consultation=fresh, actor=actor)
                return "ok"
            except Exception as exc:
                return type(exc).__name__

        return run

    results = _run_concurrently(
        [
            attempt(services.consultation_cancel, patient),
            attempt(services.consultation_start, provider),
        ]
        * 4
    )
    assert results.count("ok") == 1
    assert set(results) == {"ok", "Conflict"}
    final = Consultation.objects.get(pk=consultation.pk).status
    assert final in (ConsultationStatus.CANCELLED, ConsultationStatus.IN_PROGRESS)
