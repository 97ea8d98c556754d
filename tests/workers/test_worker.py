"""Real Celery workers on the Redis broker, a real SMTP sink, and SIGKILL mid-delivery.

The workers are subprocesses using this test's PostgreSQL database (the test commits its
data: ``transaction=True``) and a private key prefix on the Redis broker. The test plays
beat: it sends the outbox sweeper's message every second, exactly as beat would.

Timeline settings for the workers (production defaults are in config/settings.py): a
delivery may run 8 s, its lease is 10 s, and Redis redelivers an unacknowledged message
after 4 s; so a killed delivery is redelivered within seconds and retried after 10 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Role
from consultations import notifications
from consultations import services as consultation_services
from consultations.models import Slot
from tests.workers.conftest import celery_broker
from workers.models import Notification, NotificationKind, NotificationStatus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT = 4.0
LEASE = 10.0
WORKER_SETTINGS = {
    "NOTIFICATION_TASK_TIME_LIMIT": "8",
    "EMAIL_TIMEOUT": "5",
    "NOTIFICATION_LEASE_SECONDS": str(LEASE),
    "CELERY_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    "CELERY_MAX_COUNTDOWN_SECONDS": "2",
    "NOTIFICATION_RENUDGE_SECONDS": "5",
    "LOG_FORMAT": "text",
}


def _broker_base_url() -> str:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if url.startswith("redis://"):
        return url
    if settings.REDIS_URL.startswith("redis://"):
        return settings.REDIS_URL
    pytest.skip("needs a Redis broker (CELERY_BROKER_URL or REDIS_URL)")


@pytest.fixture
def broker(monkeypatch):
    """The Redis broker under a key prefix of this test's own; its keys are removed after."""
    url = _broker_base_url()
    prefix = f"medease-test-{uuid.uuid4().hex[:10]}:"
    options = {"global_keyprefix": prefix, "visibility_timeout": VISIBILITY_TIMEOUT}
    with celery_broker(monkeypatch, url, options) as app:
        yield {"url": url, "prefix": prefix, "app": app}
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)


def _database_url() -> str:
    params = connection.settings_dict
    auth = quote(params["USER"] or "", safe="")
    if params.get("PASSWORD"):
        auth += ":" + quote(params["PASSWORD"], safe="")
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or "5432"
    return f"postgres://{auth}@{host}:{port}/{params['NAME']}"


class Worker:
    """One `celery worker` process (prefork, one child), in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--queues",
                "default,notifications,maintenance",
                "--hostname",
                f"{name}-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {pattern!r} in its log:\n{self.log()[-4000:]}")

    def wait_ready(self) -> None:
        self.wait_for(r"ready\.")

    def pool_child(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        assert len(pids) == 1, pids
        return pids[0]

    def kill_everything(self) -> None:
        """SIGKILL the worker and its pool child at once: a lost machine or container."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        else:
            # The parent is gone; make sure no orphaned child still holds a connection.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def start_worker(broker, smtp_sink, tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_REPLICA_URLS", "CELERY_TASK_ALWAYS_EAGER", "PYTEST_CURRENT_TEST"}
    }
    env.update(WORKER_SETTINGS)
    env.update(
        {
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": broker["url"],
            "CELERY_BROKER_KEY_PREFIX": broker["prefix"],
            "EMAIL_URL": smtp_sink.url,
            "MEDEASE_VAR_DIR": str(tmp_path / "var"),
        }
    )
    workers: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(name, env, tmp_path)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


def play_beat_until(broker, condition, *, timeout: float, period: float = 1.0) -> float:
    """Send the sweeper's message every ``period`` until ``condition()``; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        broker["app"].send_task("workers.sweep_outbox", queue="maintenance")
        time.sleep(period)
    raise AssertionError(f"condition not met within {timeout}s")


def record_booking_confirmation(make_consultation, patient, provider) -> Notification:
    consultation = make_consultation(patient, provider)
    with transaction.atomic():
        [notification] = notifications.notify_consultation_event(
            consultation=consultation, kind=NotificationKind.BOOKING_CONFIRMED
        )
    return notification  # enqueued on commit, to the Redis broker


def test_sigkill_mid_delivery_then_a_new_worker_sends_exactly_one_email(
    broker, smtp_sink, start_worker, patient, provider, make_consultation
):
    # The SMTP server stalls on the first RCPT: the worker has claimed the row, connected and
    # is mid-conversation, but the message has not been handed over.
    smtp_sink.handler.delay_first_rcpt = 60
    first = start_worker("first")
    notification = record_booking_confirmation(make_consultation, patient, provider)
    task_id = first.wait_for(r"Task workers\.deliver_notification\[([0-9a-f-]+)\] received")[1]
    assert smtp_sink.handler.first_rcpt_seen.wait(30), first.log()[-3000:]
    claimed_at = time.monotonic()
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENDING, 1)

    first.kill_everything()
    killed_at = time.monotonic()
    # Wait out the broker's visibility timeout, so that the new worker finds the killed
    # task's message abandoned and gets it redelivered (acks_late).
    time.sleep(max(0.0, claimed_at + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
    second = start_worker("second")
    redelivered = second.wait_for(
        rf"Task workers\.deliver_notification\[{task_id}\] succeeded in [0-9.]+s: '(\w+)'",
        timeout=30,
    )
    # The row is still claimed (its lease holds): the redelivered task sends nothing.
    assert redelivered[1] == "not_pending"
    assert smtp_sink.handler.count() == 0

    waited = play_beat_until(broker, lambda: smtp_sink.handler.count() >= 1, timeout=60)
    delivered_after_kill = time.monotonic() - killed_at
    # Keep sweeping a while longer: nothing else may arrive.
    for _ in range(4):
        broker["app"].send_task("workers.sweep_outbox", queue="maintenance")
        time.sleep(1)

    assert smtp_sink.handler.count() == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 2
    assert notification.last_error == ""
    [message] = smtp_sink.messages
    assert message["To"] == patient.email
    print(  # the figures for the closing note (pytest -s)
        f"\nkill test (whole worker): emails={smtp_sink.handler.count()} "
        f"redelivered_outcome={redelivered[1]} delivered {delivered_after_kill:.1f}s after "
        f"SIGKILL (lease {LEASE}s, visibility {VISIBILITY_TIMEOUT}s, sweeps waited {waited:.1f}s)"
    )


def test_sigkill_of_the_pool_process_requeues_and_sends_exactly_one_email(
    broker, smtp_sink, start_worker, patient, provider, make_consultation
):
    # An OOM kill of the child executing the task: the parent survives, and with
    # reject_on_worker_lost the message is requeued at once.
    smtp_sink.handler.delay_first_rcpt = 60
    worker = start_worker("only")
    notification = record_booking_confirmation(make_consultation, patient, provider)
    task_id = worker.wait_for(r"Task workers\.deliver_notification\[([0-9a-f-]+)\] received")[1]
    assert smtp_sink.handler.first_rcpt_seen.wait(30)
    os.kill(worker.pool_child(), signal.SIGKILL)
    killed_at = time.monotonic()
    redelivered = worker.wait_for(
        rf"Task workers\.deliver_notification\[{task_id}\] succeeded in [0-9.]+s: '(\w+)'",
        timeout=30,
    )
    assert redelivered[1] == "not_pending"
    play_beat_until(broker, lambda: smtp_sink.handler.count() >= 1, timeout=60)
    delivered_after_kill = time.monotonic() - killed_at
    for _ in range(3):
        broker["app"].send_task("workers.sweep_outbox", queue="maintenance")
        time.sleep(1)
    assert smtp_sink.handler.count() == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 2)
    print(
        f"\nkill test (pool child): emails={smtp_sink.handler.count()} "
        f"requeued_outcome={redelivered[1]} delivered {delivered_after_kill:.1f}s after SIGKILL"
    )


def test_booking_cancel_reschedule_and_reminder_each_send_one_email(
    broker, smtp_sink, start_worker, make_user, organization, make_consultation
):
    from datetime import timedelta

    patient = make_user(Role.PATIENT, full_name="Paula Patel")
    provider = make_user(Role.PROVIDER, organization=organization, full_name="Dr. Ben Laurent")
    worker = start_worker("e2e")

    def slot(hours: float) -> Slot:
        start = (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)
        return Slot.objects.create(
            provider=provider, start=start, end=start + timedelta(minutes=30)
        )

    def wait_for_emails(count: int) -> None:
        play_beat_until(broker, lambda: smtp_sink.handler.count() >= count, timeout=30)

    first, _ = consultation_services.consultation_book(
        patient=patient, slot_id=slot(48).pk, reason="Rash"
    )
    wait_for_emails(1)
    consultation_services.consultation_cancel(consultation=first, actor=patient)
    wait_for_emails(2)
    second, _ = consultation_services.consultation_book(
        patient=patient, slot_id=slot(72).pk, reason="Rash"
    )
    wait_for_emails(3)
    consultation_services.consultation_reschedule(
        consultation=second, actor=patient, slot_id=slot(96).pk
    )
    wait_for_emails(4)
    # Due in 50 minutes, booked last week: the 1 h reminder. Beat sends the job twice (or
    # two beats run): one reminder.
    make_consultation(patient, provider, starts_in=timedelta(minutes=50))
    broker["app"].send_task("consultations.send_reminders", queue="maintenance")
    broker["app"].send_task("consultations.send_reminders", queue="maintenance")
    wait_for_emails(5)
    # Quiet, proven rather than waited for: both runs of the job finished and the outbox has
    # nothing left to deliver, so no sixth email can follow.
    worker.wait_for(r"(?s)(Task consultations\.send_reminders\[[0-9a-f-]+\] succeeded.*){2}")
    play_beat_until(
        broker,
        lambda: (
            not Notification.objects.filter(
                status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING]
            ).exists()
        ),
        timeout=30,
    )

    recipients = sorted((m["To"], m["Subject"].split(":")[0]) for m in smtp_sink.messages)
    assert recipients == sorted(
        [
            (patient.email, "Booking confirmed"),
            (provider.email, "Cancelled"),
            (patient.email, "Booking confirmed"),
            (provider.email, "Rescheduled"),
            (patient.email, "Reminder"),
        ]
    )
    assert Notification.objects.filter(status=NotificationStatus.SENT).count() == 5
    message_ids = [m["Message-ID"] for m in smtp_sink.messages]
    assert len(set(message_ids)) == 5
