"""The Celery app. Broker from CELERY_BROKER_URL, or a filesystem queue under var/ when unset."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("medease")
app.config_from_object("workers.celeryconfig")
app.autodiscover_tasks()

# Read-your-writes for tasks: a task enqueued after a write reads the primary.
from medease import celery_routing  # noqa: E402, F401
