"""History and send answers built without DRF's field-by-field serializing: the same JSON as
MessageOutput, the same parameters and visibility rules as before."""

from __future__ import annotations

import json
import secrets

import pytest
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from attachments.models import Attachment, AttachmentStatus
from consultations.selectors import consultation_get_for_user
from medease.exceptions import NotFound
from medease.models import AuditEvent
from messaging import selectors, services
from messaging.models import Message
from messaging.serializers import MessageOutput, message_payload

pytestmark = pytest.mark.django_db


def url(chat):
    return f"/api/v1/consultations/{chat.consultation.pk}/messages"


def as_json(data):
    return json.loads(json.dumps(data, cls=JSONEncoder))


def ready_file(chat, uploader) -> int:
    return Attachment.objects.create(
        uploader=uploader,
        consultation=chat.consultation,
        patient_id=chat.consultation.patient_id,
        organization_id=chat.consultation.organization_id,
        filename="scan.pdf",
        content_type="application/pdf",
        size=10,
        status=AttachmentStatus.READY,
        storage_key=f"attachments/test/{secrets.token_urlsafe(12)}",
    ).pk


def varied_chat(chat) -> list[Message]:
    """Plain, edited, deleted, and a message whose created_at has no microseconds."""
    sent = [
        services.message_send(
            consultation=chat.consultation,
            sender=chat.patient if n % 2 else chat.provider,
            body=f"message {n} ✓",
            client_id=f"v-{n}",
        )[0]
        for n in range(5)
    ]
    now = timezone.now()
    Message.objects.filter(pk=sent[1].pk).update(edited_at=now, body="edited")
    Message.objects.filter(pk=sent[2].pk).update(deleted_at=now)
    Message.objects.filter(pk=sent[3].pk).update(created_at=now.replace(microsecond=0))
    return list(Message.objects.filter(consultation=chat.consultation).order_by("id"))


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_history_json_is_message_outputs(chat, token_client, zone):
    messages = varied_chat(chat)
    with timezone.override(zone):
        expected = as_json(MessageOutput(messages, many=True, context={"attachments": {}}).data)
        answer = token_client(chat.patient).get(url(chat), {"limit": 50}).json()
    assert answer["results"] == expected
    assert answer["results"][2]["body"] == "" and answer["results"][2]["deleted_at"]
    assert answer["results"][1]["edited_at"] and answer["results"][1]["body"] == "edited"


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_websocket_payload_is_message_output(chat, zone):
    attachment_id = ready_file(chat, chat.patient)
    message, _ = services.message_send(
        consultation=chat.consultation,
        sender=chat.patient,
        body="with a file",
        client_id="f-1",
        attachment_ids=[attachment_id],
    )
    files = list(Attachment.objects.filter(pk=attachment_id))
    from attachments import output

    with timezone.override(zone):
        expected = MessageOutput(
            message, context={"attachments": {message.pk: output.metadata(files)}}
        ).data
        assert as_json(message_payload(message, files)) == as_json(expected)
        assert message_payload(message)["attachments"] == []


def test_a_deleted_message_hands_out_no_file_url_and_audits_none(chat, token_client):
    kept = ready_file(chat, chat.patient)
    gone = ready_file(chat, chat.patient)
    first, _ = services.message_send(
        consultation=chat.consultation,
        sender=chat.patient,
        body="kept",
        client_id="k",
        attachment_ids=[kept],
    )
    second, _ = services.message_send(
        consultation=chat.consultation,
        sender=chat.patient,
        body="gone",
        client_id="g",
        attachment_ids=[gone],
    )
    Message.objects.filter(pk=second.pk).update(deleted_at=timezone.now())
    results = token_client(chat.provider).get(url(chat)).json()["results"]
    by_id = {item["id"]: item for item in results}
    assert [a["id"] for a in by_id[first.pk]["attachments"]] == [kept]
    assert by_id[first.pk]["attachments"][0]["download_url"]
    assert by_id[second.pk]["attachments"] == [] and by_id[second.pk]["body"] == ""
    audited = set(
        AuditEvent.objects.filter(object_type="attachment").values_list("object_id", flat=True)
    )
    assert audited == {str(kept)}


@pytest.mark.parametrize(
    ("params", "count"),
    [
        ({}, 20),  # the default
        ({"limit": "7"}, 7),
        ({"limit": "7.0"}, 7),  # DRF's integer rules, through HistoryInput
        ({"limit": ""}, 20),  # empty: the default, as HistoryInput has it
        ({"limit": " 7"}, 7),
        ({"limit": "\uff17"}, 7),  # a fullwidth 7: not ASCII, so HistoryInput reads it
        ({"limit": "500"}, 100),  # capped
        ({"limit": "3", "after": "0"}, 3),
        ({"limit": "3", "unknown": "x"}, 3),
    ],
)
def test_history_parameters_read_as_before(chat, token_client, params, count):
    services_fill(chat, 120)
    response = token_client(chat.patient).get(url(chat), params)
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == count


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"after": str(2**63)},
        {"before": "0"},
        {"after": "x"},
    ],
)
def test_bad_history_parameters_are_the_serializers_400(chat, token_client, params):
    response = token_client(chat.patient).get(url(chat), params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) == set(params)


def services_fill(chat, count):
    for n in range(count):
        services.message_send(
            consultation=chat.consultation,
            sender=chat.patient if n % 2 else chat.provider,
            body=f"m{n}",
            client_id=f"fill-{n}",
        )


def test_chat_consultation_follows_consultation_visibility(chat, outsiders, make_user):
    from accounts.models import Role

    admin = make_user(Role.PATIENT)
    admin.is_superuser = True
    admin.save(update_fields=["is_superuser"])
    pk = chat.consultation.pk
    for user in (chat.patient, chat.provider, chat.staff, admin):
        found = selectors.chat_consultation(user=user, consultation_id=pk)
        full = consultation_get_for_user(user=user, consultation_id=pk)
        assert found == (
            full.pk,
            full.patient_id,
            full.provider_id,
            full.organization_id,
            full.status,
        )
    for user in outsiders.values():
        with pytest.raises(NotFound):
            selectors.chat_consultation(user=user, consultation_id=pk)
        with pytest.raises(NotFound):
            consultation_get_for_user(user=user, consultation_id=pk)
    with pytest.raises(NotFound):
        selectors.chat_consultation(user=chat.patient, consultation_id=pk + 10_000)


# --- Sending ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "body", "client_id"),
    [
        ({"body": "hi", "client_id": "c-1"}, "hi", "c-1"),
        ({"body": "hi", "client_id": "c-1", "attachments": []}, "hi", "c-1"),
        # MessageSendInput's rules, unchanged: numbers are text, client_id is trimmed.
        ({"body": 5, "client_id": 7}, "5", "7"),
        ({"body": "hi", "client_id": "  c-1 "}, "hi", "c-1"),
        ({"body": "  spaced  ", "client_id": "c-1", "other": 1}, "  spaced  ", "c-1"),
    ],
)
def test_sends_read_their_input_as_before(chat, token_client, payload, body, client_id):
    response = token_client(chat.patient).post(url(chat), payload, format="json")
    assert response.status_code == 201, response.content
    stored = Message.objects.get()
    assert (stored.body, stored.client_id) == (body, client_id)
    assert response.json() == as_json(MessageOutput(stored, context={"attachments": {}}).data)


@pytest.mark.parametrize(
    "payload",
    [
        # A lone surrogate (no encoding has it), as JSON escapes.
        '{"body": "a\\ud800b", "client_id": "c"}',
        '{"body": "hi", "client_id": "c\\ud800"}',
        {"body": "hi", "client_id": "c", "attachments": None},
        {"body": "hi", "client_id": "c", "attachments": "1"},
        {"body": "hi", "client_id": "c", "attachments": [0]},
        {"body": None, "client_id": "c"},
        {"body": "hi", "client_id": "   "},
        {"body": True, "client_id": "c"},
    ],
)
def test_odd_sends_are_400_not_500(chat, token_client, payload):
    client = token_client(chat.patient)
    if isinstance(payload, str):
        response = client.post(url(chat), payload, content_type="application/json")
    else:
        response = client.post(url(chat), payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"
    assert not Message.objects.exists()


def test_a_send_pins_its_queries(chat, token_client, django_assert_num_queries):
    """Consultation, lock with the client_id lookup, message, client_id, sender's marker,
    the offline recipient's notification claim, the create's audit row: 7, plus the
    savepoint pair the test's own transaction makes of the send's."""
    client = token_client(chat.patient)
    client.get("/api/v1/me")  # warm the token cache
    client.post(url(chat), {"body": "first", "client_id": "q-0"}, format="json")
    for n in range(1, 3):
        with django_assert_num_queries(9):
            response = client.post(url(chat), {"body": "m", "client_id": f"q-{n}"}, format="json")
        assert response.status_code == 201
    # A repeat: consultation, lock with the lookup, the stored message, its files (+2).
    with django_assert_num_queries(6):
        again = client.post(url(chat), {"body": "m", "client_id": "q-1"}, format="json")
    assert again.status_code == 200


def test_a_send_moves_markers_and_claims_notices_like_before(chat, token_client, notified):
    from messaging.models import ReadMarker

    client = token_client(chat.provider)
    ids = [
        client.post(url(chat), {"body": "m", "client_id": f"n-{n}"}, format="json").json()["id"]
        for n in range(3)
    ]
    markers = {m.user_id: m for m in ReadMarker.objects.filter(consultation=chat.consultation)}
    # The sender has read up to their last message; the offline patient was told once and
    # has read nothing.
    assert markers[chat.provider.pk].last_read_message_id == ids[-1]
    assert markers[chat.provider.pk].read_at is not None
    assert markers[chat.patient.pk].last_read_message_id == 0
    assert markers[chat.patient.pk].notified_at is not None
    assert notified == [(chat.patient.pk, chat.consultation.pk)]


def test_the_create_event_commits_with_the_message_or_not_at_all(chat):
    from messaging.audit import audit_message_created

    def audit_then_fail(message):
        audit_message_created(request=None, consultation=chat.consultation, message=message)
        assert AuditEvent.objects.filter(object_type="message").count() == 1
        raise RuntimeError("the process dies before commit")

    with pytest.raises(RuntimeError):
        services.message_send(
            consultation=chat.consultation,
            sender=chat.patient,
            body="hi",
            client_id="atomic-1",
            on_stored=audit_then_fail,
        )
    assert not Message.objects.exists()
    assert not AuditEvent.objects.filter(object_type="message").exists()
    # A repeat stores nothing and records nothing.
    seen = []
    services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="hi", client_id="atomic-2"
    )
    services.message_send(
        consultation=chat.consultation,
        sender=chat.patient,
        body="hi",
        client_id="atomic-2",
        on_stored=seen.append,
    )
    assert seen == []


@pytest.mark.postgres
@pytest.mark.parametrize("direction", ["ASC", "DESC"])
def test_the_page_query_walks_the_indexes(chat, direction):
    from django.db import connection

    sql = selectors._PAGE_SQL.format(bounds=" AND m.id > %s", direction=direction)
    with connection.cursor() as cursor:
        # Whether an ordered index walk exists, whatever tiny test tables cost: with sorts
        # and bitmap scans priced out, a plan that still sorts has no such walk.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute("EXPLAIN " + sql, [chat.consultation.pk, 0, 51])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_bitmapscan")
        cursor.execute("RESET enable_sort")
    # Each partition's (consultation_id, id) index in id order (no sort), and each row's
    # file check through the attachments' message index.
    assert "consultation_id_id_idx" in plan and "Sort  " not in plan, plan
    assert "attach_message_idx" in plan, plan


def test_history_and_send_answers_are_never_cached(chat, token_client):
    from django.http import HttpResponse
    from django.utils.cache import add_never_cache_headers

    reference = HttpResponse()
    add_never_cache_headers(reference)
    client = token_client(chat.patient)
    sent = client.post(url(chat), {"body": "hi", "client_id": "nc-1"}, format="json")
    history = client.get(url(chat))
    for response in (sent, history):
        assert response["Cache-Control"] == reference["Cache-Control"]
        assert response["Expires"]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("bounds", "bound", "direction"),
    [(" AND m.id > %s", 0, "ASC"), (" AND m.id < %s", 2**62, "DESC")],
)
def test_the_history_statement_pages_on_the_index(chat, bounds, bound, direction):
    """Consultation check and page in one statement: the page still walks the index in id
    order under its LIMIT (only the page's own rows are sorted, above it)."""
    from django.db import connection

    sql = selectors._HISTORY_SQL.format(
        bounds=bounds, direction=direction, scope=" AND c.patient_id = %s"
    )
    pk = chat.consultation.pk
    params = [pk, bound, 51, pk, chat.patient.pk]
    with connection.cursor() as cursor:
        # Whether an ordered index walk exists, whatever tiny test tables cost: with sorts
        # and bitmap scans priced out, a plan that still sorts has no such walk.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = [row[0] for row in cursor.fetchall()]
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_bitmapscan")
        cursor.execute("RESET enable_sort")
    text = "\n".join(plan)
    inner = text[text.index("Limit", text.index("Nested Loop")) :]
    # (A Sort node reads "Sort  (cost..."; Merge Append's "Sort Key" merges index orders.)
    assert "consultation_id_id_idx" in inner and "Sort  " not in inner, text
    assert "attach_message_idx" in inner, text
