"""The Redis circuit breaker (medease/cache.py): after a failure the server is skipped for a
moment, so a dead or hung Redis costs one timeout per process, not several per request."""

from __future__ import annotations

import socket
import time

import pytest
from django.conf import settings as django_settings
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from medease.cache import CircuitBreakerRedis, breaker


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_client() -> CircuitBreakerRedis:
    """A client of a closed port that fails at once: redis-py's default Retry (three more
    attempts with a backoff of up to several seconds) happens inside the command, so it
    would only stretch each failure, not change what the breaker sees."""
    return CircuitBreakerRedis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture(autouse=True)
def _fresh_breaker(settings):
    settings.CACHE_CIRCUIT_BREAKER_SECONDS = 0.3
    breaker.reset()
    yield
    breaker.reset()


def test_a_failure_opens_the_circuit_then_it_is_tried_again():
    client = dead_client()
    with pytest.raises(RedisConnectionError) as first:
        client.get("k")
    assert "circuit open" not in str(first.value)
    with pytest.raises(RedisConnectionError, match="circuit open"):
        client.get("k")
    with pytest.raises(RedisConnectionError, match="circuit open"):
        client.pipeline().get("k").execute()
    time.sleep(0.35)
    with pytest.raises(RedisConnectionError) as retried:
        client.get("k")
    assert "circuit open" not in str(retried.value)  # it went to the network again


def test_a_zero_period_turns_the_breaker_off(settings):
    settings.CACHE_CIRCUIT_BREAKER_SECONDS = 0
    client = dead_client()
    for _ in range(2):
        with pytest.raises(RedisConnectionError) as error:
            client.get("k")
        assert "circuit open" not in str(error.value)


@pytest.mark.redis
def test_a_working_redis_closes_the_circuit():
    from django.core.cache import caches

    client = caches["ratelimit"].client.get_client()
    assert isinstance(client, CircuitBreakerRedis), "settings wire the breaker into django-redis"
    server = f"{client.connection_pool.connection_kwargs['host']}:" + str(
        client.connection_pool.connection_kwargs["port"]
    )
    breaker.failed(server, RuntimeError("simulated"))
    breaker._open_until[server] = 0  # the pause is over
    client.ping()
    assert server not in breaker._open_until


@pytest.mark.redis
def test_the_caches_use_the_breaker_when_redis_is_configured():
    for alias in ("default", "ratelimit"):
        options = django_settings.CACHES[alias]["OPTIONS"]
        assert options["REDIS_CLIENT_CLASS"] == "medease.cache.CircuitBreakerRedis"
