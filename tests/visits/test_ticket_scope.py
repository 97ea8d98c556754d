"""Websocket tickets bound to one consultation: a join link opens its one visit, sockets
included (POST ws-ticket, the ASGI middleware and the consumer, on the real application).

A session from a join link gets tickets for the visits of its grant only, each bound to
one visit; a bound ticket opens that visit's socket and is refused (4403) on any other.
Bearer-token clients may still ask for an unbound ticket (no body), which opens any of
their consultations, or bind one themselves.
"""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from tests.conftest import PASSWORD
from tests.messaging.conftest import make_consultation, ws_path
from visits import links

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.redis]

db = database_sync_to_async
JSON = "application/json"
TICKET = "/api/v1/ws-ticket"


@pytest.fixture
def other_visit(chat):
    """Another visit of the same patient, with the same provider."""
    return make_consultation(patient=chat.patient, provider=chat.provider, hours=3)


def link_session(consultation, user) -> Client:
    """A browser session opened by the user's join link to this visit."""
    client = Client(enforce_csrf_checks=True)
    url = links.join_url(consultation=consultation, user=user)
    response = client.get(url.removeprefix("http://127.0.0.1:8000"))
    assert response.status_code == 302, response.content
    return client


def ask(client: Client, body=None):
    """POST ws-ticket from a visit page session (with its CSRF token)."""
    return client.post(
        TICKET,
        data="" if body is None else json.dumps(body),
        content_type=JSON,
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def ticket_of(response) -> str:
    assert response.status_code == 200, response.content
    return response.json()["ticket"]


async def test_a_link_sessions_ticket_opens_its_visit_and_not_the_users_other(
    chat, other_visit, sockets
):
    def issue():
        client = link_session(chat.consultation, chat.patient)
        return [ticket_of(ask(client, {"consultation": chat.consultation.pk})) for _ in "ab"]

    elsewhere, own = await db(issue)()
    # The patient is in the other visit too: only the ticket's binding refuses it.
    refused = await sockets(ws_path(other_visit.pk, ticket=elsewhere, after=0))
    assert await refused.closed_with() == 4403
    opened = await sockets(ws_path(chat.consultation.pk, ticket=own))
    assert await opened.nothing()


def test_a_link_session_gets_no_ticket_for_another_visit_nor_an_unbound_one(
    chat, other_visit, outsiders
):
    client = link_session(chat.consultation, chat.patient)
    other = ask(client, {"consultation": other_visit.pk})
    assert other.status_code == 404, other.content
    assert other.json()["error"]["code"] == "not_found"
    # Not the patient's at all: the same 404.
    stranger = make_consultation(patient=outsiders["patient"], provider=chat.provider, hours=7)
    assert ask(client, {"consultation": stranger.pk}).status_code == 404
    unbound = ask(client)
    assert unbound.status_code == 400, unbound.content
    assert unbound.json()["error"]["code"] == "invalid"
    assert list(unbound.json()["error"]["fields"]) == ["consultation"]
    for bad in ({"consultation": "x"}, {"consultation": 0}, {"consultation": 2**64}, [1]):
        response = ask(client, bad)
        assert response.status_code == 400, (bad, response.content)
    # Still CSRF-protected before anything else.
    assert Client(enforce_csrf_checks=True).post(TICKET, content_type=JSON).status_code == 401


def test_a_session_with_two_links_gets_tickets_for_those_two_only(chat, other_visit):
    client = link_session(chat.consultation, chat.patient)
    other_link = links.join_url(consultation=other_visit, user=chat.patient)
    assert client.get(other_link.removeprefix("http://127.0.0.1:8000")).status_code == 302
    for consultation_id in (chat.consultation.pk, other_visit.pk):
        assert ticket_of(ask(client, {"consultation": consultation_id}))
    third = make_consultation(patient=chat.patient, provider=chat.provider, hours=5)
    assert ask(client, {"consultation": third.pk}).status_code == 404


async def test_a_bearer_clients_unbound_ticket_still_opens_any_of_its_consultations(
    chat, other_visit, token_client, sockets
):
    def issue():
        client = token_client(chat.patient)
        return [ticket_of(client.post(TICKET)) for _ in "ab"]

    first, second = await db(issue)()
    for consultation_id, ticket in ((chat.consultation.pk, first), (other_visit.pk, second)):
        socket = await sockets(ws_path(consultation_id, ticket=ticket))
        assert await socket.nothing()


async def test_a_bearer_clients_bound_ticket_opens_that_consultation_only(
    chat, other_visit, token_client, outsiders, sockets
):
    def issue():
        client = token_client(chat.provider)
        body = {"consultation": chat.consultation.pk}
        stranger = make_consultation(patient=outsiders["patient"], provider=outsiders["provider"])
        assert client.post(TICKET, {"consultation": stranger.pk}, format="json").status_code == 404
        return [ticket_of(client.post(TICKET, body, format="json")) for _ in "ab"]

    own, elsewhere = await db(issue)()
    opened = await sockets(ws_path(chat.consultation.pk, ticket=own))
    assert await opened.nothing()
    refused = await sockets(ws_path(other_visit.pk, ticket=elsewhere))
    assert await refused.closed_with() == 4403


async def test_a_full_sign_in_session_may_bind_its_ticket_or_not(chat, other_visit, sockets):
    def issue():
        client = Client(enforce_csrf_checks=True)
        form = client.get("/visit/sign-in/")
        signed_in = client.post(
            "/visit/sign-in/",
            {
                "email": chat.patient.email,
                "password": PASSWORD,
                "csrfmiddlewaretoken": form.cookies["csrftoken"].value,
            },
        )
        assert signed_in.status_code == 302, signed_in.content
        return ticket_of(ask(client)), ticket_of(ask(client, {"consultation": other_visit.pk}))

    unbound, bound = await db(issue)()
    socket = await sockets(ws_path(other_visit.pk, ticket=unbound))
    assert await socket.nothing()
    refused = await sockets(ws_path(chat.consultation.pk, ticket=bound))
    assert await refused.closed_with() == 4403
