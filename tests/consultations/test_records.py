"""Medical records: who writes, who reads, corrections supersede, nothing is ever deleted."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from accounts.models import Role
from consultations import services
from consultations.models import MedicalRecordEntry
from medease.exceptions import Conflict, Forbidden, NotFound
from medease.models import AuditEvent
from tests.conftest import on_postgres

pytestmark = pytest.mark.django_db


@pytest.fixture
def treated(patient, provider, make_slot, book):
    """The patient has a consultation with the provider (so the provider treats them)."""
    return book(patient, make_slot(provider))


def _url(patient) -> str:
    return f"/api/v1/patients/{patient.pk}/records"


def test_treating_provider_writes_and_patient_reads(token_client, patient, provider, treated):
    response = token_client(provider).post(
        _url(patient),
        {"kind": "diagnosis", "text": "Seasonal allergies", "consultation": treated.pk},
        format="json",
    )
    assert response.status_code == 201, response.content
    entry = response.json()
    assert entry["kind"] == "diagnosis"
    assert entry["consultation"] == treated.pk
    assert entry["author"] == provider.pk
    listing = token_client(patient).get(_url(patient))
    assert listing.status_code == 200
    assert [e["id"] for e in listing.json()["results"]] == [entry["id"]]
    assert AuditEvent.objects.filter(
        action="create", object_type="medical_record_entry", patient=patient
    ).exists()
    read = AuditEvent.objects.get(action="read", object_type="medical_record_entry")
    assert (read.user_id, read.object_id) == (patient.pk, str(entry["id"]))


def test_staff_of_the_treating_clinic_reads_and_writes(token_client, patient, staff, treated):
    client = token_client(staff)
    assert (
        client.post(_url(patient), {"kind": "allergy", "text": "Penicillin"}, format="json")
    ).status_code == 201
    assert len(client.get(_url(patient)).json()["results"]) == 1


def test_a_provider_who_never_treated_the_patient_gets_404(
    token_client, patient, make_user, organization, treated
):
    colleague = make_user(Role.PROVIDER, organization=organization)
    client = token_client(colleague)
    assert client.get(_url(patient)).status_code == 404
    assert client.post(_url(patient), {"kind": "note", "text": "x"}, format="json").status_code == (
        404
    )


def test_a_cancelled_booking_does_not_make_a_treating_provider(
    token_client, patient, provider, treated
):
    services.consultation_cancel(consultation=treated, actor=patient)
    assert token_client(provider).get(_url(patient)).status_code == 404


def test_patients_cannot_write_their_own_record(token_client, patient, treated):
    response = token_client(patient).post(
        _url(patient), {"kind": "note", "text": "Hi"}, format="json"
    )
    assert response.status_code == 403


def test_clinicians_read_their_own_clinics_entries_only(
    patient, provider, other_provider, make_slot, book, token_client
):
    book(patient, make_slot(provider, hours=30))
    book(patient, make_slot(other_provider, hours=40))
    mine = services.medical_record_add(author=provider, patient=patient, kind="note", text="A")
    theirs = services.medical_record_add(
        author=other_provider, patient=patient, kind="note", text="B"
    )
    seen = [e["id"] for e in token_client(provider).get(_url(patient)).json()["results"]]
    assert seen == [mine.pk]
    all_of_them = [e["id"] for e in token_client(patient).get(_url(patient)).json()["results"]]
    assert all_of_them == [theirs.pk, mine.pk]  # newest first


def test_a_correction_supersedes_once(token_client, patient, provider, treated):
    original = services.medical_record_add(
        author=provider, patient=patient, kind="prescription", text="Amoxicillin 500mg"
    )
    fix = services.medical_record_add(
        author=provider,
        patient=patient,
        kind="prescription",
        text="Amoxicillin 250mg",
        supersedes_id=original.pk,
    )
    with pytest.raises(Conflict):
        services.medical_record_add(
            author=provider,
            patient=patient,
            kind="prescription",
            text="x",
            supersedes_id=original.pk,
        )
    body = token_client(patient).get(_url(patient)).json()["results"]
    by_id = {e["id"]: e for e in body}
    assert by_id[original.pk]["superseded_by"] == fix.pk
    assert by_id[fix.pk]["supersedes"] == original.pk
    current = token_client(patient).get(_url(patient), {"current": "true"}).json()["results"]
    assert [e["id"] for e in current] == [fix.pk]


def test_entries_cannot_be_changed_or_deleted_through_the_model(patient, provider, treated):
    entry = services.medical_record_add(author=provider, patient=patient, kind="note", text="A")
    entry.text = "B"
    with pytest.raises(RuntimeError):
        entry.save()
    with pytest.raises(RuntimeError):
        entry.delete()
    assert MedicalRecordEntry.objects.get(pk=entry.pk).text == "A"


@pytest.mark.postgres
def test_postgres_refuses_update_and_delete_of_entries(patient, provider, treated):
    assert on_postgres()
    entry = services.medical_record_add(author=provider, patient=patient, kind="note", text="A")
    for sql in (
        "UPDATE consultations_medicalrecordentry SET text = 'B' WHERE id = %s",
        "DELETE FROM consultations_medicalrecordentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [entry.pk])
    assert MedicalRecordEntry.objects.get(pk=entry.pk).text == "A"


def test_service_guards(patient, provider, other_provider, treated, make_user):
    with pytest.raises(Forbidden):
        services.medical_record_add(author=patient, patient=patient, kind="note", text="x")
    with pytest.raises(NotFound):
        services.medical_record_add(author=other_provider, patient=patient, kind="note", text="x")
    not_a_patient = make_user(Role.STAFF, organization=provider.organization)
    with pytest.raises(NotFound):
        services.medical_record_add(author=provider, patient=not_a_patient, kind="note", text="x")


def test_record_input_validation(token_client, patient, provider, treated, other_patient):
    client = token_client(provider)
    for body in (
        {"kind": "horoscope", "text": "x"},
        {"kind": "note"},
        {"kind": "note", "text": "   "},
        {"kind": "note", "text": "x", "consultation": 999999},
        {"kind": "note", "text": "x", "supersedes": 999999},
    ):
        assert client.post(_url(patient), body, format="json").status_code == 400, body
