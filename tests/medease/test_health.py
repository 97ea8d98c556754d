"""Liveness and readiness: /health/ready reports each dependency and answers 503 when a
required one is down."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_live(client):
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_reports_each_dependency_with_latency(client):
    response = client.get("/health/ready")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    for name in ("database", "cache", "channel_layer", "broker"):
        assert body["checks"][name]["status"] == "ok", body["checks"][name]
        assert body["checks"][name]["latency_ms"] >= 0


def test_ready_is_503_when_redis_is_unreachable(client, settings):
    port = closed_port()
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["cache"]["status"] == "down"
    assert "Connection" in body["checks"]["cache"]["error"]
    assert body["checks"]["database"]["status"] == "ok"


def test_ready_is_503_when_the_channel_layer_is_unreachable(client, settings):
    port = closed_port()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]},
        }
    }
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"]["status"] == "down"


def test_health_endpoints_do_not_need_authentication_nor_get_cached(client):
    response = client.get("/health/live")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
