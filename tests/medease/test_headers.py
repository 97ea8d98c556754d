"""Security headers and request ids on every response, and the metrics they feed."""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/health/live", "/api/v1/me", "/admin/login/", "/nope"])
def test_security_headers_everywhere(client, path):
    response = client.get(path)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert len(response["X-Request-ID"]) >= 8


def test_request_id_is_generated_unique(client):
    ids = {client.get("/health/live")["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_a_sane_incoming_request_id_is_kept_and_a_bad_one_replaced(client):
    assert client.get("/health/live", HTTP_X_REQUEST_ID="lb-1234abcd")["X-Request-ID"] == (
        "lb-1234abcd"
    )
    replaced = client.get("/health/live", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert replaced["X-Request-ID"] != "bad id\nwith newline"


def test_log_lines_carry_the_request_id(client, caplog):
    from medease.logging import RequestIdFilter

    handler_filter = RequestIdFilter()
    caplog.handler.addFilter(handler_filter)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/api/v1/me")  # 401 is logged as a warning by Django
    records = [r for r in caplog.records if r.name == "django.request"]
    assert records, "expected django.request to log the 401"
    assert records[-1].request_id == response["X-Request-ID"]


def test_metrics_count_requests_by_route_method_status(client):
    client.get("/api/v1/me")
    client.get("/api/v1/me")
    body = client.get("/metrics").content.decode()
    line = next(
        line
        for line in body.splitlines()
        if line.startswith("medease_http_requests_total{")
        and 'route="/api/v1/me"' in line
        and 'status="401"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 2
    assert "medease_http_request_duration_seconds_bucket" in body


def test_metrics_token_when_configured(client, settings):
    settings.METRICS_TOKEN = "s3cret-metrics"
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")


def test_openapi_schema_and_docs(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/auth/login" in document["paths"]
    assert client.get("/api/docs/").status_code == 200


def test_websocket_tickets_are_redacted_from_log_lines():
    from medease.logging import RedactSecretsFilter

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws/consultations/7/?ticket=s3cr3t-TICKET_x&after=12"),
        None,
    )
    assert RedactSecretsFilter().filter(record)
    line = record.getMessage()
    assert "s3cr3t" not in line
    assert "ticket=***&after=12" in line


def test_redaction_keeps_mapping_style_log_arguments_working():
    from medease.logging import RedactSecretsFilter

    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "%(name)s: %(url)s",
        ({"name": "a", "url": "?ticket=t1"},),
        None,
    )
    assert RedactSecretsFilter().filter(record)
    assert record.getMessage() == "a: ?ticket=***"
