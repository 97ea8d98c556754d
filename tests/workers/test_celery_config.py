"""Celery wiring: queues, routes, time limits, the beat schedule and the settings checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from config.celery import app
from workers import tasks
from workers.schedule import BEAT_SCHEDULE

ROOT = Path(__file__).resolve().parents[2]


def test_each_queue_has_its_own_routing_key():
    # A queue bound with the default routing key would get a copy of every default message.
    queues = app.amqp.queues
    for name in ("default", "notifications", "maintenance"):
        assert queues[name].routing_key == name
        assert queues[name].exchange.name == name


def test_tasks_are_routed_to_their_queues():
    route = app.amqp.router.route
    assert route({}, "workers.deliver_notification")["queue"].name == "notifications"
    assert route({}, "workers.sweep_outbox")["queue"].name == "maintenance"
    assert route({}, "workers.send_reminders")["queue"].name == "maintenance"


def test_tasks_acknowledge_late_and_have_time_limits():
    for task in (tasks.deliver_notification, tasks.sweep_outbox, tasks.send_reminders):
        assert task.acks_late and task.reject_on_worker_lost
        assert task.soft_time_limit < task.time_limit
        assert task.retry_backoff_max <= settings.CELERY_MAX_COUNTDOWN_SECONDS
    deliver = tasks.deliver_notification
    assert deliver.time_limit == settings.NOTIFICATION_TASK_TIME_LIMIT
    assert deliver.time_limit < settings.NOTIFICATION_LEASE_SECONDS
    assert deliver.soft_time_limit > settings.EMAIL_TIMEOUT
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost


def test_the_visibility_timeout_outlasts_every_countdown():
    if settings.CELERY_BROKER_URL:
        timeout = app.conf.broker_transport_options["visibility_timeout"]
        assert timeout > settings.CELERY_MAX_COUNTDOWN_SECONDS


def test_beat_schedule_has_the_outbox_jobs_and_keeps_the_others():
    tasks_scheduled = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert {
        "workers.sweep_outbox",
        "workers.send_reminders",
        "accounts.purge_expired_tokens",
    } <= tasks_scheduled
    for entry in BEAT_SCHEDULE.values():
        if entry["task"].startswith("workers."):
            assert entry["options"]["expires"] <= entry["schedule"]
    assert app.conf.beat_schedule is BEAT_SCHEDULE


def _check(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MEDEASE_REQUIRE_SERVICES"}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NOTIFICATION_LEASE_SECONDS": "30", "NOTIFICATION_TASK_TIME_LIMIT": "60"},
            "NOTIFICATION_LEASE_SECONDS must exceed NOTIFICATION_TASK_TIME_LIMIT",
        ),
        ({"EMAIL_TIMEOUT": "55"}, "EMAIL_TIMEOUT must be below"),
        (
            {"CELERY_BROKER_VISIBILITY_TIMEOUT": "60", "CELERY_MAX_COUNTDOWN_SECONDS": "600"},
            "CELERY_BROKER_VISIBILITY_TIMEOUT must exceed",
        ),
        ({"NOTIFICATION_MAX_ATTEMPTS": "0"}, "NOTIFICATION_MAX_ATTEMPTS must be a positive"),
    ],
)
def test_unsafe_timing_settings_stop_start_up(env, message):
    result = _check(**env)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_embedded_default_uses_the_filesystem_broker(tmp_path):
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CELERY_BROKER_URL", "DATABASE_URL", "REDIS_URL", "MEDEASE_REQUIRE_SERVICES"}
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from config.celery import app; "
            "print(app.conf.broker_url, app.conf.broker_transport_options['data_folder_in'])",
        ],
        cwd=ROOT,
        env={**base, "MEDEASE_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["filesystem://", str(tmp_path / "celery" / "queue")]
