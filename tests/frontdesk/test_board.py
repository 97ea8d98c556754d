"""The day board for any day, its visit actions, the week view and the print layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Role
from consultations.models import ConsultationStatus
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db

MORNING = datetime(2030, 3, 5, 15, 0, tzinfo=UTC)  # Tuesday 10:00 in New York


@pytest.fixture
def clock():
    with time_machine.travel(MORNING, tick=False) as traveller:
        yield traveller


@pytest.fixture
def day_of_visits(clock, make_user, provider, make_slot, book):
    """Today 11:00 and tomorrow 09:00 (clinic time)."""
    today = book(
        make_user(Role.PATIENT, full_name="Today Patient"),
        make_slot(provider, start=MORNING + timedelta(hours=1)),
    )
    tomorrow = book(
        make_user(Role.PATIENT, full_name="Tomorrow Patient"),
        make_slot(provider, start=MORNING + timedelta(hours=23)),
    )
    return today, tomorrow


def _audit_inserts(queries) -> int:
    return sum(1 for q in queries if q["sql"].startswith('INSERT INTO "medease_auditevent"'))


def test_the_board_shows_any_day_with_previous_and_next(clock, desk, day_of_visits):
    url = reverse("frontdesk:board")
    with CaptureQueriesContext(connection) as queries:
        today = desk.get(url).content.decode()
    assert _audit_inserts(queries.captured_queries) == 1
    assert "Today Patient" in today and "Tomorrow Patient" not in today
    assert "11:00" in today  # clinic time, not UTC (16:00)
    assert "America/New_York" in today
    assert "?day=2030-03-06" in today and "?day=2030-03-04" in today
    tomorrow = desk.get(url, {"day": "2030-03-06"}).content.decode()
    assert "Tomorrow Patient" in tomorrow and "Today Patient" not in tomorrow
    assert desk.get(url, {"day": "not-a-date"}).status_code == 200  # today


def test_start_and_no_show_from_the_board(clock, desk, day_of_visits):
    visit, _ = day_of_visits
    board = reverse("frontdesk:board")
    early = desk.post(reverse("frontdesk:visit_action", args=[visit.pk, "no-show"]), follow=True)
    assert "before its start" in early.content.decode()
    clock.shift(timedelta(hours=1, minutes=5))
    desk.post(reverse("frontdesk:visit_action", args=[visit.pk, "no-show"]), {"next": board})
    visit.refresh_from_db()
    assert visit.status == ConsultationStatus.NO_SHOW


def test_start_from_the_board(clock, desk, day_of_visits):
    visit, _ = day_of_visits
    desk.post(reverse("frontdesk:visit_action", args=[visit.pk, "start"]))
    visit.refresh_from_db()
    assert visit.status == ConsultationStatus.IN_PROGRESS


def test_week_view_of_a_provider(clock, desk, day_of_visits, provider):
    page = desk.get(reverse("frontdesk:week"), {"provider": provider.pk, "day": "2030-03-07"})
    body = page.content.decode()
    assert page.status_code == 200
    assert "Today Patient" in body and "Tomorrow Patient" in body
    assert "Mon 4 Mar" in body and "Sun 10 Mar" in body
    assert AuditEvent.objects.filter(object_type="consultation", action="read").count() == 2


def test_print_layout_of_a_providers_day(clock, desk, day_of_visits, provider):
    page = desk.get(
        reverse("frontdesk:board"), {"provider": provider.pk, "day": "2030-03-05", "print": "1"}
    )
    body = page.content.decode()
    assert 'id="print-day"' in body
    assert "Today Patient" in body
    assert "@media print" in body  # the print stylesheet hides the console around it


def test_another_clinics_provider_is_not_found(clock, desk, other_provider):
    url = reverse("frontdesk:board")
    assert desk.get(url, {"provider": other_provider.pk}).status_code == 404
    assert desk.get(reverse("frontdesk:week"), {"provider": other_provider.pk}).status_code == 404
