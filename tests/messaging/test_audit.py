"""Chat is PHI: reading it and writing to it is audited (issue 10, item 3).

* A socket writes one read event when it opens (participant or observing staff), which
  covers its replay and everything streamed to it afterwards: never one per message. The
  REST history writes one per request, for every caller, the patient included.
* Each message stored writes one create event, whichever entry point sent it (REST or
  websocket share ``messaging.services.message_send``); a repeated ``client_id`` stores
  nothing and writes nothing.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from medease.models import AuditEvent
from messaging.models import Message
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = pytest.mark.django_db(transaction=True)

db = database_sync_to_async
READ = ("read", "consultation.messages")
CREATE = ("create", "message")


@db
def events_after(last_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(id__gt=last_id).order_by("id"))


@db
def last_event_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


async def open_chat(sockets, chat, user, *, after=None, request_id=None):
    ticket = await db(issue_ticket)(user)
    headers = [(b"x-request-id", request_id.encode())] if request_id else None
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket, after=after), headers)


def kinds(events) -> list[tuple[str, str, int, str]]:
    return [(e.action, e.object_type, e.user_id, e.object_id) for e in events]


async def test_an_observing_staff_socket_is_audited_once_on_connect_not_per_message(chat, sockets):
    start = await last_event_id()
    staff = await open_chat(sockets, chat, chat.staff, request_id="observer-socket-1")
    opened = await events_after(start)
    assert kinds(opened) == [(*READ, chat.staff.pk, str(chat.consultation.pk))]
    event = opened[0]
    assert (event.patient_id, event.organization_id) == (
        chat.patient.pk,
        chat.consultation.organization_id,
    )
    # The handshake's request id ties the event to the connection.
    assert event.request_id == "observer-socket-1"

    patient = await open_chat(sockets, chat, chat.patient)
    after_connects = await last_event_id()
    for n in range(3):
        await patient.send({"type": "message.send", "body": f"pain {n}", "client_id": f"o-{n}"})
        assert (await staff.receive_type("message"))["message"]["body"] == f"pain {n}"
    # Three messages streamed to the observer: three creates (the patient's), no reads.
    streamed = await events_after(after_connects)
    assert [(e.action, e.object_type, e.user_id) for e in streamed] == [
        (*CREATE, chat.patient.pk)
    ] * 3


async def test_a_participants_socket_is_audited_once_like_the_rest_history(chat, sockets):
    start = await last_event_id()
    await open_chat(sockets, chat, chat.patient)
    opened = await events_after(start)
    assert kinds(opened) == [(*READ, chat.patient.pk, str(chat.consultation.pk))]
    # Without a proxy's id the socket gets one of its own.
    assert len(opened[0].request_id) >= 8


async def test_a_replay_on_connect_is_the_same_one_event(chat, sockets):
    from messaging import services

    for n in range(3):
        await db(services.message_send)(
            consultation=chat.consultation, sender=chat.provider, body=f"m{n}", client_id=f"r{n}"
        )
    start = await last_event_id()
    patient = await open_chat(sockets, chat, chat.patient, after=0)
    for _ in range(3):
        await patient.receive_type("message")
    assert kinds(await events_after(start)) == [(*READ, chat.patient.pk, str(chat.consultation.pk))]


async def test_an_outsiders_refused_socket_writes_nothing(chat, outsiders, sockets):
    start = await last_event_id()
    socket = await open_chat(sockets, chat, outsiders["staff"])
    assert await socket.closed_with() == 4403
    assert await events_after(start) == []


async def test_each_websocket_send_is_audited_once_and_a_repeat_not_at_all(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient, request_id="patient-socket-7")
    start = await last_event_id()
    await patient.send({"type": "message.send", "body": "Rash on my arm", "client_id": "w-1"})
    first = (await patient.receive_type("message"))["message"]
    await patient.send({"type": "message.send", "body": "Rash on my arm", "client_id": "w-1"})
    assert (await patient.receive_type("message"))["message"]["id"] == first["id"]
    events = await events_after(start)
    assert kinds(events) == [(*CREATE, chat.patient.pk, str(first["id"]))]
    assert (events[0].patient_id, events[0].request_id) == (chat.patient.pk, "patient-socket-7")


async def test_each_rest_send_is_audited_once_and_a_repeat_not_at_all(chat, token_client):
    client = await db(token_client)(chat.provider)
    url = f"/api/v1/consultations/{chat.consultation.pk}/messages"
    start = await last_event_id()
    body = {"body": "Take it twice a day", "client_id": "rest-1"}
    created = await db(client.post)(url, body, format="json")
    assert created.status_code == 201
    events = await events_after(start)
    assert kinds(events) == [(*CREATE, chat.provider.pk, str(created.json()["id"]))]
    assert events[0].patient_id == chat.patient.pk
    assert events[0].request_id == created["X-Request-ID"]

    mark = await last_event_id()
    repeat = await db(client.post)(url, body, format="json")
    assert repeat.status_code == 200
    assert await events_after(mark) == []


async def test_a_rest_repeat_of_a_websocket_send_writes_nothing(chat, sockets, token_client):
    """One client_id over both paths: one message, one create event."""
    patient = await open_chat(sockets, chat, chat.patient)
    start = await last_event_id()
    await patient.send({"type": "message.send", "body": "Both ways", "client_id": "x-1"})
    await patient.receive_type("message")
    client = await db(token_client)(chat.patient)
    repeat = await db(client.post)(
        f"/api/v1/consultations/{chat.consultation.pk}/messages",
        {"body": "Both ways", "client_id": "x-1"},
        format="json",
    )
    assert repeat.status_code == 200
    assert await db(Message.objects.filter(client_id="x-1").count)() == 1
    assert [(e.action, e.object_type) for e in await events_after(start)] == [CREATE]
