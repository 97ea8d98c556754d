"""Celery configuration, derived from Django settings (the one place env is read)."""

from __future__ import annotations

from django.conf import settings

from workers.schedule import BEAT_SCHEDULE

if settings.CELERY_BROKER_URL:
    broker_url = settings.CELERY_BROKER_URL
    broker_transport_options = {
        # Redis redelivers an unacknowledged task only after this long; it must exceed every
        # countdown/ETA we use (retries back off to at most an hour).
        "visibility_timeout": 2 * 60 * 60,
    }
else:
    # Embedded default: kombu's filesystem transport, a queue of files under var/celery.
    _folder = settings.VAR_DIR / "celery"
    for _sub in ("queue", "processed"):
        (_folder / _sub).mkdir(parents=True, exist_ok=True)
    broker_url = "filesystem://"
    broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "processed_folder": str(_folder / "processed"),
        "store_processed": False,
    }

task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER
task_eager_propagates = True
task_ignore_result = True
result_backend = None
task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A task is acknowledged after it ran, and requeued when its worker dies mid-task: tasks are
# written to be idempotent (see workers/tasks.py).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_default_queue = "default"
task_time_limit = 120
task_soft_time_limit = 90
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False

beat_schedule = BEAT_SCHEDULE
beat_schedule_filename = str(settings.VAR_DIR / "celerybeat-schedule")
