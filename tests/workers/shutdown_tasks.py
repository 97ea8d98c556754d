"""A long task for the shutdown test, loaded into the worker with ``--include``."""

import os
import time

import redis
from django.conf import settings

from config.celery import app


@app.task(name="tests.shutdown.long_task", queue="default")
def long_task(seconds: float = 60.0) -> str:
    """Count each start in Redis, then run until released (or ``seconds`` pass)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = os.environ["SHUTDOWN_TEST_KEY"]
    client.incr(f"{key}:started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not client.exists(f"{key}:release"):
        time.sleep(0.05)
    client.incr(f"{key}:finished")
    return "done"
