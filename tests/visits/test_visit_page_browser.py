"""The visit page in two real Chromium browsers (a patient and a provider) with fake cameras
and microphones, against a real server (the Procfile's uvicorn) and a real coturn: the
provider signs in, the patient follows a reminder's join link, both join, and their
RTCPeerConnections, forced to relay-only ICE (``?relay=1``), connect through TURN with the
remote video playing; the chat works both ways, the camera toggle mutes the track, and
leaving shows in the other side's waiting room.

Without chromium or coturn the test skips on a laptop and fails under
MEDEASE_REQUIRE_SERVICES=1 (CI). A failing step saves a screenshot of both pages under
``$MEDEASE_VAR_DIR/screenshots/``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from accounts.models import Role
from tests.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, WAIT_SECONDS, browser_missing
from tests.conftest import PASSWORD
from tests.messaging.conftest import make_consultation
from tests.visits.test_webrtc import TURN_SECRET, coturn  # noqa: F401 (fixture)
from tests.webserver import web_node
from visits import links

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

MEDIA_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
CONNECT_SECONDS = 60  # ICE through TURN on two slow shared cores


@pytest.fixture
def server(transactional_db, tmp_path, coturn):  # noqa: F811 (the fixture imported above)
    turn_url, _log = coturn
    # This process's SECRET_KEY, so the join links signed here work there.
    extra = {"TURN_URLS": turn_url, "TURN_SECRET": TURN_SECRET, "SECRET_KEY": settings.SECRET_KEY}
    with web_node(tmp_path, "visit", **extra) as node:
        yield node


@pytest.fixture
def chromium(tmp_path):
    """A factory of headless Chromiums with a fake camera and microphone."""
    missing = browser_missing()
    if missing:
        if settings.REQUIRE_SERVICES:
            pytest.fail(f"{missing} (`make browser-deps`); required under CI")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(name: str):
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, *MEDIA_FLAGS, "--window-size=1280,900"):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile-{name}'}")
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / f"driver-{name}.log")
        )
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(WAIT_SECONDS)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
    shutil.rmtree(tmp_path / "profile-patient", ignore_errors=True)
    shutil.rmtree(tmp_path / "profile-provider", ignore_errors=True)


@pytest.fixture
def step(request):
    """``with step("connect", patient, provider):`` — on failure, a screenshot of each page
    (named as tests/browser.py's ``step`` names them, plus the page's role)."""

    @contextlib.contextmanager
    def run(what: str, **pages):
        try:
            yield
        except BaseException as exc:
            shots = Path(settings.VAR_DIR) / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            saved = []
            for role, driver in pages.items():
                name = re.sub(r"[^\w.-]+", "_", f"{request.node.name}-{what}-{role}")
                path = shots / f"{name}.png"
                with contextlib.suppress(Exception):
                    driver.save_screenshot(str(path))
                    saved.append(str(path))
            raise AssertionError(f"step {what!r} failed (screenshots: {saved}): {exc}") from exc

    return run


def wait(driver, condition, seconds: float = WAIT_SECONDS):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)


def text_in(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def click(driver, css: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait(driver, ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def sign_in(driver, base: str, user, page: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/visit/sign-in/?next={page}")
    driver.find_element(By.NAME, "email").send_keys(user.email)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    wait(driver, lambda d: d.current_url == f"{base}{page}")
    page_ready(driver)


def page_ready(driver) -> None:
    """The page has loaded its call state and opened its socket."""
    wait(driver, lambda d: d.execute_script("return !!window.medeaseVisit?.socketOpen"))


def follow_join_link(driver, base: str, consultation, user, page: str) -> None:
    """The reminder e-mail's link: straight into the visit, no password."""
    driver.get(f"{base}/visit/join/{links.join_token(consultation=consultation, user=user)}/")
    wait(driver, lambda d: d.current_url == f"{base}/visit/{consultation.pk}/")
    driver.get(f"{base}{page}")  # the same page, with the test's relay-only flag
    page_ready(driver)


def connection_state(driver) -> str | None:
    return driver.execute_script("return window.medeaseVisit.pc?.connectionState ?? null")


def remote_video(driver) -> dict:
    return driver.execute_script(
        "const v = document.getElementById('remote-video');"
        "return {width: v.videoWidth, time: v.currentTime, paused: v.paused};"
    )


def playing(driver) -> bool:
    """The remote video has frames and its clock moves (two looks, polled by the wait)."""
    first = remote_video(driver)
    if first["width"] <= 0 or first["paused"]:
        return False
    seen = driver.__dict__.setdefault("_video_times", [])
    seen.append(first["time"])
    return len(seen) >= 2 and seen[-1] > seen[0]


def selected_candidate_types(driver) -> list[str]:
    """Local and remote candidate types of the pair ICE selected (getStats)."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        window.medeaseVisit.pc.getStats().then((stats) => {
          let pair = null;
          stats.forEach((s) => {
            if (s.type === "transport" && s.selectedCandidatePairId) {
              pair = stats.get(s.selectedCandidatePairId);
            }
          });
          if (!pair) return done([]);
          done([stats.get(pair.localCandidateId).candidateType,
                stats.get(pair.remoteCandidateId).candidateType]);
        });
        """
    )


def server_password(user) -> None:
    """A hash the server checks (the tests' fast hasher is not in its PASSWORD_HASHERS)."""
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, "visit-test-salt", iterations=1000)
    user.save(update_fields=["password"])


def test_two_browsers_hold_a_visit_through_turn(server, chromium, step, make_user, organization):
    base, log = server
    patient_user = make_user(Role.PATIENT, full_name="Pat Patient")
    provider_user = make_user(Role.PROVIDER, organization=organization, full_name="Dr Prov")
    server_password(patient_user)
    server_password(provider_user)
    consultation = make_consultation(patient=patient_user, provider=provider_user, hours=0)
    page = f"/visit/{consultation.pk}/?relay=1"  # relay-only ICE: media must go via coturn
    patient, provider = chromium("patient"), chromium("provider")
    both = {"patient": patient, "provider": provider}

    with step("the provider signs in, the patient follows the join link", **both):
        sign_in(provider, base, provider_user, page)
        follow_join_link(patient, base, consultation, patient_user, page)

    with step("provider joins, the patient's waiting room shows it", **both):
        click(provider, "#join")
        text_in(provider, "#call-status", "Waiting for Pat Patient")
        text_in(patient, "#participants", "Dr Prov: in the call")
        text_in(patient, "#call-status", "Dr Prov is waiting for you.")

    with step("patient joins; both connect through TURN", **both):
        click(patient, "#join")
        for driver in both.values():
            wait(driver, lambda d: connection_state(d) == "connected", CONNECT_SECONDS)
            assert selected_candidate_types(driver) == ["relay", "relay"]
        text_in(patient, "#connection", "Connection: connected")

    with step("remote video plays on both sides", **both):
        for driver in both.values():
            wait(driver, playing, CONNECT_SECONDS)

    with step("chat both ways", **both):
        patient.find_element("id", "message-body").send_keys("Hello doctor, can you see me?")
        click(patient, "#send button[type=submit]")
        text_in(provider, "#messages", "Hello doctor, can you see me?")
        text_in(patient, "#messages", "Hello doctor, can you see me?")  # its acknowledgement
        provider.find_element("id", "message-body").send_keys("Yes, loud and clear.")
        click(provider, "#send button[type=submit]")
        text_in(patient, "#messages", "Yes, loud and clear.")

    with step("camera toggle mutes the track", **both):
        click(patient, "#camera")
        text_in(patient, "#camera", "Camera off")
        enabled = patient.execute_script(
            "return window.medeaseVisit.local.getVideoTracks().map((t) => t.enabled)"
        )
        assert enabled == [False]
        sent = patient.execute_script(
            "return window.medeaseVisit.pc.getSenders()"
            ".filter((s) => s.track && s.track.kind === 'video').map((s) => s.track.enabled)"
        )
        assert sent == [False]
        click(patient, "#camera")
        text_in(patient, "#camera", "Camera on")
        click(patient, "#microphone")
        text_in(patient, "#microphone", "Microphone off")
        assert patient.execute_script(
            "return window.medeaseVisit.local.getAudioTracks().every((t) => !t.enabled)"
        )

    with step("patient leaves; the provider's waiting room shows it", **both):
        click(patient, "#leave")
        text_in(patient, "#participants", "Pat Patient (you): not in the call")
        text_in(patient, "#call-status", "Dr Prov is waiting for you.")
        text_in(patient, "#microphone", "Microphone on")  # reset for the next join
        text_in(provider, "#participants", "Pat Patient: not in the call")
        text_in(provider, "#call-status", "Waiting for Pat Patient")
        wait(provider, lambda d: connection_state(d) is None)

    with step("patient rejoins; a fresh connection comes up", **both):
        click(patient, "#join")
        for driver in both.values():
            wait(driver, lambda d: connection_state(d) == "connected", CONNECT_SECONDS)

    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
