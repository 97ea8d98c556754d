"""call.state and call.signal over the consultation websocket, through the real ASGI
application and (under REDIS_URL) the Redis channel layer."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from consultations import services as consultation_services
from messaging import events as chat_events
from tests.messaging.conftest import issue_ticket, ws_path
from visits import events as call_events
from visits import services

pytestmark = pytest.mark.django_db(transaction=True)

db = database_sync_to_async

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"}


async def open_socket(sockets, chat, user):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket))


async def join(chat, user):
    return await db(services.call_join)(consultation=chat.consultation, user=user)


def signal(to: int, data=OFFER) -> dict:
    return {"type": "call.signal", "to": to, "data": data}


def test_the_group_is_the_chats():
    # visits cannot import messaging; the two spellings must agree.
    assert call_events.consultation_group(7) == chat_events.consultation_group(7)


async def test_call_state_reaches_every_socket_of_the_consultation(chat, sockets):
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    staff = await open_socket(sockets, chat, chat.staff)

    await join(chat, chat.patient)
    for socket in (patient, provider, staff):
        event = await socket.receive_type("call.state")
        assert event["call"]["status"] == "waiting"
        assert [p["user"] for p in event["call"]["participants"]] == [chat.patient.pk]

    await join(chat, chat.provider)
    for socket in (patient, provider, staff):
        assert (await socket.receive_type("call.state"))["call"]["status"] == "active"

    await db(services.call_leave)(consultation=chat.consultation, user=chat.patient)
    for socket in (patient, provider, staff):
        assert (await socket.receive_type("call.state"))["call"]["status"] == "waiting"


async def test_the_call_ends_with_the_consultation(chat, sockets):
    await join(chat, chat.patient)
    await join(chat, chat.provider)
    patient = await open_socket(sockets, chat, chat.patient)
    consultation = await db(lambda: type(chat.consultation).objects.get(pk=chat.consultation.pk))()
    # The transition service tells visits after commit (consultations.lifecycle.on_closed).
    await db(consultation_services.consultation_complete)(
        consultation=consultation, actor=chat.provider
    )
    event = await patient.receive_type("call.state")
    assert event["call"]["status"] == "ended"
    assert all(p["left_at"] for p in event["call"]["participants"])
    # Nothing left to signal to.
    await patient.send(signal(chat.provider.pk))
    assert (await patient.receive_type("error"))["code"] == "not_in_call"


async def test_signal_is_relayed_to_its_recipient_only(chat, sockets, make_user):
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    staff = await open_socket(sockets, chat, chat.staff)
    await join(chat, chat.patient)
    await join(chat, chat.provider)
    for socket in (patient, provider, staff):
        await socket.receive_type("call.state")
        await socket.receive_type("call.state")

    await patient.send(signal(chat.provider.pk))
    event = await provider.receive_type("call.signal")
    assert event == {"type": "call.signal", "from": chat.patient.pk, "data": OFFER}
    answer = {"type": "answer", "sdp": "v=0\r\n"}
    await provider.send(signal(chat.patient.pk, answer))
    assert await patient.receive_type("call.signal") == {
        "type": "call.signal",
        "from": chat.provider.pk,
        "data": answer,
    }
    # Neither the staff observer nor the sender got a copy.
    assert await staff.nothing(ignore=("presence", "call.state"))
    assert await patient.nothing(ignore=("presence", "call.state"))


async def test_not_in_call(chat, sockets):
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    staff = await open_socket(sockets, chat, chat.staff)

    # The sender has not joined.
    await patient.send(signal(chat.provider.pk))
    assert (await patient.receive_type("error"))["code"] == "not_in_call"

    # The recipient has not joined.
    await join(chat, chat.patient)
    await patient.send(signal(chat.provider.pk))
    assert (await patient.receive_type("error"))["code"] == "not_in_call"

    # Staff never join; to themselves or to a stranger: refused too.
    await staff.send(signal(chat.patient.pk))
    assert (await staff.receive_type("error"))["code"] == "not_in_call"
    await patient.send(signal(chat.patient.pk))
    assert (await patient.receive_type("error"))["code"] == "not_in_call"
    await patient.send(signal(chat.staff.pk))
    assert (await patient.receive_type("error"))["code"] == "not_in_call"
    assert await provider.nothing(ignore=("presence", "call.state"))


async def test_too_large_and_malformed_signals_are_relayed_to_nobody(chat, sockets, settings):
    settings.VISIT_SIGNAL_MAX_BYTES = 1024
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    await join(chat, chat.patient)
    await join(chat, chat.provider)

    await patient.send(signal(chat.provider.pk, {"type": "offer", "sdp": "x" * 1024}))
    assert (await patient.receive_type("error"))["code"] == "too_large"
    for bad in (
        {"type": "call.signal", "to": str(chat.provider.pk), "data": OFFER},
        {"type": "call.signal", "to": True, "data": OFFER},
        {"type": "call.signal", "to": chat.provider.pk, "data": "offer"},
        {"type": "call.signal", "to": chat.provider.pk},
    ):
        await patient.send(bad)
        assert (await patient.receive_type("error"))["code"] == "invalid"
    assert await provider.nothing(ignore=("presence", "call.state"))


async def test_the_default_limit_is_64_kib(chat, sockets):
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    await join(chat, chat.patient)
    await join(chat, chat.provider)
    # 64 KiB of data does not fit in a 64 KiB frame either way: refused before anything.
    await patient.send(signal(chat.provider.pk, {"sdp": "x" * (64 * 1024)}))
    assert (await patient.receive_type("error"))["code"] == "too_large"
    assert await provider.nothing(ignore=("presence", "call.state"))


async def test_signals_count_against_the_connection_budget(chat, sockets, settings):
    settings.MESSAGING_WS_RATE_EVENTS = 3
    patient = await open_socket(sockets, chat, chat.patient)
    provider = await open_socket(sockets, chat, chat.provider)
    await join(chat, chat.patient)
    await join(chat, chat.provider)
    for _ in range(3):
        await patient.send(signal(chat.provider.pk))
    await patient.send(signal(chat.provider.pk))
    error = await patient.receive_type("error")
    assert error["code"] == "rate_limited"
    for _ in range(3):
        assert (await provider.receive_type("call.signal"))["from"] == chat.patient.pk
    assert await provider.nothing(ignore=("presence", "call.state"))
