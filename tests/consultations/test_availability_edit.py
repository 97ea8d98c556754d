"""Editing availability (issue 10, #13): a PUT replaces only the parts it names, and blocking
time over booked visits lists them (409) until the editor confirms, which cancels them."""

from __future__ import annotations

from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from consultations import services
from consultations.models import (
    Availability,
    AvailabilityException,
    Consultation,
    ConsultationStatus,
    Slot,
)
from consultations.slotting import Window, local_instant
from medease.models import AuditEvent
from workers.models import Notification

EVERY_DAY_9_TO_17 = [Window(day, time(9), time(17)) for day in range(7)]
EVERY_DAY_BODY = [{"weekday": day, "start": "09:00", "end": "17:00"} for day in range(7)]


def _url(provider) -> str:
    return f"/api/v1/providers/{provider.pk}/availability"


def _day(provider, days_ahead: int = 3):
    return timezone.now().astimezone(ZoneInfo(provider.timezone)).date() + timedelta(
        days=days_ahead
    )


@pytest.fixture
def working_provider(provider):
    """Every day 09:00-17:00, with slots materialized."""
    services.availability_replace(provider=provider, windows=EVERY_DAY_9_TO_17)
    return provider


@pytest.fixture
def booked_at(working_provider, patient, book):
    """Book the working provider at a local wall-clock time, three days ahead."""

    def do(hour: int, minute: int = 0, *, who=patient) -> Consultation:
        tz = ZoneInfo(working_provider.timezone)
        start = local_instant(_day(working_provider), time(hour, minute), tz)
        return book(who, Slot.objects.get(provider=working_provider, start=start))

    return do


# --- A missing key leaves that part alone ---------------------------------------------------


def test_a_put_without_exceptions_keeps_the_upcoming_days_off(token_client, working_provider):
    day_off = _day(working_provider, 5)
    services.availability_replace(
        provider=working_provider, exceptions=[services.ExceptionSpec(date=day_off, note="Leave")]
    )
    client = token_client(working_provider)
    body = {"windows": [{"weekday": 0, "start": "09:00", "end": "12:00"}]}
    response = client.put(_url(working_provider), body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["windows"] == body["windows"]
    exceptions = client.get(_url(working_provider)).json()["exceptions"]
    assert [(e["date"], e["kind"], e["note"]) for e in exceptions] == [
        (day_off.isoformat(), "off", "Leave")
    ]


def test_a_put_without_windows_keeps_the_weekly_windows(token_client, working_provider):
    client = token_client(working_provider)
    day_off = _day(working_provider, 20).isoformat()
    response = client.put(
        _url(working_provider), {"exceptions": [{"date": day_off, "kind": "off"}]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["windows"] == EVERY_DAY_BODY
    assert [e["date"] for e in response.json()["exceptions"]] == [day_off]


def test_explicit_empty_lists_clear_windows_and_days_off(token_client, working_provider):
    services.availability_replace(
        provider=working_provider,
        exceptions=[services.ExceptionSpec(date=_day(working_provider, 5))],
    )
    response = token_client(working_provider).put(
        _url(working_provider), {"windows": [], "exceptions": []}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["windows"] == []
    assert response.json()["exceptions"] == []
    assert not Slot.objects.filter(provider=working_provider).exists()


# --- Blocking booked time needs a confirmation ----------------------------------------------


def _conflicts(response) -> list[dict]:
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "availability_conflicts"
    return error["fields"]["conflicts"]


def test_a_day_off_over_a_booking_lists_it_and_changes_nothing(
    token_client, working_provider, patient, booked_at
):
    consultation = booked_at(10)
    day = _day(working_provider).isoformat()
    response = token_client(working_provider).put(
        _url(working_provider), {"exceptions": [{"date": day, "kind": "off"}]}, format="json"
    )
    conflicts = _conflicts(response)
    assert [(c["id"], c["patient"]) for c in conflicts] == [(consultation.pk, patient.pk)]
    assert conflicts[0]["patient_name"] == patient.full_name
    assert conflicts[0]["scheduled_start"].startswith(day)
    assert "scheduled_end" in conflicts[0]
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED
    assert not AvailabilityException.objects.filter(provider=working_provider).exists()
    # Listing patients to the editor is a PHI read.
    assert AuditEvent.objects.filter(object_type="consultation", object_id=str(consultation.pk))


@pytest.mark.parametrize(
    "windows",
    [
        pytest.param([], id="window removed"),
        pytest.param(
            [{"weekday": day, "start": "09:00", "end": "12:00"} for day in range(7)],
            id="window shortened",
        ),
    ],
)
def test_removing_or_shortening_a_window_over_a_booking_is_a_conflict(
    token_client, working_provider, booked_at, windows
):
    afternoon = booked_at(14)
    response = token_client(working_provider).put(
        _url(working_provider), {"windows": windows}, format="json"
    )
    assert [c["id"] for c in _conflicts(response)] == [afternoon.pk]
    assert response.json()["error"]["fields"]["conflicts"][0]["scheduled_end"]
    assert Availability.objects.filter(provider=working_provider).count() == 7


def test_a_change_that_spares_every_booking_needs_no_confirmation(
    token_client, working_provider, booked_at
):
    morning = booked_at(10)
    mornings = [{"weekday": day, "start": "09:00", "end": "12:00"} for day in range(7)]
    response = token_client(working_provider).put(
        _url(working_provider), {"windows": mornings}, format="json"
    )
    assert response.status_code == 200, response.content
    morning.refresh_from_db()
    assert morning.status == ConsultationStatus.SCHEDULED


@pytest.mark.parametrize("how", ["body", "query"])
def test_a_confirmed_change_cancels_the_affected_visits_and_tells_the_patients(
    token_client,
    staff,
    working_provider,
    patient,
    booked_at,
    how,
    django_capture_on_commit_callbacks,
):
    hit = booked_at(10)
    day = _day(working_provider).isoformat()
    body = {"exceptions": [{"date": day, "kind": "off", "start": "09:30", "end": "11:00"}]}
    url = _url(working_provider)
    if how == "body":
        body["confirm"] = True
    else:
        url += "?confirm=1"
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(staff).put(url, body, format="json")
    assert response.status_code == 200, response.content
    assert [e["date"] for e in response.json()["exceptions"]] == [day]
    hit.refresh_from_db()
    assert hit.status == ConsultationStatus.CANCELLED
    assert hit.cancellation_reason == "provider unavailable"
    assert hit.cancelled_by_id == staff.pk
    assert Notification.objects.filter(
        user=patient, kind="consultation_cancelled", consultation_id=hit.pk
    ).exists()
    # The freed slot went away with the new day off; the visit keeps its times.
    assert hit.slot_id is None
    assert hit.scheduled_start.astimezone(ZoneInfo(working_provider.timezone)).hour == 10


def test_confirming_leaves_unaffected_visits_alone(
    token_client, working_provider, patient, other_patient, booked_at
):
    hit = booked_at(15)
    kept = booked_at(10, who=other_patient)
    mornings = [{"weekday": day, "start": "09:00", "end": "12:00"} for day in range(7)]
    response = token_client(working_provider).put(
        _url(working_provider), {"windows": mornings, "confirm": True}, format="json"
    )
    assert response.status_code == 200, response.content
    hit.refresh_from_db()
    kept.refresh_from_db()
    assert hit.status == ConsultationStatus.CANCELLED
    assert hit.cancelled_by_id == working_provider.pk
    assert kept.status == ConsultationStatus.SCHEDULED


def test_a_visit_already_outside_the_hours_is_not_reported(
    token_client, provider, patient, make_slot, book
):
    """Bookings the current availability does not cover are not this edit's doing."""
    book(patient, make_slot(provider, hours=48))
    response = token_client(provider).put(_url(provider), {"windows": []}, format="json")
    assert response.status_code == 200, response.content


def test_an_invalid_confirm_flag_is_a_400(token_client, working_provider):
    response = token_client(working_provider).put(
        _url(working_provider) + "?confirm=perhaps", {"windows": []}, format="json"
    )
    assert response.status_code == 400


# --- The console warns the same way -----------------------------------------------------------


def _console_form(provider, *, day_off=None, confirm: bool = False) -> dict:
    """The provider's page as the browser posts it: the current windows unchanged, plus a new
    day off (and the confirmation box, when ticked)."""
    windows = list(Availability.objects.filter(provider=provider).order_by("pk"))
    data = {
        "email": provider.email,
        "full_name": provider.full_name,
        "role": provider.role,
        "timezone": provider.timezone,
        "organization": provider.organization_id,
        "is_active": "on",
        "provider_profile-TOTAL_FORMS": "1",
        "provider_profile-INITIAL_FORMS": "1",
        "provider_profile-0-user": provider.pk,
        "provider_profile-0-specialty": provider.provider_profile.specialty,
        "provider_profile-0-bio": "",
        "provider_profile-0-consultation_minutes": "30",
        "availability_windows-TOTAL_FORMS": str(len(windows)),
        "availability_windows-INITIAL_FORMS": str(len(windows)),
        "availability_exceptions-TOTAL_FORMS": "1" if day_off else "0",
        "availability_exceptions-INITIAL_FORMS": "0",
    }
    for index, window in enumerate(windows):
        data |= {
            f"availability_windows-{index}-id": window.pk,
            f"availability_windows-{index}-provider": provider.pk,
            f"availability_windows-{index}-weekday": str(window.weekday),
            f"availability_windows-{index}-start_time": window.start_time.strftime("%H:%M"),
            f"availability_windows-{index}-end_time": window.end_time.strftime("%H:%M"),
        }
    if day_off:
        data |= {
            "availability_exceptions-0-provider": provider.pk,
            "availability_exceptions-0-date": day_off.isoformat(),
            "availability_exceptions-0-kind": "off",
        }
    if confirm:
        data["confirm_availability_conflicts"] = "1"
    return data


def test_the_console_lists_the_affected_visits_and_cancels_them_once_confirmed(
    staff, working_provider, patient, booked_at
):
    consultation = booked_at(11)
    client = Client()
    client.force_login(staff)
    url = f"/admin/accounts/user/{working_provider.pk}/change/"
    day = _day(working_provider)

    response = client.post(url, _console_form(working_provider, day_off=day))
    assert response.status_code == 200  # the page again, with the warning
    page = response.content.decode()
    assert patient.full_name in page
    assert 'name="confirm_availability_conflicts"' in page
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED
    assert not AvailabilityException.objects.filter(provider=working_provider).exists()

    response = client.post(url, _console_form(working_provider, day_off=day, confirm=True))
    assert response.status_code == 302
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.CANCELLED
    assert consultation.cancellation_reason == "provider unavailable"
    assert consultation.cancelled_by_id == staff.pk
    assert AvailabilityException.objects.filter(provider=working_provider, date=day).exists()


def test_the_console_saves_a_change_that_spares_every_booking_at_once(
    staff, working_provider, booked_at
):
    consultation = booked_at(11)
    client = Client()
    client.force_login(staff)
    url = f"/admin/accounts/user/{working_provider.pk}/change/"
    response = client.post(url, _console_form(working_provider, day_off=_day(working_provider, 6)))
    assert response.status_code == 302
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED
