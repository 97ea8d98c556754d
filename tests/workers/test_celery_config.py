"""Celery wiring: queues, routes, time limits, the beat schedule and the settings checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from config.celery import app
from consultations import tasks as consultation_tasks
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
    # Tasks of other apps name their queue themselves; apply_async passes it to the router.
    reminders = consultation_tasks.send_reminders
    assert route({"queue": reminders.queue}, reminders.name)["queue"].name == "maintenance"


def test_tasks_acknowledge_late_and_have_time_limits():
    for task in (
        tasks.deliver_notification,
        tasks.sweep_outbox,
        consultation_tasks.send_reminders,
    ):
        assert task.acks_late and task.reject_on_worker_lost
        assert task.soft_time_limit < task.time_limit
        assert task.retry_backoff_max <= settings.CELERY_MAX_COUNTDOWN_SECONDS
    deliver = tasks.deliver_notification
    assert deliver.time_limit == settings.NOTIFICATION_TASK_TIME_LIMIT
    assert deliver.time_limit < settings.NOTIFICATION_LEASE_SECONDS
    assert deliver.soft_time_limit > settings.EMAIL_TIMEOUT
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost


def test_the_app_uses_the_configured_broker():
    options = app.conf.broker_transport_options
    if settings.CELERY_BROKER_URL:
        assert app.conf.broker_url == settings.CELERY_BROKER_URL
        timeout = options["visibility_timeout"]
        assert timeout == settings.CELERY_BROKER_VISIBILITY_TIMEOUT
        assert timeout > settings.CELERY_MAX_COUNTDOWN_SECONDS
    else:
        assert app.conf.broker_url == "filesystem://"
        assert options["data_folder_in"] == str(settings.VAR_DIR / "celery" / "queue")


def _celery_conf(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "MEDEASE_REQUIRE_SERVICES"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, django; django.setup(); from config.celery import app; "
            "print(json.dumps({'url': app.conf.broker_url, "
            "'options': app.conf.broker_transport_options}))",
        ],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_redis_broker_redelivers_only_after_every_countdown():
    # Whatever broker this run uses: the Redis options are checked in a process of their own.
    # Reading the configuration does not connect, so the host need not exist.
    conf = _celery_conf(
        CELERY_BROKER_URL="redis://broker.invalid:6379/0",
        CELERY_BROKER_VISIBILITY_TIMEOUT="900",
        CELERY_MAX_COUNTDOWN_SECONDS="300",
        CELERY_BROKER_KEY_PREFIX="clinic-a:",
    )
    assert conf["url"] == "redis://broker.invalid:6379/0"
    assert conf["options"]["visibility_timeout"] == 900
    assert conf["options"]["global_keyprefix"] == "clinic-a:"


def test_beat_schedule_has_the_outbox_jobs_and_keeps_the_others():
    tasks_scheduled = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert {
        "workers.sweep_outbox",
        "consultations.send_reminders",
        "accounts.purge_expired_tokens",
    } <= tasks_scheduled
    for entry in BEAT_SCHEDULE.values():
        if "options" in entry:
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
