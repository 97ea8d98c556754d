"""manage.py fill_network, run small on PostgreSQL: exact counts, every constraint holds, and
the product works on what it wrote (a filled patient logs in, lists, reads, books, chats)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Organization, Role, User
from consultations.models import Consultation, Slot
from messaging.models import Message, MessageClientId, ReadMarker
from messaging.partitions import existing_partitions

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

SIZE = {"providers": 5, "patients": 40, "consultations": 600, "messages": 4000}
PASSWORD = "fill-test-pass"


@pytest.fixture
def filled(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command(
        "fill_network",
        providers_per_organization=2,
        days=90,
        days_ahead=14,
        password=PASSWORD,
        verbosity=0,
        **SIZE,
    )
    # The foreign keys are deferred: check every row written now, not at rollback.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def signed_in(user) -> APIClient:
    client = APIClient()
    response = client.post(
        "/api/v1/auth/login", {"email": user.email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return client


def test_counts_are_exact(filled):
    fill = User.objects.filter(email__endswith="@fill.medease.test")
    assert fill.filter(role=Role.PROVIDER).count() == SIZE["providers"]
    assert fill.filter(role=Role.PATIENT, patient_profile__isnull=False).count() == SIZE["patients"]
    assert Organization.objects.filter(slug__startswith="fill-").count() == 3
    assert fill.filter(role=Role.STAFF).count() == 3
    assert Consultation.objects.count() == SIZE["consultations"]
    assert Message.objects.count() == SIZE["messages"]
    assert MessageClientId.objects.count() == SIZE["messages"]
    assert Slot.objects.count() > SIZE["consultations"]
    assert ReadMarker.objects.exists()
    # Past, present and future with the statuses of each.
    past = Consultation.objects.filter(scheduled_end__lte=timezone.now())
    assert set(past.values_list("status", flat=True)) == {
        "completed",
        "cancelled",
        "no_show",
    }
    future = Consultation.objects.filter(scheduled_start__gt=timezone.now())
    assert set(future.values_list("status", flat=True)) <= {"scheduled", "cancelled"}
    assert future.filter(status="scheduled").exists()
    # Messages landed in several monthly partitions, none in the future.
    spread = rows("SELECT COUNT(DISTINCT tableoid) FROM messaging_message")[0][0]
    assert spread >= 3
    assert not Message.objects.filter(created_at__gt=timezone.now()).exists()
    assert len(existing_partitions()) >= spread


def test_constraints_hold(filled):
    # No provider has two overlapping active consultations (the exclusion constraint's rule).
    assert not rows(
        """
        SELECT 1 FROM consultations_consultation a JOIN consultations_consultation b
          ON a.provider_id = b.provider_id AND a.id < b.id
         AND a.scheduled_start < b.scheduled_end AND b.scheduled_start < a.scheduled_end
        WHERE a.status IN ('scheduled', 'in_progress') AND b.status IN ('scheduled', 'in_progress')
        """
    )
    # Every consultation sits on its slot's times, at its provider; a slot is used once.
    assert not rows(
        """
        SELECT 1 FROM consultations_consultation c JOIN consultations_slot s ON s.id = c.slot_id
        WHERE s.provider_id <> c.provider_id OR s.start <> c.scheduled_start
           OR s."end" <> c.scheduled_end
        """
    )
    assert not rows(
        "SELECT slot_id FROM consultations_consultation WHERE slot_id IS NOT NULL "
        "GROUP BY slot_id HAVING COUNT(*) > 1"
    )
    # Chats belong to their consultation's participants; read markers point at its messages.
    assert not rows(
        """
        SELECT 1 FROM messaging_message m JOIN consultations_consultation c
          ON c.id = m.consultation_id WHERE m.sender_id NOT IN (c.patient_id, c.provider_id)
        """
    )
    assert not rows(
        """
        SELECT 1 FROM messaging_readmarker r WHERE NOT EXISTS (
            SELECT 1 FROM messaging_message m
            WHERE m.consultation_id = r.consultation_id AND m.id = r.last_read_message_id)
        """
    )
    # Statistics are there for the planner.
    assert rows("SELECT reltuples FROM pg_class WHERE relname = 'consultations_consultation'")[0][
        0
    ] == pytest.approx(SIZE["consultations"], rel=0.05)


def test_a_filled_patient_uses_the_api(filled):
    counts = {
        patient: Consultation.objects.filter(patient_id=patient).count()
        for patient in User.objects.filter(role=Role.PATIENT).values_list("pk", flat=True)
    }
    heavy = User.objects.get(pk=max(counts, key=counts.get))
    assert counts[heavy.pk] > 20  # the skew gives some patients many
    client = signed_in(heavy)

    listed, url = [], "/api/v1/consultations?limit=20"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.content
        listed += [c["id"] for c in page.json()["results"]]
        url = page.json()["next"]
    mine = Consultation.objects.filter(patient=heavy)
    assert listed == list(mine.order_by("scheduled_start", "id").values_list("pk", flat=True))

    chat = (
        Message.objects.filter(consultation__patient=heavy)
        .values_list("consultation_id", flat=True)
        .first()
    )
    history = client.get(f"/api/v1/consultations/{chat}/messages?limit=50")
    assert history.status_code == 200, history.content
    expected = list(Message.objects.filter(consultation_id=chat).values_list("pk", flat=True))
    assert [m["id"] for m in history.json()["results"]] == expected[:50]
    detail = client.get(f"/api/v1/consultations/{chat}")
    assert detail.status_code == 200
    assert detail.json()["unread_count"] >= 0
    # Another patient's consultation is not theirs.
    other = Consultation.objects.exclude(patient=heavy).first()
    assert client.get(f"/api/v1/consultations/{other.pk}").status_code == 404

    # New rows after the filled ones: the sequences moved past the ids COPY wrote.
    open_slot = (
        Slot.objects.filter(start__gt=timezone.now(), consultations__isnull=True)
        .order_by("start")
        .first()
    )
    last_consultation = Consultation.objects.order_by("-pk").values_list("pk", flat=True)[0]
    last_message = Message.objects.order_by("-pk").values_list("pk", flat=True)[0]
    booked = client.post("/api/v1/consultations", {"slot": open_slot.pk}, format="json")
    assert booked.status_code == 201, booked.content
    assert booked.json()["id"] > last_consultation
    sent = client.post(
        f"/api/v1/consultations/{booked.json()['id']}/messages",
        {"body": "after the fill", "client_id": "after-fill-1"},
        format="json",
    )
    assert sent.status_code == 201, sent.content
    assert sent.json()["id"] > last_message


def test_a_second_fill_with_the_same_prefix_is_refused(filled):
    with pytest.raises(CommandError, match="exist already"):
        call_command("fill_network", providers=1, patients=1, consultations=0, messages=0)


def test_sqlite_is_refused_with_a_clear_message(tmp_path):
    """On the embedded default (SQLite) the command says what it needs and exits 1."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "MEDEASE_REQUIRE_SERVICES")
    }
    env["MEDEASE_VAR_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "manage.py", "fill_network"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "fill_network needs PostgreSQL" in done.stderr


def test_messages_fall_while_the_chat_is_writable(filled):
    """From the booking until the consultation closed (completed, cancelled, no-show)."""
    assert not rows(
        """
        SELECT 1 FROM messaging_message m JOIN consultations_consultation c
          ON c.id = m.consultation_id
        WHERE m.created_at < c.created_at
           OR m.created_at > COALESCE(
               c.completed_at, c.cancelled_at, c.no_show_at, clock_timestamp())
        """
    )
