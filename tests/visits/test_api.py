"""The call API (POST/DELETE/GET consultations/{id}/call): states, permissions, facts,
TURN credentials, audit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time

import pytest
from django.db import connection

from consultations.models import Consultation, ConsultationStatus
from medease.models import AuditEvent
from tests.messaging.conftest import make_consultation
from tests.visits.conftest import TURN_SECRET
from visits.models import Call, CallParticipant

pytestmark = pytest.mark.django_db


def url(consultation) -> str:
    return f"/api/v1/consultations/{consultation.pk}/call"


def stays(call: dict) -> list[tuple[int, bool]]:
    """(user, still in) of each stay, in order."""
    return [(p["user"], p["left_at"] is None) for p in call["participants"]]


def test_patient_then_provider_then_leaving(chat, token_client):
    patient, provider = token_client(chat.patient), token_client(chat.provider)
    consultation = chat.consultation

    assert patient.get(url(consultation)).status_code == 404  # nobody joined yet

    joined = patient.post(url(consultation))
    assert joined.status_code == 200, joined.content
    call = joined.json()["call"]
    assert call["consultation"] == consultation.pk
    assert call["status"] == "waiting"
    assert stays(call) == [(chat.patient.pk, True)]
    assert call["started_at"] is None and call["ended_at"] is None
    assert joined.json()["ice_servers"] == []  # no TURN configured: the embedded default
    assert "no-store" in joined["Cache-Control"]
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED  # a patient does not start it
    assert consultation.patient_joined_at is not None and consultation.provider_joined_at is None

    call = provider.post(url(consultation)).json()["call"]
    assert call["status"] == "active"
    assert call["started_at"] is not None
    consultation.refresh_from_db()
    # The provider joining starts the scheduled consultation, and the fact is recorded.
    assert consultation.status == ConsultationStatus.IN_PROGRESS
    assert consultation.started_at is not None
    assert consultation.provider_joined_at is not None

    assert patient.delete(url(consultation)).status_code == 204
    call = provider.get(url(consultation)).json()["call"]
    assert call["status"] == "waiting"
    assert stays(call) == [(chat.patient.pk, False), (chat.provider.pk, True)]

    # Rejoining is allowed: a new stay; the first join's fact keeps its time.
    first_patient_join = consultation.patient_joined_at
    call = patient.post(url(consultation)).json()["call"]
    assert call["status"] == "active"
    assert stays(call) == [
        (chat.patient.pk, False),
        (chat.provider.pk, True),
        (chat.patient.pk, True),
    ]
    consultation.refresh_from_db()
    assert consultation.patient_joined_at == first_patient_join

    assert patient.delete(url(consultation)).status_code == 204
    assert provider.delete(url(consultation)).status_code == 204
    call = patient.get(url(consultation)).json()["call"]
    assert call["status"] == "ended"
    assert call["ended_at"] is not None
    assert all(p["left_at"] is not None for p in call["participants"])
    # Leaving again changes nothing and is still fine.
    assert patient.delete(url(consultation)).status_code == 204


def test_joining_twice_keeps_one_stay(chat, token_client):
    patient = token_client(chat.patient)
    patient.post(url(chat.consultation))
    call = patient.post(url(chat.consultation)).json()["call"]
    assert stays(call) == [(chat.patient.pk, True)]


def test_staff_read_but_do_not_join(chat, token_client):
    token_client(chat.patient).post(url(chat.consultation))
    staff = token_client(chat.staff)
    answer = staff.get(url(chat.consultation))
    assert answer.status_code == 200
    assert answer.json()["call"]["status"] == "waiting"
    refused = staff.post(url(chat.consultation))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_participant"
    assert staff.delete(url(chat.consultation)).status_code == 403


def test_outsiders_get_404(chat, outsiders, token_client):
    token_client(chat.patient).post(url(chat.consultation))
    for user in outsiders.values():
        client = token_client(user)
        for method in ("get", "post", "delete"):
            answer = getattr(client, method)(url(chat.consultation))
            assert answer.status_code == 404, (user.role, method, answer.content)
    assert CallParticipant.objects.count() == 1


@pytest.mark.parametrize(
    "status",
    [ConsultationStatus.COMPLETED, ConsultationStatus.CANCELLED, ConsultationStatus.NO_SHOW],
)
def test_closed_consultation_answers_409(chat, token_client, status):
    closed = make_consultation(patient=chat.patient, provider=chat.provider, status=status, hours=5)
    answer = token_client(chat.patient).post(url(closed))
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "consultation_closed"
    assert not Call.objects.filter(consultation=closed).exists()


def test_in_progress_consultation_can_be_joined(chat, token_client):
    started = make_consultation(
        patient=chat.patient, provider=chat.provider, status=ConsultationStatus.IN_PROGRESS, hours=3
    )
    call = token_client(chat.provider).post(url(started)).json()["call"]
    assert call["status"] == "waiting"


def test_joining_is_audited(chat, token_client):
    token_client(chat.patient).post(url(chat.consultation))
    call = Call.objects.get(consultation=chat.consultation)
    event = AuditEvent.objects.get(object_type="call", action="create")
    assert event.user_id == chat.patient.pk
    assert event.object_id == str(call.pk)
    assert event.patient_id == chat.patient.pk
    assert event.organization_id == chat.consultation.organization_id


def test_turn_credentials_in_the_rest_form(chat, token_client, turn):
    before = int(time.time())
    answer = token_client(chat.patient).post(url(chat.consultation))
    after = int(time.time())
    [server] = answer.json()["ice_servers"]
    assert server["urls"] == turn.TURN_URLS
    expiry, user_id = server["username"].split(":")
    assert user_id == str(chat.patient.pk)
    assert before + 3600 <= int(expiry) <= after + 3600
    expected = base64.b64encode(
        hmac.new(TURN_SECRET.encode(), server["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert server["credential"] == expected


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_first_joins_at_once_make_one_call(chat, token_client):
    """Patient and provider press "join" together: one call, both in, active, and the
    consultation started once. The database decides (row locks, the unique index)."""
    clients = {
        chat.patient.pk: token_client(chat.patient),
        chat.provider.pk: token_client(chat.provider),
    }
    barrier = threading.Barrier(len(clients))
    answers: dict[int, int] = {}

    def join(user_id: int) -> None:
        try:
            barrier.wait(timeout=10)
            answers[user_id] = clients[user_id].post(url(chat.consultation)).status_code
        finally:
            connection.close()

    threads = [threading.Thread(target=join, args=(user_id,)) for user_id in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == {user_id: 200 for user_id in clients}
    call = Call.objects.get(consultation=chat.consultation)
    assert call.status == "active"
    assert sorted(call.participants.values_list("user_id", flat=True)) == sorted(clients)
    consultation = Consultation.objects.get(pk=chat.consultation.pk)
    assert consultation.status == ConsultationStatus.IN_PROGRESS
