"""A ticket handshake reads no database: the ticket carries its user, one Redis script takes
it exactly once and sees whether the user's credentials were revoked since it was issued."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from accounts import services as account_services
from accounts.models import User
from messaging import tickets
from messaging.middleware import ChatAuthMiddleware
from tests.messaging.conftest import issue_ticket, ws_path

db = database_sync_to_async


def ticket_scope(raw: str) -> dict:
    return {"type": "websocket", "query_string": f"ticket={raw}".encode(), "headers": []}


async def test_a_ticket_authenticates_a_socket_without_the_database():
    # No django_db mark: any query (in any thread) fails this test.
    user = User(pk=4242, email="nodb@example.test", role="patient", is_active=True)
    raw = tickets.ticket_store(user_id=user.pk, token_id=None, consultation_id=7, user=user)
    scope = ticket_scope(raw)

    authenticated, error = await ChatAuthMiddleware(None).authenticate(scope)

    assert error is None
    assert authenticated.pk == 4242 and authenticated.email == "nodb@example.test"
    assert "password" not in authenticated.__dict__  # the hash never travels with a ticket
    assert scope["ticket_consultation"] == 7
    # Used: a second handshake with it is refused.
    again, error = await ChatAuthMiddleware(None).authenticate(ticket_scope(raw))
    assert not again.is_authenticated and error == "bad_ticket"


async def test_racing_handshakes_take_a_ticket_once():
    user = User(pk=4243, email="race@example.test", role="patient", is_active=True)
    raw = tickets.ticket_store(user_id=user.pk, token_id=None, user=user)

    taken = await asyncio.gather(*(tickets.aticket_take(raw=raw) for _ in range(20)))

    assert [binding["user_id"] for binding in taken if binding is not None] == [4243]


@pytest.mark.django_db(transaction=True)
def test_revoked_credentials_refuse_the_tickets_issued_before(patient):
    _raw, token = account_services.token_issue(user=patient)
    from messaging import services

    before = services.ws_ticket_issue(user=patient, token=token)
    unbound_before = tickets.ticket_store(user_id=patient.pk, token_id=None, user=patient)

    account_services.user_tokens_revoke_all(user=patient)  # a password change, say

    assert tickets.ticket_take(raw=before) is None
    assert tickets.ticket_take(raw=unbound_before) is None
    # Tickets issued afterwards (a new sign-in) work.
    _raw, fresh = account_services.token_issue(user=patient)
    after = services.ws_ticket_issue(user=patient, token=fresh)
    assert tickets.ticket_take(raw=after)["user"].pk == patient.pk


@pytest.mark.django_db(transaction=True)
def test_a_ticket_of_a_token_revoked_before_it_was_issued_does_not_work(patient):
    _raw, token = account_services.token_issue(user=patient)
    account_services.token_revoke(token=token)
    from messaging import services

    assert tickets.ticket_take(raw=services.ws_ticket_issue(user=patient, token=token)) is None


@pytest.mark.django_db(transaction=True)
async def test_a_socket_opened_with_a_revoked_ticket_closes_4401(chat, sockets):
    raw = await db(issue_ticket)(chat.patient)
    await db(account_services.user_tokens_revoke_all)(user=chat.patient)

    socket = await sockets(ws_path(chat.consultation.pk, ticket=raw))

    assert await socket.closed_with() == 4401
