"""Input and output shapes of the chat API (REST and websocket share the message shape)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from medease.schema import NOT_BLANK
from messaging.models import MAX_BODY_LENGTH, MAX_CLIENT_ID_LENGTH, Message


class MessageOutput(serializers.ModelSerializer):
    """``{id, consultation, sender, body, client_id, created_at}`` plus edit/delete markers."""

    consultation = serializers.IntegerField(source="consultation_id")
    sender = serializers.IntegerField(source="sender_id")
    body = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "consultation",
            "sender",
            "body",
            "client_id",
            "created_at",
            "edited_at",
            "deleted_at",
        ]

    def get_body(self, message: Message) -> str:
        # A deleted message keeps its place in the history, not its text.
        return "" if message.deleted_at else message.body


def message_payload(message: Message) -> dict:
    """The message as plain JSON types (for the channel layer and the websocket)."""
    return dict(MessageOutput(message).data)


class MessageSendInput(serializers.Serializer):
    # Lengths and content are checked by the service (one rule for REST and websocket);
    # these bounds only keep absurd input from reaching it.
    body = serializers.CharField(
        allow_blank=True, trim_whitespace=False, max_length=MAX_BODY_LENGTH * 4
    )
    client_id = serializers.CharField(max_length=MAX_CLIENT_ID_LENGTH * 4)


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


# Ids are bigint: anything larger would reach the database as an out-of-range error.
MAX_ID = 2**63 - 1


class ReadInput(serializers.Serializer):
    message_id = serializers.IntegerField(min_value=1, max_value=MAX_ID)


class HistoryInput(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=MAX_ID, required=False)
    before = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    limit = serializers.IntegerField(min_value=1, required=False, default=20)


class HistoryOutput(serializers.Serializer):
    results = MessageOutput(many=True)
    next = serializers.URLField(allow_null=True)


class TicketOutput(serializers.Serializer):
    ticket = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds the ticket stays valid.")
