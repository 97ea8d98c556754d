"""Console polish in a real browser (headless Chromium): patients and providers are told the
console is for staff; a consultation's page reads as a view page in the clinic's zone; the
console's lists, the desk board and a patient page fit a 1366x768 laptop and an 800x1280
tablet without scrolling sideways. A failed step leaves a screenshot."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.forms import CONSOLE_IS_FOR_STAFF
from accounts.models import Role
from consultations import services
from consultations.models import Slot
from tests.browser import element, text_appears
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Wider than the columns would be with ordinary names: what makes a table push the page.
LONG_NAME = "Maximiliana Alexandra Featherstonehaugh-Worthington"
LONG_EMAIL = "maximiliana.featherstonehaugh-worthington@a-long-clinic-domain.example.test"


@pytest.fixture
def clinic(transactional_db):
    organization = account_services.organization_create(
        name="Polish Clinic", slug="polish", timezone_name="America/New_York"
    )
    people = {
        "staff": account_services.user_create(
            email="desk@example.test",
            password=PASSWORD,
            full_name="Dana Desk",
            role=Role.STAFF,
            organization=organization,
        ),
        "provider": account_services.user_create(
            email="doc@example.test",
            password=PASSWORD,
            full_name="Dr Ruth Vale",
            role=Role.PROVIDER,
            organization=organization,
            specialty="General Practice",
        ),
        "patient": account_services.user_create(
            email=LONG_EMAIL, password=PASSWORD, full_name=LONG_NAME
        ),
    }
    start = (timezone.now() + timedelta(hours=2)).replace(second=0, microsecond=0)
    slot = Slot.objects.create(
        provider=people["provider"], start=start, end=start + timedelta(minutes=30)
    )
    people["visit"] = services.consultation_book(
        patient=people["patient"], slot_id=slot.pk, reason="A long reason " * 8
    )[0]
    services.queue_join(
        patient=people["patient"], provider=people["provider"], reason="Walked in " * 10
    )
    return people


def _sign_in(browser, base: str, email: str) -> None:
    browser.get(f"{base}/admin/login/")
    element(browser, "#id_username").send_keys(email)
    element(browser, "#id_password").send_keys(PASSWORD)
    element(browser, "#login-form [type=submit]").click()


def _sideways_overflow(browser) -> int:
    """How many CSS pixels the page is wider than the window (0: no horizontal scroll)."""
    return browser.execute_script(
        "const d = document.documentElement;"
        "return Math.max(0, d.scrollWidth - Math.min(window.innerWidth, d.clientWidth));"
    )


def test_patients_and_providers_are_told_the_console_is_for_staff(
    browser, step, live_server, clinic, settings
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for who in ("patient", "provider"):
        with step(f"{who} signs in"):
            browser.delete_all_cookies()
            _sign_in(browser, live_server.url, clinic[who].email)
            text_appears(browser, ".errornote", CONSOLE_IS_FOR_STAFF)
            assert "/admin/login/" in browser.current_url
    with step("a wrong password gets the usual answer"):
        browser.delete_all_cookies()
        browser.get(f"{live_server.url}/admin/login/")
        element(browser, "#id_username").send_keys(clinic["patient"].email)
        element(browser, "#id_password").send_keys("not-the-password-1")
        element(browser, "#login-form [type=submit]").click()
        text_appears(browser, ".errornote", "Please enter the correct")
        assert CONSOLE_IS_FOR_STAFF not in browser.page_source


def test_the_console_reads_well_on_a_laptop_and_a_tablet(
    browser, step, live_server, clinic, settings
):
    from selenium.webdriver.common.by import By

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    base = live_server.url
    visit, patient = clinic["visit"], clinic["patient"]

    with step("sign in"):
        _sign_in(browser, base, clinic["staff"].email)
        element(browser, "#frontdesk-module")
        assert (
            browser.find_element(By.ID, "mfa-link")
            .get_attribute("href")
            .endswith("/admin/accounts/user/mfa/")
        )

    with step("a consultation's page is a view page in the clinic's zone"):
        browser.get(f"{base}/admin/consultations/consultation/{visit.pk}/change/")
        assert element(browser, "#content h1").text == "View consultation"
        assert not browser.find_elements(By.CSS_SELECTOR, "[name=_save], [name=_continue]")
        text_appears(browser, "#console-zone", "America/New_York")

    pages = {
        "consultation list": "/admin/consultations/consultation/",
        "queue list": "/admin/consultations/queueentry/",
        "desk board": "/admin/desk/board/",
        "patient page": f"/admin/desk/patients/{patient.pk}/",
        "walk-ins": "/admin/desk/walk-ins/",
    }
    for width, height in ((1366, 768), (800, 1280)):
        browser.set_window_size(width, height)
        for name, path in pages.items():
            with step(f"{name} at {width}x{height}"):
                browser.get(f"{base}{path}")
                text_appears(browser, "#content", LONG_NAME)
                assert _sideways_overflow(browser) == 0
                if width < 1024:
                    # A tablet starts with the console's side menu folded away.
                    assert not browser.find_element(By.ID, "nav-sidebar").is_displayed()
