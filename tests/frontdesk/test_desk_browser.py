"""A front-desk day in a real browser (headless Chromium through Selenium, against pytest-django's
live server): sign in, find a patient by phone, book by phone, check in, call the next
walk-in, reschedule, cancel with a reason, print the day. A failed step leaves a screenshot
in $MEDEASE_VAR_DIR/screenshots/<test>-<step>.png."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import PatientProfile, Role
from consultations import services
from consultations.models import Consultation, ConsultationStatus, QueueEntry, QueueStatus, Slot
from tests.browser import element, text_appears
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Zones tried in turn: the clinic is put in one where it is now the middle of the working
# day, so "today" has room for the visits below whatever time the test runs.
ZONES = (
    "Pacific/Honolulu",
    "America/Los_Angeles",
    "America/New_York",
    "Atlantic/Azores",
    "Europe/London",
    "Europe/Athens",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Bangkok",
    "Asia/Tokyo",
    "Pacific/Noumea",
    "Pacific/Auckland",
)


def _midday_zone() -> str:
    now = timezone.now()
    return next(z for z in ZONES if 7 <= now.astimezone(ZoneInfo(z)).hour < 13)


def _slot(provider, start: datetime) -> Slot:
    return Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))


@pytest.fixture
def clinic_day(transactional_db):
    """A clinic mid-morning: a patient who calls, one booked for today, one walk-in waiting,
    open slots later today."""
    organization = account_services.organization_create(
        name="Browser Clinic", slug="browser", timezone_name=_midday_zone()
    )
    staff = account_services.user_create(
        email="desk@example.test",
        password=PASSWORD,
        full_name="Dana Desk",
        role=Role.STAFF,
        organization=organization,
    )
    provider = account_services.user_create(
        email="doc@example.test",
        password=PASSWORD,
        full_name="Dr Ruth Vale",
        role=Role.PROVIDER,
        organization=organization,
        specialty="General Practice",
    )
    caller = account_services.patient_register_at_desk(
        organization=organization,
        email="grace@example.test",
        full_name="Grace Caller",
        phone="+1 (555) 010-7788",
    )
    now = timezone.now().replace(second=0, microsecond=0)
    arriving = account_services.user_create(
        email="cora@example.test", password=PASSWORD, full_name="Cora Arriving"
    )
    due = services.consultation_book(
        patient=arriving, slot_id=_slot(provider, now + timedelta(hours=2)).pk
    )[0]
    walker = account_services.user_create(
        email="walt@example.test", password=PASSWORD, full_name="Walt Walker"
    )
    services.queue_join(patient=walker, provider=provider, reason="Sprained wrist")
    first = _slot(provider, now + timedelta(hours=3))
    second = _slot(provider, now + timedelta(hours=4))
    PatientProfile.objects.filter(user=caller).update(phone="+1 (555) 010-7788")
    return {
        "staff": staff,
        "provider": provider,
        "caller": caller,
        "due": due,
        "walker": walker,
        "first": first,
        "second": second,
        "zone": organization.timezone,
    }


def test_a_front_desk_day(browser, step, live_server, clinic_day, settings):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    base = live_server.url
    caller, provider = clinic_day["caller"], clinic_day["provider"]

    with step("sign in"):
        browser.get(f"{base}/admin/")
        element(browser, "#id_username").send_keys("desk@example.test")
        element(browser, "#id_password").send_keys(PASSWORD)
        element(browser, "#login-form [type=submit]").click()
        element(browser, "#frontdesk-module")

    with step("find a patient by phone"):
        browser.find_element(By.LINK_TEXT, "Patients").click()
        element(browser, "#id_q").send_keys("555 010 7788")
        element(browser, "#patient-search [type=submit]").click()
        element(browser, "#patients").find_element(By.LINK_TEXT, "Grace Caller").click()
        text_appears(browser, "#contact", "grace@example.test")

    with step("book by phone"):
        browser.find_element(By.LINK_TEXT, "Book a visit").click()
        Select(element(browser, "#book-provider-select")).select_by_visible_text(
            "Dr Ruth Vale (General Practice)"
        )
        element(browser, "#book-provider [type=submit]").click()
        element(browser, "#book-reason").send_keys("Persistent cough")
        element(browser, f'[data-slot="{clinic_day["first"].pk}"]').click()
        text_appears(browser, ".messagelist", "Booked Grace Caller")
        booked = Consultation.objects.get(slot=clinic_day["first"])
        assert (booked.patient_id, booked.reason) == (caller.pk, "Persistent cough")
        element(browser, f"#visit-{booked.pk}")

    with step("check in"):
        browser.get(f"{base}/admin/desk/board/")
        due = clinic_day["due"]
        element(browser, f"#visit-{due.pk} .action-check-in").click()
        text_appears(browser, f"#visit-{due.pk}", "arrived")
        due.refresh_from_db()
        assert due.checked_in_at is not None

    with step("call the next walk-in"):
        element(browser, f"#provider-{provider.pk} .action-call-next").click()
        text_appears(browser, ".messagelist", "Walt Walker is called")
        entry = QueueEntry.objects.get(patient=clinic_day["walker"])
        assert entry.status == QueueStatus.CALLED

    with step("reschedule"):
        browser.get(f"{base}/admin/desk/patients/{caller.pk}/")
        element(browser, f"#visit-{booked.pk} .action-reschedule").click()
        element(browser, f'[data-slot="{clinic_day["second"].pk}"]').click()
        text_appears(browser, ".messagelist", "is moved to")
        moved = Consultation.objects.get(rescheduled_from=booked)
        assert moved.slot_id == clinic_day["second"].pk

    with step("cancel with a reason"):
        element(browser, f"#visit-{moved.pk} .action-cancel").click()
        text_appears(browser, "#cancel-told", "grace@example.test")
        element(browser, "#id_reason").send_keys("Patient feels better")
        element(browser, "#cancel-form [type=submit]").click()
        text_appears(browser, ".messagelist", "1 visit(s) cancelled")
        moved.refresh_from_db()
        assert (moved.status, moved.cancellation_reason) == (
            ConsultationStatus.CANCELLED,
            "Patient feels better",
        )

    with step("print the day"):
        browser.get(f"{base}/admin/desk/board/")
        element(browser, f"#provider-{provider.pk} .print-link").click()
        text_appears(browser, "#print-day", "Cora Arriving")
        assert clinic_day["zone"] in browser.page_source
        # As printed: the console's header and the desk's menu are gone, the day is there.
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert not browser.find_element(By.CSS_SELECTOR, ".desk-nav").is_displayed()
        assert not browser.find_element(By.CSS_SELECTOR, "#header").is_displayed()
        assert browser.find_element(By.CSS_SELECTOR, "#print-day").is_displayed()


def test_a_failed_step_leaves_a_screenshot(browser, step, settings, tmp_path, request):
    settings.VAR_DIR = tmp_path
    browser.get("data:text/html,<p id=there>a page</p>")
    with pytest.raises(AssertionError, match="screenshot"), step("look for it"):
        element(browser, "#there")
        raise LookupError("not what we expected")
    shot = tmp_path / "screenshots" / f"{request.node.name}-look_for_it.png"
    assert shot.read_bytes().startswith(b"\x89PNG")
