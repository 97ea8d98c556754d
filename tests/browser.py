"""A headless Chromium for browser tests (Selenium + Debian's chromium and chromium-driver).

``browser`` is a fresh browser per test (its own profile directory); ``step`` names the steps
of a scenario: a failing step saves ``$MEDEASE_VAR_DIR/screenshots/<test>-<step>.png``.
Without chromium the tests skip, except under MEDEASE_REQUIRE_SERVICES=1 (CI): they fail.
The root conftest registers this module as a plugin, so every test can ask for them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest
from django.conf import settings

# The browser itself, not Debian's /usr/bin/chromium launcher: that sh script sources
# /etc/chromium.d/dev-shm, whose unquoted `[ $shm_avail -lt ... ]` prints "[: ...: unexpected
# operator" where /dev/shm is mounted twice (containers; findmnt prints two lines). Its other
# additions (desktop flags, extensions, Google API keys) are nothing a headless test wants;
# the flags below include the --disable-dev-shm-usage that check was there to add.
CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 20  # two slow shared cores
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.exists() and os.access(path, os.X_OK)):
            return f"{path} is missing: install Debian's chromium and chromium-driver"
    return None


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium at 1366x768 (the desk's laptop)."""
    missing = browser_missing()
    if missing:
        if settings.REQUIRE_SERVICES:
            pytest.fail(f"{missing} (`make browser-deps`); required under CI")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, "--window-size=1366,768"):
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    # Both paths are given, so Selenium Manager never looks for (or downloads) a driver.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def step(browser, request):
    """``with step("book by phone"):`` — on failure, a screenshot named after the step."""

    @contextlib.contextmanager
    def run(what: str):
        try:
            yield
        except BaseException as exc:
            shots = Path(settings.VAR_DIR) / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^\w.-]+", "_", f"{request.node.name}-{what}")
            path = shots / f"{name}.png"
            browser.save_screenshot(str(path))
            raise AssertionError(
                f"step {what!r} failed at {browser.current_url} (screenshot: {path}): {exc}"
            ) from exc

    return run


def wait_for(browser, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_SECONDS).until(condition)


def element(browser, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait_for(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def text_appears(browser, css: str, text: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait_for(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
