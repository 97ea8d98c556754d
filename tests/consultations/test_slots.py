"""Slot materialization (DST in both directions, idempotency, availability changes) and the
slots API's cache: invalidated by bookings, cancellations and availability changes, and
never an error when the cache is down."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.cache import cache
from django.test import override_settings

from accounts.models import Role
from consultations import services
from consultations.models import Consultation, ConsultationStatus, Slot
from consultations.slotting import DayException, Window, local_instant, slot_times

pytestmark = pytest.mark.django_db

NEW_YORK = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
EVERY_DAY_9_TO_17 = [Window(day, time(9), time(17)) for day in range(7)]


def _local(slots, tz):
    return [start.astimezone(tz) for start, _end in slots]


# --- Pure arithmetic ------------------------------------------------------------------------


def test_spring_forward_week_keeps_wall_clock_hours():
    """US clocks jump 02:00 → 03:00 on Sunday 2026-03-08; a 9-to-5 day is unaffected in local
    time, and the UTC instants move by an hour across the change."""
    slots = list(
        slot_times(
            windows=EVERY_DAY_9_TO_17,
            exceptions=[],
            tz=NEW_YORK,
            first_day=date(2026, 3, 5),
            days=7,
            minutes=60,
        )
    )
    assert len(slots) == 7 * 8
    for start, end in slots:
        assert end - start == timedelta(minutes=60)
        assert 9 <= start.astimezone(NEW_YORK).hour <= 16
    by_day = {}
    for start in _local(slots, NEW_YORK):
        by_day.setdefault(start.date(), []).append(start.hour)
    assert all(hours == list(range(9, 17)) for hours in by_day.values())
    saturday = min(s for s, _ in slots if s.astimezone(NEW_YORK).date() == date(2026, 3, 7))
    sunday = min(s for s, _ in slots if s.astimezone(NEW_YORK).date() == date(2026, 3, 8))
    assert saturday.astimezone(UTC).hour == 14  # 09:00 EST = 14:00Z
    assert sunday.astimezone(UTC).hour == 13  # 09:00 EDT = 13:00Z


def test_spring_forward_night_window_skips_the_missing_hour():
    """A 00:00-04:00 window on the change night is three real hours: no slot at 02:xx."""
    slots = list(
        slot_times(
            windows=[Window(6, time(0), time(4))],  # Sunday
            exceptions=[],
            tz=NEW_YORK,
            first_day=date(2026, 3, 8),
            days=1,
            minutes=30,
        )
    )
    local = [s.strftime("%H:%M") for s in _local(slots, NEW_YORK)]
    assert local == ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30"]
    assert all(end - start == timedelta(minutes=30) for start, end in slots)
    assert slots[-1][1].astimezone(NEW_YORK).strftime("%H:%M") == "04:00"


def test_a_window_edge_inside_the_gap_moves_to_the_transition():
    assert local_instant(date(2026, 3, 8), time(2, 30), NEW_YORK) == datetime(
        2026, 3, 8, 7, 0, tzinfo=UTC
    )  # 03:00 EDT


def test_fall_back_night_window_has_the_repeated_hour_twice():
    """US clocks go 02:00 → 01:00 on Sunday 2026-11-01: 00:00-03:00 is four real hours."""
    slots = list(
        slot_times(
            windows=[Window(6, time(0), time(3))],
            exceptions=[],
            tz=NEW_YORK,
            first_day=date(2026, 11, 1),
            days=1,
            minutes=30,
        )
    )
    local = [s.strftime("%H:%M %Z") for s in _local(slots, NEW_YORK)]
    assert local == [
        "00:00 EDT",
        "00:30 EDT",
        "01:00 EDT",
        "01:30 EDT",
        "01:00 EST",
        "01:30 EST",
        "02:00 EST",
        "02:30 EST",
    ]
    starts = [start for start, _ in slots]
    assert all(b - a == timedelta(minutes=30) for a, b in pairwise(starts))


def test_fall_back_week_keeps_wall_clock_hours_in_paris():
    """EU clocks go back on Sunday 2026-10-25."""
    slots = list(
        slot_times(
            windows=EVERY_DAY_9_TO_17,
            exceptions=[],
            tz=PARIS,
            first_day=date(2026, 10, 22),
            days=7,
            minutes=30,
        )
    )
    assert len(slots) == 7 * 16
    assert {s.astimezone(PARIS).strftime("%H:%M") for s, _ in slots} == {
        f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 30)
    }
    saturday = min(s for s, _ in slots if s.astimezone(PARIS).date() == date(2026, 10, 24))
    sunday = min(s for s, _ in slots if s.astimezone(PARIS).date() == date(2026, 10, 25))
    assert (saturday.astimezone(UTC).hour, sunday.astimezone(UTC).hour) == (7, 8)


def test_exceptions_day_off_part_off_and_extra_hours():
    monday = date(2026, 6, 1)
    slots = list(
        slot_times(
            windows=[Window(d, time(9), time(12)) for d in range(7)],
            exceptions=[
                DayException(monday, "off"),
                DayException(monday + timedelta(days=1), "off", time(10), time(11)),
                DayException(monday + timedelta(days=2), "extra", time(14), time(15)),
            ],
            tz=PARIS,
            first_day=monday,
            days=3,
            minutes=60,
        )
    )
    local = [s.astimezone(PARIS).strftime("%a %H") for s in _local(slots, PARIS)]
    assert local == ["Tue 09", "Tue 11", "Wed 09", "Wed 10", "Wed 11", "Wed 14"]


# --- The service ----------------------------------------------------------------------------


@pytest.fixture
def ny_provider(make_user, organization):
    provider = make_user(Role.PROVIDER, organization=organization, timezone_name="America/New_York")
    services.availability_replace(provider=provider, windows=EVERY_DAY_9_TO_17)
    # Tests travel in time; start each one without the slots made for the real today.
    Slot.objects.filter(provider=provider).delete()
    return provider


def _local_hours(provider, tz):
    by_day: dict[date, list[str]] = {}
    for start in Slot.objects.filter(provider=provider).values_list("start", flat=True):
        local = start.astimezone(tz)
        by_day.setdefault(local.date(), []).append(local.strftime("%H:%M"))
    return by_day


def test_materialize_across_spring_forward_is_idempotent(ny_provider):
    with time_machine.travel(datetime(2026, 3, 5, 6, 0, tzinfo=NEW_YORK), tick=False):
        services.slots_materialize(provider=ny_provider, days=7)
        by_day = _local_hours(ny_provider, NEW_YORK)
        assert sorted(by_day) == [date(2026, 3, 5) + timedelta(days=n) for n in range(7)]
        expected = [f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 30)]
        assert all(sorted(times) == expected for times in by_day.values())
        count = Slot.objects.count()
        again = services.slots_materialize(provider=ny_provider, days=7)
        assert (again.created, again.removed) == (0, 0)
        assert Slot.objects.count() == count


def test_materialize_across_fall_back(make_user, organization, settings):
    settings.SLOTS_MATERIALIZE_DAYS = 7
    provider = make_user(Role.PROVIDER, organization=organization, timezone_name="Europe/Paris")
    with time_machine.travel(datetime(2026, 10, 22, 6, 0, tzinfo=PARIS), tick=False):
        services.availability_replace(provider=provider, windows=EVERY_DAY_9_TO_17)
        services.slots_materialize(provider=provider, days=7)
        by_day = _local_hours(provider, PARIS)
    assert len(by_day) == 7
    assert all(len(times) == 16 and min(times) == "09:00" for times in by_day.values())
    assert len(set(Slot.objects.values_list("start", flat=True))) == 7 * 16


def test_materialize_never_creates_past_slots(ny_provider):
    with time_machine.travel(datetime(2026, 5, 5, 12, 10, tzinfo=NEW_YORK), tick=False):
        services.slots_materialize(provider=ny_provider, days=1)
        times = _local_hours(ny_provider, NEW_YORK)[date(2026, 5, 5)]
    assert min(times) == "12:30"


def test_availability_change_removes_open_slots_but_keeps_bookings(ny_provider, patient, book):
    with time_machine.travel(datetime(2026, 5, 4, 6, 0, tzinfo=NEW_YORK), tick=False):
        services.slots_materialize(provider=ny_provider, days=7)
        booked_slot = Slot.objects.filter(provider=ny_provider).order_by("start")[6]  # 12:00
        cancelled_slot = Slot.objects.filter(provider=ny_provider).order_by("start")[8]  # 13:00
        consultation = book(patient, booked_slot)
        services.consultation_cancel(consultation=book(patient, cancelled_slot), actor=patient)
        # Now only mornings.
        services.availability_replace(
            provider=ny_provider, windows=[Window(d, time(9), time(11)) for d in range(7)]
        )
    remaining = Slot.objects.filter(provider=ny_provider)
    local_hours = {s.start.astimezone(NEW_YORK).hour for s in remaining}
    assert local_hours == {9, 10, 12}
    assert remaining.filter(pk=booked_slot.pk).exists()
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED
    assert consultation.slot_id == booked_slot.pk
    # The cancelled booking's slot went away; the cancelled consultation keeps its times.
    cancelled = Consultation.objects.get(status=ConsultationStatus.CANCELLED)
    assert cancelled.slot_id is None
    assert cancelled.scheduled_start == cancelled_slot.start


def test_consultation_length_change_reshapes_open_slots(ny_provider):
    with time_machine.travel(datetime(2026, 5, 4, 6, 0, tzinfo=NEW_YORK), tick=False):
        services.slots_materialize(provider=ny_provider, days=2)
        assert Slot.objects.count() == 2 * 16
        ny_provider.provider_profile.consultation_minutes = 60
        ny_provider.provider_profile.save()
        services.slots_materialize(provider=ny_provider, days=2)
    assert Slot.objects.count() == 2 * 8
    assert {(s.end - s.start) for s in Slot.objects.all()} == {timedelta(minutes=60)}


def test_overlapping_windows_are_rejected(provider):
    from medease.exceptions import InvalidInput

    with pytest.raises(InvalidInput):
        services.availability_replace(
            provider=provider, windows=[Window(0, time(9), time(12)), Window(0, time(11), time(13))]
        )


def test_materialize_all_covers_every_active_provider(make_user, organization, settings):
    settings.SLOTS_MATERIALIZE_DAYS = 3
    providers = [make_user(Role.PROVIDER, organization=organization) for _ in range(2)]
    for provider in providers:
        services.availability_replace(provider=provider, windows=EVERY_DAY_9_TO_17)
    Slot.objects.all().delete()
    assert services.slots_materialize_all() == 2
    for provider in providers:
        assert Slot.objects.filter(provider=provider).count() >= 2 * 16


# --- The slots API and its cache --------------------------------------------------------------


@pytest.fixture
def open_day(provider, make_slot):
    """Four slots of the provider tomorrow."""
    return [make_slot(provider, hours=24 + n) for n in range(4)]


def _slot_ids(client, provider):
    response = client.get(f"/api/v1/providers/{provider.pk}/slots")
    assert response.status_code == 200, response.content
    return [s["id"] for s in response.json()["results"]]


def test_slots_api_lists_open_slots_in_the_viewers_timezone(
    token_client, make_user, provider, open_day
):
    viewer = make_user(Role.PATIENT, timezone_name="Asia/Tokyo")
    response = token_client(viewer).get(f"/api/v1/providers/{provider.pk}/slots")
    body = response.json()
    assert [s["id"] for s in body["results"]] == [s.pk for s in open_day]
    first = body["results"][0]
    assert set(first) == {"id", "provider", "start", "end"}
    assert first["start"].endswith("+09:00")
    assert datetime.fromisoformat(first["start"]) == open_day[0].start


def test_slots_window_filters_and_validates(token_client, patient, provider, open_day):
    client = token_client(patient)
    start = open_day[1].start.isoformat()
    end = open_day[3].start.isoformat()
    response = client.get(f"/api/v1/providers/{provider.pk}/slots", {"start": start, "end": end})
    assert [s["id"] for s in response.json()["results"]] == [open_day[1].pk, open_day[2].pk]
    bad = client.get(f"/api/v1/providers/{provider.pk}/slots", {"start": "yesterday-ish"})
    assert bad.status_code == 400
    reversed_window = client.get(
        f"/api/v1/providers/{provider.pk}/slots", {"start": end, "end": start}
    )
    assert reversed_window.status_code == 400
    too_long = client.get(
        f"/api/v1/providers/{provider.pk}/slots",
        {"start": "2030-01-01", "end": "2030-03-01"},
    )
    assert too_long.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"start": "9999-12-31"},  # no week after it: the default end overflows
        {"start": "9999-12-31T12:00:00"},
        {"start": "9999-12-31T23:00:00-05:00"},  # no UTC form
        {"start": "0001-01-01T00:00:00+05:00"},
        {"start": "2030-01-01", "end": "9999-12-31T23:00:00-05:00"},
    ],
)
def test_slot_window_out_of_range_is_a_400(token_client, patient, provider, params):
    response = token_client(patient).get(f"/api/v1/providers/{provider.pk}/slots", params)
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) <= {"start", "end"}


def test_unknown_provider_slots_is_404(token_client, patient):
    assert token_client(patient).get("/api/v1/providers/999999/slots").status_code == 404


def test_booking_and_cancelling_invalidate_the_cached_slots(
    token_client, patient, provider, open_day, django_capture_on_commit_callbacks
):
    client = token_client(patient)
    assert _slot_ids(client, provider) == [s.pk for s in open_day]
    with django_capture_on_commit_callbacks(execute=True):
        booked = client.post("/api/v1/consultations", {"slot": open_day[0].pk}, format="json")
    assert booked.status_code == 201
    assert _slot_ids(client, provider) == [s.pk for s in open_day[1:]]
    with django_capture_on_commit_callbacks(execute=True):
        cancel = client.post(f"/api/v1/consultations/{booked.json()['id']}/cancel")
    assert cancel.status_code == 200
    assert _slot_ids(client, provider) == [s.pk for s in open_day]


def test_cached_slots_are_served_from_the_cache(token_client, patient, provider, open_day):
    """Without invalidation the cached page is what clients see (proves the cache is used)."""
    client = token_client(patient)
    assert len(_slot_ids(client, provider)) == 4
    Slot.objects.filter(pk=open_day[0].pk).delete()  # no service, no invalidation
    assert len(_slot_ids(client, provider)) == 4


def test_a_deactivated_providers_cached_slots_are_404(
    token_client, patient, provider, open_day, django_capture_on_commit_callbacks
):
    """The provider is looked up only when the page is built; its entry depends on the
    providers scope too, so a deactivation (any provider change) hides the cached page."""
    client = token_client(patient)
    assert len(_slot_ids(client, provider)) == 4
    provider.is_active = False
    with django_capture_on_commit_callbacks(execute=True):
        provider.save(update_fields=["is_active"])
    assert client.get(f"/api/v1/providers/{provider.pk}/slots").status_code == 404


@pytest.mark.redis
def test_a_cached_page_is_one_redis_read(token_client, patient, provider, open_day):
    """A hit reads the scopes' tokens and the entry in one MGET (no second GET). Redis
    only: the local-memory cache's get_many is a loop of gets, with no round trips."""
    client = token_client(patient)
    assert len(_slot_ids(client, provider)) == 4
    calls = []
    real = cache.get_many

    def counting(keys, *args, **kwargs):
        calls.append(list(keys))
        return real(keys, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "get_many", counting)
        patch.setattr(cache, "get", lambda *a, **k: pytest.fail("a hit needs no GET"))
        assert len(_slot_ids(client, provider)) == 4
    assert len([keys for keys in calls if any(k.startswith("cons:") for k in keys)]) == 1


def test_availability_change_invalidates_the_cached_slots(
    token_client, patient, provider, open_day, django_capture_on_commit_callbacks
):
    client = token_client(patient)
    assert len(_slot_ids(client, provider)) == 4
    with django_capture_on_commit_callbacks(execute=True):
        services.availability_replace(provider=provider, windows=[])
    assert _slot_ids(client, provider) == []


def test_slots_fall_back_to_the_database_when_the_cache_raises(
    token_client, patient, provider, open_day, monkeypatch
):
    client = token_client(patient)

    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    for method in ("get", "get_many", "set", "set_many", "add"):
        monkeypatch.setattr(cache, method, broken)
    assert _slot_ids(client, provider) == [s.pk for s in open_day]


def test_slots_work_with_an_unreachable_redis(token_client, patient, provider, open_day):
    """A real outage: the default cache pointed at a port where nothing listens."""
    client = token_client(patient)
    unreachable = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "IGNORE_EXCEPTIONS": True,
            },
        },
        "ratelimit": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHES=unreachable):
        assert _slot_ids(client, provider) == [s.pk for s in open_day]
        assert _slot_ids(client, provider) == [s.pk for s in open_day]


def test_a_walk_in_in_progress_hides_overlapping_slots(
    token_client, patient, other_patient, provider, make_slot
):
    soon = make_slot(provider, hours=0.25)
    later = make_slot(provider, hours=3)
    services.queue_join(patient=other_patient, provider=provider)
    services.queue_call_next(provider=provider, actor=provider)
    assert _slot_ids(token_client(patient), provider) == [later.pk]
    assert soon.pk not in _slot_ids(token_client(patient), provider)
