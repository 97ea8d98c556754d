"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from medease import health, metrics
from medease.exceptions import error_response


@never_cache
@require_GET
def health_live(request):
    """The process is up and serving requests (no dependency is checked)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def health_ready(request):
    """All required dependencies answer: 200, else 503 with what is down."""
    ready, checks = health.readiness()
    degraded = any(result["status"] != "ok" for result in checks.values())
    status = "ok" if ready and not degraded else ("degraded" if ready else "unavailable")
    return JsonResponse({"status": status, "checks": checks}, status=200 if ready else 503)


@never_cache
@require_GET
def metrics_view(request):
    """Prometheus text exposition; requires METRICS_TOKEN as a bearer token when it is set."""
    if settings.METRICS_TOKEN:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied, settings.METRICS_TOKEN):
            return error_response(401, "not_authenticated", "A metrics token is required.")
    body, content_type = metrics.render_latest()
    return HttpResponse(body, content_type=content_type)
