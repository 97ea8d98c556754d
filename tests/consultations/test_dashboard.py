"""The dashboard per role, its timezone handling, and its cache (invalidated by writes)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.cache import cache

from accounts.models import Role
from consultations import services
from consultations.models import Consultation, Slot

pytestmark = pytest.mark.django_db

# Ahead of the real clock (users and tokens are created now and must not be "future").
YEAR = datetime.now(UTC).year + 1
# 20:00 UTC on 1 June is already 05:00 on 2 June in Tokyo.
PINNED = datetime(YEAR, 6, 1, 20, 0, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")


def test_patient_dashboard_upcoming_and_queue(
    token_client, patient, provider, other_provider, make_slot, book
):
    later = book(patient, make_slot(provider, hours=48))
    sooner = book(patient, make_slot(other_provider, hours=3))
    cancelled = book(patient, make_slot(provider, hours=5))
    services.consultation_cancel(consultation=cancelled, actor=patient)
    services.queue_join(patient=patient, provider=provider)
    body = token_client(patient).get("/api/v1/dashboard").json()
    assert body["role"] == "patient"
    assert [c["id"] for c in body["upcoming"]] == [sooner.pk, later.pk]
    assert all(c["unread_count"] == 0 for c in body["upcoming"])
    assert body["unread_total"] == 0
    assert [(q["provider"], q["position"]) for q in body["queue"]] == [(provider.pk, 1)]
    # First in line with the provider free: no wait.
    assert body["queue"][0]["estimated_wait_minutes"] == 0


def test_patient_dashboard_estimates_the_wait_in_the_queue(
    token_client, patient, provider, make_user
):
    ahead = make_user(Role.PATIENT)
    services.queue_join(patient=ahead, provider=provider)
    services.queue_join(patient=patient, provider=provider)
    body = token_client(patient).get("/api/v1/dashboard").json()
    (entry,) = body["queue"]
    assert entry["position"] == 2
    # One consultation ahead, no history: the provider's consultation length (30 min).
    assert entry["estimated_wait_minutes"] == provider.provider_profile.consultation_minutes


def test_provider_dashboard_uses_the_providers_day(token_client, make_user, organization, patient):
    tokyo = make_user(Role.PROVIDER, organization=organization, timezone_name="Asia/Tokyo")

    def slot_at(hour_utc: int, day: int):
        start = datetime(YEAR, 6, day, hour_utc, 0, tzinfo=UTC)
        return Slot.objects.create(provider=tokyo, start=start, end=start.replace(minute=30))

    with time_machine.travel(PINNED, tick=False):
        early = services.consultation_book(patient=patient, slot_id=slot_at(21, 1).pk)[0]
        morning = services.consultation_book(patient=patient, slot_id=slot_at(1, 2).pk)[0]
        services.consultation_book(patient=patient, slot_id=slot_at(16, 2).pk)  # 3 June there
        services.consultation_start(consultation=morning, actor=tokyo)
        walker = make_user(Role.PATIENT)
        services.queue_join(patient=walker, provider=tokyo)
        body = token_client(tokyo).get("/api/v1/dashboard").json()
    assert body["role"] == "provider"
    assert body["date"] == f"{YEAR}-06-02"
    assert body["timezone"] == "Asia/Tokyo"
    assert [c["id"] for c in body["schedule"]] == [early.pk, morning.pk]
    assert body["schedule"][0]["scheduled_start"] == f"{YEAR}-06-02T06:00:00+09:00"
    assert body["counts"]["scheduled"] == 1
    assert body["counts"]["in_progress"] == 1
    assert body["queue_length"] == 1


def test_staff_dashboard_is_the_clinics_day(
    token_client, staff, provider, other_provider, patient, make_user, organization, make_slot, book
):
    colleague = make_user(Role.PROVIDER, organization=organization)
    with time_machine.travel(datetime(YEAR, 6, 1, 15, 0, tzinfo=NEW_YORK), tick=False):
        mine = book(patient, make_slot(provider, hours=1))
        theirs = book(patient, make_slot(colleague, hours=2))
        book(patient, make_slot(provider, hours=10))  # 01:00 tomorrow in New York
        book(patient, make_slot(other_provider, hours=1))  # another clinic
        services.queue_join(patient=make_user(Role.PATIENT), provider=colleague)
        body = token_client(staff).get("/api/v1/dashboard").json()
    assert body["role"] == "staff"
    assert body["date"] == f"{YEAR}-06-01"
    assert [c["id"] for c in body["consultations"]] == [mine.pk, theirs.pk]
    assert body["counts"]["scheduled"] == 2
    assert body["queue_length"] == 1
    assert body["queue_lengths"] == {str(colleague.pk): 1}


def test_dashboard_is_cached_and_invalidated_by_bookings(
    token_client, patient, provider, make_slot, book, django_capture_on_commit_callbacks
):
    client = token_client(patient)
    first = book(patient, make_slot(provider, hours=3))
    assert [c["id"] for c in client.get("/api/v1/dashboard").json()["upcoming"]] == [first.pk]
    # A write that bypasses the services is not seen: the answer comes from the cache.
    Consultation.objects.filter(pk=first.pk).update(reason="changed behind the cache")
    assert client.get("/api/v1/dashboard").json()["upcoming"][0]["reason"] == "Checkup"
    # A booking through the service invalidates the patient's dashboard after commit.
    with django_capture_on_commit_callbacks(execute=True):
        second = book(patient, make_slot(provider, hours=6))
    upcoming = client.get("/api/v1/dashboard").json()["upcoming"]
    assert [c["id"] for c in upcoming] == [first.pk, second.pk]
    assert upcoming[0]["reason"] == "changed behind the cache"


def test_queue_changes_invalidate_the_providers_dashboard(
    token_client, patient, provider, django_capture_on_commit_callbacks
):
    client = token_client(provider)
    assert client.get("/api/v1/dashboard").json()["queue_length"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        services.queue_join(patient=patient, provider=provider)
    assert client.get("/api/v1/dashboard").json()["queue_length"] == 1


def test_dashboard_works_when_the_cache_raises(token_client, staff, monkeypatch):
    client = token_client(staff)

    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    for method in ("get", "get_many", "set", "set_many", "add"):
        monkeypatch.setattr(cache, method, broken)
    response = client.get("/api/v1/dashboard")
    assert response.status_code == 200
    assert response.json()["role"] == "staff"
