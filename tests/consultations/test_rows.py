"""The hand-built consultation body (``serializers.consultation_rows``) is exactly
``ConsultationOutput``'s JSON: same keys in the same order, same values, datetimes in the
active timezone, ``provider_notes`` for clinicians only. The list, detail, dashboards and
writes answer with it, and the OpenAPI schema still describes ``ConsultationOutput``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from accounts.models import Role
from consultations import serializers, services
from consultations.models import Consultation
from consultations.serializers import (
    ConsultationOutput,
    consultation_columns,
    consultation_rows,
    consultation_values,
)
from tests.consultations.conftest import in_hours

pytestmark = pytest.mark.django_db

TIMEZONES = ("UTC", "America/New_York", "Asia/Kolkata")


@pytest.fixture
def varied(patient, provider, staff, make_slot, book):
    """Consultations in every shape the body has: plain, cancelled with a reason, the
    reschedule that replaced it, checked in, walk-in, and one with every timestamp and notes
    (microseconds included)."""
    plain = book(patient, make_slot(provider, hours=30), reason="Checkup ünïcode")
    moved = book(patient, make_slot(provider, hours=40), reason="")
    rescheduled = services.consultation_reschedule(
        consultation=moved, actor=patient, slot_id=make_slot(provider, hours=50).pk
    )
    cancelled = book(patient, make_slot(provider, hours=60))
    services.consultation_cancel(consultation=cancelled, actor=patient, reason="Travel")
    arrived = book(patient, make_slot(provider, start=in_hours(0.25)))
    services.consultation_check_in(consultation=arrived, actor=staff)
    services.queue_join(patient=patient, provider=provider, reason="Walk in")
    walk_in = services.queue_call_next(provider=provider, actor=provider)
    full = book(patient, make_slot(provider, hours=70))
    now = timezone.now()
    # Test data only: every timestamp at once, which no single lifecycle path sets.
    Consultation.objects.filter(pk=full.pk).update(
        started_at=now.replace(microsecond=123456),
        completed_at=now + timedelta(minutes=20),
        no_show_at=now + timedelta(minutes=21),
        cancelled_at=now + timedelta(minutes=22),
        checked_in_at=now - timedelta(minutes=5),
        provider_notes="Notes\nline two",
    )
    ids = [plain.pk, moved.pk, rescheduled.pk, cancelled.pk, arrived.pk, walk_in.pk, full.pk]
    return list(
        Consultation.objects.filter(pk__in=ids).select_related("patient", "provider").order_by("id")
    )


@pytest.mark.parametrize("tz", TIMEZONES)
@pytest.mark.parametrize("clinician", [False, True])
def test_rows_are_the_serializers_json(varied, tz, clinician):
    unread = {c.pk: n for n, c in enumerate(varied)}
    with timezone.override(ZoneInfo(tz)):
        expected = ConsultationOutput(
            varied, many=True, context={"unread_counts": unread, "clinician": clinician}
        ).data
        values = list(
            Consultation.objects.filter(pk__in=[c.pk for c in varied])
            .order_by("id")
            .values(*consultation_columns(clinician=clinician))
        )
        from_values = consultation_rows(values, unread_counts=unread, clinician=clinician)
        from_instances = consultation_rows(
            [consultation_values(c) for c in varied], unread_counts=unread, clinician=clinician
        )
    # json.dumps keeps key order: the order is part of what clients see.
    assert json.dumps(from_values) == json.dumps(expected)
    assert json.dumps(from_instances) == json.dumps(expected)
    assert ("provider_notes" in from_values[0]) is clinician
    assert {row["kind"] for row in expected} == {"booked", "walk_in"}


def test_missing_unread_counts_are_zero(varied):
    rows = consultation_rows([consultation_values(varied[0])], clinician=False)
    assert rows[0]["unread_count"] == 0


@pytest.mark.parametrize("role", [Role.PATIENT, Role.PROVIDER, Role.STAFF])
def test_list_and_detail_answer_the_serializers_json(
    token_client, varied, patient, provider, staff, role
):
    user = {Role.PATIENT: patient, Role.PROVIDER: provider, Role.STAFF: staff}[role]
    user.timezone = "America/New_York"
    user.save(update_fields=["timezone"])
    client = token_client(user)
    clinician = role != Role.PATIENT
    with timezone.override(ZoneInfo("America/New_York")):
        expected = ConsultationOutput(
            sorted(varied, key=lambda c: (c.scheduled_start, c.pk)),
            many=True,
            context={"unread_counts": {}, "clinician": clinician},
        ).data
    listed = client.get("/api/v1/consultations", {"limit": 100})
    assert listed.status_code == 200
    assert json.dumps(listed.json()["results"]) == json.dumps(expected)
    detail = client.get(f"/api/v1/consultations/{varied[-1].pk}")
    assert detail.status_code == 200
    assert json.dumps(detail.json()) == json.dumps(
        next(e for e in expected if e["id"] == varied[-1].pk)
    )


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC"])
def test_a_utc_zone_formats_as_the_general_path(zone):
    """The UTC shortcut gives ``_iso``'s text for values in any zone, with or without
    microseconds; other zones take the general path."""
    tz = ZoneInfo(zone)
    instant = datetime(2026, 3, 29, 0, 30, 5, 120000, tzinfo=UTC)
    values = [
        instant,
        instant.replace(microsecond=0),
        instant.astimezone(ZoneInfo("Asia/Kolkata")),
        instant.astimezone(ZoneInfo("America/New_York")).replace(microsecond=7),
        None,
    ]
    for fast in (serializers._formatter(tz), serializers._formatter(UTC)):
        assert fast is serializers._iso_utc
        assert [fast(v) for v in values] == [serializers._iso(v, tz) for v in values]
    assert fast(instant) == "2026-03-29T00:30:05.120000Z"
    kolkata = serializers._formatter(ZoneInfo("Asia/Kolkata"))
    assert kolkata is not serializers._iso_utc
    assert kolkata(instant) == "2026-03-29T06:00:05.120000+05:30"
