"""The product's URLs plus two test-only endpoints (never in the product): a slow request
that finishes, and one stuck in a loop. Each counts its start in Redis."""

import os
import time

import redis
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

from config.urls import urlpatterns as product_urlpatterns


def _count_start(name: str) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.incr(f"{os.environ['SHUTDOWN_TEST_KEY']}:{name}")


def slow(request):
    """Take one second, then answer."""
    _count_start("slow-started")
    time.sleep(1.0)
    return HttpResponse("done")


def stuck(request):
    """Loop forever, like a runaway request (a sync view: it runs in a worker thread)."""
    _count_start("stuck-started")
    while True:
        time.sleep(0.05)


urlpatterns = [path("test/slow", slow), path("test/stuck", stuck), *product_urlpatterns]
