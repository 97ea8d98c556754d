"""The clinic-core API as the contract writes it: paths, shapes, status codes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine

from accounts.models import Role
from consultations import services
from consultations.models import Consultation, ConsultationStatus, Slot
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db

CONSULTATION_FIELDS = {
    "id",
    "status",
    "patient",
    "provider",
    "organization",
    "slot",
    "scheduled_start",
    "scheduled_end",
    "reason",
    "unread_count",
}


def _error(response) -> dict:
    return response.json()["error"]


# --- Providers ------------------------------------------------------------------------------


def test_providers_list_filters_by_specialty_and_organization(
    token_client, patient, make_user, organization, other_organization
):
    derm = make_user(Role.PROVIDER, organization=organization, specialty="Dermatology")
    gp = make_user(Role.PROVIDER, organization=organization, specialty="General Practice")
    far = make_user(Role.PROVIDER, organization=other_organization, specialty="Dermatology")
    client = token_client(patient)
    everyone = client.get("/api/v1/providers").json()
    assert [p["id"] for p in everyone["results"]] == [derm.pk, gp.pk, far.pk]
    assert {"id", "full_name", "specialty", "organization"} <= set(everyone["results"][0])
    derms = client.get("/api/v1/providers", {"specialty": "dermatology"}).json()["results"]
    assert [p["id"] for p in derms] == [derm.pk, far.pk]
    here = client.get(
        "/api/v1/providers", {"specialty": "Dermatology", "organization": organization.pk}
    ).json()["results"]
    assert [p["id"] for p in here] == [derm.pk]
    assert client.get("/api/v1/providers", {"organization": "x"}).status_code == 400


def test_lists_paginate_with_absolute_next_links(token_client, patient, make_user, organization):
    for _ in range(3):
        make_user(Role.PROVIDER, organization=organization)
    client = token_client(patient)
    page = client.get("/api/v1/providers", {"limit": 2}).json()
    assert len(page["results"]) == 2
    assert page["next"].startswith("http://testserver/api/v1/providers?")
    rest = client.get(page["next"]).json()
    assert len(rest["results"]) == 1
    assert rest["next"] is None
    assert client.get("/api/v1/providers", {"limit": 0}).status_code == 400


def test_anonymous_callers_get_401(api, provider):
    for path in (
        "/api/v1/providers",
        f"/api/v1/providers/{provider.pk}/slots",
        "/api/v1/dashboard",
    ):
        assert api.get(path).status_code == 401


# --- Booking --------------------------------------------------------------------------------


def test_book_returns_201_with_the_consultation(token_client, patient, provider, make_slot):
    slot = make_slot(provider)
    response = token_client(patient).post(
        "/api/v1/consultations", {"slot": slot.pk, "reason": "Cough"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) >= CONSULTATION_FIELDS
    assert body["status"] == "scheduled"
    assert (body["patient"], body["provider"], body["slot"]) == (patient.pk, provider.pk, slot.pk)
    assert body["organization"] == provider.organization_id
    assert body["unread_count"] == 0
    assert "provider_notes" not in body  # clinicians only
    assert AuditEvent.objects.filter(
        action="create", object_type="consultation", object_id=str(body["id"]), patient=patient
    ).exists()


def test_book_a_taken_slot_is_409(token_client, patient, other_patient, provider, make_slot):
    slot = make_slot(provider)
    assert (
        token_client(patient).post("/api/v1/consultations", {"slot": slot.pk}, format="json")
    ).status_code == 201
    response = token_client(other_patient).post(
        "/api/v1/consultations", {"slot": slot.pk}, format="json"
    )
    assert response.status_code == 409
    assert _error(response)["code"] == "slot_taken"


def test_book_with_bad_input_is_400_not_500(token_client, patient):
    client = token_client(patient)
    for body in ({}, {"slot": "abc"}, {"slot": -1}, {"slot": 999999}):
        response = client.post("/api/v1/consultations", body, format="json")
        assert response.status_code == 400, body
        assert "slot" in _error(response)["fields"]
    malformed = client.post("/api/v1/consultations", "{", content_type="application/json")
    assert malformed.status_code == 400


def test_only_patients_book(token_client, provider, staff, make_slot):
    slot = make_slot(provider)
    for user in (provider, staff):
        response = token_client(user).post(
            "/api/v1/consultations", {"slot": slot.pk}, format="json"
        )
        assert response.status_code == 403
    assert not Consultation.objects.exists()


def test_idempotency_key_replay_returns_the_same_consultation(
    token_client, patient, provider, make_slot
):
    slot = make_slot(provider)
    client = token_client(patient)
    headers = {"Idempotency-Key": "2b1c-retry-me"}
    first = client.post("/api/v1/consultations", {"slot": slot.pk}, format="json", headers=headers)
    again = client.post("/api/v1/consultations", {"slot": slot.pk}, format="json", headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Consultation.objects.count() == 1
    # Without the key a retry is a new request, and the slot is taken.
    plain = client.post("/api/v1/consultations", {"slot": slot.pk}, format="json")
    assert plain.status_code == 409


def test_an_invalid_idempotency_key_is_400(token_client, patient, provider, make_slot):
    response = token_client(patient).post(
        "/api/v1/consultations",
        {"slot": make_slot(provider).pk},
        format="json",
        headers={"Idempotency-Key": "x" * 200},
    )
    assert response.status_code == 400


def test_bookings_are_rate_limited_per_user(settings, token_client, patient, provider, make_slot):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "booking_user": ("2/h", True)}
    client = token_client(patient)
    codes = [
        client.post(
            "/api/v1/consultations", {"slot": make_slot(provider, hours=10 + n).pk}, format="json"
        ).status_code
        for n in range(3)
    ]
    assert codes == [201, 201, 429]


# --- Listing and detail ---------------------------------------------------------------------


@pytest.fixture
def three_bookings(patient, other_patient, provider, make_user, organization, make_slot, book):
    colleague = make_user(Role.PROVIDER, organization=organization)
    late = book(patient, make_slot(provider, hours=50))
    early = book(patient, make_slot(colleague, hours=5))
    theirs = book(other_patient, make_slot(provider, hours=20))
    return {"late": late, "early": early, "theirs": theirs, "colleague": colleague}


def test_consultation_lists_are_scoped_and_ordered_by_start(
    token_client, patient, provider, staff, other_staff, three_bookings
):
    b = three_bookings

    def ids(user, **params):
        response = token_client(user).get("/api/v1/consultations", params)
        assert response.status_code == 200
        return [c["id"] for c in response.json()["results"]]

    assert ids(patient) == [b["early"].pk, b["late"].pk]
    assert ids(provider) == [b["theirs"].pk, b["late"].pk]
    assert ids(b["colleague"]) == [b["early"].pk]
    assert ids(staff) == [b["early"].pk, b["theirs"].pk, b["late"].pk]
    assert ids(other_staff) == []


def test_consultation_list_status_filter(token_client, patient, three_bookings):
    services.consultation_cancel(consultation=three_bookings["late"], actor=patient)
    client = token_client(patient)
    cancelled = client.get("/api/v1/consultations", {"status": "cancelled"}).json()["results"]
    assert [c["id"] for c in cancelled] == [three_bookings["late"].pk]
    assert client.get("/api/v1/consultations", {"status": "nonsense"}).status_code == 400


def test_detail_has_unread_count_and_is_audited(token_client, patient, three_bookings):
    consultation = three_bookings["early"]
    response = token_client(patient).get(f"/api/v1/consultations/{consultation.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["unread_count"] == 0
    assert set(body) >= CONSULTATION_FIELDS
    event = AuditEvent.objects.get(action="read", object_id=str(consultation.pk))
    assert (event.user_id, event.patient_id) == (patient.pk, patient.pk)
    assert event.organization_id == consultation.organization_id
    assert event.request_id == response["X-Request-ID"]


def test_list_reads_are_audited_per_patient(token_client, staff, three_bookings):
    token_client(staff).get("/api/v1/consultations")
    events = AuditEvent.objects.filter(action="read", object_type="consultation")
    assert {(e.object_id, e.patient_id) for e in events} == {
        (str(c.pk), c.patient_id)
        for c in (three_bookings["early"], three_bookings["late"], three_bookings["theirs"])
    }


def test_provider_notes_are_for_clinicians(token_client, patient, provider, three_bookings):
    consultation = three_bookings["late"]
    services.consultation_start(consultation=consultation, actor=provider)
    services.consultation_complete(
        consultation=consultation, actor=provider, provider_notes="Private"
    )
    seen_by_provider = token_client(provider).get(f"/api/v1/consultations/{consultation.pk}")
    seen_by_patient = token_client(patient).get(f"/api/v1/consultations/{consultation.pk}")
    assert seen_by_provider.json()["provider_notes"] == "Private"
    assert "provider_notes" not in seen_by_patient.json()


# --- Transitions ----------------------------------------------------------------------------


def test_transitions_answer_200_with_the_consultation(token_client, patient, provider, make_slot):
    slot = make_slot(provider, hours=2)
    client = token_client(provider)
    consultation = (
        token_client(patient).post("/api/v1/consultations", {"slot": slot.pk}, format="json").json()
    )
    started = client.post(f"/api/v1/consultations/{consultation['id']}/start")
    assert started.status_code == 200
    assert started.json()["status"] == "in_progress"
    assert started.json()["started_at"] is not None
    done = client.post(
        f"/api/v1/consultations/{consultation['id']}/complete",
        {"provider_notes": "Rest and fluids."},
        format="json",
    )
    assert done.status_code == 200
    assert done.json()["status"] == "completed"
    assert done.json()["provider_notes"] == "Rest and fluids."
    again = client.post(f"/api/v1/consultations/{consultation['id']}/start")
    assert again.status_code == 409
    assert _error(again)["code"] == "invalid_transition"
    assert (
        AuditEvent.objects.filter(action="update", object_id=str(consultation["id"])).count() == 2
    )


def test_patient_cancel_then_cancel_again_is_409(token_client, patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider))
    client = token_client(patient)
    first = client.post(
        f"/api/v1/consultations/{consultation.pk}/cancel", {"reason": "Better"}, format="json"
    )
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/consultations/{consultation.pk}/cancel").status_code == 409


def test_patient_may_not_start_complete_or_mark_no_show(
    token_client, patient, provider, make_slot, book
):
    consultation = book(patient, make_slot(provider))
    client = token_client(patient)
    for action in ("start", "complete", "no-show"):
        response = client.post(f"/api/v1/consultations/{consultation.pk}/{action}")
        assert response.status_code == 403, action
    assert Consultation.objects.get(pk=consultation.pk).status == ConsultationStatus.SCHEDULED


def test_no_show_via_api(token_client, patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider, hours=1))
    client = token_client(provider)
    assert client.post(f"/api/v1/consultations/{consultation.pk}/no-show").status_code == 409
    with time_machine.travel(consultation.scheduled_start + timedelta(minutes=20)):
        later = token_client(provider)  # the first token has idled out by then
        response = later.post(f"/api/v1/consultations/{consultation.pk}/no-show")
    assert response.status_code == 200
    assert response.json()["status"] == "no_show"


def test_reschedule_answers_201_with_the_new_consultation(
    token_client, patient, provider, make_slot, book
):
    old = book(patient, make_slot(provider, hours=3))
    target = make_slot(provider, hours=9)
    response = token_client(patient).post(
        f"/api/v1/consultations/{old.pk}/reschedule", {"slot": target.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slot"] == target.pk
    assert body["rescheduled_from"] == old.pk
    assert Consultation.objects.get(pk=old.pk).status == ConsultationStatus.CANCELLED


def test_reschedule_to_a_taken_slot_is_409_and_keeps_the_booking(
    token_client, patient, other_patient, provider, make_slot, book
):
    old = book(patient, make_slot(provider, hours=3))
    taken = make_slot(provider, hours=9)
    book(other_patient, taken)
    response = token_client(patient).post(
        f"/api/v1/consultations/{old.pk}/reschedule", {"slot": taken.pk}, format="json"
    )
    assert response.status_code == 409
    assert Consultation.objects.get(pk=old.pk).status == ConsultationStatus.SCHEDULED


# --- Availability ---------------------------------------------------------------------------


def test_provider_puts_and_gets_availability(token_client, provider):
    client = token_client(provider)
    tomorrow = (datetime.now().date() + timedelta(days=1)).isoformat()
    body = {
        "windows": [
            {"weekday": 0, "start": "09:00", "end": "12:00"},
            {"weekday": 0, "start": "13:00", "end": "17:00"},
        ],
        "exceptions": [{"date": tomorrow, "kind": "off", "note": "Conference"}],
    }
    response = client.put(f"/api/v1/providers/{provider.pk}/availability", body, format="json")
    assert response.status_code == 200, response.content
    got = client.get(f"/api/v1/providers/{provider.pk}/availability").json()
    assert got["timezone"] == provider.timezone
    assert got["windows"] == body["windows"]
    assert got["exceptions"][0]["date"] == tomorrow
    assert got["exceptions"][0]["kind"] == "off"
    assert Slot.objects.filter(provider=provider).exists()


def test_staff_of_the_clinic_edits_availability(token_client, staff, provider):
    body = {"windows": [{"weekday": 2, "start": "08:00", "end": "10:00"}]}
    response = token_client(staff).put(
        f"/api/v1/providers/{provider.pk}/availability", body, format="json"
    )
    assert response.status_code == 200
    assert response.json()["windows"] == body["windows"]


def test_availability_validation(token_client, provider):
    client = token_client(provider)
    url = f"/api/v1/providers/{provider.pk}/availability"
    overlapping = {
        "windows": [
            {"weekday": 1, "start": "09:00", "end": "12:00"},
            {"weekday": 1, "start": "11:00", "end": "14:00"},
        ]
    }
    backwards = {"windows": [{"weekday": 1, "start": "12:00", "end": "09:00"}]}
    bad_day = {"windows": [{"weekday": 9, "start": "09:00", "end": "10:00"}]}
    extra_without_times = {"windows": [], "exceptions": [{"date": "2031-01-01", "kind": "extra"}]}
    for body in (overlapping, backwards, bad_day, extra_without_times):
        assert client.put(url, body, format="json").status_code == 400, body


def test_a_provider_cannot_see_a_colleagues_availability(
    token_client, provider, make_user, organization
):
    colleague = make_user(Role.PROVIDER, organization=organization)
    url = f"/api/v1/providers/{colleague.pk}/availability"
    assert token_client(provider).get(url).status_code == 404


def test_out_of_range_ids_are_404_or_400_never_500(token_client, patient):
    client = token_client(patient)
    huge = 10**22
    for url in (
        f"/api/v1/providers/{huge}/slots",
        f"/api/v1/consultations/{huge}",
        f"/api/v1/patients/{huge}/records",
        f"/api/v1/queue-entries/{huge}",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post("/api/v1/consultations", {"slot": huge}, format="json").status_code == 400


def test_providers_list_is_cached_and_invalidated_by_profile_changes(
    auth_client, patient, provider, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = auth_client(patient)
    first = client.get("/api/v1/providers")
    assert first.status_code == 200
    with CaptureQueriesContext(connection) as cold:
        client.get("/api/v1/providers?limit=5")
    with CaptureQueriesContext(connection) as warm:
        again = client.get("/api/v1/providers?limit=5")
    assert len(warm) < len(cold)  # the list itself came from the cache
    assert [p["id"] for p in again.json()["results"]] == [provider.id]

    profile = provider.provider_profile
    profile.specialty = "Cardiology"
    with django_capture_on_commit_callbacks(execute=True):
        profile.save()  # e.g. staff editing the profile in the console
    changed = client.get("/api/v1/providers?limit=5").json()["results"]
    assert changed[0]["specialty"] == "Cardiology"
