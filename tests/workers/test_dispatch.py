"""The outbox kick: a booking LPUSHes its notification's id onto the broker's Redis, and the
workers' dispatcher turns it into a delivery task; a lost kick is the sweeper's.

The first tests run in this process on a Redis broker under a key prefix of their own (the
dispatcher's one round by hand); the last starts a real Celery worker and plays no beat,
so only the dispatcher can have asked for the delivery.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import timedelta

import pytest
import redis
from django.core import mail
from django.utils import timezone

from accounts.models import Role
from config import celery_app
from consultations import services as consultation_services
from consultations.models import Slot
from medease import celery_routing
from tests.workers.conftest import celery_broker
from tests.workers.test_worker import (  # noqa: F401 - fixtures
    _broker_base_url,
    broker,
    start_worker,
)
from workers import dispatch, services
from workers.models import Notification, NotificationKind, NotificationStatus
from workers.services.outbox import KICK_KEY, kick_target


@pytest.fixture
def prefixed_broker(monkeypatch):
    """This process's Celery app on the Redis broker under a private key prefix."""
    url = _broker_base_url()
    prefix = f"medease-test-{uuid.uuid4().hex[:10]}:"
    client = redis.Redis.from_url(url)
    with celery_broker(monkeypatch, url, {"global_keyprefix": prefix}) as app:
        yield {"app": app, "client": client, "prefix": prefix}
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)


def _slot(provider, hours: float = 48) -> Slot:
    start = (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)
    return Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))


def _book(patient, provider, capture):
    with capture(execute=True):
        consultation, created = consultation_services.consultation_book(
            patient=patient, slot_id=_slot(provider).pk, reason="Rash"
        )
    assert created
    return Notification.objects.get(
        consultation_id=consultation.pk, kind=NotificationKind.BOOKING_CONFIRMED
    )


def _queued_tasks(client, queue: str) -> list[dict]:
    """The Celery messages waiting in a queue of the Redis broker: headers and arguments."""
    tasks = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append({"headers": message["headers"], "args": args})
    return tasks


@pytest.mark.redis
def test_a_booking_kicks_one_id_and_the_dispatcher_enqueues_its_delivery(
    prefixed_broker, patient, provider, django_capture_on_commit_callbacks
):
    client, prefix = prefixed_broker["client"], prefixed_broker["prefix"]
    notification = _book(patient, provider, django_capture_on_commit_callbacks)
    kick_key = f"{prefix}{KICK_KEY}"
    queue = f"{prefix}notifications"

    # After commit: the id is on the kick list, and no Celery message was published.
    assert client.lrange(kick_key, 0, -1) == [str(notification.pk).encode()]
    assert client.llen(queue) == 0
    assert notification.status == NotificationStatus.PENDING
    assert notification.nudged_at is not None  # the sweeper leaves it to the kick, for now

    target = kick_target()
    assert target is not None and target[1] == kick_key
    assert dispatch.dispatch_once(client, kick_key, block=1) == 1

    assert client.llen(kick_key) == 0
    [task] = _queued_tasks(client, queue)
    assert task["headers"]["task"] == "workers.deliver_notification"
    assert task["args"] == [notification.pk]
    # The delivery reads the primary, as if the request that wrote had published it.
    assert task["headers"].get(celery_routing.HEADER) == 1
    # Nothing kicked: a round waits and enqueues nothing.
    assert dispatch.dispatch_once(client, kick_key, block=0.1) == 0
    assert client.llen(queue) == 1


def test_eager_tasks_and_other_brokers_are_not_kicked(
    settings, patient, provider, django_capture_on_commit_callbacks
):
    # The eager fixture: delivered in-process at commit, as before.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    notification = _book(patient, provider, django_capture_on_commit_callbacks)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert len(mail.outbox) == 1
    assert kick_target() is None
    # A worker with eager tasks has nothing to watch: no thread.
    assert dispatch.Dispatcher(celery_app).start() is False


@pytest.mark.django_db(transaction=True)
def test_a_kick_lost_to_a_redis_outage_is_the_sweepers(
    monkeypatch, settings, patient, provider, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # A Redis broker nobody listens on: the kick fails fast, the booking stands.
    with celery_broker(monkeypatch, "redis://127.0.0.1:9/0"):
        notification = _book(patient, provider, django_capture_on_commit_callbacks)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING
    assert len(mail.outbox) == 0

    # Within the renudge period the sweeper trusts the kick; after it, it enqueues the row
    # (eagerly here) and the email goes out.
    assert services.outbox_sweep().enqueued == 0
    later = timezone.now() + timedelta(seconds=settings.NOTIFICATION_RENUDGE_SECONDS + 1)
    assert services.outbox_sweep(now=later).enqueued == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert len(mail.outbox) == 1


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_a_booking_with_no_sweep(
    broker,  # noqa: F811
    smtp_sink,
    start_worker,  # noqa: F811
    make_user,
    organization,
):
    patient = make_user(Role.PATIENT, full_name="Paula Patel")
    provider = make_user(Role.PROVIDER, organization=organization, full_name="Dr. Ben Laurent")
    worker = start_worker("dispatch")
    worker.wait_for(r"outbox dispatcher watching \S+" + KICK_KEY)

    consultation_services.consultation_book(
        patient=patient, slot_id=_slot(provider).pk, reason="Rash"
    )
    # No beat, no sweep: only the dispatcher can have enqueued the delivery.
    deadline = time.monotonic() + 30
    while smtp_sink.handler.count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smtp_sink.handler.count() == 1, worker.log()[-3000:]
    [message] = smtp_sink.messages
    assert message["To"] == patient.email
    # The row is marked sent after the SMTP server has the message: wait for the task to end.
    outcome = worker.wait_for(
        r"Task workers\.deliver_notification\[[0-9a-f-]+\] succeeded in [0-9.]+s: '(\w+)'"
    )
    assert outcome[1] == "sent"
    notification = Notification.objects.get(user=patient)
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 1
