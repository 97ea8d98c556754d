"""POST ws-ticket when the ticket store (Redis) is down: a 503 to retry, never a 500."""

from __future__ import annotations

import socket

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from messaging import tickets

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_ticket_store(settings):
    # Only the ticket store's cache is dead: authentication and the API limit still work.
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "REDIS_CLIENT_CLASS": "medease.cache.CircuitBreakerRedis",
            },
        },
    }


def bearer_client(user) -> APIClient:
    raw, _token = account_services.token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_ticket_is_issued_and_taken_once(patient):
    response = bearer_client(patient).post("/api/v1/ws-ticket")
    assert response.status_code == 200, response.content
    raw = response.json()["ticket"]
    assert tickets.ticket_take(raw=raw)["user_id"] == patient.pk
    assert tickets.ticket_take(raw=raw) is None


def test_ticket_with_the_store_down_is_503_with_retry_after(patient, dead_ticket_store):
    client = bearer_client(patient)
    for _ in range(2):  # the first call meets the dead port, the second the open breaker
        response = client.post("/api/v1/ws-ticket")
        assert response.status_code == 503, response.content
        assert response["Content-Type"].startswith("application/json")
        assert response.json() == {
            "error": {
                "code": "unavailable",
                "message": response.json()["error"]["message"],
                "fields": {},
            }
        }
        assert int(response["Retry-After"]) >= 1


def test_taking_a_ticket_with_the_store_down_is_unavailable(dead_ticket_store):
    from medease.exceptions import ServiceUnavailable

    with pytest.raises(ServiceUnavailable):
        tickets.ticket_take(raw="some-ticket")
