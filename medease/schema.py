"""The OpenAPI contract's shared parts (docs/api.md): one tag per resource, cursor-paged
lists, and the error answers every operation can give, added here from what the view is
(authenticated or public, body or not, path ids or not) so that no view can forget one.

Views add what only they know through ``extend_schema(summary=..., responses={...,
**error(409, "slot_taken", ...)})``: their role rules (403), conflicts (409) and limits
that fail closed (429/503 on public routes). Settings point DRF's DEFAULT_SCHEMA_CLASS at
:class:`AutoSchema` and SPECTACULAR_SETTINGS' POSTPROCESSING_HOOKS at :func:`postprocess`.
"""

from __future__ import annotations

import re

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse, extend_schema_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated

from medease.pagination import MAX_PAGE_SIZE, CursorPagination

# Resource tags, first match wins (paths as drf-spectacular writes them).
_TAG_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), tag)
    for pattern, tag in (
        (r"^/api/v1/auth/", "auth"),
        (r"^/api/v1/me$", "me"),
        (r"/slots$", "slots"),
        (r"/availability$", "availability"),
        (r"/queue(/next)?$|^/api/v1/queue-entries/", "queue"),
        (r"/(messages|read)$", "messages"),
        (r"/attachments|^/api/v1/attachments/", "attachments"),
        (r"/records$", "records"),
        (r"/call$", "visits"),
        (r"^/api/v1/providers$", "providers"),
        (r"^/api/v1/consultations", "consultations"),
        (r"^/api/v1/dashboard$", "dashboard"),
        (r"^/api/v1/notifications", "notifications"),
        (r"^/api/v1/ws-ticket$", "ws-ticket"),
        (r"^/health/", "health"),
    )
)

TAGS = {
    "auth": "Sign-up, login, logout and password change.",
    "me": "The caller's own profile.",
    "providers": "Active providers of every clinic.",
    "slots": "A provider's open slots.",
    "availability": "A provider's weekly windows and exceptions.",
    "consultations": "Booking, the caller's consultations and their lifecycle.",
    "messages": "Consultation chat over REST (the websocket is in docs/api.md).",
    "attachments": "Files attached to a consultation.",
    "queue": "The walk-in queue.",
    "records": "A patient's medical record.",
    "visits": "The video call of a consultation.",
    "dashboard": "The caller's day, by role.",
    "notifications": "The caller's notifications and preferences.",
    "ws-ticket": "Tickets that open a websocket.",
    "health": "Liveness and readiness.",
}

# What each error status means here; views add the codes only they can answer.
_MEANING = {
    400: "Bad input: `invalid` (see `fields`), `malformed_request` (unparseable JSON).",
    401: "No, bad, expired or revoked token: `not_authenticated`, `invalid_token`.",
    403: "The caller may not do this: `forbidden` (their role), or a rule of the API "
    "refused them (e.g. `mfa_enrolment_required` until a clinician enrols in MFA).",
    404: "Not found, or not the caller's: `not_found`.",
    409: "The state does not allow it.",
    413: "The body is over API_MAX_BODY_BYTES, refused before parsing: `too_large`.",
    415: "The body is not JSON: `unsupported_media_type`.",
    429: "Rate limited: `rate_limited`; wait `Retry-After` seconds.",
    503: "A fail-closed limit cannot reach its store: `unavailable`; retry after `Retry-After`.",
}

_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "schema": {"type": "string"},
            "description": 'Always `Bearer realm="api"`.',
            "required": True,
        }
    },
    429: {
        "Retry-After": {
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds to wait.",
            "required": True,
        }
    },
    503: {
        "Retry-After": {
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds to wait.",
            "required": True,
        }
    },
}


# str.strip()'s whitespace, spelled out: regex engines disagree on \s (ECMA's has U+FEFF but
# not U+001C-U+001F or U+0085).
WHITESPACE = (
    r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f"
    r"\u205f\u3000"
)
# What DRF's CharField refuses beyond its length: NUL anywhere, and (unless blank is allowed)
# a value that trims to nothing.
_NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = rf"^[^\u0000]*[^{WHITESPACE}\u0000][^\u0000]*$"
# Times the API writes are wall-clock times without an offset, not RFC 3339's full-time.
_WALL_CLOCK = r"^\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$"


class ErrorDetailOutput(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, meant for programs.")
    message = serializers.CharField(help_text="For people; may change.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Field name (nested paths joined by dots) to messages; `{}` if none.",
    )


@extend_schema_serializer(component_name="Error")
class ErrorOutput(serializers.Serializer):
    """``{"error": {"code", "message", "fields"}}``: every error under /api/."""

    error = ErrorDetailOutput()


def error(status: int, *codes: str, description: str | None = None) -> dict:
    """``{status: the error shape}`` for ``extend_schema(responses=...)``, naming the codes
    this operation can answer with that status."""
    if description is None:
        description = _MEANING.get(status, "")
        if codes:
            description = f"{description.split(':')[0].rstrip('.')}: " + ", ".join(
                f"`{code}`" for code in codes
            )
    return {status: OpenApiResponse(ErrorOutput, description=description)}


class SchemaPagination(CursorPagination):
    """How every list is described: ``{next, previous, results}``, ``?cursor=&limit=``."""

    def get_paginated_response_schema(self, schema):
        body = super().get_paginated_response_schema(schema)
        body["required"] = ["next", "previous", "results"]
        for link in ("next", "previous"):
            body["properties"][link].pop("example", None)
        return body

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque: follow `next`/`previous` as given (tampered: 400).",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Page size, default 20; above {MAX_PAGE_SIZE} is capped.",
                "schema": {"type": "integer", "minimum": 1},
            },
        ]


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema with the contract's tags, paging and error answers."""

    def get_tags(self) -> list[str]:
        for pattern, tag in _TAG_RULES:
            if pattern.search(self.path):
                return [tag]
        return super().get_tags()

    def _map_basic_serializer(self, serializer, direction):
        # _insert_field_validators is not told the direction: remember it for the fields.
        self._direction = direction
        # A serializer's ``schema_optional_fields`` are left out for some callers (e.g. the
        # consultation's provider_notes, for clinicians only): present, but not required.
        result = super()._map_basic_serializer(serializer, direction)
        optional = set(getattr(serializer, "schema_optional_fields", ()))
        if optional and "required" in result:
            result["required"] = [name for name in result["required"] if name not in optional]
            if not result["required"]:
                del result["required"]
        return result

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            direction == "response"
            and isinstance(field, serializers.TimeField)
            and isinstance(schema, dict)
            and schema.get("format") == "time"
        ):
            schema = {key: value for key, value in schema.items() if key != "format"}
            schema["pattern"] = _WALL_CLOCK
        return schema

    def _insert_field_validators(self, field, schema):
        super()._insert_field_validators(field, schema)
        # Input rules only: answers may quote input (an error message naming a bad value).
        if (
            getattr(self, "_direction", None) == "request"
            and isinstance(field, serializers.CharField)
            and not field.read_only
            and schema.get("type") == "string"
            and not {"pattern", "format", "enum"} & set(schema)
        ):
            blank_refused = not field.allow_blank and field.trim_whitespace
            schema["pattern"] = NOT_BLANK if blank_refused else _NO_NUL

    def _get_serializer(self):
        # A DELETE body is documented only when a view names it (extend_schema(request=...)).
        if self.method == "DELETE":
            return None
        return super()._get_serializer()

    def _get_request_body(self, direction="request"):
        if self.method != "DELETE" or self.get_request_serializer() is None:
            return super()._get_request_body(direction)
        # drf-spectacular documents the bodies of POST, PUT and PATCH only.
        self.method = "POST"
        try:
            return super()._get_request_body(direction)
        finally:
            self.method = "DELETE"

    def _get_paginator(self):
        # Every list under /api/v1/ is cursor-paged by medease.pagination, also the ones an
        # APIView pages itself (chat history is not a list: it has its own shape).
        return SchemaPagination() if self.method == "GET" else None

    def _is_public(self) -> bool:
        return any(isinstance(p, AllowAny) for p in self.view.get_permissions())

    def _may_refuse_users(self) -> bool:
        # A permission beyond "signed in" (the default MfaEnrolled) can refuse anyone: 403.
        return any(type(p) not in (AllowAny, IsAuthenticated) for p in self.view.get_permissions())

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses = operation["responses"]
        statuses: list[int] = []
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        if has_body or any(p["in"] in ("query", "header") for p in parameters):
            statuses.append(400)
        if not self._is_public():
            statuses += [401, 429]  # the token; every authenticated call counts (api_user)
            if self._may_refuse_users():
                statuses.append(403)
        if any(p["in"] == "path" for p in parameters):
            statuses.append(404)
        if has_body:
            statuses += [413, 415]
        for status in statuses:
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    error(status)[status], str(status)
                )
        for parameter in parameters:
            # An empty optional query value (`?status=`) is the same as leaving it out.
            if parameter["in"] == "query" and not parameter.get("required"):
                parameter["allowEmptyValue"] = True
        for status, headers in _HEADERS.items():
            if str(status) in responses:
                responses[str(status)].setdefault("headers", {}).update(headers)
        operation["responses"] = dict(sorted(responses.items()))
        return operation


def _health_paths() -> dict:
    """/health/live and /health/ready (plain Django views, outside DRF's reach)."""
    live = {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
        "required": ["status"],
    }
    ready = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "checks": {
                "type": "object",
                "description": "One entry per dependency (database, each replica, cache, "
                "channel_layer, broker): its `status`, `latency_ms` and details.",
                "additionalProperties": {"type": "object"},
            },
        },
        "required": ["status", "checks"],
    }

    def answer(description: str, schema: dict) -> dict:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def operation(operation_id: str, summary: str, responses: dict) -> dict:
        return {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "tags": ["health"],
                "security": [{}],
                "responses": responses,
            }
        }

    return {
        "/health/live": operation(
            "health_live", "Liveness", {"200": answer("The process serves requests.", live)}
        ),
        "/health/ready": operation(
            "health_ready",
            "Readiness: every required dependency answers",
            {
                "200": answer("Ready (`ok`, or `degraded`: a replica is down).", ready),
                "503": answer("A required dependency is down (`unavailable`).", ready),
            },
        ),
    }


def postprocess(result, generator, request, public):
    """SPECTACULAR_SETTINGS POSTPROCESSING_HOOKS: the health endpoints, and the tag list
    with descriptions."""
    result.setdefault("paths", {}).update(_health_paths())
    used = {
        tag
        for item in result.get("paths", {}).values()
        for op in item.values()
        if isinstance(op, dict)
        for tag in op.get("tags", [])
    }
    result["tags"] = [
        {"name": name, "description": text} for name, text in TAGS.items() if name in used
    ]
    return result
