"""Websocket sends on their own threads (messaging.consumers._send_lane, issue 12).

On PostgreSQL a consultation's sends run on one of a few single-thread lanes, so sends of
different consultations overlap while one consultation's stay one at a time; the
acknowledgement never overtakes a message of the consultation published before it. The
access check is one plain statement (selectors.chat_access_columns) with chat_access's
rule. Row locks held by the test make the interleavings exact, not timed.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import Role, User
from consultations.models import Consultation
from medease.exceptions import NotFound
from messaging import consumers, events, selectors
from messaging.models import Message
from messaging.serializers import message_payload
from tests.messaging.conftest import TIMEOUT, issue_ticket, make_consultation, ws_path
from tests.messaging.test_consumers import open_chat, send_event, stored

db = database_sync_to_async


class RowLock:
    """A consultation row held FOR NO KEY UPDATE (as a send holds it) by another
    connection, in a thread of its own, until :meth:`release`."""

    def __init__(self, consultation_id: int) -> None:
        self.consultation_id = consultation_id
        self.held = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with transaction.atomic():
                Consultation.objects.select_for_update(no_key=True).get(pk=self.consultation_id)
                self.held.set()
                self.go.wait(30)
        finally:
            connections.close_all()

    async def __aenter__(self) -> RowLock:
        self.thread.start()
        assert await asyncio.to_thread(self.held.wait, 30)
        return self

    def release(self) -> None:
        self.go.set()

    async def __aexit__(self, *exc) -> None:
        self.release()
        await asyncio.to_thread(self.thread.join, 30)


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


async def until_a_send_waits_for_the_lock() -> None:
    """Return once some backend waits for a row lock (the send under test)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await db(_lock_waiters)():
        assert asyncio.get_running_loop().time() < deadline, "no send waited for the lock"
        await asyncio.sleep(0.01)


def _other_lane(chat) -> Consultation:
    """A consultation of the same two people whose sends run on another lane."""
    for hours in range(2, 2 + 2 * consumers.SEND_LANES):
        other = make_consultation(patient=chat.patient, provider=chat.provider, hours=hours)
        if other.pk % consumers.SEND_LANES != chat.consultation.pk % consumers.SEND_LANES:
            return other
    raise AssertionError("consecutive ids all on one lane")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_sends_of_other_consultations_do_not_wait_for_each_other(chat, sockets):
    other = await db(_other_lane)(chat)
    blocked = await open_chat(sockets, chat, chat.patient)
    free = await sockets(await db(_path)(other.pk, chat.patient))

    async with RowLock(chat.consultation.pk) as lock:
        await blocked.send(send_event("waits for the lock", "blocked-1"))
        await until_a_send_waits_for_the_lock()
        # On one shared database thread this send would queue behind the blocked one.
        await free.send(send_event("not blocked", "free-1"))
        ack = await free.receive_type("message")
        assert ack["message"]["client_id"] == "free-1"
        # The lock is still held, so the first send cannot have finished.
        assert await stored(client_id="blocked-1") == []
        lock.release()
        ack = await blocked.receive_type("message")
        assert ack["message"]["client_id"] == "blocked-1"
    # The blocked send's id came after the free one's (ids are taken at the insert).
    assert [m.client_id for m in await stored()] == ["free-1", "blocked-1"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_acknowledgement_comes_after_earlier_messages(chat, sockets):
    """A message published while the sender's own send was under way (so held by its
    socket) reaches the sender before the acknowledgement of its later message."""
    provider = await open_chat(sockets, chat, chat.provider)
    patient = await open_chat(sockets, chat, chat.patient)
    cid = chat.consultation.pk

    def store_and_publish_earlier() -> dict:
        # Stored and published while the provider's send waits for the row lock: its id
        # is lower than the provider's message will get.
        message = Message.objects.create(
            consultation_id=cid,
            sender=chat.patient,
            body="earlier",
            client_id="earlier-1",
            created_at=timezone.now(),
        )
        payload = message_payload(message, ())
        assert events.group_send(events.consultation_group(cid), events.message_event(payload))
        return payload

    async with RowLock(cid) as lock:
        await provider.send(send_event("later", "later-1"))
        await until_a_send_waits_for_the_lock()
        earlier = await db(store_and_publish_earlier)()
        # The hub writes one published event to all the room's sockets at once: once the
        # patient has it, the provider's socket has it too (held behind its send).
        assert (await patient.receive_type("message"))["message"]["id"] == earlier["id"]
        lock.release()
    first = (await provider.receive_type("message"))["message"]
    second = (await provider.receive_type("message"))["message"]
    assert [first["client_id"], second["client_id"]] == ["earlier-1", "later-1"]
    assert first["id"] < second["id"]
    assert await provider.nothing()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_one_client_id_on_two_lanes_at_once_is_one_message(chat, sockets):
    other = await db(_other_lane)(chat)
    here = await open_chat(sockets, chat, chat.patient)
    there = await sockets(await db(_path)(other.pk, chat.patient))
    await asyncio.gather(
        here.send(send_event("one", "shared-id")), there.send(send_event("one", "shared-id"))
    )
    answers = [await answer(here), await answer(there)]
    kinds = sorted(answer["type"] for answer in answers)
    assert kinds == ["error", "message"]
    (error,) = [answer for answer in answers if answer["type"] == "error"]
    assert error["code"] == "client_id_reused"
    assert len(await stored(client_id="shared-id")) == 1


async def answer(socket) -> dict:
    """The next message or error event (skipping presence and the like)."""
    while True:
        event = await socket.receive()
        if event["type"] in ("message", "error"):
            return event


def _path(consultation_id: int, user) -> str:
    return ws_path(consultation_id, ticket=issue_ticket(user))


# --- The one-statement access check --------------------------------------------------------


@pytest.mark.django_db
def test_chat_access_columns_follows_chat_access(chat, outsiders, make_user, organization):
    superuser = make_user(Role.ADMIN, organization=organization)
    User.objects.filter(pk=superuser.pk).update(is_superuser=True)
    cid = chat.consultation.pk
    for user in (chat.patient, chat.provider, chat.staff, superuser, *outsiders.values()):
        user.refresh_from_db()
        try:
            expected = selectors.chat_access(user_id=user.pk, consultation_id=cid)[1].pk
        except NotFound:
            expected = None
        try:
            got = selectors.chat_access_columns(user_id=user.pk, consultation_id=cid).pk
        except NotFound:
            got = None
        assert got == expected, user.role
    assert selectors.chat_access_columns(user_id=chat.patient.pk, consultation_id=cid) == (
        cid,
        chat.patient.pk,
        chat.provider.pk,
        chat.consultation.organization_id,
        chat.consultation.status,
    )
    with pytest.raises(NotFound):  # no such consultation
        selectors.chat_access_columns(user_id=chat.patient.pk, consultation_id=cid + 1000)
    User.objects.filter(pk=chat.patient.pk).update(is_active=False)
    with pytest.raises(NotFound):  # the user as they are now
        selectors.chat_access_columns(user_id=chat.patient.pk, consultation_id=cid)


@pytest.mark.django_db(transaction=True)
async def test_send_after_access_is_gone_closes_4403(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    await db(lambda: User.objects.filter(pk=chat.patient.pk).update(is_active=False))()
    await patient.send(send_event("too late", "late-1"))
    assert await patient.closed_with() == 4403
    assert await stored(client_id="late-1") == []


# --- Presence of a recipient on this process -----------------------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_a_recipient_connected_here_is_online_without_redis_presence(chat, sockets, notified):
    """The send asks this process's hub first: a recipient with a socket here is online
    even when Redis has no presence entry for them (not notified); one connected nowhere
    is still looked up and notified."""
    from django_redis import get_redis_connection

    provider = await open_chat(sockets, chat, chat.provider)
    patient = await open_chat(sockets, chat, chat.patient)

    def forget_presence() -> None:
        client = get_redis_connection("default")
        for key in client.scan_iter(match="medease:presence:*"):
            client.delete(key)

    await db(forget_presence)()
    await provider.send(send_event("here?", "p-1"))
    assert (await provider.receive_type("message"))["message"]["client_id"] == "p-1"
    await patient.receive_type("message")
    assert notified == []

    await patient.close()
    await provider.send(send_event("gone?", "p-2"))
    assert (await provider.receive_type("message"))["message"]["client_id"] == "p-2"
    assert notified == [(chat.patient.pk, chat.consultation.pk)]
