"""Check-in: the "arrived" mark on booked visits (service, board, API field, undo same day)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from accounts.models import Role
from consultations import services
from consultations.models import ConsultationStatus
from medease.exceptions import Conflict, Forbidden, NotFound
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db

# 10:00 in the clinic (America/New_York), a Tuesday.
MORNING = datetime(2030, 3, 5, 15, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(MORNING, tick=False) as traveller:
        yield traveller


@pytest.fixture
def visit(clock, make_user, provider, make_slot, book):
    """A visit at 10:30 today, booked by a patient of the clinic."""
    patient = make_user(Role.PATIENT, full_name="Early Bird")
    return book(patient, make_slot(provider, start=MORNING + timedelta(minutes=30)))


def test_check_in_stamps_once_and_undo_clears_it(visit, staff, clock):
    services.consultation_check_in(consultation=visit, actor=staff)
    visit.refresh_from_db()
    assert (visit.checked_in_at, visit.checked_in_by_id) == (MORNING, staff.pk)
    assert visit.status == ConsultationStatus.SCHEDULED  # a fact, not a transition
    clock.shift(timedelta(minutes=5))
    services.consultation_check_in(consultation=visit, actor=staff)  # a second desk
    visit.refresh_from_db()
    assert visit.checked_in_at == MORNING  # the first time is kept
    services.consultation_check_in_undo(consultation=visit, actor=staff)
    visit.refresh_from_db()
    assert (visit.checked_in_at, visit.checked_in_by_id) == (None, None)


def test_who_may_check_in(visit, make_user, other_organization, provider):
    with pytest.raises(Forbidden):
        services.consultation_check_in(consultation=visit, actor=visit.patient)
    with pytest.raises(NotFound):
        services.consultation_check_in(
            consultation=visit, actor=make_user(Role.STAFF, organization=other_organization)
        )
    services.consultation_check_in(consultation=visit, actor=provider)
    visit.refresh_from_db()
    assert visit.checked_in_by_id == provider.pk


def test_only_on_the_visits_day_and_while_scheduled(
    clock, staff, make_user, provider, make_slot, book
):
    patient = make_user(Role.PATIENT)
    tomorrow = book(patient, make_slot(provider, start=MORNING + timedelta(days=1)))
    with pytest.raises(Conflict) as caught:
        services.consultation_check_in(consultation=tomorrow, actor=staff)
    assert caught.value.code == "not_today"
    today = book(patient, make_slot(provider, start=MORNING + timedelta(hours=2)))
    services.consultation_cancel(consultation=today, actor=staff, reason="x")
    with pytest.raises(Conflict) as caught:
        services.consultation_check_in(consultation=today, actor=staff)
    assert caught.value.code == "invalid_transition"


def test_undo_is_for_the_same_day_only(visit, staff, clock):
    services.consultation_check_in(consultation=visit, actor=staff)
    clock.shift(timedelta(days=1))
    with pytest.raises(Conflict) as caught:
        services.consultation_check_in_undo(consultation=visit, actor=staff)
    assert caught.value.code == "too_late"


def test_the_api_body_shows_checked_in_at(visit, staff, provider, token_client):
    services.consultation_check_in(consultation=visit, actor=staff)
    body = token_client(provider).get(f"/api/v1/consultations/{visit.pk}").json()
    assert datetime.fromisoformat(body["checked_in_at"]) == MORNING


def test_the_board_checks_in_and_shows_the_arrival(clock, desk, visit):
    board = reverse("frontdesk:board")
    page = desk.get(board).content.decode()
    assert "Early Bird" in page
    assert "action-check-in" in page
    response = desk.post(
        reverse("frontdesk:visit_action", args=[visit.pk, "check-in"]), {"next": board}
    )
    assert response.status_code == 302
    assert response["Location"] == board
    visit.refresh_from_db()
    assert visit.checked_in_at == MORNING
    assert AuditEvent.objects.filter(
        action="update", object_type="consultation", object_id=str(visit.pk)
    ).exists()
    page = desk.get(board).content.decode()
    assert "arrived 10:00" in page
    assert "action-undo-check-in" in page


def test_an_unknown_action_or_a_get_does_nothing(clock, desk, visit):
    assert (
        desk.post(reverse("frontdesk:visit_action", args=[visit.pk, "delete"])).status_code == 404
    )
    assert (
        desk.get(reverse("frontdesk:visit_action", args=[visit.pk, "check-in"])).status_code == 405
    )
    visit.refresh_from_db()
    assert visit.checked_in_at is None
