"""The walk-in queue: join, position, estimated wait, leave, call next, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from accounts.models import Role
from consultations import selectors, services
from consultations.models import (
    Consultation,
    ConsultationKind,
    ConsultationStatus,
    QueueEntry,
    QueueStatus,
)
from medease.exceptions import Conflict

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients(make_user):
    return [make_user(Role.PATIENT) for _ in range(3)]


def _completed(patient, provider, minutes: int, *, ago_hours: float = 1):
    """A past consultation that lasted ``minutes`` (history for the wait estimate)."""
    started = timezone.now() - timedelta(hours=ago_hours)
    return Consultation.objects.create(
        patient=patient,
        provider=provider,
        organization=provider.organization,
        kind=ConsultationKind.WALK_IN,
        status=ConsultationStatus.COMPLETED,
        scheduled_start=started,
        scheduled_end=started + timedelta(minutes=30),
        started_at=started,
        completed_at=started + timedelta(minutes=minutes),
    )


def test_join_answers_201_with_position_and_default_estimate(token_client, patients, provider):
    responses = [
        token_client(p).post(f"/api/v1/providers/{provider.pk}/queue", {}, format="json")
        for p in patients
    ]
    assert [r.status_code for r in responses] == [201, 201, 201]
    bodies = [r.json() for r in responses]
    assert {"id", "provider", "position", "estimated_wait_minutes", "status"} <= set(bodies[0])
    assert [b["position"] for b in bodies] == [1, 2, 3]
    assert {b["status"] for b in bodies} == {"waiting"}
    # No history: the provider's configured length (30 minutes) per patient ahead.
    assert [b["estimated_wait_minutes"] for b in bodies] == [0, 30, 60]


def test_estimate_uses_the_median_of_recent_consultations(
    token_client, patients, provider, make_user
):
    someone = make_user(Role.PATIENT)
    for minutes in (10, 12, 50):  # median 12, not the mean 24
        _completed(someone, provider, minutes)
    for p in patients:
        services.queue_join(patient=p, provider=provider)
    last = QueueEntry.objects.get(patient=patients[2])
    body = token_client(patients[2]).get(f"/api/v1/queue-entries/{last.pk}").json()
    assert body["position"] == 3
    assert body["estimated_wait_minutes"] == 24


def test_estimate_counts_the_consultation_in_progress(patients, provider, make_user, token_client):
    for minutes in (20, 20, 20):
        _completed(make_user(Role.PATIENT), provider, minutes, ago_hours=3)
    services.queue_join(patient=patients[0], provider=provider)
    services.queue_join(patient=patients[1], provider=provider)
    services.queue_call_next(provider=provider, actor=provider)  # patient 0 is in with them
    entry = QueueEntry.objects.get(patient=patients[1])
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        body = token_client(patients[1]).get(f"/api/v1/queue-entries/{entry.pk}").json()
    assert body["position"] == 1
    assert body["estimated_wait_minutes"] == 15


def test_joining_twice_is_a_conflict(token_client, patient, provider):
    client = token_client(patient)
    assert client.post(f"/api/v1/providers/{provider.pk}/queue").status_code == 201
    again = client.post(f"/api/v1/providers/{provider.pk}/queue")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_in_queue"


def test_only_patients_join(token_client, provider, staff):
    assert token_client(staff).post(f"/api/v1/providers/{provider.pk}/queue").status_code == 403


def test_leaving_frees_the_place_and_is_idempotent(token_client, patients, provider):
    entries = [services.queue_join(patient=p, provider=provider) for p in patients]
    client = token_client(patients[0])
    assert client.delete(f"/api/v1/queue-entries/{entries[0].pk}").status_code == 204
    assert client.delete(f"/api/v1/queue-entries/{entries[0].pk}").status_code == 204
    assert client.get(f"/api/v1/queue-entries/{entries[0].pk}").json()["status"] == "left"
    second = token_client(patients[1]).get(f"/api/v1/queue-entries/{entries[1].pk}").json()
    assert second["position"] == 1
    # Rejoining after leaving is allowed (one *waiting* entry per patient and provider).
    assert client.post(f"/api/v1/providers/{provider.pk}/queue").status_code == 201


def test_call_next_starts_a_walk_in_for_the_head(token_client, patients, provider, staff):
    for p in patients[:2]:
        services.queue_join(patient=p, provider=provider, reason="Sore throat")
    response = token_client(staff).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "in_progress"
    assert body["patient"] == patients[0].pk
    assert body["slot"] is None
    assert body["kind"] == "walk_in"
    assert body["reason"] == "Sore throat"
    head = QueueEntry.objects.get(patient=patients[0])
    assert head.status == QueueStatus.CALLED
    assert head.consultation_id == body["id"]
    # The called patient sees it; the next one moved up.
    assert (
        token_client(patients[0]).get(f"/api/v1/queue-entries/{head.pk}").json()["consultation"]
        == body["id"]
    )
    waiting = QueueEntry.objects.get(patient=patients[1])
    assert (
        token_client(patients[1]).get(f"/api/v1/queue-entries/{waiting.pk}").json()["position"] == 1
    )


def test_call_next_with_nobody_waiting_is_409(token_client, provider):
    response = token_client(provider).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "queue_empty"


def test_call_next_while_busy_is_409_and_keeps_the_entry(token_client, patients, provider):
    for p in patients[:2]:
        services.queue_join(patient=p, provider=provider)
    client = token_client(provider)
    assert client.post(f"/api/v1/providers/{provider.pk}/queue/next").status_code == 201
    busy = client.post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "provider_busy"
    assert QueueEntry.objects.get(patient=patients[1]).status == QueueStatus.WAITING
    # Once the first consultation is done, the next one can start.
    current = Consultation.objects.get(status=ConsultationStatus.IN_PROGRESS)
    services.consultation_complete(consultation=current, actor=provider)
    assert client.post(f"/api/v1/providers/{provider.pk}/queue/next").status_code == 201


def test_a_walk_in_called_before_a_booking_is_planned_to_end_by_it(
    token_client, patient, other_patient, provider, make_slot, book
):
    booked = book(other_patient, make_slot(provider, hours=0.2))  # starts in 12 minutes
    services.queue_join(patient=patient, provider=provider)
    response = token_client(provider).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 201
    walk_in = Consultation.objects.get(pk=response.json()["id"])
    assert walk_in.scheduled_end == booked.scheduled_start
    assert QueueEntry.objects.get(patient=patient).status == QueueStatus.CALLED


def test_left_entries_are_skipped_by_call_next(patients, provider):
    first = services.queue_join(patient=patients[0], provider=provider)
    services.queue_join(patient=patients[1], provider=provider)
    services.queue_leave(entry=first, actor=patients[0])
    consultation = services.queue_call_next(provider=provider, actor=provider)
    assert consultation.patient_id == patients[1].pk


def test_a_called_entry_cannot_be_left(patients, provider):
    entry = services.queue_join(patient=patients[0], provider=provider)
    services.queue_call_next(provider=provider, actor=provider)
    with pytest.raises(Conflict):
        services.queue_leave(entry=entry, actor=patients[0])


def test_provider_and_staff_see_the_waiting_list(token_client, patients, provider, staff):
    for p in patients:
        services.queue_join(patient=p, provider=provider)
    for viewer in (provider, staff):
        body = token_client(viewer).get(f"/api/v1/providers/{provider.pk}/queue").json()
        assert [e["patient"] for e in body["results"]] == [p.pk for p in patients]
        assert [e["position"] for e in body["results"]] == [1, 2, 3]


def test_stale_entries_expire(patients, provider, settings):
    settings.QUEUE_ENTRY_STALE_MINUTES = 60
    old = services.queue_join(patient=patients[0], provider=provider)
    with time_machine.travel(timezone.now() + timedelta(minutes=45)):
        fresh = services.queue_join(patient=patients[1], provider=provider)
    with time_machine.travel(timezone.now() + timedelta(minutes=75)):
        assert services.queue_expire_stale() == 1
        assert services.queue_expire_stale() == 0  # idempotent
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == QueueStatus.EXPIRED
    assert old.expired_at is not None
    assert fresh.status == QueueStatus.WAITING


def test_estimates_of_several_queues_at_once_match_one_at_a_time(
    settings, patients, provider, make_user, organization
):
    settings.QUEUE_WAIT_HISTORY = 3  # only each provider's three latest count
    busy = make_user(Role.PROVIDER, organization=organization)
    fresh = make_user(Role.PROVIDER, organization=organization)  # no history: its own length
    someone = make_user(Role.PATIENT)
    for n, minutes in enumerate((90, 10, 12, 50)):  # the 90 is the oldest: left out
        _completed(someone, provider, minutes, ago_hours=20 - 3 * n)
    for minutes in (20, 20, 20):
        _completed(someone, busy, minutes, ago_hours=3)
    services.queue_join(patient=patients[0], provider=busy)
    services.queue_call_next(provider=busy, actor=busy)  # in progress with busy
    providers = list(
        type(provider)
        .objects.select_related("provider_profile")
        .filter(pk__in=[provider.pk, busy.pk, fresh.pk])
    )
    batched = selectors.queue_wait_estimators(providers=providers)
    for p in providers:
        single = selectors.queue_wait_estimator(provider=p)
        assert [batched[p.pk](n) for n in (None, 1, 2, 3)] == [single(n) for n in (None, 1, 2, 3)]
    assert batched[provider.pk](2) == 12
