"""Console polish (issue 13 #7): read-only pages look read-only, times in the clinic's zone with
the zone named, search by provider, the staff-only message at the console's login, and the
home page's and queue entry page's links."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from accounts.forms import CONSOLE_IS_FOR_STAFF
from accounts.models import Role, User
from attachments.models import Attachment
from consultations import services
from consultations.models import Slot
from medease.models import AuditEvent
from tests.conftest import PASSWORD
from workers.models import Notification, NotificationKind

pytestmark = pytest.mark.django_db

CONSULTATIONS = "/admin/consultations/consultation/"
QUEUE = "/admin/consultations/queueentry/"
LOGIN = "/admin/login/"


def _console(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def visit(patient, provider, make_slot, book):
    return book(patient, make_slot(provider, hours=26))


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root@example.test", "x-very-long-pass-123")


def _looks_read_only(response, title: str) -> None:
    assert response.status_code == 200, response.content[:300]
    html = response.content.decode()
    assert response.context["title"] == title
    assert f"<h1>{title}</h1>" in html
    # No Save, "Save and continue" or "Save and add another".
    for button in ('name="_save"', 'name="_continue"', 'name="_addanother"'):
        assert button not in html
    assert "Change " not in response.context["title"]


# --- 1. Read-only pages -----------------------------------------------------------------


def test_the_consultation_page_is_a_view_page_and_the_list_keeps_its_actions(staff, visit):
    client = _console(staff)
    _looks_read_only(client.get(f"{CONSULTATIONS}{visit.pk}/change/"), "View consultation")
    listing = client.get(CONSULTATIONS)
    assert listing.context["title"] == "Consultations"
    actions = [name for name, _label in listing.context["action_form"].fields["action"].choices]
    assert {"cancel_selected", "mark_no_show_selected"} <= set(actions)
    # A POST to the page changes nothing: it is refused outright.
    response = client.post(f"{CONSULTATIONS}{visit.pk}/change/", {"reason": "edited"})
    assert response.status_code == 403
    visit.refresh_from_db()
    assert visit.reason == "Checkup"


def test_queue_records_audit_notifications_attachments_are_view_pages(
    root, patient, provider, organization, visit
):
    entry = services.queue_join(patient=patient, provider=provider, reason="Cough")
    record = services.medical_record_add(author=provider, patient=patient, kind="note", text="x")
    notification = Notification.objects.create(
        user=patient, kind=NotificationKind.BOOKING_CONFIRMED, dedupe_key="polish-1"
    )
    attachment = Attachment.objects.create(
        uploader=patient,
        consultation=visit,
        patient=patient,
        organization=organization,
        filename="scan.pdf",
        content_type="application/pdf",
        size=10,
        storage_key="polish/scan.pdf",
    )
    client = _console(root)
    client.get(f"{CONSULTATIONS}{visit.pk}/change/")  # an audit event to look at
    event = AuditEvent.objects.order_by("-id").first()
    pages = [
        (f"{QUEUE}{entry.pk}/change/", "View queue entry", QUEUE, "Queue entries"),
        (
            f"/admin/consultations/medicalrecordentry/{record.pk}/change/",
            "View medical record entry",
            "/admin/consultations/medicalrecordentry/",
            "Medical record entries",
        ),
        (
            f"/admin/medease/auditevent/{event.pk}/change/",
            "View audit event",
            "/admin/medease/auditevent/",
            "Audit events",
        ),
        (
            f"/admin/workers/notification/{notification.pk}/change/",
            "View notification",
            "/admin/workers/notification/",
            "Notifications",
        ),
        (
            f"/admin/attachments/attachment/{attachment.pk}/change/",
            "View attachment",
            "/admin/attachments/attachment/",
            "Attachments",
        ),
    ]
    for page, title, listing, list_title in pages:
        _looks_read_only(client.get(page), title)
        assert client.get(listing).context["title"] == list_title


# --- 2. Times in the clinic's zone, the zone named ----------------------------------------


def test_consultation_times_are_in_the_clinics_zone_with_the_zone_shown(staff, visit, organization):
    assert staff.timezone == "UTC" and organization.timezone == "America/New_York"
    local = visit.scheduled_start.astimezone(ZoneInfo(organization.timezone))
    utc = visit.scheduled_start.astimezone(ZoneInfo("UTC"))
    abbreviation = local.tzname()  # EST or EDT
    client = _console(staff)

    listing = client.get(CONSULTATIONS).content.decode()
    assert f"{local:%d %b %Y %H:%M} {abbreviation}" in listing
    assert "Times in America/New_York (" in listing

    page = client.get(f"{CONSULTATIONS}{visit.pk}/change/").content.decode()
    assert 'id="console-zone"' in page and "America/New_York" in page
    # The slot line and the start: the clinic's hour with its abbreviation, not UTC.
    assert f"at {local:%d %b %Y %H:%M} {abbreviation}" in page
    assert page.count(f"{local:%d %b %Y %H:%M} {abbreviation}") >= 2
    assert f"{utc:%d %b %Y %H:%M} UTC" not in page
    assert f"{utc:%H:%M}Z" not in page  # the slot's own str() is in UTC


def test_the_date_filters_today_is_the_clinics(staff, organization):
    response = _console(staff).get(CONSULTATIONS)
    assert response.status_code == 200
    # The page was built with the clinic's zone active (the "Today" filter's bounds).
    date_filter = next(
        spec
        for spec in response.context["cl"].filter_specs
        if getattr(spec, "field_path", None) == "scheduled_start"
    )
    today = dict(date_filter.links)["Today"]
    since = next(value for key, value in today.items() if key.endswith("__gte"))
    assert str(since).endswith(("-05:00", "-04:00"))  # New York's midnight, not UTC's


# --- 4. Search finds providers by name ---------------------------------------------------


def test_search_finds_providers_by_name_and_email(staff, patient, provider, make_user, visit):
    other = make_user(Role.PROVIDER, organization=provider.organization, full_name="Zed Quill")
    slot = Slot.objects.create(provider=other, start=visit.scheduled_start, end=visit.scheduled_end)
    other_visit = services.consultation_book(patient=patient, slot_id=slot.pk)[0]
    entry = services.queue_join(patient=patient, provider=other, reason="Rash")
    client = _console(staff)
    for term in ("Zed Quill", "quill", other.email):
        found = {c.pk for c in client.get(CONSULTATIONS, {"q": term}).context["cl"].result_list}
        assert found == {other_visit.pk}, term
        queued = {e.pk for e in client.get(QUEUE, {"q": term}).context["cl"].result_list}
        assert queued == {entry.pk}, term


# --- 5. The console is for staff ---------------------------------------------------------


def test_patients_and_providers_are_told_the_console_is_for_staff(patient, provider, client):
    for user in (patient, provider):
        response = client.post(LOGIN, {"username": user.email, "password": PASSWORD})
        assert response.status_code == 200
        assert CONSOLE_IS_FOR_STAFF in response.content.decode()
        assert "_auth_user_id" not in client.session


def test_a_wrong_password_says_nothing_about_who_the_account_is(patient, staff, client):
    for email in (patient.email, staff.email, "nobody@example.test"):
        response = client.post(LOGIN, {"username": email, "password": "wrong-password-1"})
        html = response.content.decode()
        assert CONSOLE_IS_FOR_STAFF not in html
        assert "Please enter the correct" in html


def test_staff_still_sign_in(staff, client):
    response = client.post(LOGIN, {"username": staff.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(staff.pk)


# --- 6. Links -----------------------------------------------------------------------------


def test_the_home_page_links_two_factor_sign_in_for_clinicians(staff):
    home = _console(staff).get("/admin/")
    html = home.content.decode()
    assert 'id="mfa-link"' in html and 'href="/admin/accounts/user/mfa/"' in html
    # Read-only models are offered as "View" (consultations too, though their list acts).
    models = {m["object_name"]: m for app in home.context["app_list"] for m in app["models"]}
    assert models["Consultation"]["view_only"]


def test_the_queue_entry_page_says_who_removed_it_and_why(staff, patient, provider):
    entry = services.queue_join(patient=patient, provider=provider, reason="Cough")
    services.queue_remove(entry=entry, actor=staff, reason="Left before being seen")
    page = _console(staff).get(f"{QUEUE}{entry.pk}/change/")
    html = page.content.decode()
    assert "Left before being seen" in html
    assert staff.full_name in html or staff.email in html
    # The patient links to the front desk's patient page (patients have no user page here).
    assert f'href="/admin/desk/patients/{patient.pk}/"' in html


def test_the_audit_log_lists_when_in_the_clinics_zone_and_finds_people_by_name(
    staff, patient, visit, organization
):
    client = _console(staff)
    client.get(f"{CONSULTATIONS}{visit.pk}/change/")
    event = AuditEvent.objects.filter(user=staff, object_id=str(visit.pk)).latest("id")
    local = event.created_at.astimezone(ZoneInfo(organization.timezone))
    listing = client.get("/admin/medease/auditevent/", {"q": patient.full_name})
    assert event in listing.context["cl"].result_list
    html = listing.content.decode()
    assert f"{local:%d %b %Y %H:%M} {local.tzname()}" in html
    assert staff.full_name in html


def test_desk_pages_name_the_clinics_zone_and_its_abbreviation(staff, organization):
    html = _console(staff).get("/admin/desk/board/").content.decode()
    abbreviation = timezone.now().astimezone(ZoneInfo(organization.timezone)).tzname()
    assert f"times in America/New_York ({abbreviation})" in html
