"""Walk-ins at the desk (add, queues with positions and waits, call next, remove with a
reason) and call-next between bookings, in the API and the console alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from accounts.models import Role
from consultations import services
from consultations.models import Consultation, ConsultationStatus, QueueEntry, QueueStatus

pytestmark = pytest.mark.django_db

MORNING = datetime(2030, 3, 5, 15, 0, tzinfo=UTC)  # Tuesday 10:00 in New York


@pytest.fixture
def clock():
    with time_machine.travel(MORNING, tick=False) as traveller:
        yield traveller


@pytest.fixture
def walkers(clock, make_user, provider):
    """Two patients waiting for the provider (known to the clinic through the queue)."""
    first = make_user(Role.PATIENT, full_name="First Walker")
    second = make_user(Role.PATIENT, full_name="Second Walker")
    services.queue_join(patient=first, provider=provider, reason="Sore throat")
    clock.shift(timedelta(minutes=1))
    services.queue_join(patient=second, provider=provider, reason="Rash")
    return first, second


def test_the_desk_adds_a_known_patient_as_a_walk_in(clock, desk, make_user, provider, walkers):
    url = reverse("frontdesk:walk_ins")
    found = desk.get(url, {"q": "First"}).content.decode()
    assert "First Walker" in found
    first, _ = walkers
    services.queue_leave(entry=first.queue_entries_as_patient.get(), actor=first)
    response = desk.post(
        f"{url}?patient={first.pk}", {"provider": provider.pk, "reason": "Back again"}
    )
    assert response.status_code == 302
    entry = QueueEntry.objects.get(patient=first, status=QueueStatus.WAITING)
    assert entry.reason == "Back again"


def test_queues_show_positions_and_estimated_waits(clock, desk, walkers):
    body = desk.get(reverse("frontdesk:walk_ins")).content.decode()
    assert body.index("First Walker") < body.index("Second Walker")
    assert "~0 min" in body and "~30 min" in body  # nobody in consultation; 30-minute visits


def test_call_next_between_bookings_ends_by_the_next_booking(
    clock, desk, walkers, make_user, provider, make_slot, book
):
    booked = book(
        make_user(Role.PATIENT), make_slot(provider, start=MORNING + timedelta(minutes=12))
    )
    response = desk.post(reverse("frontdesk:call_next", args=[provider.pk]), follow=True)
    walk_in = Consultation.objects.get(kind="walk_in")
    assert walk_in.patient == walkers[0]
    assert walk_in.scheduled_end == booked.scheduled_start
    assert "planned until 10:12" in response.content.decode()
    # Now the provider is in a consultation: busy.
    again = desk.post(reverse("frontdesk:call_next", args=[provider.pk]), follow=True)
    assert "in a consultation" in again.content.decode()
    assert QueueEntry.objects.get(patient=walkers[1]).status == QueueStatus.WAITING


def test_api_call_next_fits_a_walk_in_before_a_booking(
    clock, walkers, make_user, provider, make_slot, book, token_client
):
    booked = book(
        make_user(Role.PATIENT), make_slot(provider, start=MORNING + timedelta(minutes=12))
    )
    response = token_client(provider).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 201, response.content
    assert datetime.fromisoformat(response.json()["scheduled_end"]) == booked.scheduled_start


def test_api_call_next_with_no_booking_takes_the_nominal_length(
    clock, walkers, provider, token_client
):
    response = token_client(provider).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 201
    # The walkers fixture left the clock at 10:01.
    assert datetime.fromisoformat(response.json()["scheduled_end"]) == MORNING + timedelta(
        minutes=31
    )


def test_api_call_next_while_a_booked_visit_is_due_is_409(
    clock, walkers, make_user, provider, make_slot, book, token_client
):
    booked = book(
        make_user(Role.PATIENT), make_slot(provider, start=MORNING + timedelta(minutes=5))
    )
    clock.shift(timedelta(minutes=10))  # the booked patient is late, nobody started it
    client = token_client(provider)
    response = client.post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "booking_due"
    services.consultation_mark_no_show(consultation=booked, actor=provider)
    assert client.post(f"/api/v1/providers/{provider.pk}/queue/next").status_code == 201


def test_api_call_next_while_in_a_consultation_is_provider_busy(
    clock, walkers, make_user, provider, make_slot, book, token_client
):
    booked = book(make_user(Role.PATIENT), make_slot(provider, start=MORNING + timedelta(hours=2)))
    services.consultation_start(consultation=booked, actor=provider)  # early is fine
    response = token_client(provider).post(f"/api/v1/providers/{provider.pk}/queue/next")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "provider_busy"


def test_remove_from_the_queue_with_a_reason(clock, desk, walkers, staff):
    entry = walkers[0].queue_entries_as_patient.get()
    url = reverse("frontdesk:queue_remove", args=[entry.pk])
    assert "First Walker" in desk.get(url).content.decode()
    assert desk.post(url, {"reason": " "}).status_code == 200  # a reason is required
    entry.refresh_from_db()
    assert entry.status == QueueStatus.WAITING
    response = desk.post(url, {"reason": "Went home"})
    assert response.status_code == 302
    entry.refresh_from_db()
    assert (entry.status, entry.removal_reason, entry.removed_by_id) == (
        QueueStatus.LEFT,
        "Went home",
        staff.pk,
    )
    body = desk.get(reverse("frontdesk:walk_ins")).content.decode()
    assert f'id="entry-{entry.pk}"' not in body
    assert ConsultationStatus.IN_PROGRESS not in {c.status for c in Consultation.objects.all()}


def test_another_clinics_staff_cannot_touch_the_queue(clock, walkers, other_staff, provider):
    from django.test import Client

    client = Client()
    client.force_login(other_staff)
    entry = walkers[0].queue_entries_as_patient.get()
    assert client.post(reverse("frontdesk:call_next", args=[provider.pk])).status_code == 404
    assert (
        client.post(reverse("frontdesk:queue_remove", args=[entry.pk]), {"reason": "x"})
    ).status_code == 404
    entry.refresh_from_db()
    assert entry.status == QueueStatus.WAITING
