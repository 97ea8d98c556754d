"""Every list endpoint runs the same number of queries at page sizes 1, 20 and 100.

The counts are also capped, so a new per-request query shows up here (the cap is the current
count; raise it on purpose, never by accident).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from consultations import services
from consultations.models import Slot
from tests.conftest import _clear_cache

pytestmark = pytest.mark.django_db

ITEMS = 101
LIMITS = (1, 20, 100)


def _queries(client, url: str, limit: int, params: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"limit": limit, **(params or {})})
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == limit
    return len(ctx.captured_queries)


def _assert_constant(label: str, client, url: str, *, cap: int, params: dict | None = None):
    client.get("/api/v1/me")  # warm the token cache: count the steady-state path
    counts = [_queries(client, url, limit, params) for limit in LIMITS]
    print(f"\nQUERY COUNT {label}: {dict(zip(LIMITS, counts, strict=True))}")
    assert len(set(counts)) == 1, f"{label}: {counts} queries for limits {LIMITS}"
    assert counts[0] <= cap, f"{label}: {counts[0]} queries, cap {cap}"


@pytest.fixture
def busy_provider(provider, make_user, organization):
    """A provider with 101 upcoming slots, 101 bookings of 101 patients, 101 record entries
    of one patient, and 101 people in the walk-in queue."""
    start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    Slot.objects.bulk_create(
        Slot(
            provider=provider,
            start=start + timedelta(minutes=30 * n),
            end=start + timedelta(minutes=30 * n + 30),
        )
        for n in range(2 * ITEMS)
    )
    slots = list(Slot.objects.filter(provider=provider).order_by("start"))
    patients = [make_user(Role.PATIENT) for _ in range(ITEMS)]
    for patient, slot in zip(patients, slots[ITEMS:], strict=True):
        services.consultation_book(patient=patient, slot_id=slot.pk)
        services.queue_join(patient=patient, provider=provider)
    for n in range(ITEMS):
        services.medical_record_add(
            author=provider, patient=patients[0], kind="note", text=f"Entry {n}"
        )
    return {"patients": patients}


def test_providers_list(token_client, patient, make_user, organization):
    for _ in range(ITEMS):
        make_user(Role.PROVIDER, organization=organization)
    _assert_constant("providers", token_client(patient), "/api/v1/providers", cap=3)


def test_open_slots_list(token_client, patient, provider, busy_provider):
    _assert_constant(
        "providers/{id}/slots",
        token_client(patient),
        f"/api/v1/providers/{provider.pk}/slots",
        cap=3,
    )


def test_consultations_list_for_each_role(
    token_client, provider, staff, busy_provider, make_slot, book
):
    patient = busy_provider["patients"][0]
    for n in range(ITEMS):
        # 101 more bookings of one patient (the ones above belong to 101 patients).
        book(patient, make_slot(provider, hours=24 * 30 + n))
    for label, user in (("patient", patient), ("provider", provider), ("staff", staff)):
        _assert_constant(
            f"consultations ({label})", token_client(user), "/api/v1/consultations", cap=4
        )
    _assert_constant(
        "consultations?status=scheduled (staff)",
        token_client(staff),
        "/api/v1/consultations",
        cap=4,
        params={"status": "scheduled"},
    )


def test_provider_queue_list(token_client, provider, staff, busy_provider):
    _assert_constant(
        "providers/{id}/queue", token_client(staff), f"/api/v1/providers/{provider.pk}/queue", cap=7
    )


def test_patient_records_list(token_client, provider, busy_provider):
    patient = busy_provider["patients"][0]
    for label, user in (("patient", patient), ("provider", provider)):
        _assert_constant(
            f"patients/{{id}}/records ({label})",
            token_client(user),
            f"/api/v1/patients/{patient.pk}/records",
            cap=5,
        )


def test_dashboard_queries_do_not_grow_with_the_data(
    token_client, provider, staff, make_user, make_slot, book
):
    """Not a paginated list, but the same rule: as many queries for 1 item as for 60."""

    def count(user) -> int:
        _clear_cache("default")  # measure the uncached path
        with CaptureQueriesContext(connection) as ctx:
            assert token_client(user).get("/api/v1/dashboard").status_code == 200
        return len(ctx.captured_queries)

    patient = make_user(Role.PATIENT)
    local_noon = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=5)
    book(patient, make_slot(provider, start=local_noon))
    services.queue_join(patient=patient, provider=provider)
    few = {role: count(user) for role, user in (("patient", patient), ("provider", provider))}
    few["staff"] = count(staff)
    for n in range(1, 60):
        book(patient, make_slot(provider, start=local_noon + timedelta(minutes=30 * n)))
        if n < 10:
            services.queue_join(patient=make_user(Role.PATIENT), provider=provider)
    many = {role: count(user) for role, user in (("patient", patient), ("provider", provider))}
    many["staff"] = count(staff)
    print(f"\nQUERY COUNT dashboard: {few}")
    assert few == many
