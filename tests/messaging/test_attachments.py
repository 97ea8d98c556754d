"""Files over the chat websocket: ``message.send`` takes ``attachments``, and message events
(acknowledgement, fan-out, replay) carry their metadata without signed URLs."""

from __future__ import annotations

import secrets

import pytest
from channels.db import database_sync_to_async

from attachments.models import Attachment, AttachmentStatus
from messaging.models import Message
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = pytest.mark.django_db(transaction=True)

db = database_sync_to_async
METADATA_KEYS = {"id", "filename", "content_type", "size", "status", "created_at"}


def make_attachment(chat, uploader, *, status=AttachmentStatus.READY) -> int:
    return Attachment.objects.create(
        uploader=uploader,
        consultation=chat.consultation,
        patient_id=chat.consultation.patient_id,
        organization_id=chat.consultation.organization_id,
        filename="scan.pdf",
        content_type="application/pdf",
        size=1234,
        status=status,
        storage_key=f"attachments/test/{secrets.token_urlsafe(12)}",
    ).pk


async def open_chat(sockets, chat, user, *, after=None):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket, after=after))


async def test_a_sent_file_reaches_both_sockets_as_metadata(chat, sockets):
    attachment_id = await db(make_attachment)(chat, chat.patient)
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)
    await patient.send(
        {
            "type": "message.send",
            "body": "my scan",
            "client_id": "f-1",
            "attachments": [attachment_id],
        }
    )
    ack = await patient.receive_type("message")
    got = await provider.receive_type("message")
    assert ack == got
    (item,) = got["message"]["attachments"]
    assert set(item) == METADATA_KEYS  # no URL: clients ask GET attachments/{id}
    assert (item["id"], item["filename"], item["size"]) == (attachment_id, "scan.pdf", 1234)

    # A repeat with the same client_id is acknowledged with the same files.
    await patient.send({"type": "message.send", "body": "my scan", "client_id": "f-1"})
    assert (await patient.receive_type("message")) == ack

    # A reconnect replays the message with its files.
    again = await open_chat(sockets, chat, chat.provider, after=0)
    replayed = await again.receive_type("message")
    assert replayed["message"]["attachments"] == got["message"]["attachments"]


async def test_a_file_that_cannot_be_attached_is_an_error_event(chat, sockets):
    theirs = await db(make_attachment)(chat, chat.provider)
    pending = await db(make_attachment)(chat, chat.patient, status=AttachmentStatus.PENDING)
    patient = await open_chat(sockets, chat, chat.patient)
    for attachment_id, problem in [
        (theirs, f"Attachment {theirs}: no such file of yours in this consultation."),
        (pending, f"Attachment {pending} is not ready: complete its upload first."),
    ]:
        await patient.send(
            {
                "type": "message.send",
                "body": "x",
                "client_id": f"e-{attachment_id}",
                "attachments": [attachment_id],
            }
        )
        error = await patient.receive_type("error")
        assert error["code"] == "invalid"
        assert error["client_id"] == f"e-{attachment_id}"
        assert error["fields"] == {"attachments": [problem]}
    await patient.send(
        {"type": "message.send", "body": "x", "client_id": "e-3", "attachments": "nope"}
    )
    error = await patient.receive_type("error")
    assert error["code"] == "invalid" and "attachments" in error["fields"]
    assert await db(Message.objects.count)() == 0
