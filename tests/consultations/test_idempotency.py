"""Idempotency-Key on POST consultations: a retry of the same request replays the first
booking; the same key with a different body is a 409, never the first booking's 200."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from consultations.models import Consultation

pytestmark = pytest.mark.django_db

KEY = {"Idempotency-Key": "book-7c1e-once"}


def post(client, body: dict, headers=KEY):
    return client.post("/api/v1/consultations", body, format="json", headers=headers)


def test_the_same_body_replays_the_first_booking(token_client, patient, provider, make_slot):
    slot = make_slot(provider)
    client = token_client(patient)
    first = post(client, {"slot": slot.pk, "reason": "Sore throat"})
    again = post(client, {"slot": slot.pk, "reason": "Sore throat"})
    assert first.status_code == 201, first.content
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert Consultation.objects.count() == 1


@pytest.mark.parametrize(
    "second",
    [
        {"reason": "Something else entirely"},
        {"reason": ""},
        {},  # reason left out: the default, not the first request's reason
    ],
    ids=["other-reason", "blank-reason", "no-reason"],
)
def test_the_same_key_with_another_reason_is_409(
    token_client, patient, provider, make_slot, second
):
    slot = make_slot(provider)
    client = token_client(patient)
    first = post(client, {"slot": slot.pk, "reason": "Sore throat"})
    assert first.status_code == 201, first.content
    response = post(client, {"slot": slot.pk, **second})
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["message"] and error["fields"] == {}
    stored = Consultation.objects.get()
    assert stored.reason == "Sore throat"  # the first booking is untouched


def test_the_same_key_with_another_slot_is_409(token_client, patient, provider, make_slot):
    slot, other = make_slot(provider, hours=24), make_slot(provider, hours=48)
    client = token_client(patient)
    assert post(client, {"slot": slot.pk, "reason": "Checkup"}).status_code == 201
    response = post(client, {"slot": other.pk, "reason": "Checkup"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert Consultation.objects.count() == 1


def test_a_replay_after_the_slot_started_is_the_first_booking(
    token_client, patient, provider, make_slot
):
    """The key is looked up when something refuses the request (here: the slot has begun),
    so a late retry still gets its booking, not a 409."""
    slot = make_slot(provider, hours=0.1)  # well inside the token's idle lifetime
    client = token_client(patient)
    first = post(client, {"slot": slot.pk, "reason": "Checkup"})
    assert first.status_code == 201, first.content
    with time_machine.travel(slot.start + timedelta(minutes=1)):
        again = post(client, {"slot": slot.pk, "reason": "Checkup"})
        fresh = post(client, {"slot": slot.pk, "reason": "Checkup"}, headers={})
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert fresh.status_code == 409
    assert fresh.json()["error"]["code"] == "slot_unavailable"


def test_the_same_key_with_an_unknown_slot_is_409(token_client, patient, provider, make_slot):
    client = token_client(patient)
    assert post(client, {"slot": make_slot(provider).pk, "reason": ""}).status_code == 201
    response = post(client, {"slot": 2**31, "reason": ""})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    unknown = post(client, {"slot": 2**31, "reason": ""}, headers={"Idempotency-Key": "new-1"})
    assert unknown.status_code == 400


def test_a_key_used_by_another_patient_books_anew(
    token_client, patient, other_patient, provider, make_slot
):
    """Keys are per patient: the same key from someone else is a booking of their own."""
    first = post(token_client(patient), {"slot": make_slot(provider).pk, "reason": ""})
    second = post(token_client(other_patient), {"slot": make_slot(provider, hours=30).pk})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
