"""Input and output shapes of the chat API (REST and websocket share the message shape)."""

from __future__ import annotations

from datetime import datetime, tzinfo

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from attachments import output as attachment_output
from attachments.models import MAX_ATTACHMENTS_PER_ITEM
from attachments.serializers import AttachmentOutput
from medease.schema import NOT_BLANK
from messaging.models import MAX_BODY_LENGTH, MAX_CLIENT_ID_LENGTH, Message

# Ids are bigint: anything larger would reach the database as an out-of-range error.
MAX_ID = 2**63 - 1
# A history page without ``limit``.
HISTORY_DEFAULT_LIMIT = 20


class MessageOutput(serializers.ModelSerializer):
    """``{id, consultation, sender, body, client_id, attachments, created_at}`` plus
    edit/delete markers; ``attachments`` come from the context (``{message id: [...]}``):
    with signed URLs in REST answers, metadata only in websocket events."""

    consultation = serializers.IntegerField(source="consultation_id")
    sender = serializers.IntegerField(source="sender_id")
    body = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "consultation",
            "sender",
            "body",
            "client_id",
            "attachments",
            "created_at",
            "edited_at",
            "deleted_at",
        ]

    def get_body(self, message: Message) -> str:
        # A deleted message keeps its place in the history, not its text.
        return "" if message.deleted_at else message.body

    @extend_schema_field(AttachmentOutput(many=True))
    def get_attachments(self, message: Message) -> list[dict]:
        # A deleted message keeps its place, not its files.
        if message.deleted_at:
            return []
        return self.context.get("attachments", {}).get(message.pk, [])


def _datetime(value: datetime | None, zone: tzinfo) -> str | None:
    # What DRF's DateTimeField answers (ISO 8601 in the current time zone, "Z" for UTC).
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def message_json(
    *,
    id: int,
    consultation_id: int,
    sender_id: int,
    body: str,
    client_id: str,
    created_at: datetime,
    edited_at: datetime | None,
    deleted_at: datetime | None,
    attachments: list[dict],
    zone: tzinfo | None = None,
) -> dict:
    """MessageOutput's JSON, built directly: serializing a history page field by field
    through DRF cost a sixth of its CPU. MessageOutput stays the documented shape (the
    OpenAPI schema); a test holds the two equal. ``zone``: the current time zone, read
    once per page by the caller (each read is a context-local look-up, not free)."""
    if zone is None:
        zone = timezone.get_current_timezone()
    return {
        "id": id,
        "consultation": consultation_id,
        "sender": sender_id,
        # A deleted message keeps its place in the history, not its text nor its files.
        "body": "" if deleted_at else body,
        "client_id": client_id,
        "attachments": [] if deleted_at else attachments,
        "created_at": _datetime(created_at, zone),
        "edited_at": _datetime(edited_at, zone),
        "deleted_at": _datetime(deleted_at, zone),
    }


def message_output(message: Message, attachments: list[dict]) -> dict:
    """:func:`message_json` of a Message instance, ``attachments`` already as JSON."""
    return message_json(
        id=message.pk,
        consultation_id=message.consultation_id,
        sender_id=message.sender_id,
        body=message.body,
        client_id=message.client_id,
        created_at=message.created_at,
        edited_at=message.edited_at,
        deleted_at=message.deleted_at,
        attachments=attachments,
    )


def message_payload(message: Message, attachments=()) -> dict:
    """The message as plain JSON types (for the channel layer and the websocket). Its
    attachments as metadata without URLs: those expire within minutes, and an event may
    sit in a buffer or be replayed later; clients get a URL from ``GET attachments/{id}``."""
    return message_output(message, attachment_output.metadata(attachments) if attachments else [])


def message_rows_with_urls(
    request, consultation_id: int, rows, attachments: dict, audit_rows: list
) -> list[dict]:
    """REST history: plain rows (``selectors.MessageRow``) as MessageOutput's JSON, with
    their attachments' signed URLs; appends the audit row of each URL handed out."""
    zone = timezone.get_current_timezone()
    results = []
    for row in rows:
        found = attachments.get(row.id) if row.has_attachments and not row.deleted_at else None
        results.append(
            message_json(
                id=row.id,
                consultation_id=consultation_id,
                sender_id=row.sender_id,
                body=row.body,
                client_id=row.client_id,
                created_at=row.created_at,
                edited_at=row.edited_at,
                deleted_at=row.deleted_at,
                attachments=(
                    attachment_output.signed_bodies(request, found, audit_rows) if found else []
                ),
                zone=zone,
            )
        )
    return results


def messages_with_urls(request, messages, attachments: dict, audit_rows: list) -> list[dict]:
    """REST answers: the messages with their attachments' signed URLs; appends the audit
    row of each URL handed out (the caller writes them once for the answer)."""
    context = {
        "attachments": {
            message_id: attachment_output.signed_bodies(request, found, audit_rows)
            for message_id, found in attachments.items()
        }
    }
    return MessageOutput(messages, many=True, context=context).data


class MessageSendInput(serializers.Serializer):
    # Lengths and content are checked by the service (one rule for REST and websocket);
    # these bounds only keep absurd input from reaching it.
    body = serializers.CharField(
        allow_blank=True, trim_whitespace=False, max_length=MAX_BODY_LENGTH * 4
    )
    client_id = serializers.CharField(max_length=MAX_CLIENT_ID_LENGTH * 4)
    # Count and ownership are checked by the service; this only bounds the input.
    attachments = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        default=list,
        max_length=100,
    )


@extend_schema_field(
    {
        "type": "string",
        "format": "printable",
        "minLength": 1,
        "maxLength": MAX_CLIENT_ID_LENGTH,
        "description": f"1 to {MAX_CLIENT_ID_LENGTH} printable characters (Python's "
        "str.isprintable: letters, marks, numbers, punctuation, symbols and the space), no "
        "space at either end; chosen by the client, unique per sender.",
    }
)
class _ClientIdField(serializers.CharField):
    """Documents ``client_id`` as ``services._clean_client_id`` checks it."""


@extend_schema_serializer(component_name="MessageSend")
class MessageSendRequest(serializers.Serializer):
    """The request as documented (OpenAPI only): the rules ``services.message_send``
    applies, where MessageSendInput only bounds the input."""

    body = serializers.RegexField(
        NOT_BLANK,
        max_length=MAX_BODY_LENGTH,
        help_text=f"1 to {MAX_BODY_LENGTH} characters, not blank.",
    )
    client_id = _ClientIdField()
    attachments = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        max_length=MAX_ATTACHMENTS_PER_ITEM,
        help_text=f"Ids of your own ready attachments of this consultation, at most "
        f"{MAX_ATTACHMENTS_PER_ITEM}; each is attached once.",
    )


class ReadInput(serializers.Serializer):
    message_id = serializers.IntegerField(min_value=1, max_value=MAX_ID)


class HistoryInput(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=MAX_ID, required=False)
    before = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    limit = serializers.IntegerField(min_value=1, required=False, default=HISTORY_DEFAULT_LIMIT)


class HistoryOutput(serializers.Serializer):
    results = MessageOutput(many=True)
    next = serializers.URLField(allow_null=True)


class TicketInput(serializers.Serializer):
    consultation = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ID,
        required=False,
        help_text="Bind the ticket to this consultation: it opens that consultation's socket "
        "only. Required from a visit page session opened by a join link.",
    )


class TicketOutput(serializers.Serializer):
    ticket = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds the ticket stays valid.")
