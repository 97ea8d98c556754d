"""PHI reads and writes that used to leave no audit row (issue 10, item 3): the walk-in queue
in the API, and the console's consultation list (with its searches and filters), queue pages,
record list and today board. Each request writes one event per PHI object it showed or
wrote, in one INSERT, all carrying the request's id."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from consultations import services
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db

CONSULTATIONS = "/admin/consultations/consultation/"
QUEUE = "/admin/consultations/queueentry/"
RECORDS = "/admin/consultations/medicalrecordentry/"


def _browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _audit_inserts(queries) -> int:
    return sum(1 for q in queries if q["sql"].startswith('INSERT INTO "medease_auditevent"'))


def _request(client, method: str, url: str, data=None, **extra):
    """Do the request; return the response and the audit events it wrote (one INSERT)."""
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with CaptureQueriesContext(connection) as queries:
        response = getattr(client, method)(url, data, **extra)
    events = list(AuditEvent.objects.filter(id__gt=before).order_by("id"))
    assert _audit_inserts(queries) == (1 if events else 0), url
    request_id = response["X-Request-ID"]
    assert {event.request_id for event in events} <= {request_id}, url
    return response, events


def _shown(events, object_type: str, action: str = "read") -> set[tuple[int, int]]:
    """(object id, patient id) of the events of that type and action."""
    assert all(event.object_type == object_type and event.action == action for event in events)
    return {(int(event.object_id), event.patient_id) for event in events}


@pytest.fixture
def waiting(provider, make_user):
    """Two patients waiting in ``provider``'s queue with their (PHI) reasons."""
    first, second = make_user(Role.PATIENT), make_user(Role.PATIENT)
    return [
        services.queue_join(patient=first, provider=provider, reason="Chest pain since noon"),
        services.queue_join(patient=second, provider=provider, reason="Rash"),
    ]


# --- The walk-in queue in the API ---------------------------------------------------------


@pytest.mark.parametrize("role", ["provider", "staff"])
def test_the_providers_queue_list_is_audited_per_entry(
    role, provider, staff, organization, waiting, token_client
):
    user = {"provider": provider, "staff": staff}[role]
    response, events = _request(token_client(user), "get", f"/api/v1/providers/{provider.pk}/queue")
    assert response.status_code == 200
    assert {row["reason"] for row in response.json()["results"]} == {
        "Chest pain since noon",
        "Rash",
    }
    assert _shown(events, "queue_entry") == {(e.pk, e.patient_id) for e in waiting}
    assert {(e.user_id, e.organization_id) for e in events} == {(user.pk, organization.pk)}
    assert all(e.request_id for e in events)


def test_reading_a_queue_entry_is_audited(provider, staff, waiting, token_client):
    entry = waiting[0]
    for reader in (entry.patient, provider, staff):
        response, events = _request(
            token_client(reader), "get", f"/api/v1/queue-entries/{entry.pk}"
        )
        assert response.status_code == 200
        assert response.json()["reason"] == "Chest pain since noon"
        assert _shown(events, "queue_entry") == {(entry.pk, entry.patient_id)}
        assert events[0].user_id == reader.pk


def test_joining_the_queue_with_a_reason_is_audited_as_a_create(
    patient, provider, organization, token_client
):
    response, events = _request(
        token_client(patient),
        "post",
        f"/api/v1/providers/{provider.pk}/queue",
        {"reason": "Fever"},
        format="json",
    )
    assert response.status_code == 201
    assert _shown(events, "queue_entry", "create") == {(response.json()["id"], patient.pk)}
    assert events[0].organization_id == organization.pk
    # A refused second join stored nothing: nothing to audit.
    again, events = _request(
        token_client(patient), "post", f"/api/v1/providers/{provider.pk}/queue", {}, format="json"
    )
    assert again.status_code == 409
    assert events == []


def test_leaving_the_queue_is_audited_as_an_update(waiting, token_client):
    entry = waiting[1]
    response, events = _request(
        token_client(entry.patient), "delete", f"/api/v1/queue-entries/{entry.pk}"
    )
    assert response.status_code == 204
    assert _shown(events, "queue_entry", "update") == {(entry.pk, entry.patient_id)}


def test_an_outsider_is_refused_and_audited_nothing(waiting, other_provider, token_client):
    """404s write no event: nothing was shown."""
    entry = waiting[0]
    client = token_client(other_provider)
    for url in (
        f"/api/v1/queue-entries/{entry.pk}",
        f"/api/v1/providers/{entry.provider_id}/queue",
    ):
        response, events = _request(client, "get", url)
        assert response.status_code == 404
        assert events == []


# --- The staff console --------------------------------------------------------------------


@pytest.fixture
def booked(patient, other_patient, provider, other_provider, make_slot, book):
    """Two bookings at this clinic (one with notes), one at the other clinic."""
    mine = book(patient, make_slot(provider, hours=2), reason="Migraine with aura")
    also_mine = book(other_patient, make_slot(provider, hours=5), reason="Checkup")
    services.consultation_transition(consultation=mine, action="start", actor=provider, note=None)
    services.consultation_transition(
        consultation=mine, action="complete", actor=provider, note="Prescribed sumatriptan"
    )
    theirs = book(patient, make_slot(other_provider, hours=3))
    return {"mine": mine, "also_mine": also_mine, "theirs": theirs}


def _listed(response) -> set[tuple[int, int]]:
    assert response.status_code == 200, response.content[:300]
    return {(row.pk, row.patient_id) for row in response.context["cl"].result_list}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"mine", "also_mine"}),
        ({"q": "patient"}, {"mine", "also_mine"}),  # by name ("Patient 1")
        ({"q": "EMAIL"}, {"mine"}),  # by e-mail (filled in below)
        ({"reason__icontains": "aura"}, {"mine"}),
        ({"provider_notes__icontains": "sumatriptan"}, {"mine"}),
    ],
)
def test_the_console_consultation_list_audits_every_row_it_shows(
    params, expected, staff, organization, booked, patient
):
    params = {k: (patient.email if v == "EMAIL" else v) for k, v in params.items()}
    response, events = _request(_browser(staff), "get", CONSULTATIONS, params)
    shown = _listed(response)
    assert shown == {(booked[key].pk, booked[key].patient_id) for key in expected}
    assert _shown(events, "consultation") == shown
    assert {(e.user_id, e.organization_id) for e in events} == {(staff.pk, organization.pk)}
    assert all(e.request_id for e in events)


def test_a_console_search_that_matches_nothing_shows_and_audits_nothing(staff, booked):
    response, events = _request(_browser(staff), "get", CONSULTATIONS, {"q": "nobody-at-all"})
    assert _listed(response) == set()
    assert events == []


def test_the_console_consultation_page_stays_audited(staff, booked):
    mine = booked["mine"]
    response, events = _request(_browser(staff), "get", f"{CONSULTATIONS}{mine.pk}/change/")
    assert response.status_code == 200
    assert _shown(events, "consultation") == {(mine.pk, mine.patient_id)}


def test_the_console_queue_list_and_entry_page_are_audited(staff, waiting):
    client = _browser(staff)
    response, events = _request(client, "get", QUEUE)
    assert _listed(response) == {(e.pk, e.patient_id) for e in waiting}
    assert _shown(events, "queue_entry") == {(e.pk, e.patient_id) for e in waiting}
    response, events = _request(client, "get", QUEUE, {"q": waiting[1].patient.email})
    assert _shown(events, "queue_entry") == {(waiting[1].pk, waiting[1].patient_id)}
    entry = waiting[0]
    response, events = _request(client, "get", f"{QUEUE}{entry.pk}/change/")
    assert response.status_code == 200
    assert b"Chest pain since noon" in response.content
    assert _shown(events, "queue_entry") == {(entry.pk, entry.patient_id)}


def test_the_console_record_list_is_audited(staff, provider, patient, booked):
    entry = services.medical_record_add(author=provider, patient=patient, kind="note", text="BP ok")
    response, events = _request(_browser(staff), "get", RECORDS)
    assert _listed(response) == {(entry.pk, patient.pk)}
    assert _shown(events, "medical_record_entry") == {(entry.pk, patient.pk)}


def test_the_today_board_audits_the_queue_beside_the_consultations(
    staff, provider, patient, make_slot, book, waiting
):
    today = book(patient, make_slot(provider, minutes=30, hours=0.5))
    response, events = _request(_browser(staff), "get", f"{CONSULTATIONS}today/")
    assert response.status_code == 200
    shown_entries = {e.pk for row in response.context["rows"] for e in row["queue"]}
    assert shown_entries == {e.pk for e in waiting}
    assert {(e.object_type, int(e.object_id)) for e in events} == {
        ("consultation", today.pk),
        *(("queue_entry", e.pk) for e in waiting),
    }


def test_the_patients_dashboard_audits_their_queue_places_with_their_consultations(
    patient, provider, make_slot, book, token_client
):
    booked = book(patient, make_slot(provider, hours=3))
    entry = services.queue_join(patient=patient, provider=provider, reason="Sprained wrist")
    response, events = _request(token_client(patient), "get", "/api/v1/dashboard")
    assert response.status_code == 200
    assert [row["reason"] for row in response.json()["queue"]] == ["Sprained wrist"]
    assert {(e.object_type, int(e.object_id), e.patient_id) for e in events} == {
        ("consultation", booked.pk, patient.pk),
        ("queue_entry", entry.pk, patient.pk),
    }
