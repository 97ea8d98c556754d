"""The chat websocket through the real ASGI application (config.asgi.application).

Transactional database: consumers read and write in their own thread, and fan-out runs
on commit. Under REDIS_URL the channel layer and presence are Redis.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from accounts import services as account_services
from consultations.models import Consultation, ConsultationStatus
from messaging import hub, services
from messaging.models import Message, ReadMarker
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = pytest.mark.django_db(transaction=True)

db = database_sync_to_async


async def open_chat(sockets, chat, user, *, after=None, headers=None):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket, after=after), headers)


async def stored(**filters):
    return await db(lambda: list(Message.objects.filter(**filters).order_by("id")))()


def send_event(body, client_id):
    return {"type": "message.send", "body": body, "client_id": client_id}


# --- Authentication and authorization --------------------------------------------------


async def test_missing_or_bad_ticket_closes_4401(chat, sockets):
    for path in (
        ws_path(chat.consultation.pk),
        ws_path(chat.consultation.pk, ticket="not-a-ticket"),
        ws_path(chat.consultation.pk, ticket=""),
    ):
        socket = await sockets(path)
        assert await socket.closed_with() == 4401


async def test_ticket_is_single_use(chat, sockets):
    ticket = await db(issue_ticket)(chat.patient)
    first = await sockets(ws_path(chat.consultation.pk, ticket=ticket))
    assert await first.nothing()
    second = await sockets(ws_path(chat.consultation.pk, ticket=ticket))
    assert await second.closed_with() == 4401


async def test_ticket_of_a_revoked_token_is_refused(chat, sockets):
    def ticket_then_logout():
        _raw, token = account_services.token_issue(user=chat.patient)
        ticket = services.ws_ticket_issue(user=chat.patient, token=token)
        account_services.token_revoke(token=token)
        return ticket

    ticket = await db(ticket_then_logout)()
    socket = await sockets(ws_path(chat.consultation.pk, ticket=ticket))
    assert await socket.closed_with() == 4401


async def test_outsiders_are_closed_4403(chat, outsiders, sockets):
    for user in outsiders.values():
        socket = await open_chat(sockets, chat, user)
        assert await socket.closed_with() == 4403
    unknown = await sockets(ws_path(999_999, ticket=await db(issue_ticket)(chat.patient)))
    assert await unknown.closed_with() == 4403


async def test_bad_after_closes_4400(chat, sockets):
    ticket = await db(issue_ticket)(chat.patient)
    socket = await sockets(f"/ws/consultations/{chat.consultation.pk}/?ticket={ticket}&after=x")
    assert await socket.closed_with() == 4400


async def test_org_staff_observe_the_chat(chat, sockets):
    staff = await open_chat(sockets, chat, chat.staff)
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("hello", "s-1"))
    assert (await staff.receive_type("message"))["message"]["body"] == "hello"
    await staff.send(send_event("from staff", "s-2"))
    error = await staff.receive_type("error")
    assert error["code"] == "not_participant" and error["client_id"] == "s-2"


# --- Sending, acknowledgement, idempotency ---------------------------------------------


async def test_two_participants_chat_both_ways(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)

    await patient.send(send_event("Hello doctor", "p-1"))
    ack = await patient.receive_type("message")
    got = await provider.receive_type("message")
    assert ack == got
    message = got["message"]
    assert (message["sender"], message["body"], message["client_id"]) == (
        chat.patient.pk,
        "Hello doctor",
        "p-1",
    )
    assert message["consultation"] == chat.consultation.pk

    await provider.send(send_event("Hello, how can I help?", "d-1"))
    reply = (await patient.receive_type("message"))["message"]
    assert reply["sender"] == chat.provider.pk and reply["id"] > message["id"]
    # The sender's own copy arrives once (the acknowledgement), not twice.
    assert (await provider.receive_type("message"))["message"]["id"] == reply["id"]
    assert await provider.nothing()
    assert [m.body for m in await stored()] == ["Hello doctor", "Hello, how can I help?"]


async def test_repeated_client_id_is_acknowledged_with_the_stored_message(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)
    await patient.send(send_event("once", "dup"))
    first = (await patient.receive_type("message"))["message"]
    await provider.receive_type("message")
    await patient.send(send_event("once", "dup"))
    assert (await patient.receive_type("message"))["message"] == first
    assert await provider.nothing()
    assert len(await stored()) == 1


async def test_websocket_and_rest_share_one_idempotent_path(chat, sockets, token_client):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("via socket", "shared-1"))
    sent = (await patient.receive_type("message"))["message"]
    client = await db(token_client)(chat.patient)
    response = await db(
        lambda: client.post(
            f"/api/v1/consultations/{chat.consultation.pk}/messages",
            {"body": "via socket", "client_id": "shared-1"},
            format="json",
        )
    )()
    assert response.status_code == 200 and response.json()["id"] == sent["id"]


async def test_bad_send_is_an_error_event(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("", "e-1"))
    error = await patient.receive_type("error")
    assert error["code"] == "invalid" and error["client_id"] == "e-1"
    await patient.send({"type": "message.send", "body": "no client id"})
    assert (await patient.receive_type("error"))["code"] == "invalid"
    assert await stored() == []


async def test_channel_layer_failure_still_stores_and_acknowledges(chat, sockets, monkeypatch):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)

    def broken(group, event):
        raise ConnectionError("Redis down")

    apublish = hub.apublish

    async def abroken(group, event):
        if event["type"] == "chat.message":
            raise ConnectionError("Redis down")
        await apublish(group, event)

    # Only the fan-out of sends (published after commit, from a thread on the full path,
    # from the event loop on the one-statement path) breaks; the sockets stay up.
    monkeypatch.setattr(hub, "publish", broken)
    monkeypatch.setattr(hub, "apublish", abroken)
    await patient.send(send_event("stored anyway", "down-1"))
    ack = (await patient.receive_type("message"))["message"]
    assert ack["body"] == "stored anyway"
    assert await provider.nothing()  # the live copy was lost...
    monkeypatch.undo()
    # ...and a reconnect with after= gets it.
    again = await open_chat(sockets, chat, chat.provider, after=ack["id"] - 1)
    assert (await again.receive_type("message"))["message"]["id"] == ack["id"]


# --- Replay ----------------------------------------------------------------------------


async def test_reconnect_with_after_gets_exactly_the_missed_messages(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("seen", "r-0"))
    seen = (await patient.receive_type("message"))["message"]["id"]

    def send_missed():
        return [
            services.message_send(
                consultation=chat.consultation,
                sender=chat.provider,
                body=f"m{n}",
                client_id=f"r{n}",
            )[0].pk
            for n in range(1, 6)
        ]

    await patient.close()
    missed = await db(send_missed)()
    back = await open_chat(sockets, chat, chat.patient, after=seen)
    replayed = [(await back.receive_type("message"))["message"]["id"] for _ in missed]
    assert replayed == missed
    assert await back.nothing()


async def test_connect_without_after_replays_nothing(chat, sockets):
    await db(
        lambda: services.message_send(
            consultation=chat.consultation, sender=chat.provider, body="old", client_id="o"
        )
    )()
    patient = await open_chat(sockets, chat, chat.patient)
    assert await patient.nothing()


async def test_replay_is_audited(chat, sockets):
    from medease.models import AuditEvent

    await db(
        lambda: services.message_send(
            consultation=chat.consultation, sender=chat.provider, body="x", client_id="a"
        )
    )()
    patient = await open_chat(sockets, chat, chat.patient, after=0)
    await patient.receive_type("message")
    events_ = await db(
        lambda: list(AuditEvent.objects.filter(object_type="consultation.messages"))
    )()
    assert [(e.user_id, e.object_id) for e in events_] == [
        (chat.patient.pk, str(chat.consultation.pk))
    ]


# --- Typing, read, presence ------------------------------------------------------------


async def test_typing_is_fanned_out_throttled_and_not_stored(chat, sockets, settings):
    settings.MESSAGING_TYPING_INTERVAL_SECONDS = 60
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)
    await patient.send({"type": "typing"})
    assert await provider.receive_type("typing") == {"type": "typing", "user": chat.patient.pk}
    await patient.send({"type": "typing"})  # within the interval: dropped
    await patient.send({"type": "typing"})
    await patient.settle()
    assert await provider.nothing()
    assert await patient.nothing()  # no echo to the typist
    assert await stored() == []


async def test_read_events_move_the_marker_and_reach_the_other_side(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)
    await provider.send(send_event("please read", "rd-1"))
    message_id = (await patient.receive_type("message"))["message"]["id"]
    await patient.send({"type": "read", "message_id": message_id})
    event = await provider.receive_type("read")
    assert event == {"type": "read", "user": chat.patient.pk, "message_id": message_id}
    marker = await db(
        lambda: ReadMarker.objects.get(user=chat.patient, consultation=chat.consultation)
    )()
    assert marker.last_read_message_id == message_id
    await patient.send({"type": "read", "message_id": "nope"})
    assert (await patient.receive_type("error"))["code"] == "invalid"


async def test_presence_with_tabs(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    tab1 = await open_chat(sockets, chat, chat.provider)
    assert await patient.receive_type("presence") == {
        "type": "presence",
        "user": chat.provider.pk,
        "online": True,
    }
    # The newcomer learns who is already here.
    assert (await tab1.receive_type("presence"))["user"] == chat.patient.pk

    tab2 = await open_chat(sockets, chat, chat.provider)
    assert (await tab2.receive_type("presence"))["user"] == chat.patient.pk
    assert await patient.nothing(ignore=())  # a second tab is not news

    await tab1.close()
    assert await patient.nothing(ignore=())  # still online in tab 2
    await tab2.close()
    assert await patient.receive_type("presence") == {
        "type": "presence",
        "user": chat.provider.pk,
        "online": False,
    }


async def test_offline_notifications_follow_presence(chat, sockets, notified):
    provider = await open_chat(sockets, chat, chat.provider)
    await provider.send(send_event("are you there?", "n-1"))
    await provider.receive_type("message")
    assert notified == [(chat.patient.pk, chat.consultation.pk)]

    patient = await open_chat(sockets, chat, chat.patient)
    await provider.receive_type("presence")
    notified.clear()
    await provider.send(send_event("now you are", "n-2"))
    await patient.receive_type("message")
    assert notified == []


# --- Limits ----------------------------------------------------------------------------


async def test_per_connection_rate_limit_answers_with_an_error(chat, sockets, settings):
    settings.MESSAGING_WS_RATE_EVENTS = 3
    settings.MESSAGING_WS_RATE_WINDOW_SECONDS = 60
    patient = await open_chat(sockets, chat, chat.patient)
    for n in range(3):
        await patient.send(send_event(f"m{n}", f"rl-{n}"))
        await patient.receive_type("message")
    await patient.send(send_event("too many", "rl-3"))
    error = await patient.receive_type("error")
    assert error["code"] == "rate_limited" and error["retry_after"] > 0
    # Still connected: answered, not disconnected.
    await patient.send({"type": "typing"})
    assert (await patient.receive_type("error"))["code"] == "rate_limited"
    assert len(await stored()) == 3


async def test_per_user_send_limit_is_shared_with_rest(chat, sockets, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("2/m", True)}
    patient = await open_chat(sockets, chat, chat.patient)
    for n in range(2):
        await patient.send(send_event("x", f"u-{n}"))
        await patient.receive_type("message")
    await patient.send(send_event("x", "u-2"))
    error = await patient.receive_type("error")
    assert error["code"] == "rate_limited" and error["client_id"] == "u-2"


async def test_oversized_and_malformed_frames_are_errors(chat, sockets, settings):
    settings.MESSAGING_WS_MAX_FRAME_BYTES = 1024
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("é" * 600, "big"))  # 1,200 bytes of UTF-8
    assert (await patient.receive_type("error"))["code"] == "too_large"
    await patient.communicator.send_to(text_data="{not json")
    assert (await patient.receive_type("error"))["code"] == "invalid"
    await patient.communicator.send_to(text_data="[1, 2]")
    assert (await patient.receive_type("error"))["code"] == "invalid"
    await patient.communicator.send_to(bytes_data=b"\x00\x01")
    assert (await patient.receive_type("error"))["code"] == "invalid"
    await patient.send({"type": "shout"})
    assert (await patient.receive_type("error"))["code"] == "unknown_type"
    # After all that the socket still works.
    await patient.send(send_event("fine", "ok-1"))
    assert (await patient.receive_type("message"))["message"]["body"] == "fine"


# --- Closing and read-only -------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [ConsultationStatus.COMPLETED, ConsultationStatus.CANCELLED, ConsultationStatus.NO_SHOW],
)
async def test_closed_consultation_is_read_only_on_the_socket(chat, sockets, status):
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.send(send_event("before closing", "open-1"))
    history = [(await patient.receive_type("message"))["message"]]
    await db(
        lambda: services.message_send(
            consultation=chat.consultation, sender=chat.provider, body="noted", client_id="open-2"
        )
    )()
    history.append((await patient.receive_type("message"))["message"])
    await db(lambda: Consultation.objects.filter(pk=chat.consultation.pk).update(status=status))()
    await patient.send(send_event("too late", "late-1"))
    error = await patient.receive_type("error")
    assert error["code"] == "consultation_closed"
    await patient.send({"type": "typing"})
    assert (await patient.receive_type("error"))["code"] == "consultation_closed"
    assert [m.body for m in await stored()] == ["before closing", "noted"]
    # A closed consultation's history stays readable over the socket.
    reconnect = await open_chat(sockets, chat, chat.patient, after=0)
    assert [(await reconnect.receive_type("message"))["message"] for _ in history] == history
    assert await reconnect.nothing()


async def test_lost_access_closes_4403_on_the_next_event(chat, sockets, other_organization):
    staff = await open_chat(sockets, chat, chat.staff)
    await db(
        lambda: (
            type(chat.staff)
            .objects.filter(pk=chat.staff.pk)
            .update(organization=other_organization)
        )
    )()
    await staff.send({"type": "read", "message_id": 1})
    assert await staff.closed_with() == 4403


@pytest.mark.parametrize("how", ["logout", "password", "deactivate"])
async def test_revocation_closes_every_socket_of_the_user(chat, sockets, how):
    patient_a = await open_chat(sockets, chat, chat.patient)
    patient_b = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)

    def revoke():
        user = type(chat.patient).objects.get(pk=chat.patient.pk)
        if how == "logout":
            _raw, token = account_services.token_issue(user=user)
            account_services.token_revoke(token=token)
        elif how == "password":
            account_services.user_change_password(
                user=user,
                old_password="correct-horse-battery-staple",
                new_password="another-long-passphrase-42",
            )
        else:
            account_services.user_deactivate(user=user)

    await db(revoke)()
    assert await patient_a.closed_with() == 4401
    assert await patient_b.closed_with() == 4401
    # Someone else's socket stays open.
    await provider.send({"type": "typing"})
    assert await provider.nothing()


# --- Session cookies (the staff console in a browser) ----------------------------------


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    from django.conf import settings

    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


async def test_session_cookie_needs_an_allowed_origin(chat, sockets):
    cookie = await db(session_cookie)(chat.staff)
    path = ws_path(chat.consultation.pk)
    evil = await sockets(path, [(b"cookie", cookie), (b"origin", b"https://evil.example")])
    assert await evil.closed_with() == 4403
    good = await sockets(path, [(b"cookie", cookie), (b"origin", b"http://localhost:8000")])
    assert await good.nothing()
    # A ticket carries no ambient credential: any origin may use one.
    ticket = await db(issue_ticket)(chat.patient)
    app = await sockets(
        ws_path(chat.consultation.pk, ticket=ticket), [(b"origin", b"https://app.example")]
    )
    assert await app.nothing()


async def test_allowed_origins_setting(chat, sockets, settings):
    settings.MESSAGING_WS_ALLOWED_ORIGINS = ["https://console.clinic.example"]
    cookie = await db(session_cookie)(chat.staff)
    path = ws_path(chat.consultation.pk)
    other = await sockets(path, [(b"cookie", cookie), (b"origin", b"http://localhost:8000")])
    assert await other.closed_with() == 4403
    listed = await sockets(
        path, [(b"cookie", cookie), (b"origin", b"https://console.clinic.example")]
    )
    assert await listed.nothing()


async def test_concurrent_sends_store_one_message_per_client_id(chat, sockets):
    tabs = [await open_chat(sockets, chat, chat.patient) for _ in range(3)]
    tabs.append(await open_chat(sockets, chat, chat.provider))
    observer = await open_chat(sockets, chat, chat.staff)
    own = {i: [f"c{i}-{n}" for n in range(4)] for i in range(len(tabs))}

    async def burst(i, socket):
        for client_id in own[i]:
            await socket.send(send_event(f"from tab {i}", client_id))
        if i < 3:  # the patient's three tabs retry one message at the same moment
            await socket.send(send_event("retried", "same"))

    # Every frame is queued before any consumer runs: the four consumers then handle
    # them at the same time, interleaving their database work and fan-out.
    await asyncio.gather(*(burst(i, socket) for i, socket in enumerate(tabs)))

    expected = {"same", *(c for ids in own.values() for c in ids)}

    async def stream(socket) -> list[dict]:
        """Messages in order of arrival until every client_id has been seen."""
        got: list[dict] = []
        while {m["client_id"] for m in got} != expected:
            got.append((await socket.receive_type("message"))["message"])
        return got

    streams = [await stream(socket) for socket in [*tabs, observer]]
    assert await observer.nothing()  # and each message reached it once
    assert len(streams[-1]) == len(expected)

    rows = await stored()
    keys = [(m.sender_id, m.client_id) for m in rows]
    assert len(keys) == len(set(keys)) == len(expected)  # one row per (sender, client_id)
    by_client_id = {m.client_id: m.pk for m in rows}
    for got in streams:
        # Every socket was told the stored message, the retried one included...
        assert {(m["client_id"], m["id"]) for m in got} == set(by_client_id.items())
        # ...and saw each socket's messages in the order that socket sent them...
        for ids in own.values():
            assert [m["client_id"] for m in got if m["client_id"] in ids] == ids
        # ...and all in id order: no acknowledgement overtook an earlier message (a repeated
        # client_id's answer is the stored message, whenever it comes).
        ids = [m["id"] for m in got if m["client_id"] != "same"]
        assert ids == sorted(ids)
    # The senders' writes interleave: the sends really overlapped.
    order = [m.client_id.split("-")[0] for m in rows if m.client_id != "same"]
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches > len(tabs) - 1


@pytest.mark.redis
def test_channel_layer_read_timeout_outlasts_its_blocking_receive():
    """redis-py 8 reads with a 5 s timeout by default; channels_redis blocks 5 s in BZPOPMIN:
    without an explicit, longer socket_timeout every idle consumer dies every ~5 s."""
    from channels.layers import get_channel_layer
    from channels_redis.utils import create_pool

    layer = get_channel_layer()
    host = settings_hosts()[0]
    pool = create_pool(host)
    assert pool.connection_kwargs["socket_timeout"] > getattr(layer, "brpop_timeout", 5)


def settings_hosts():
    from django.conf import settings

    return settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]
