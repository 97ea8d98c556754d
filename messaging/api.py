"""Chat REST API: history, send, read marker, websocket tickets (docs/api.md).

Views are thin: parse, find the consultation through the caller-scoped selector (someone
else's consultation is 404), call one service or selector, serialize, audit PHI reads.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.http import http_date
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from attachments import selectors as attachment_selectors
from consultations.audit import AuditAction, audit_typed_rows
from consultations.selectors import consultation_get_for_user
from medease import db as db_routing
from medease import ratelimit
from medease.pagination import MAX_PAGE_SIZE
from medease.schema import error
from messaging import selectors, services
from messaging.audit import audit_message_created
from messaging.models import MAX_BODY_LENGTH, MAX_CLIENT_ID_LENGTH
from messaging.selectors import HISTORY_AUDIT_TYPE
from messaging.serializers import (
    HISTORY_DEFAULT_LIMIT,
    MAX_ID,
    HistoryInput,
    HistoryOutput,
    MessageOutput,
    MessageSendInput,
    MessageSendRequest,
    ReadInput,
    TicketInput,
    TicketOutput,
    message_output,
    message_rows_with_urls,
    messages_with_urls,
)

# What django.utils.cache.add_never_cache_headers writes, written directly: it parses and
# rebuilds Cache-Control on every call (~0.2 ms of CPU per answer on the bench box).
_NEVER_CACHE = "max-age=0, no-cache, no-store, must-revalidate, private"


def _no_store(response: Response) -> Response:
    # Messages may carry signed download URLs: no cache may keep them.
    response["Expires"] = http_date()
    response["Cache-Control"] = _NEVER_CACHE
    return response


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _next_url(request, *, first, last, more: bool, forward: bool) -> str | None:
    if not more or first is None:
        return None
    url = request.build_absolute_uri()
    if forward:
        return replace_query_param(url, "after", last)
    return replace_query_param(remove_query_param(url, "after"), "before", first)


def _plain_text(value, *, max_length: int) -> bool:
    # What DRF's CharField lets through unchanged: text within the length, no NUL, no lone
    # surrogate (which cannot be encoded).
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def plain_send_input(data) -> dict | None:
    """``{body, client_id, attachments}`` of the common send (text, a client_id, no files),
    read without MessageSendInput (~0.1 ms of CPU through DRF); None for anything else,
    which MessageSendInput decides (value or 400). The REST send and the websocket's."""
    if isinstance(data, dict):
        body, client_id = data.get("body"), data.get("client_id")
        if (
            _plain_text(body, max_length=MAX_BODY_LENGTH * 4)
            and _plain_text(client_id, max_length=MAX_CLIENT_ID_LENGTH * 4)
            and client_id == client_id.strip()
            and client_id
            and data.get("attachments", []) == []
        ):
            return {"body": body, "client_id": client_id, "attachments": []}
    return None


def _send_input(data) -> dict:
    """``{body, client_id, attachments}`` of a send. The service applies the message rules
    either way."""
    plain = plain_send_input(data)
    return plain if plain is not None else _valid(MessageSendInput, data)


_HISTORY_BOUNDS = {"after": (0, MAX_ID), "before": (1, MAX_ID), "limit": (1, None)}


def _history_params(query) -> tuple[int | None, int | None, int]:
    """(after, before, limit) of a history request.

    Plain decimal values are read here (HistoryInput through DRF cost more than the page
    query); anything else (empty, signs, spaces, out of range) goes to HistoryInput, whose
    answer, value or 400, stays the rule.
    """
    values: dict[str, int] = {}
    for name, (low, high) in _HISTORY_BOUNDS.items():
        text = query.get(name)
        if text is None:
            continue
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            break
        value = int(text)
        if value < low or (high is not None and value > high):
            break
        values[name] = value
    else:
        limit = values.get("limit", HISTORY_DEFAULT_LIMIT)
        return values.get("after"), values.get("before"), min(limit, MAX_PAGE_SIZE)
    params = _valid(HistoryInput, query)
    return params.get("after"), params.get("before"), min(params["limit"], MAX_PAGE_SIZE)


class ConsultationMessagesApi(APIView):
    """GET: history in id order. POST: send ``{body, client_id}`` (201; a repeat is 200)."""

    @extend_schema(
        summary="Read a consultation's chat history",
        parameters=[HistoryInput],
        responses={200: HistoryOutput},
        description=(
            "With `after`: the oldest `limit` messages after that id, and `next` continues "
            "forward (resync after a reconnect). Without it: the newest `limit` messages "
            "(below `before` if given), and `next` continues to older ones. Results are "
            "always in ascending id order."
        ),
    )
    def get(self, request, consultation_id: int):
        after, before, limit = _history_params(request.query_params)
        if before is not None and after is None:
            # Older pages never change: a replica serves them.
            consultation, page, more = selectors.chat_history(
                user=request.user, consultation_id=consultation_id, limit=limit, before=before
            )
        else:
            # The live edge (newest page, resync after an id) reads the primary: a message
            # announced over the websocket a moment ago must be in the answer.
            with db_routing.use_primary():
                consultation, page, more = selectors.chat_history(
                    user=request.user,
                    consultation_id=consultation_id,
                    limit=limit,
                    after=after,
                    before=before,
                )
        with_files = [row.id for row in page if row.has_attachments and not row.deleted_at]
        attachments = (
            attachment_selectors.attachments_of_messages(
                consultation_id=consultation.pk, message_ids=with_files
            )
            if with_files
            else {}
        )
        url_rows: list = []
        results = message_rows_with_urls(request, consultation.pk, page, attachments, url_rows)
        # The history read and every download URL handed out, in one audit write.
        audit_typed_rows(
            request=request,
            action=AuditAction.READ,
            rows=[
                (
                    HISTORY_AUDIT_TYPE,
                    consultation.pk,
                    consultation.patient_id,
                    consultation.organization_id,
                ),
                *url_rows,
            ],
        )
        body = {
            "results": results,
            "next": _next_url(
                request,
                first=page[0].id if page else None,
                last=page[-1].id if page else None,
                more=more,
                forward=after is not None,
            ),
        }
        return _no_store(Response(body))

    @extend_schema(
        summary="Send a chat message",
        request=MessageSendRequest,
        responses={
            201: MessageOutput,
            200: OpenApiResponse(MessageOutput, description="The same client_id again."),
            **error(403, "not_participant"),
            **error(409, "consultation_closed", "client_id_reused"),
        },
    )
    def post(self, request, consultation_id: int):
        data = _send_input(request.data)
        ratelimit.hit(request, name="message_user", key=ratelimit.by_user)
        consultation = selectors.chat_consultation(
            user=request.user, consultation_id=consultation_id
        )
        message, created = services.message_send(
            consultation=consultation,
            sender=request.user,
            body=data["body"],
            client_id=data["client_id"],
            attachment_ids=data["attachments"],
            # The create event commits with the message (one transaction, no second write).
            on_stored=lambda stored: audit_message_created(
                request=request, consultation=consultation, message=stored
            ),
        )
        url_rows: list = []
        if created and not data["attachments"]:
            # Just stored without files: nothing to look up.
            result = message_output(message, [])
        else:
            attachments = attachment_selectors.attachments_of_messages(
                consultation_id=consultation.pk, message_ids=[message.pk]
            )
            (result,) = messages_with_urls(request, [message], attachments, url_rows)
            audit_typed_rows(request=request, action=AuditAction.READ, rows=url_rows)
        return _no_store(
            Response(
                result,
                status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            )
        )


class ConsultationReadApi(APIView):
    """Mark the consultation's chat read up to ``message_id`` (markers only move forward)."""

    @extend_schema(summary="Move my read marker", request=ReadInput, responses={204: None})
    def post(self, request, consultation_id: int):
        data = _valid(ReadInput, request.data)
        consultation = consultation_get_for_user(user=request.user, consultation_id=consultation_id)
        services.read_marker_advance(
            consultation=consultation, user=request.user, message_id=data["message_id"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class WsTicketApi(APIView):
    """A single-use ticket, valid for MESSAGING_TICKET_TTL_SECONDS, to open a websocket
    (any of the user's consultations, or only ``{"consultation": id}``)."""

    @extend_schema(
        summary="Get a websocket ticket",
        request=TicketInput,
        responses={200: TicketOutput, **error(400), **error(404), **error(503)},
        description=(
            "The body is optional. With `consultation`, the ticket opens that "
            "consultation's socket only (any other closes with 4403); a visit page session "
            "opened by a join link must name one of its visits."
        ),
    )
    def post(self, request):
        consultation_id = _valid(TicketInput, request.data).get("consultation")
        if consultation_id is not None:
            # Someone else's consultation is 404 here already, not 4403 at connect.
            consultation_get_for_user(user=request.user, consultation_id=consultation_id)
        ticket = services.ws_ticket_issue(
            user=request.user, token=request.auth, consultation_id=consultation_id
        )
        return Response(
            TicketOutput(
                {"ticket": ticket, "expires_in": settings.MESSAGING_TICKET_TTL_SECONDS}
            ).data
        )
