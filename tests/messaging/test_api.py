"""Chat REST API: history, send, read, ws-ticket; privacy, idempotency, query counts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from consultations.models import Consultation, ConsultationStatus
from medease.models import AuditEvent
from messaging import services, tickets
from messaging.models import Message, ReadMarker

pytestmark = pytest.mark.django_db


def url(chat, tail="messages"):
    return f"/api/v1/consultations/{chat.consultation.pk}/{tail}"


def fill(chat, count, sender=None):
    return [
        services.message_send(
            consultation=chat.consultation,
            sender=sender or (chat.patient if n % 2 else chat.provider),
            body=f"message {n}",
            client_id=f"fill-{n}",
        )[0]
        for n in range(count)
    ]


# --- Sending ---------------------------------------------------------------------------


def test_send_is_201_then_200_with_the_same_message(chat, token_client):
    client = token_client(chat.patient)
    first = client.post(url(chat), {"body": "Hi doctor", "client_id": "abc-1"}, format="json")
    assert first.status_code == 201, first.content
    body = first.json()
    assert set(body) >= {"id", "consultation", "sender", "body", "client_id", "created_at"}
    assert (body["consultation"], body["sender"], body["body"], body["client_id"]) == (
        chat.consultation.pk,
        chat.patient.pk,
        "Hi doctor",
        "abc-1",
    )
    again = client.post(url(chat), {"body": "Hi doctor", "client_id": "abc-1"}, format="json")
    assert again.status_code == 200
    assert again.json() == body
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"body": "", "client_id": "x"},
        {"body": "x" * 10_001, "client_id": "x"},
        {"body": "a\x00b", "client_id": "x"},
        {"body": "hi"},
        {"client_id": "x"},
        {"body": "hi", "client_id": ""},
        {"body": ["list"], "client_id": "x"},
    ],
)
def test_bad_sends_are_400(chat, token_client, payload):
    response = token_client(chat.patient).post(url(chat), payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"


def test_outsiders_get_404_everywhere(chat, outsiders, token_client):
    services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="private", client_id="p"
    )
    for user in outsiders.values():
        client = token_client(user)
        assert client.get(url(chat)).status_code == 404
        response = client.post(url(chat), {"body": "hi", "client_id": "x"}, format="json")
        assert response.status_code == 404
        assert client.post(url(chat, "read"), {"message_id": 1}, format="json").status_code == 404
    assert Message.objects.count() == 1


def test_unknown_consultation_is_404(chat, token_client):
    response = token_client(chat.patient).get("/api/v1/consultations/999999/messages")
    assert response.status_code == 404


def test_org_staff_read_history_but_do_not_send(chat, token_client):
    fill(chat, 2)
    client = token_client(chat.staff)
    assert len(client.get(url(chat)).json()["results"]) == 2
    response = client.post(url(chat), {"body": "hi", "client_id": "s"}, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    "status",
    [ConsultationStatus.COMPLETED, ConsultationStatus.CANCELLED, ConsultationStatus.NO_SHOW],
)
def test_closed_consultation_history_readable_send_409(chat, token_client, status):
    fill(chat, 3)
    Consultation.objects.filter(pk=chat.consultation.pk).update(status=status)
    client = token_client(chat.patient)
    assert len(client.get(url(chat)).json()["results"]) == 3
    response = client.post(url(chat), {"body": "late", "client_id": "late"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "consultation_closed"


def test_sends_are_rate_limited_per_user(chat, token_client, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("3/m", True)}
    client = token_client(chat.patient)
    for n in range(3):
        response = client.post(url(chat), {"body": "x", "client_id": f"r{n}"}, format="json")
        assert response.status_code == 201
    response = client.post(url(chat), {"body": "x", "client_id": "r3"}, format="json")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1


# --- History ---------------------------------------------------------------------------


def test_history_pages_newest_first_page_in_id_order(chat, token_client):
    messages = fill(chat, 7)
    ids = [m.pk for m in messages]
    client = token_client(chat.patient)

    page = client.get(url(chat), {"limit": 3}).json()
    assert [m["id"] for m in page["results"]] == ids[-3:]
    assert page["next"].startswith("http://testserver/")
    assert f"before={ids[-3]}" in page["next"]

    older = client.get(page["next"]).json()
    assert [m["id"] for m in older["results"]] == ids[-6:-3]
    oldest = client.get(older["next"]).json()
    assert [m["id"] for m in oldest["results"]] == ids[:1]
    assert oldest["next"] is None


def test_history_after_walks_forward(chat, token_client):
    ids = [m.pk for m in fill(chat, 5)]
    client = token_client(chat.provider)
    page = client.get(url(chat), {"after": ids[0], "limit": 2}).json()
    assert [m["id"] for m in page["results"]] == ids[1:3]
    assert f"after={ids[2]}" in page["next"]
    rest = client.get(page["next"]).json()
    assert [m["id"] for m in rest["results"]] == ids[3:5]
    assert rest["next"] is None
    assert client.get(url(chat), {"after": ids[-1]}).json() == {"results": [], "next": None}


def test_history_after_and_before_bound_both_ends(chat, token_client):
    ids = [m.pk for m in fill(chat, 6)]
    page = token_client(chat.patient).get(url(chat), {"after": ids[0], "before": ids[4]}).json()
    assert [m["id"] for m in page["results"]] == ids[1:4]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": "ten"}, {"after": -1}, {"before": 0}, {"after": 2**64}],
)
def test_bad_history_parameters_are_400(chat, token_client, params):
    response = token_client(chat.patient).get(url(chat), params)
    assert response.status_code == 400


def test_limit_is_capped_at_100(chat, token_client):
    fill(chat, 101)
    page = token_client(chat.patient).get(url(chat), {"limit": 500}).json()
    assert len(page["results"]) == 100 and page["next"] is not None


def test_history_query_count_is_constant(chat, token_client):
    fill(chat, 120)
    client = token_client(chat.patient)
    client.get("/api/v1/me")  # warm the token cache: count the steady-state path
    counts = {}
    for limit in (1, 20, 100):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url(chat), {"limit": limit})
        assert response.status_code == 200 and len(response.json()["results"]) == limit
        counts[limit] = len(queries)
    assert counts[1] == counts[20] == counts[100], counts
    # Consultation and page in one statement on PostgreSQL, two elsewhere (the page tells
    # whether any message has files: none here, so no attachment query), and the audit row
    # (the user comes with the token).
    assert counts[1] == (2 if connection.vendor == "postgresql" else 3), counts


def test_history_reads_are_audited(chat, token_client):
    fill(chat, 2)
    token_client(chat.provider).get(url(chat))
    event = AuditEvent.objects.get(object_type="consultation.messages")
    assert (event.user_id, event.action, event.object_id, event.patient_id) == (
        chat.provider.pk,
        "read",
        str(chat.consultation.pk),
        chat.patient.pk,
    )


def test_deleted_messages_keep_their_place_not_their_text(chat, token_client):
    from django.utils import timezone

    message = fill(chat, 1)[0]
    Message.objects.filter(pk=message.pk).update(deleted_at=timezone.now())
    result = token_client(chat.patient).get(url(chat)).json()["results"][0]
    assert result["id"] == message.pk and result["body"] == "" and result["deleted_at"]


# --- Read markers and unread counts ----------------------------------------------------


def test_read_is_204_and_moves_the_marker_forward_only(chat, token_client):
    messages = fill(chat, 4, sender=chat.provider)
    client = token_client(chat.patient)
    response = client.post(url(chat, "read"), {"message_id": messages[2].pk}, format="json")
    assert response.status_code == 204
    client.post(url(chat, "read"), {"message_id": messages[0].pk}, format="json")
    marker = ReadMarker.objects.get(user=chat.patient, consultation=chat.consultation)
    assert marker.last_read_message_id == messages[2].pk


@pytest.mark.parametrize("message_id", [0, -1, "x", None, 2**63, 999_999])
def test_read_of_no_such_message_is_400(chat, token_client, message_id):
    fill(chat, 1)
    response = token_client(chat.patient).post(
        url(chat, "read"), {"message_id": message_id}, format="json"
    )
    assert response.status_code == 400


def test_unread_count_on_consultation_detail_and_dashboard(chat, token_client):
    messages = fill(chat, 3, sender=chat.provider)
    client = token_client(chat.patient)
    detail = client.get(f"/api/v1/consultations/{chat.consultation.pk}")
    assert detail.status_code == 200 and detail.json()["unread_count"] == 3
    client.post(url(chat, "read"), {"message_id": messages[1].pk}, format="json")
    assert client.get(f"/api/v1/consultations/{chat.consultation.pk}").json()["unread_count"] == 1
    dashboard = client.get("/api/v1/dashboard")
    assert dashboard.status_code == 200
    assert dashboard.json()["unread_total"] == 1
    upcoming = [c for c in dashboard.json()["upcoming"] if c["id"] == chat.consultation.pk]
    assert upcoming and upcoming[0]["unread_count"] == 1
    # The provider wrote them: nothing unread for them.
    provider_detail = token_client(chat.provider).get(
        f"/api/v1/consultations/{chat.consultation.pk}"
    )
    assert provider_detail.json()["unread_count"] == 0


# --- Tickets ---------------------------------------------------------------------------


def test_ws_ticket_is_single_use_and_bound_to_the_user(chat, token_client):
    response = token_client(chat.patient).post("/api/v1/ws-ticket")
    assert response.status_code == 200
    ticket = response.json()["ticket"]
    assert len(ticket) >= 40 and response.json()["expires_in"] == 30
    binding = tickets.ticket_take(raw=ticket)
    assert binding["user_id"] == chat.patient.pk and binding["token_id"]
    assert tickets.ticket_take(raw=ticket) is None


def test_ws_ticket_needs_authentication(api):
    assert api.post("/api/v1/ws-ticket").status_code == 401


def test_ws_tickets_expire(chat, settings, time_machine):
    from django.core.cache import caches
    from django.utils import timezone

    time_machine.move_to(timezone.now(), tick=False)
    raw = services.ws_ticket_issue(user=chat.patient)
    cache = caches["ratelimit"]
    key = tickets._key(raw)
    if hasattr(cache, "ttl"):
        assert 0 < cache.ttl(key) <= settings.MESSAGING_TICKET_TTL_SECONDS
    else:
        time_machine.shift(settings.MESSAGING_TICKET_TTL_SECONDS + 1)
        assert tickets.ticket_take(raw=raw) is None
