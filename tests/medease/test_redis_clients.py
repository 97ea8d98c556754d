"""Each request's thread gets the process's one backend and Redis client per cache
configuration (medease/redis_clients.py), instead of building new ones every request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import caches

pytestmark = pytest.mark.redis


def _client_in_a_new_thread(alias: str):
    # A new thread starts with no cache backends (as each request's thread does under ASGI).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: (caches[alias], caches[alias].client.get_client())).result()


def test_every_thread_gets_the_same_backend_and_client():
    backend_a, client_a = _client_in_a_new_thread("default")
    backend_b, client_b = _client_in_a_new_thread("default")
    assert backend_a is backend_b is caches["default"]
    assert client_a is client_b
    assert client_a.ping()
    # Another configuration is another backend (the two aliases differ in their options).
    assert caches["ratelimit"] is not caches["default"]


def test_a_changed_configuration_gets_its_own_backend(settings):
    before = caches["default"]
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": "medease-other"},
    }
    assert caches["default"] is not before
    caches["default"].set("shared-backend-probe", 1, 5)
    assert caches["default"].get("shared-backend-probe") == 1
    assert before.get("shared-backend-probe") is None  # another prefix: another key


def test_new_backends_of_the_stock_class_share_the_client_too(settings):
    """The connection factory on its own (a backend Django builds per context)."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "BACKEND": "django_redis.cache.RedisCache"},
    }
    backend_a, client_a = _client_in_a_new_thread("default")
    backend_b, client_b = _client_in_a_new_thread("default")
    assert backend_a is not backend_b
    assert client_a is client_b


def test_the_client_keeps_the_circuit_breaker_class():
    _backend, client = _client_in_a_new_thread("ratelimit")
    assert type(client).__name__ == "CircuitBreakerRedis"
