"""Patients at the desk: who is known to the clinic, search, the patient page (audited),
registering a patient who then sets a password from the e-mail."""

from __future__ import annotations

import re
from datetime import date

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import services as account_services
from accounts.models import PatientProfile, Role, User
from consultations import services
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db


def _audit_inserts(queries) -> int:
    return sum(1 for q in queries if q["sql"].startswith('INSERT INTO "medease_auditevent"'))


@pytest.fixture
def known(make_user, provider, make_slot, book):
    """A patient with a booking at the clinic, with phone and date of birth."""
    patient = make_user(Role.PATIENT, full_name="Ada Lovelace", email="ada@example.test")
    PatientProfile.objects.filter(user=patient).update(
        phone="+1 (555) 010-2030", date_of_birth=date(1985, 12, 10)
    )
    book(patient, make_slot(provider))
    return patient


@pytest.fixture
def stranger(make_user, other_provider, make_slot, book):
    """A patient of another clinic only."""
    patient = make_user(Role.PATIENT, full_name="Ada Stranger")
    book(patient, make_slot(other_provider))
    return patient


def test_list_shows_the_clinics_patients_only_and_audits_them(desk, known, stranger):
    with CaptureQueriesContext(connection) as queries:
        response = desk.get(reverse("frontdesk:patients"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Ada Lovelace" in body
    assert "Ada Stranger" not in body
    assert _audit_inserts(queries.captured_queries) == 1
    events = AuditEvent.objects.filter(object_type="patient_profile")
    assert [(e.object_id, e.patient_id, e.action) for e in events] == [
        (str(known.pk), known.pk, "read")
    ]


@pytest.mark.parametrize(
    "query", ["lovelace", "ADA@example", "555 010 2030", "5550102030", "1985-12-10", "10/12/1985"]
)
def test_search_by_name_email_phone_and_birth_date(
    desk, known, make_user, provider, make_slot, book, query
):
    other = make_user(Role.PATIENT, full_name="Grace Hopper")
    book(other, make_slot(provider, hours=30))
    response = desk.get(reverse("frontdesk:patients"), {"q": query})
    body = response.content.decode()
    assert "Ada Lovelace" in body
    assert "Grace Hopper" not in body


def test_queue_and_desk_registration_make_a_patient_known(desk, make_user, provider, organization):
    waiting = make_user(Role.PATIENT, full_name="Queue Walker")
    services.queue_join(patient=waiting, provider=provider)
    unknown = make_user(Role.PATIENT, full_name="Nobody Here")
    registered = account_services.patient_register_at_desk(
        organization=organization, email="new@example.test", full_name="Desk Made"
    )
    body = desk.get(reverse("frontdesk:patients")).content.decode()
    assert "Queue Walker" in body
    assert "Desk Made" in body
    assert "Nobody Here" not in body
    assert desk.get(reverse("frontdesk:patient", args=[unknown.pk])).status_code == 404
    assert desk.get(reverse("frontdesk:patient", args=[registered.pk])).status_code == 200


def test_patient_page_shows_and_audits_visits_queue_and_records(
    desk, known, provider, organization
):
    consultation = known.consultations_as_patient.get()
    services.consultation_start(consultation=consultation, actor=provider)
    entry = services.medical_record_add(
        patient=known, author=provider, kind="allergy", text="Penicillin"
    )
    services.queue_join(patient=known, provider=provider, reason="Cough")
    AuditEvent.objects.all().delete()
    with CaptureQueriesContext(connection) as queries:
        response = desk.get(reverse("frontdesk:patient", args=[known.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    for text in ("ada@example.test", "+1 (555) 010-2030", "1985-12-10", "Penicillin", "Cough"):
        assert text in body
    assert _audit_inserts(queries.captured_queries) == 1
    kinds = sorted(AuditEvent.objects.values_list("object_type", "object_id"))
    queue_entry = known.queue_entries_as_patient.get()
    assert kinds == sorted(
        [
            ("consultation", str(consultation.pk)),
            ("medical_record_entry", str(entry.pk)),
            ("patient_profile", str(known.pk)),
            ("queue_entry", str(queue_entry.pk)),
        ]
    )
    assert set(AuditEvent.objects.values_list("patient_id", flat=True)) == {known.pk}


def test_another_clinics_staff_cannot_open_the_patient(known, other_staff):
    client = Client()
    client.force_login(other_staff)
    assert client.get(reverse("frontdesk:patient", args=[known.pk])).status_code == 404
    assert "Ada Lovelace" not in client.get(reverse("frontdesk:patients")).content.decode()


def test_desk_pages_are_for_staff_only(client, known, make_user):
    url = reverse("frontdesk:patients")
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    client.force_login(known)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_register_sends_a_set_password_link_that_works_once(
    desk, organization, settings, django_capture_on_commit_callbacks
):
    settings.SITE_URL = "https://clinic.example.org"
    with django_capture_on_commit_callbacks(execute=True):
        response = desk.post(
            reverse("frontdesk:patient_register"),
            {
                "full_name": "Mary Shelley",
                "email": "Mary@Example.test",
                "phone": "555-0199",
                "date_of_birth": "1997-08-30",
            },
        )
    created = User.objects.get(email="mary@example.test")
    assert response.status_code == 302
    assert response["Location"] == reverse("frontdesk:patient", args=[created.pk])
    assert created.role == Role.PATIENT
    assert not created.has_usable_password()
    profile = created.patient_profile
    assert (profile.phone, profile.date_of_birth, profile.registered_by_organization_id) == (
        "555-0199",
        date(1997, 8, 30),
        organization.pk,
    )
    assert len(mail.outbox) == 1
    link = re.search(r"https://clinic\.example\.org(/\S+)", mail.outbox[0].body).group(1)
    patient_client = Client()
    page = patient_client.get(link)
    assert page.status_code == 200
    assert page["Referrer-Policy"] == "no-referrer"
    assert b"new_password1" in page.content
    weak = patient_client.post(link, {"new_password1": "abc", "new_password2": "abc"})
    assert b"password-set" not in weak.content
    password = "a-long-and-fine-password-2026"
    done = patient_client.post(link, {"new_password1": password, "new_password2": password})
    assert b"password-set" in done.content
    created.refresh_from_db()
    assert created.check_password(password)
    # The token hashed the old (unusable) password: the link is spent.
    assert b"link-invalid" in patient_client.get(link).content


def test_register_refuses_a_taken_email(desk, known):
    response = desk.post(
        reverse("frontdesk:patient_register"),
        {"full_name": "Ada Again", "email": "ADA@example.test"},
    )
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert User.objects.filter(email="ada@example.test").count() == 1


def test_consultation_console_page_links_the_desks_patient_page(desk, known):
    consultation = known.consultations_as_patient.get()
    response = desk.get(reverse("admin:consultations_consultation_change", args=[consultation.pk]))
    assert response.status_code == 200
    assert reverse("frontdesk:patient", args=[known.pk]) in response.content.decode()


def test_the_console_home_links_the_front_desk(desk):
    body = desk.get(reverse("admin:index")).content.decode()
    assert 'id="frontdesk-module"' in body
    assert reverse("frontdesk:patients") in body


def test_desk_pages_sit_behind_the_consoles_mfa_gate(desk, organization):
    organization.mfa_required = True
    organization.save(update_fields=["mfa_required"])
    response = desk.get(reverse("frontdesk:patients"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:accounts_mfa_setup"))


def test_register_refuses_a_birth_date_in_the_future(desk):
    response = desk.post(
        reverse("frontdesk:patient_register"),
        {"full_name": "Not Born", "email": "future@example.test", "date_of_birth": "2999-01-01"},
    )
    assert response.status_code == 200
    assert b"cannot be in the future" in response.content
    assert not User.objects.filter(email="future@example.test").exists()
