"""Request-level middleware: request ids and the API body-size limit."""

from __future__ import annotations

import re
import uuid
import zoneinfo

from django.conf import settings
from django.utils import timezone

from medease import context
from medease.exceptions import error_response

# A client may pass its own id (e.g. from a load balancer) if it looks sane.
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


class RequestIdMiddleware:
    """Gives each request an id, exposes it to logs, and returns it as X-Request-ID."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _CLIENT_ID_RE.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        token = context.begin(context.RequestState(request_id=request_id))
        try:
            response = self.get_response(request)
        finally:
            context.end(token)
        response["X-Request-ID"] = request_id
        return response


class ApiBodySizeMiddleware:
    """Answers 413 for API request bodies above API_MAX_BODY_BYTES, before parsing them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return error_response(400, "bad_request", "Content-Length is not a number.")
            if length > settings.API_MAX_BODY_BYTES:
                return error_response(
                    413,
                    "too_large",
                    f"Request body is larger than {settings.API_MAX_BODY_BYTES} bytes.",
                )
        return self.get_response(request)


class ConsoleTimezoneMiddleware:
    """Shows the staff console in the signed-in user's own time zone.

    Only under /admin/: the API always answers in UTC with offsets, and clients convert.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if request.path.startswith("/admin/") and user is not None and user.is_authenticated:
            try:
                timezone.activate(zoneinfo.ZoneInfo(user.timezone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()
            try:
                return self.get_response(request)
            finally:
                timezone.deactivate()
        return self.get_response(request)
