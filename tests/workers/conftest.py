"""Fixtures for background-work tests: eager Celery, a real SMTP sink, consultation builders.

Everything here runs tasks eagerly (in-process) except the tests in test_worker.py, which
start real Celery workers on a Redis broker.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from config.celery import app as celery_app
from consultations.models import Consultation, ConsultationKind, ConsultationStatus
from tests.workers.smtp_sink import SmtpSink


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Users are made by the dozen here and passwords are not what is tested."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def eager_tasks():
    """Tasks run in-process when enqueued (``.delay()`` inside on_commit delivers at once)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield celery_app
    celery_app.conf.task_always_eager = previous


@contextlib.contextmanager
def celery_broker(monkeypatch, url: str, transport_options: dict | None = None):
    """Point this process's Celery app at another broker (and stop running tasks eagerly).

    Celery reads CELERY_BROKER_URL from the environment before its own configuration, so
    both are set; pooled connections to the previous broker are dropped.
    """
    conf = celery_app.conf
    saved = (conf.broker_url, dict(conf.broker_transport_options or {}), conf.task_always_eager)
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    conf.broker_url = url
    conf.broker_transport_options = transport_options or {}
    conf.task_always_eager = False
    celery_app._after_fork()  # forget pooled connections and producers
    try:
        yield celery_app
    finally:
        celery_app._after_fork()
        conf.broker_url, conf.broker_transport_options, conf.task_always_eager = saved


@pytest.fixture
def smtp_sink():
    """A real SMTP server (aiosmtpd) on a free local port."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def sink(settings, smtp_sink):
    """Send this process's email over SMTP to the sink; returns the sink's handler."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_sink.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 5
    return smtp_sink.handler


@pytest.fixture
def make_consultation(db, organization):
    """A consultation row as the clinic core would have written it (test data)."""

    def make(
        patient,
        provider,
        *,
        starts_in: timedelta = timedelta(days=3),
        minutes: int = 30,
        status: str = ConsultationStatus.SCHEDULED,
        created_at=None,
    ) -> Consultation:
        start = (timezone.now() + starts_in).replace(microsecond=0)
        return Consultation.objects.create(
            patient=patient,
            provider=provider,
            organization=provider.organization,
            kind=ConsultationKind.BOOKED,
            status=status,
            reason="Persistent cough",
            scheduled_start=start,
            scheduled_end=start + timedelta(minutes=minutes),
            created_at=created_at or timezone.now() - timedelta(days=7),
        )

    return make


@pytest.fixture
def paris_patient(make_user):
    return make_user(Role.PATIENT, timezone_name="Europe/Paris", full_name="Amélie Durand")


@pytest.fixture
def ny_provider(make_user, organization):
    return make_user(
        Role.PROVIDER,
        organization=organization,
        timezone_name="America/New_York",
        full_name="Dr. Ada Okafor",
    )
