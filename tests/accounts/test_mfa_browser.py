"""The console's two-factor sign-in in a real browser: headless Chromium through Selenium
against a live server (pytest-django's, a WSGI thread; the console is plain HTML pages).

Needs Debian's chromium and chromium-driver (`make browser-deps`). Without them the tests
skip with the reason, except under MEDEASE_REQUIRE_SERVICES=1 (CI), where they fail. A
failing step leaves a screenshot in $MEDEASE_VAR_DIR/screenshots/<test>.png.
"""

from __future__ import annotations

import base64

import pytest
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Role
from tests.browser import element, wait_for
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def code_from_key(key: bytes) -> str:
    return f"{totp(key, step=30, t0=0, digits=6, drift=0):06d}"


def log_in_with_password(browser, base: str, user) -> None:
    browser.get(f"{base}/admin/")
    element(browser, "#id_username").send_keys(user.email)
    element(browser, "#id_password").send_keys(PASSWORD)
    element(browser, "#login-form [type=submit]").click()


def on_console_index(browser) -> bool:
    return browser.current_url.endswith("/admin/") and bool(
        browser.find_elements("css selector", "#user-tools")
    )


@pytest.mark.django_db(transaction=True)
def test_console_login_asks_for_the_code_refuses_a_wrong_one_then_lets_in(
    browser, step, live_server, make_user, organization
):
    staff = make_user(Role.STAFF, organization=organization)
    device = TOTPDevice.objects.create(user=staff, name="Authenticator app", confirmed=True)
    right = code_from_key(device.bin_key)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    with step("password"):
        log_in_with_password(browser, live_server.url, staff)
        code_field = element(browser, "#id_code")
        assert "/mfa/verify/" in browser.current_url
        assert not on_console_index(browser)
    with step("wrong code"):
        code_field.send_keys(wrong)
        element(browser, "#mfa-form [type=submit]").click()
        error = element(browser, "#mfa-error")
        assert "incorrect" in error.text
    with step("right code"):
        # django-otp's back-off (1 s after one failure) has to pass first: wait for it.
        wait_for(browser, lambda _: TOTPDevice.objects.get(pk=device.pk).verify_is_allowed()[0])
        element(browser, "#id_code").send_keys(code_from_key(device.bin_key))
        element(browser, "#mfa-form [type=submit]").click()
        wait_for(browser, lambda driver: on_console_index(driver))
        assert staff.email in element(browser, "#user-tools").text.lower()


@pytest.mark.django_db(transaction=True)
def test_console_enrolment_scan_confirm_and_recovery_codes(
    browser, step, live_server, make_user, organization
):
    # The clinic requires MFA: the console sends its staff member to the setup page.
    organization.mfa_required = True
    organization.save(update_fields=["mfa_required"])
    staff = make_user(Role.STAFF, organization=organization)

    with step("password, then sent to set up"):
        log_in_with_password(browser, live_server.url, staff)
        secret = element(browser, "#mfa-secret").text.strip()
        assert "/mfa/setup/" in browser.current_url
        assert browser.find_elements("css selector", "#mfa-qr svg")
    with step("confirm with a code from the secret"):
        key = base64.b32decode(secret + "=" * (-len(secret) % 8))
        element(browser, "#id_code").send_keys(code_from_key(key))
        element(browser, "#mfa-form [type=submit]").click()
        codes = [
            item.text
            for item in element(browser, "#recovery-codes").find_elements("css selector", "li")
        ]
        assert len(codes) == 10 and len(set(codes)) == 10
    with step("the verified session reaches the console"):
        element(browser, "#mfa-done").click()
        wait_for(browser, lambda driver: on_console_index(driver))
    assert TOTPDevice.objects.filter(user=staff, confirmed=True).count() == 1
