"""Cache backends made for each request share one Redis client per pool (the connection
factory of medease/redis_clients.py), instead of building a new client every request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import caches

pytestmark = pytest.mark.redis


def _client_in_a_new_thread(alias: str):
    # A new thread starts with no cache backends (as each request's thread does under ASGI).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: (caches[alias], caches[alias].client.get_client())).result()


def test_each_new_backend_gets_the_same_client():
    backend_a, client_a = _client_in_a_new_thread("default")
    backend_b, client_b = _client_in_a_new_thread("default")
    assert backend_a is not backend_b  # Django's per-context backends, as before
    assert client_a is client_b
    assert client_a.ping()


def test_the_client_keeps_the_circuit_breaker_class():
    _backend, client = _client_in_a_new_thread("ratelimit")
    assert type(client).__name__ == "CircuitBreakerRedis"
