"""Booking by phone, rescheduling and cancelling at the desk: the API's services, the same
notifications, a confirmation page before any cancellation (also from the console action)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from consultations.models import Consultation, ConsultationStatus
from medease.models import AuditEvent
from workers.models import Notification

pytestmark = pytest.mark.django_db


@pytest.fixture
def caller(make_user, provider, make_slot, book):
    """A patient known to the clinic (an earlier visit)."""
    patient = make_user(Role.PATIENT, full_name="Phone Caller")
    book(patient, make_slot(provider, hours=200))
    return patient


def test_open_slots_of_a_provider_and_day_then_book_for_the_patient(
    desk, caller, provider, make_slot
):
    slot = make_slot(provider, hours=48)
    day = slot.start.astimezone(ZoneInfo(provider.organization.timezone)).date()
    url = reverse("frontdesk:book")
    page = desk.get(url, {"patient": caller.pk, "provider": provider.pk, "day": day.isoformat()})
    assert page.status_code == 200
    assert f'data-slot="{slot.pk}"' in page.content.decode()
    query = f"?patient={caller.pk}&provider={provider.pk}&day={day.isoformat()}"
    response = desk.post(url + query, {"slot": slot.pk, "reason": "Back pain"})
    assert response.status_code == 302
    booked = Consultation.objects.get(slot=slot)
    assert (booked.patient_id, booked.status, booked.reason) == (
        caller.pk,
        ConsultationStatus.SCHEDULED,
        "Back pain",
    )
    # The API's confirmation, to the patient.
    assert Notification.objects.filter(
        user=caller, kind="booking_confirmed", consultation_id=booked.pk
    ).exists()
    assert AuditEvent.objects.filter(
        action="create", object_type="consultation", object_id=str(booked.pk)
    ).exists()


def test_a_taken_slot_is_refused_with_a_message(desk, caller, make_user, provider, make_slot, book):
    slot = make_slot(provider, hours=50)
    book(make_user(Role.PATIENT), slot)
    response = desk.post(
        reverse("frontdesk:book") + f"?patient={caller.pk}&provider={provider.pk}",
        {"slot": slot.pk},
        follow=True,
    )
    assert "just been booked" in response.content.decode()
    assert not Consultation.objects.filter(slot=slot, patient=caller).exists()


def test_another_clinics_provider_or_slot_is_not_found(desk, caller, other_provider, make_slot):
    assert (
        desk.get(reverse("frontdesk:book"), {"patient": caller.pk, "provider": other_provider.pk})
    ).status_code == 404
    slot = make_slot(other_provider, hours=30)
    response = desk.post(reverse("frontdesk:book") + f"?patient={caller.pk}", {"slot": slot.pk})
    assert response.status_code == 404
    assert not Consultation.objects.filter(slot=slot).exists()


def test_reschedule_moves_the_visit_atomically(desk, caller, provider, make_slot):
    visit = caller.consultations_as_patient.get()
    target = make_slot(provider, hours=72)
    response = desk.post(reverse("frontdesk:reschedule", args=[visit.pk]), {"slot": target.pk})
    assert response.status_code == 302
    visit.refresh_from_db()
    new = Consultation.objects.get(rescheduled_from=visit)
    assert visit.status == ConsultationStatus.CANCELLED
    assert (new.slot_id, new.status) == (target.pk, ConsultationStatus.SCHEDULED)
    assert Notification.objects.filter(
        user=caller, kind="consultation_rescheduled", consultation_id=new.pk
    ).exists()


def test_cancel_shows_what_and_who_then_needs_a_reason(desk, caller, staff):
    visit = caller.consultations_as_patient.get()
    url = reverse("frontdesk:cancel")
    page = desk.get(url, {"ids": str(visit.pk)})
    body = page.content.decode()
    assert page.status_code == 200
    assert "Phone Caller" in body and caller.email in body  # who will be told
    assert visit.status == ConsultationStatus.SCHEDULED
    no_reason = desk.post(url, {"ids": str(visit.pk), "reason": "  ", "confirm": "True"})
    assert no_reason.status_code == 200
    visit.refresh_from_db()
    assert visit.status == ConsultationStatus.SCHEDULED
    done = desk.post(url, {"ids": str(visit.pk), "reason": "Doctor ill", "confirm": "True"})
    assert done.status_code == 302
    visit.refresh_from_db()
    assert (visit.status, visit.cancellation_reason, visit.cancelled_by_id) == (
        ConsultationStatus.CANCELLED,
        "Doctor ill",
        staff.pk,
    )
    assert Notification.objects.filter(
        user=caller, kind="consultation_cancelled", consultation_id=visit.pk
    ).exists()


def test_the_console_cancel_action_leads_to_the_confirmation_page(
    desk, caller, make_user, other_provider, make_slot, book
):
    visit = caller.consultations_as_patient.get()
    theirs = book(make_user(Role.PATIENT), make_slot(other_provider, hours=30))
    changelist = reverse("admin:consultations_consultation_changelist")
    response = desk.post(
        changelist, {"action": "cancel_selected", "_selected_action": [visit.pk, theirs.pk]}
    )
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("frontdesk:cancel")
    assert parse_qs(location.query)["ids"] == [str(visit.pk)]  # the clinic's own only
    visit.refresh_from_db()
    assert visit.status == ConsultationStatus.SCHEDULED  # nothing cancelled yet
    page = desk.get(response["Location"])
    assert "Phone Caller" in page.content.decode()


def test_another_clinics_staff_cannot_cancel(caller, other_staff):
    visit = caller.consultations_as_patient.get()
    client = Client()
    client.force_login(other_staff)
    response = client.post(
        reverse("frontdesk:cancel"), {"ids": str(visit.pk), "reason": "x", "confirm": "True"}
    )
    assert response.status_code == 404
    visit.refresh_from_db()
    assert visit.status == ConsultationStatus.SCHEDULED
