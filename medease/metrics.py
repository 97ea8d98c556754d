"""Prometheus metrics: request counts and latency by route, method and status."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "medease_http_requests_total",
    "HTTP requests answered, by route pattern, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "medease_http_request_duration_seconds",
    "Time to answer an HTTP request, by route pattern and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("medease_rate_limited_total", "Requests refused by a rate limit.", ["limit"])
# Notification deliveries, counted by the process that makes them (a worker, or the web
# process when tasks run eagerly). The outbox's current state across all processes is
# exported from the database as medease_notifications{status=...} (workers/metrics.py).
NOTIFICATIONS_SENT = Counter(
    "medease_notifications_sent_total", "Notifications delivered.", ["kind", "channel"]
)
NOTIFICATIONS_FAILED = Counter(
    "medease_notifications_failed_total",
    "Notifications given up on (permanent refusal or attempts exhausted).",
    ["kind", "channel"],
)
NOTIFICATIONS_RETRIED = Counter(
    "medease_notifications_retried_total",
    "Failed notification attempts that were scheduled for another try.",
    ["kind", "channel"],
)

_KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def _route_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    # The pattern, not the path, keeps label cardinality bounded (no ids in labels).
    return "/" + (match.route or match.view_name or "unknown")


class PrometheusMiddleware:
    """Counts every request and observes its latency."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in _KNOWN_METHODS else "OTHER"
        route = _route_of(request)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
        return response


def render_latest() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
