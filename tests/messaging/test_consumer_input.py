"""Hostile frames on the chat websocket: an error event, the socket stays open, never 1011."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from messaging.models import Message
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = pytest.mark.django_db(transaction=True)

db = database_sync_to_async


async def open_chat(sockets, chat, user):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket))


async def stored() -> list[Message]:
    return await db(lambda: list(Message.objects.order_by("id")))()


async def still_works(socket, client_id: str) -> None:
    await socket.send({"type": "message.send", "body": "still here", "client_id": client_id})
    assert (await socket.receive_type("message"))["message"]["body"] == "still here"


@pytest.mark.parametrize(
    "frame",
    ["[" * 50_000, '{"type": "message.send", "body": ' + "[" * 30_000, '{"a":' * 12_000],
    ids=["arrays", "inside-an-event", "objects"],
)
async def test_deeply_nested_frame_is_an_error_event(chat, sockets, frame):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.communicator.send_to(text_data=frame)
    error = await patient.receive_type("error")
    assert error["code"] == "invalid"
    await still_works(patient, "after-deep")


async def test_deep_but_parseable_body_is_an_error_event(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    body = "[" * 200 + "]" * 200
    frame = '{"type": "message.send", "client_id": "d-1", "body": ' + body + "}"
    await patient.communicator.send_to(text_data=frame)
    error = await patient.receive_type("error")
    assert error["code"] == "invalid"
    await still_works(patient, "after-deep")
    assert [m.client_id for m in await stored()] == ["after-deep"]


@pytest.mark.parametrize("field", ["body", "client_id"])
async def test_lone_surrogate_is_an_error_event_like_rest(chat, sockets, token_client, field):
    event = {"type": "message.send", "body": "hello", "client_id": "s-1"}
    event[field] = "bad \ud800 text"
    # json.dumps escapes it: the frame is valid UTF-8, the decoded string is not.
    frame = json.dumps(event)
    rest = await db(
        lambda: token_client(chat.patient).post(
            f"/api/v1/consultations/{chat.consultation.pk}/messages",
            data=json.dumps({k: v for k, v in event.items() if k != "type"}),
            content_type="application/json",
        )
    )()
    assert rest.status_code == 400
    assert rest.json()["error"]["code"] == "invalid"

    patient = await open_chat(sockets, chat, chat.patient)
    await patient.communicator.send_to(text_data=frame)
    error = await patient.receive_type("error")
    assert error["code"] == "invalid"
    assert field in error["fields"]
    await still_works(patient, "after-surrogate")
    assert [m.client_id for m in await stored()] == ["after-surrogate"]


async def test_lone_surrogate_in_a_read_event_is_an_error_event(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.communicator.send_to(text_data='{"type": "read", "message_id": "\\ud800"}')
    assert (await patient.receive_type("error"))["code"] == "invalid"
    await patient.communicator.send_to(text_data='{"type": "\\ud800"}')
    assert (await patient.receive_type("error"))["code"] == "unknown_type"
    await still_works(patient, "after-read")
