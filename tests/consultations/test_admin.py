"""The staff console: organization scoping, filters, actions through services, availability
inline, the today board and the read-only audit log."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role, User
from consultations import services
from consultations.models import Availability, ConsultationStatus, MedicalRecordEntry, Slot
from medease.models import AuditEvent

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/consultations/consultation/"


def _browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def clinic(patient, other_patient, provider, other_provider, make_slot, book):
    """Two bookings here, one at the other clinic."""
    mine = book(patient, make_slot(provider, hours=2))
    also_mine = book(other_patient, make_slot(provider, hours=5))
    theirs = book(patient, make_slot(other_provider, hours=3))
    return {"mine": mine, "also_mine": also_mine, "theirs": theirs}


def _listed_ids(response) -> set[int]:
    assert response.status_code == 200, response.content[:500]
    return {obj.pk for obj in response.context["cl"].result_list}


def test_staff_see_only_their_clinics_consultations(staff, clinic):
    ids = _listed_ids(_browser(staff).get(CHANGELIST))
    assert ids == {clinic["mine"].pk, clinic["also_mine"].pk}
    other = _browser(staff).get(f"{CHANGELIST}{clinic['theirs'].pk}/change/")
    assert other.status_code == 302  # Django's "does not exist" redirect, no details


def test_superusers_see_every_clinic(clinic):
    root = User.objects.create_superuser("root@example.test", "x-very-long-pass-123")
    assert len(_listed_ids(_browser(root).get(CHANGELIST))) == 3


def test_filters_and_search(staff, provider, patient, other_patient, clinic, make_user):
    client = _browser(staff)
    services.consultation_cancel(consultation=clinic["also_mine"], actor=staff)
    assert _listed_ids(client.get(CHANGELIST, {"status__exact": "cancelled"})) == {
        clinic["also_mine"].pk
    }
    assert _listed_ids(client.get(CHANGELIST, {"provider": provider.pk})) == {
        clinic["mine"].pk,
        clinic["also_mine"].pk,
    }
    assert _listed_ids(client.get(CHANGELIST, {"q": other_patient.email})) == {
        clinic["also_mine"].pk
    }
    assert _listed_ids(client.get(CHANGELIST, {"q": patient.full_name})) == {clinic["mine"].pk}
    # The provider filter offers this clinic's providers only.
    provider_filter = next(
        spec
        for spec in client.get(CHANGELIST).context["cl"].filter_specs
        if getattr(spec, "parameter_name", None) == "provider"
    )
    assert [int(value) for value, _ in provider_filter.lookup_choices] == [provider.pk]


def test_date_filter_today(staff, provider, patient, make_slot, book, clinic):
    later = book(patient, make_slot(provider, hours=24 * 3))
    # The links DateFieldListFilter renders carry aware midnights in the viewer's zone.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    ids = _listed_ids(
        _browser(staff).get(
            CHANGELIST,
            {
                "scheduled_start__gte": str(today),
                "scheduled_start__lt": str(today + timedelta(days=2)),
            },
        )
    )
    assert later.pk not in ids
    assert clinic["mine"].pk in ids


def test_changelist_query_count_does_not_grow(
    staff, provider, make_user, make_slot, book, django_assert_max_num_queries
):
    for n in range(30):
        book(make_user(Role.PATIENT), make_slot(provider, hours=2 + n))
    client = _browser(staff)
    client.get(CHANGELIST)  # warm the session
    with django_assert_max_num_queries(12):
        assert client.get(CHANGELIST).status_code == 200


def test_cancel_action_asks_for_a_reason_then_goes_through_the_service(staff, clinic):
    client = _browser(staff)
    response = client.post(
        CHANGELIST,
        {
            "action": "cancel_selected",
            "_selected_action": [clinic["mine"].pk, clinic["theirs"].pk],
        },
    )
    # No one-click cancellation: the desk's confirmation page, with the clinic's own only.
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("frontdesk:cancel")
    assert parse_qs(location.query)["ids"] == [str(clinic["mine"].pk)]
    clinic["mine"].refresh_from_db()
    assert clinic["mine"].status == ConsultationStatus.SCHEDULED

    confirmed = client.post(
        reverse("frontdesk:cancel"),
        {"ids": str(clinic["mine"].pk), "reason": "Clinic closed", "confirm": "True"},
    )
    assert confirmed.status_code == 302
    clinic["mine"].refresh_from_db()
    clinic["theirs"].refresh_from_db()
    assert clinic["mine"].status == ConsultationStatus.CANCELLED
    assert clinic["mine"].cancellation_reason == "Clinic closed"
    assert clinic["mine"].cancelled_by == staff
    # Another clinic's consultation is outside the staff member's queryset: untouched.
    assert clinic["theirs"].status == ConsultationStatus.SCHEDULED
    assert AuditEvent.objects.filter(action="update", object_id=str(clinic["mine"].pk)).exists()


def test_no_show_action_refuses_what_the_service_refuses(staff, clinic):
    client = _browser(staff)
    early = client.post(
        CHANGELIST,
        {"action": "mark_no_show_selected", "_selected_action": [clinic["mine"].pk]},
        follow=True,
    )
    assert "Not changed" in early.content.decode()
    clinic["mine"].refresh_from_db()
    assert clinic["mine"].status == ConsultationStatus.SCHEDULED
    with time_machine.travel(clinic["mine"].scheduled_start + timedelta(minutes=20)):
        _browser(staff).post(
            CHANGELIST,
            {"action": "mark_no_show_selected", "_selected_action": [clinic["mine"].pk]},
        )
    clinic["mine"].refresh_from_db()
    assert clinic["mine"].status == ConsultationStatus.NO_SHOW


def test_the_change_page_is_read_only_and_audited(staff, clinic):
    client = _browser(staff)
    url = f"{CHANGELIST}{clinic['mine'].pk}/change/"
    assert client.get(url).status_code == 200
    assert AuditEvent.objects.filter(
        action="read", user=staff, object_id=str(clinic["mine"].pk)
    ).exists()
    client.post(url, {"status": "completed", "reason": "edited"})
    clinic["mine"].refresh_from_db()
    assert clinic["mine"].status == ConsultationStatus.SCHEDULED
    assert clinic["mine"].reason == "Checkup"


def test_today_board_shows_consultations_and_queue_side_by_side(
    staff, provider, patient, make_user, organization, make_slot, book, other_provider
):
    book(patient, make_slot(provider, hours=0.5))
    walker = make_user(Role.PATIENT, full_name="Wanda Walkin")
    services.queue_join(patient=walker, provider=provider)
    idle = make_user(Role.PROVIDER, organization=organization, full_name="Dr Idle")
    response = _browser(staff).get("/admin/consultations/consultation/today/")
    assert response.status_code == 200
    rows = {row["provider"].pk: row for row in response.context["rows"]}
    assert set(rows) == {provider.pk, idle.pk}  # not the other clinic's provider
    assert [e.patient_id for e in rows[provider.pk]["queue"]] == [walker.pk]
    assert rows[idle.pk]["queue"] == [] and rows[idle.pk]["consultations"] == []
    html = response.content.decode()
    assert "Wanda Walkin" in html
    assert "Dr Idle" in html
    assert other_provider.full_name not in html


def test_today_board_lists_todays_consultations_in_the_clinic_timezone(
    staff, provider, patient, organization, make_slot, book
):
    tz = ZoneInfo(organization.timezone)
    now = timezone.now().astimezone(tz)
    # Pin "now" to 09:00 clinic time so "today" has room both before and after.
    nine = now.replace(hour=9, minute=0, second=0, microsecond=0)
    with time_machine.travel(nine, tick=False):
        today = book(patient, make_slot(provider, start=nine + timedelta(hours=2)))
        tomorrow = book(patient, make_slot(provider, start=nine + timedelta(hours=20)))
        response = _browser(staff).get("/admin/consultations/consultation/today/")
    ids = [c.pk for c in response.context["rows"][0]["consultations"]]
    assert ids == [today.pk]
    assert tomorrow.pk not in ids
    assert "11:00" in response.content.decode()  # rendered in the clinic's timezone


def test_patients_and_providers_cannot_open_the_console(patient, provider):
    for user in (patient, provider):
        response = _browser(user).get(CHANGELIST)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


# --- Availability inline ------------------------------------------------------------------


def _provider_form(provider, windows, exceptions=()) -> dict:
    data = {
        "email": provider.email,
        "full_name": provider.full_name,
        "role": provider.role,
        "timezone": provider.timezone,
        "is_active": "on",
        "provider_profile-TOTAL_FORMS": "1",
        "provider_profile-INITIAL_FORMS": "1",
        "provider_profile-0-user": provider.pk,
        "provider_profile-0-specialty": provider.provider_profile.specialty,
        "provider_profile-0-bio": "",
        "provider_profile-0-consultation_minutes": "30",
        "availability_windows-TOTAL_FORMS": str(len(windows)),
        "availability_windows-INITIAL_FORMS": "0",
        "availability_exceptions-TOTAL_FORMS": str(len(exceptions)),
        "availability_exceptions-INITIAL_FORMS": "0",
    }
    for index, (weekday, start, end) in enumerate(windows):
        data |= {
            f"availability_windows-{index}-weekday": str(weekday),
            f"availability_windows-{index}-start_time": start,
            f"availability_windows-{index}-end_time": end,
            f"availability_windows-{index}-provider": provider.pk,
        }
    for index, (day, kind) in enumerate(exceptions):
        data |= {
            f"availability_exceptions-{index}-date": day,
            f"availability_exceptions-{index}-kind": kind,
            f"availability_exceptions-{index}-provider": provider.pk,
        }
    return data


def test_staff_edit_availability_inline_and_slots_follow(staff, provider):
    url = f"/admin/accounts/user/{provider.pk}/change/"
    client = _browser(staff)
    page = client.get(url)
    assert page.status_code == 200
    assert "Weekly availability" in page.content.decode()
    windows = [(day, "08:00", "12:00") for day in range(7)]
    tz = ZoneInfo(provider.timezone)
    tomorrow = (timezone.now() + timedelta(days=1)).astimezone(tz).date()
    response = client.post(url, _provider_form(provider, windows, [(tomorrow.isoformat(), "off")]))
    assert response.status_code == 302, response.context and [
        f.errors for f in response.context["inline_admin_formsets"]
    ]
    assert Availability.objects.filter(provider=provider).count() == 7
    assert Slot.objects.filter(provider=provider).exists()
    slot_days = {s.start.astimezone(tz).date() for s in Slot.objects.filter(provider=provider)}
    assert tomorrow not in slot_days
    assert tomorrow + timedelta(days=1) in slot_days


def test_overlapping_windows_in_the_inline_are_form_errors(staff, provider):
    url = f"/admin/accounts/user/{provider.pk}/change/"
    response = _browser(staff).post(
        url, _provider_form(provider, [(0, "08:00", "12:00"), (0, "11:00", "13:00")])
    )
    assert response.status_code == 200  # the form again, with the error
    assert "must not overlap" in response.content.decode()
    assert not Availability.objects.filter(provider=provider).exists()


# --- Audit log ----------------------------------------------------------------------------


def test_staff_read_their_clinics_audit_events_only(
    staff, patient, other_provider, token_client, clinic
):
    token_client(patient).get(f"/api/v1/consultations/{clinic['mine'].pk}")
    token_client(patient).get(f"/api/v1/consultations/{clinic['theirs'].pk}")
    client = _browser(staff)
    response = client.get("/admin/medease/auditevent/")
    assert response.status_code == 200
    listed = list(response.context["cl"].result_list)
    assert {e.object_id for e in listed} == {str(clinic["mine"].pk)}
    event = listed[0]
    detail = client.get(f"/admin/medease/auditevent/{event.pk}/change/")
    assert detail.status_code == 200
    assert not detail.context["has_change_permission"]
    assert client.get("/admin/medease/auditevent/add/").status_code == 403
    client.post(f"/admin/medease/auditevent/{event.pk}/delete/", {"post": "yes"})
    assert AuditEvent.objects.filter(pk=event.pk).exists()


# --- Medical records (read-only) ----------------------------------------------------------


def test_record_entries_are_read_only_and_reading_one_is_audited(patient, provider, clinic):
    entry = services.medical_record_add(author=provider, patient=patient, kind="note", text="x")
    root = User.objects.create_superuser("root@example.test", "x-very-long-pass-123")
    client = _browser(root)
    url = f"/admin/consultations/medicalrecordentry/{entry.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200 and not page.context["has_change_permission"]
    assert AuditEvent.objects.filter(
        action="read", object_type="medical_record_entry", object_id=str(entry.pk)
    ).exists()
    assert client.get("/admin/consultations/medicalrecordentry/add/").status_code == 403
    client.post(f"/admin/consultations/medicalrecordentry/{entry.pk}/delete/", {"post": "yes"})
    assert MedicalRecordEntry.objects.filter(pk=entry.pk).exists()
