"""GET notifications (own only, newest first, constant queries) and notification preferences."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from workers.models import Notification, NotificationKind, NotificationStatus

pytestmark = pytest.mark.django_db


def make_notifications(user, count: int, *, kind=NotificationKind.BOOKING_CONFIRMED):
    now = timezone.now()
    Notification.objects.bulk_create(
        Notification(
            user=user,
            kind=kind,
            dedupe_key=f"test:{user.pk}:{kind}:{index}",
            created_at=now - timedelta(minutes=count - index),
            status=NotificationStatus.SENT,
            sent_at=now,
        )
        for index in range(count)
    )


def test_lists_only_the_callers_notifications_newest_first(auth_client, patient, provider):
    make_notifications(patient, 3)
    make_notifications(provider, 2, kind=NotificationKind.CONSULTATION_CANCELLED)
    response = auth_client(patient).get("/api/v1/notifications")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"results", "next"}
    results = body["results"]
    assert len(results) == 3
    assert set(results[0]) == {"id", "kind", "channel", "status", "created_at", "sent_at"}
    ids = [item["id"] for item in results]
    assert ids == sorted(ids, reverse=True)
    mine = set(Notification.objects.filter(user=patient).values_list("pk", flat=True))
    assert set(ids) == mine
    assert {item["kind"] for item in results} == {"booking_confirmed"}
    assert results[0]["channel"] == "email"
    assert results[0]["status"] == "sent"


def test_staff_see_only_their_own_notifications(auth_client, patient, staff):
    from django.contrib.auth.models import AnonymousUser

    make_notifications(patient, 2)
    make_notifications(staff, 1, kind=NotificationKind.QUEUE_CALLED)
    staff.is_superuser = True  # the console's most powerful user: still only their own
    staff.save()
    assert staff.is_staff
    body = auth_client(staff).get("/api/v1/notifications").json()
    assert [item["kind"] for item in body["results"]] == [NotificationKind.QUEUE_CALLED]
    assert set(Notification.objects.visible_to(staff).values_list("user_id", flat=True)) == {
        staff.pk
    }
    assert not Notification.objects.visible_to(AnonymousUser()).exists()
    assert not Notification.objects.visible_to(None).exists()


def test_pages_with_a_cursor(auth_client, patient):
    make_notifications(patient, 5)
    client = auth_client(patient)
    first = client.get("/api/v1/notifications?limit=2").json()
    assert len(first["results"]) == 2
    assert first["next"].startswith("http://testserver/api/v1/notifications?")
    second = client.get(first["next"]).json()
    assert len(second["results"]) == 2
    assert first["results"][-1]["id"] > second["results"][0]["id"]


def test_needs_authentication(api):
    response = api.get("/api/v1/notifications")
    assert response.status_code == 401


def test_bad_limit_is_400(auth_client, patient):
    assert auth_client(patient).get("/api/v1/notifications?limit=zero").status_code == 400


def test_query_count_does_not_grow_with_the_page_size(auth_client, patient):
    make_notifications(patient, 120)
    client = auth_client(patient)
    client.get("/api/v1/me")  # warm the token cache: count the steady-state path
    counts = {}
    for limit in (1, 20, 100):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/api/v1/notifications?limit={limit}")
        assert response.status_code == 200
        assert len(response.json()["results"]) == limit
        counts[limit] = len(queries)
    assert counts[1] == counts[20] == counts[100], counts


def test_preferences_round_trip(auth_client, patient):
    client = auth_client(patient)
    assert client.get("/api/v1/notifications/preferences").json() == {
        "muted_kinds": [],
        "quiet_hours_start": None,
        "quiet_hours_end": None,
    }
    response = client.put(
        "/api/v1/notifications/preferences",
        {
            "muted_kinds": ["reminder_24h"],
            "quiet_hours_start": "22:00",
            "quiet_hours_end": "07:30",
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "muted_kinds": ["reminder_24h"],
        "quiet_hours_start": "22:00:00",
        "quiet_hours_end": "07:30:00",
    }
    # Partial: muting more leaves quiet hours as they were; nulls clear them.
    client.put("/api/v1/notifications/preferences", {"muted_kinds": []}, format="json")
    body = client.get("/api/v1/notifications/preferences").json()
    assert body["muted_kinds"] == [] and body["quiet_hours_start"] == "22:00:00"
    client.patch(
        "/api/v1/notifications/preferences",
        {"quiet_hours_start": None, "quiet_hours_end": None},
        format="json",
    )
    assert client.get("/api/v1/notifications/preferences").json()["quiet_hours_end"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"muted_kinds": ["not_a_kind"]},
        {"quiet_hours_start": "22:00"},
        {"quiet_hours_start": "22:00", "quiet_hours_end": "22:00"},
        {"quiet_hours_start": "25:00", "quiet_hours_end": "07:00"},
        {"muted_kinds": "reminder_1h"},
    ],
)
def test_preferences_reject_bad_input(auth_client, patient, body):
    response = auth_client(patient).put("/api/v1/notifications/preferences", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]
