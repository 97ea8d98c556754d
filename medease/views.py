"""The landing page, the API's index, and the operational endpoints: liveness, readiness and
Prometheus metrics."""

from __future__ import annotations

import hmac
import threading

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_safe
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView

from medease import health, metrics
from medease.exceptions import error_response


@csrf_exempt  # read-only: another method is a 405 (require_GET), not CSRF's 403
@never_cache
@require_GET
def health_live(request):
    """The process is up and serving requests (no dependency is checked)."""
    return JsonResponse({"status": "ok"})


@csrf_exempt  # read-only: another method is a 405 (require_GET), not CSRF's 403
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


@require_safe
def landing(request):
    """``/``: what this server is, with links to the console, the API docs and health."""
    return render(request, "medease/landing.html")


# The API's top-level resources: the index's key, and the URL name behind it.
API_INDEX = {
    "auth": {
        "register": "auth-register",
        "login": "auth-login",
        "logout": "auth-logout",
        "password": "auth-password",
    },
    "me": "me",
    "providers": "providers",
    "consultations": "consultations",
    "dashboard": "dashboard",
    "notifications": "notifications",
    "notification-preferences": "notification-preferences",
    "ws-ticket": "ws-ticket",
    "schema": "schema",
    "docs": "api-docs",
}


@csrf_exempt  # no session, no writes: a POST is answered 405 like any API route
def api_index(request):
    """``/api/v1/``: absolute links to the API's top-level resources; no sign-in needed."""
    if request.method not in ("GET", "HEAD"):
        message = f'Method "{request.method}" not allowed.'
        response = error_response(405, "method_not_allowed", message)
        response["Allow"] = "GET, HEAD"
        return response

    def links(names):
        if isinstance(names, dict):
            return {key: links(value) for key, value in names.items()}
        return request.build_absolute_uri(reverse(names))

    return JsonResponse({"name": "MedEase API", "version": "v1", "links": links(API_INDEX)})


_generation = threading.Lock()


class SchemaView(SpectacularAPIView):
    """``GET /api/schema/``, one generation at a time: drf-spectacular keeps the view it is
    inspecting on each view class's shared ``schema`` object, so two requests at once
    (threads of one process) answered 500 ("Schema generation REQUIRES a view instance")."""

    @extend_schema(exclude=True)  # as drf-spectacular's own view (SERVE_INCLUDE_SCHEMA)
    def get(self, request, *args, **kwargs):
        with _generation:
            return super().get(request, *args, **kwargs)
