"""Celery configuration, derived from Django settings (the one place env is read).

Queues, and how to run them:

* ``notifications``: outbox deliveries (short, network-bound, many).
* ``maintenance``: beat jobs (reminders, sweeper, purges, slots, partitions); one at a time
  is plenty, and they must not wait behind a burst of emails.
* ``default``: everything else.

The Procfile's single worker consumes all three (the embedded default and small clinics).
At scale run one worker per queue, since prefetch is a per-worker setting:
``celery -A config worker -Q notifications --concurrency 8 --prefetch-multiplier 4`` (many
small tasks: a few in hand per process saves broker round-trips, and a killed worker's
reserved tasks are redelivered anyway) and ``celery -A config worker -Q maintenance,default
--concurrency 2 --prefetch-multiplier 1`` (long jobs: never hoard them). Exactly one
``celery -A config beat``.
"""

from __future__ import annotations

from django.conf import settings
from kombu import Exchange, Queue

from workers.base import QUEUES
from workers.schedule import BEAT_SCHEDULE

if settings.CELERY_BROKER_URL:
    broker_url = settings.CELERY_BROKER_URL
    broker_transport_options = {
        # Redis redelivers an unacknowledged task (its worker died) only after this long;
        # it must exceed every countdown/ETA we use (CELERY_MAX_COUNTDOWN_SECONDS, checked
        # at start-up), or scheduled tasks would be delivered twice.
        "visibility_timeout": settings.CELERY_BROKER_VISIBILITY_TIMEOUT,
    }
    if settings.CELERY_BROKER_KEY_PREFIX:
        broker_transport_options["global_keyprefix"] = settings.CELERY_BROKER_KEY_PREFIX
else:
    # Embedded default: kombu's filesystem transport, a queue of files under var/celery.
    _folder = settings.VAR_DIR / "celery"
    for _sub in ("queue", "processed", "control"):
        (_folder / _sub).mkdir(parents=True, exist_ok=True)
    broker_url = "filesystem://"
    broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "processed_folder": str(_folder / "processed"),
        "store_processed": False,
        # Fanout bindings; kombu's default is a "control" folder in the working directory.
        "control_folder": str(_folder / "control"),
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
# written to be idempotent (see workers/base.py and the claim in workers/services/delivery.py).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = 120
task_soft_time_limit = 90
# Stopping (SIGTERM, mapped to Celery's cold shutdown by REMAP_SIGTERM=SIGQUIT in the
# worker's environment: Procfile, docs/operations.md): running tasks get this long to finish,
# then they are cancelled and their unacknowledged messages go back to the broker for the
# next worker (acks_late, idempotent tasks). An idle worker stops at once: nothing to wait
# for, and reserved messages are returned on close anyway.
worker_soft_shutdown_timeout = settings.CELERY_WORKER_SOFT_SHUTDOWN_SECONDS
worker_enable_soft_shutdown_on_idle = False
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
# Publishing happens after a commit, inside a request: with the broker down, give up fast
# (the outbox sweeper enqueues whatever was missed) instead of holding the request.
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
broker_connection_timeout = 2

task_default_queue = "default"
# Each queue on its own exchange and routing key. (A bare Queue("x") would be bound to the
# default exchange with the default routing key, so every queue would receive a copy of
# every message sent to the default queue.)
task_queues = [Queue(name, Exchange(name), routing_key=name) for name in QUEUES]
task_create_missing_queues = True  # other apps' tasks may name their own queue
task_routes = {
    "workers.deliver_notification": {"queue": "notifications"},
    "workers.*": {"queue": "maintenance"},
}

beat_schedule = BEAT_SCHEDULE
beat_schedule_filename = str(settings.VAR_DIR / "celerybeat-schedule")
