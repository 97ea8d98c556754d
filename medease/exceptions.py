"""One error contract for the whole API.

Services raise subclasses of :class:`ApplicationError`; DRF's own exceptions and Django's
are mapped here too, so every error under ``/api/`` has the shape
``{"error": {"code": ..., "message": ..., "fields": {...}}}`` with the right status.
"""

from __future__ import annotations

import logging
import math

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger("medease.errors")


class ApplicationError(Exception):
    """Base of every error a service raises on purpose; carries its API status and code."""

    status_code = 400
    code = "invalid"
    default_message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        fields: dict | None = None,
    ) -> None:
        self.message = message or self.default_message
        if code:
            self.code = code
        self.fields = fields or {}
        super().__init__(self.message)


class InvalidInput(ApplicationError):
    status_code = 400
    code = "invalid"
    default_message = "Some fields are invalid."


class NotAuthenticated(ApplicationError):
    status_code = 401
    code = "not_authenticated"
    default_message = "Authentication credentials were not provided or have expired."


class Forbidden(ApplicationError):
    status_code = 403
    code = "forbidden"
    default_message = "Your role may not do this."


class NotFound(ApplicationError):
    """Also raised for objects that exist but are not the caller's (never reveal them)."""

    status_code = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class RateLimited(ApplicationError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests. Try again later."

    def __init__(self, message: str | None = None, *, retry_after: float = 1, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = max(1, math.ceil(retry_after))


class ServiceUnavailable(ApplicationError):
    status_code = 503
    code = "unavailable"
    default_message = "A service this request needs is unavailable. Try again shortly."

    def __init__(self, message: str | None = None, *, retry_after: float = 5, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = max(1, math.ceil(retry_after))


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def error_response(status: int, code: str, message: str, fields: dict | None = None):
    """A plain Django JSON error response, for code that runs outside DRF views."""
    return JsonResponse(error_body(code, message, fields), status=status)


def _flatten_fields(detail) -> dict:
    """DRF validation detail → {"field": ["message", ...]}, nested paths joined by dots."""
    fields: dict[str, list[str]] = {}

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            if all(not isinstance(item, (dict, list)) for item in value):
                fields.setdefault(path or "non_field_errors", []).extend(str(v) for v in value)
            else:
                for index, item in enumerate(value):
                    walk(item, f"{path}.{index}" if path else str(index))
        else:
            fields.setdefault(path or "non_field_errors", []).append(str(value))

    walk(detail, "")
    return fields


def field_errors(detail) -> dict:
    """A serializer's ``errors`` as the contract's ``fields`` (also for websocket events)."""
    return _flatten_fields(detail)


_DRF_CODES = {
    drf_exceptions.ParseError: (400, "malformed_request"),
    drf_exceptions.AuthenticationFailed: (401, "not_authenticated"),
    drf_exceptions.NotAuthenticated: (401, "not_authenticated"),
    drf_exceptions.PermissionDenied: (403, "forbidden"),
    drf_exceptions.NotFound: (404, "not_found"),
    drf_exceptions.MethodNotAllowed: (405, "method_not_allowed"),
    drf_exceptions.NotAcceptable: (406, "not_acceptable"),
    drf_exceptions.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf_exceptions.Throttled: (429, "rate_limited"),
}


def api_exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: every exception becomes the contract's JSON error."""
    headers: dict[str, str] = {}

    if isinstance(exc, ApplicationError):
        status, code, message, fields = exc.status_code, exc.code, exc.message, exc.fields
        if hasattr(exc, "retry_after"):
            headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, drf_exceptions.ValidationError):
        status, code = 400, "invalid"
        message, fields = "Some fields are invalid.", _flatten_fields(exc.detail)
    elif isinstance(exc, DjangoValidationError):
        status, code = 400, "invalid"
        fields = exc.message_dict if hasattr(exc, "error_dict") else {}
        message = "; ".join(exc.messages) if not fields else "Some fields are invalid."
    elif isinstance(exc, Http404):
        status, code, message, fields = 404, "not_found", "Not found.", {}
    elif isinstance(exc, DjangoPermissionDenied):
        status, code, message, fields = 403, "forbidden", "Your role may not do this.", {}
    elif isinstance(exc, drf_exceptions.APIException):
        status, code = exc.status_code, "error"
        for cls, mapped in _DRF_CODES.items():
            if isinstance(exc, cls):
                status, code = mapped
                break
        # A code given explicitly at the raise site (e.g. "invalid_token") wins.
        detail_code = getattr(exc.detail, "code", None)
        if isinstance(detail_code, str) and detail_code != exc.default_code:
            code = detail_code
        message, fields = str(exc.detail), {}
        if isinstance(exc, drf_exceptions.ParseError):
            message = f"Malformed request body: {exc.detail}"
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    else:
        # A bug, not bad input: log it with the request id, answer a JSON 500.
        logger.exception("Unhandled error in API view", exc_info=exc)
        status, code, message, fields = 500, "server_error", "Internal server error.", {}

    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return Response(error_body(code, message, fields), status=status, headers=headers)


def json_not_found(request, exception=None):
    """handler404: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(404, "not_found", "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def json_server_error(request):
    """handler500: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(500, "server_error", "Internal server error.")
    from django.views.defaults import server_error

    return server_error(request)


def json_bad_request(request, exception=None):
    if request.path.startswith("/api/"):
        return error_response(400, "bad_request", "Bad request.")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def json_permission_denied(request, exception=None):
    if request.path.startswith("/api/"):
        return error_response(403, "forbidden", "Forbidden.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)
