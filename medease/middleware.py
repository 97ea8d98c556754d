"""Request-level middleware: request ids and the API body-size limit (Django), and the
length of a chunked request body (ASGI)."""

from __future__ import annotations

import json
import re
import uuid
import zoneinfo

from django.conf import settings
from django.utils import timezone

from medease import context
from medease.exceptions import error_body, error_response, json_not_found

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


class BodyLengthMiddleware:
    """ASGI middleware: gives a request body sent without Content-Length (chunked) its
    length, reading at most the body limit; over it, answers 413 without reading on.

    Django's request, and DRF's parser, take a body without Content-Length for an empty
    one ("field required"), and Django would buffer an unbounded chunked body first.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _body_limit(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None:
            # Refused before a byte is read: Django's ASGI handler would otherwise spool
            # the whole body (a 2 GB upload included) to a temporary file first.
            if limit is not None and declared > limit:
                return await _send_too_large(scope, send, limit)
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body (what Django does too)
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                return await _send_too_large(scope, send, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = [
            (name, value)
            for name, value in scope.get("headers", [])
            if name.lower() != b"transfer-encoding"  # the app now sees a plain body
        ]
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # then the connection's own events (a disconnect)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app({**scope, "headers": headers}, replay, send)


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we run
    return None


def _body_limit(path: str) -> int | None:
    if path.startswith("/api/"):
        return settings.API_MAX_BODY_BYTES
    if path.startswith("/files/upload/"):
        # Signed direct uploads on the embedded default carry files, not form posts.
        return settings.ATTACHMENT_MAX_BYTES
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # Django's own limit (None: no limit)


async def _send_too_large(scope, send, limit: int) -> None:
    if scope.get("path", "").startswith("/api/"):
        content = json.dumps(
            error_body("too_large", f"Request body is larger than {limit} bytes.")
        ).encode()
        content_type = b"application/json"
    else:
        content, content_type = b"Request body too large.", b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(content)).encode("ascii")),
                (b"connection", b"close"),  # the rest of the body is never read
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


class DebugNotFoundMiddleware:
    """With DEBUG on, an unknown URL gets the production 404 (JSON under /api/).

    Django's debug 404 lists every URL pattern and answers HTML where API clients expect
    JSON; a 404 raised by a view (the path resolved) keeps Django's debug page.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.DEBUG and response.status_code == 404 and request.resolver_match is None:
            return json_not_found(request)
        return response
