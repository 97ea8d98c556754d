"""SITE_URL: every link in an e-mail points at the web front end, whatever process renders it.

honcho gives each Procfile process its own PORT (the worker's is the web's + 100), so a
default derived from the renderer's PORT pointed e-mail links at the worker. The rendering
below runs in a subprocess with such a PORT, as the worker would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Renders a booking confirmation (an unsaved row: no database needed) and prints its parts.
RENDER = """
import json
import django
django.setup()
from django.conf import settings
from accounts.models import User
from workers.channels import EmailChannel
from workers.models import Notification, NotificationKind
user = User(pk=7, email="pat@example.org", full_name="Pat Doe", timezone="UTC")
notification = Notification(
    pk=1,
    user=user,
    kind=NotificationKind.BOOKING_CONFIRMED,
    dedupe_key="site-url-test",
    payload={
        "patient_id": 7,
        "provider_name": "Dr Ada",
        "organization_name": "Riverside Clinic",
        "scheduled_start": "2030-01-02T10:00:00+00:00",
        "scheduled_end": "2030-01-02T10:30:00+00:00",
    },
)
message = EmailChannel().render(notification=notification)
print(json.dumps({"site_url": settings.SITE_URL, "text": message.text, "html": message.html}))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if key not in {"SITE_URL", "PORT"}}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def render_in_a_process(**env: str) -> dict:
    result = run_python(RENDER, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_email_rendered_by_a_process_on_another_port_links_the_site_url():
    rendered = render_in_a_process(PORT="5100", SITE_URL="http://127.0.0.1:5000/")

    assert rendered["site_url"] == "http://127.0.0.1:5000"
    assert "Open MedEase: http://127.0.0.1:5000/" in rendered["text"]
    assert 'href="http://127.0.0.1:5000/"' in rendered["html"]
    for part in ("text", "html"):
        assert ":5100" not in rendered[part]


def test_an_https_site_url_is_used_as_given():
    rendered = render_in_a_process(PORT="5100", SITE_URL="https://clinic.example.org")

    assert "Open MedEase: https://clinic.example.org/" in rendered["text"]
    assert 'href="https://clinic.example.org/"' in rendered["html"]


def test_make_run_sets_site_url_to_the_web_port_for_every_process():
    # A recipe sees what make exports to its commands, honcho (and so every process) included.
    probe = "site-url-probe: ; @echo SITE_URL=$$SITE_URL"

    def exported(**env: str) -> str:
        base = {key: value for key, value in os.environ.items() if key != "SITE_URL"}
        result = subprocess.run(
            ["make", "--no-print-directory", "--eval", probe, "site-url-probe", "PORT=8123"],
            cwd=ROOT,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert exported() == "SITE_URL=http://127.0.0.1:8123"
    assert exported(SITE_URL="https://clinic.example.org") == "SITE_URL=https://clinic.example.org"


@pytest.mark.parametrize(
    "value",
    [
        "clinic.example.org",
        "ftp://clinic.example.org",
        "https://clinic.example.org/app",
        "https://clinic.example.org/?next=/",
        "https://clinic.example.org/#top",
        "https://user:secret@clinic.example.org",
        "https://",
        "http://clinic.example.org:99999",
    ],
)
def test_a_bad_site_url_stops_start_up(value):
    result = run_python("import django; django.setup()", SITE_URL=value)

    assert result.returncode != 0
    assert "SITE_URL must be an http(s) URL" in result.stderr
