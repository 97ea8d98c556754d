"""A websocket send in one statement on the event loop (services.amessage_send_at_once,
messaging.lanes; issue 12, CPU per delivery).

The statement checks access with clinic_scope's rule rendered to SQL, so the rule and its
SQL must agree for every kind of user; an ordinary send must take it (the full path's
access check never runs) and still write everything the full path writes; a send it does
not store falls back to the full path, which answers.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from accounts.models import Role, User
from consultations.models import Consultation, clinic_scope_sql
from medease.models import AuditAction, AuditEvent
from messaging import lanes, selectors
from messaging.models import Message, MessageClientId, ReadMarker
from tests.messaging.conftest import make_consultation
from tests.messaging.test_consumers import open_chat, send_event

db = database_sync_to_async


@pytest.mark.django_db
def test_clinic_scope_sql_is_the_rule_of_visible_to(
    chat, outsiders, make_user, organization, other_organization
):
    superuser = make_user(Role.ADMIN, organization=organization)
    User.objects.filter(pk=superuser.pk).update(is_superuser=True)
    admin = make_user(Role.ADMIN, organization=organization)
    make_consultation(patient=outsiders["patient"], provider=outsiders["provider"])
    make_consultation(patient=chat.patient, provider=outsiders["provider"], hours=3)
    users = [
        chat.patient, chat.provider, chat.staff, superuser, admin,
        *outsiders.values(),
    ]  # fmt: skip
    condition = clinic_scope_sql(user="u", row="c")
    for user in users:
        user.refresh_from_db()
        expected = set(Consultation.objects.visible_to(user).values_list("pk", flat=True))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.id FROM consultations_consultation c JOIN accounts_user u"
                f" ON u.id = %s WHERE {condition}",
                [user.pk],
            )
            got = {row[0] for row in cursor.fetchall()}
        assert got == expected, (user.role, user.is_superuser)
    assert Consultation.objects.count() == 3
    assert set(Consultation.objects.visible_to(chat.staff).values_list("pk", flat=True))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_an_ordinary_send_is_one_statement_with_everything_the_full_path_writes(
    chat, sockets, monkeypatch
):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)

    def full_path(**kwargs):
        raise AssertionError("the full path's access check ran")

    monkeypatch.setattr(selectors, "chat_access_columns", full_path)
    await patient.send(send_event("one statement", "once-1"))
    ack = (await patient.receive_type("message"))["message"]
    live = (await provider.receive_type("message"))["message"]
    assert ack == live
    assert ack["body"] == "one statement"
    assert ack["sender"] == chat.patient.pk

    def written():
        message = Message.objects.get(client_id="once-1")
        return (
            message,
            MessageClientId.objects.get(sender_id=chat.patient.pk, client_id="once-1"),
            ReadMarker.objects.get(consultation=chat.consultation, user=chat.patient),
            list(AuditEvent.objects.filter(action=AuditAction.CREATE, object_type="message")),
        )

    message, client_id, marker, audit = await db(written)()
    assert message.pk == ack["id"]
    assert message.created_at.isoformat().startswith(ack["created_at"][:19])
    assert (client_id.message_id, client_id.message_created_at) == (
        message.pk,
        message.created_at,
    )
    assert marker.last_read_message_id == message.pk
    [event] = audit
    assert event.object_id == str(message.pk)
    assert event.user_id == chat.patient.pk
    assert event.patient_id == chat.patient.pk
    assert event.organization_id == chat.consultation.organization_id
    assert event.request_id  # the socket's connection id
    assert event.event_id is not None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_a_send_the_statement_does_not_store_takes_the_full_path(chat, sockets, make_user):
    """The peer the socket knows is no longer the consultation's participant (reassigned):
    the statement stores nothing and the full path, which reads the consultation as it is
    now, stores the message once."""
    patient = await open_chat(sockets, chat, chat.patient)
    await open_chat(sockets, chat, chat.provider)
    other = await db(make_user)(Role.PROVIDER, organization=chat.consultation.organization)
    await db(lambda: Consultation.objects.filter(pk=chat.consultation.pk).update(provider=other))()
    calls = []
    real = selectors.chat_access_columns

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    selectors.chat_access_columns = spy
    try:
        await patient.send(send_event("to the new provider", "moved-1"))
        ack = (await patient.receive_type("message"))["message"]
    finally:
        selectors.chat_access_columns = real
    assert calls, "the full path did not run"
    assert ack["body"] == "to the new provider"
    assert await db(lambda: Message.objects.filter(client_id="moved-1").count())() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_lanes_keep_one_connection_each_and_close_them(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    await open_chat(sockets, chat, chat.provider)
    for n in range(5):
        await patient.send(send_event(f"m{n}", f"lane-{n}"))
        await patient.receive_type("message")

    def lane_backends() -> int:
        # Backends whose last statement was the send's (not this look-up, whose text
        # names it too, nor a pooled connection that ran this look-up before).
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND strpos(query, 'WITH chat AS') > 0"
                " AND strpos(query, 'pg_stat_activity') = 0"
            )
            return cursor.fetchone()[0]

    assert await db(lane_backends)() == 1  # one consultation: one lane, one connection
    lanes.close_all()

    async def gone() -> bool:  # the backend ends once it sees the socket closed
        for _ in range(200):
            if await db(lane_backends)() == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    assert await gone()
