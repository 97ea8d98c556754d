"""Every list endpoint runs exactly a pinned number of queries, at page sizes 1, 20 and 100.

The data is varied on purpose: the busy patient waits in several walk-in queues and sees
several providers, records have several authors, chats have both participants, so a
per-row, per-provider or per-queue query shows up as a changed count. A pin moves only on
purpose, with the reason in the commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from consultations import services
from consultations.models import Slot
from messaging import services as messaging_services
from tests.conftest import _clear_cache
from workers.models import Notification, NotificationKind, NotificationStatus

# Pinned on PostgreSQL, the engine the guarantee is for: SQLite splits a bulk INSERT at 999
# parameters, so a 100-row page's audit rows take two INSERTs there.
pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

ITEMS = 101
LIMITS = (1, 20, 100)
# Ahead of the real clock (users and tokens are created now and must not be "future").
NOON_IN_NEW_YORK = datetime(
    datetime.now(UTC).year + 1, 6, 1, 12, 0, tzinfo=ZoneInfo("America/New_York")
)
# The walk-in queues the busy patient waits in, and the providers it books with.
PROVIDERS = 3


def _assert_pinned(label, django_assert_num_queries, client, url, *, queries, params=None):
    client.get("/api/v1/me")  # warm the token cache: count the steady-state path
    for limit in LIMITS:
        with django_assert_num_queries(queries):
            response = client.get(url, {"limit": limit, **(params or {})})
        assert response.status_code == 200, response.content
        assert len(response.json()["results"]) == limit, label


@pytest.fixture
def clinic(provider, make_user, organization):
    """Three providers with slots; 101 patients each booked once and waiting in the first
    provider's queue; the first patient also waits in every provider's queue, has 101 more
    consultations spread over the providers and 101 record entries by all of them."""
    providers = [provider] + [
        make_user(Role.PROVIDER, organization=organization) for _ in range(PROVIDERS - 1)
    ]
    start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    for p in providers:
        Slot.objects.bulk_create(
            Slot(
                provider=p,
                start=start + timedelta(minutes=30 * n),
                end=start + timedelta(minutes=30 * n + 30),
            )
            for n in range(3 * ITEMS)
        )
    free = {p.pk: list(Slot.objects.filter(provider=p).order_by("start")) for p in providers}
    patients = [make_user(Role.PATIENT) for _ in range(ITEMS)]
    busy = patients[0]
    for patient in patients:
        services.consultation_book(patient=patient, slot_id=free[provider.pk].pop().pk)
        services.queue_join(patient=patient, provider=provider)
    for p in providers[1:]:
        services.queue_join(patient=busy, provider=p)
    for n in range(ITEMS):
        p = providers[n % PROVIDERS]
        services.consultation_book(patient=busy, slot_id=free[p.pk].pop().pk)
    for n in range(ITEMS):
        services.medical_record_add(
            author=providers[n % PROVIDERS], patient=busy, kind="note", text=f"Entry {n}"
        )
    return {"providers": providers, "patients": patients, "busy": busy}


def test_providers_list(django_assert_num_queries, token_client, patient, make_user, organization):
    for _ in range(ITEMS):
        make_user(Role.PROVIDER, organization=organization)
    _assert_pinned(
        "providers",
        django_assert_num_queries,
        token_client(patient),
        "/api/v1/providers",
        queries=1,
    )


def test_open_slots_list(django_assert_num_queries, token_client, patient, provider, clinic):
    _assert_pinned(
        "providers/{id}/slots",
        django_assert_num_queries,
        token_client(patient),
        f"/api/v1/providers/{provider.pk}/slots",
        queries=2,
    )


@pytest.mark.parametrize(
    ("role", "params", "queries"),
    [
        ("patient", {}, 3),
        ("provider", {}, 3),
        ("staff", {}, 3),
        ("staff", {"status": "scheduled"}, 3),
    ],
)
def test_consultations_list(
    django_assert_num_queries, token_client, provider, staff, clinic, role, params, queries
):
    user = {"patient": clinic["busy"], "provider": provider, "staff": staff}[role]
    _assert_pinned(
        f"consultations ({role}, {params})",
        django_assert_num_queries,
        token_client(user),
        "/api/v1/consultations",
        queries=queries,
        params=params,
    )


# User, provider, page, two for the wait estimate, the audit INSERT (reads are audited).
@pytest.mark.parametrize(("role", "queries"), [("provider", 5), ("staff", 5)])
def test_provider_queue_list(
    django_assert_num_queries, token_client, provider, staff, clinic, role, queries
):
    user = {"provider": provider, "staff": staff}[role]
    _assert_pinned(
        f"providers/{{id}}/queue ({role})",
        django_assert_num_queries,
        token_client(user),
        f"/api/v1/providers/{provider.pk}/queue",
        queries=queries,
    )


# +1 since record entries carry their attachments (one query for the page's files), -1
# since the token cache holds the user (no user row).
@pytest.mark.parametrize(("role", "queries"), [("patient", 4), ("provider", 5), ("staff", 5)])
def test_patient_records_list(
    django_assert_num_queries, token_client, provider, staff, clinic, role, queries
):
    busy = clinic["busy"]
    user = {"patient": busy, "provider": provider, "staff": staff}[role]
    _assert_pinned(
        f"patients/{{id}}/records ({role})",
        django_assert_num_queries,
        token_client(user),
        f"/api/v1/patients/{busy.pk}/records",
        queries=queries,
    )


# +1 since messages carry their attachments (one query for the page's files), -1 since
# the token cache holds the user (no user row), -1 since the page query tells whether any
# message has files (none here: no file query; tests/attachments/test_link_queries.py),
# -1 since the consultation check and the page are one statement.
@pytest.mark.parametrize(("role", "queries"), [("patient", 2), ("provider", 2), ("staff", 2)])
def test_consultation_messages_list(
    django_assert_num_queries, token_client, provider, staff, clinic, role, queries
):
    busy = clinic["busy"]
    consultation = busy.consultations_as_patient.filter(provider=provider).first()
    for n in range(ITEMS):
        sender = busy if n % 2 else provider
        messaging_services.message_send(
            consultation=consultation, sender=sender, body=f"m{n}", client_id=f"q-{n}"
        )
    user = {"patient": busy, "provider": provider, "staff": staff}[role]
    _assert_pinned(
        f"consultations/{{id}}/messages ({role})",
        django_assert_num_queries,
        token_client(user),
        f"/api/v1/consultations/{consultation.pk}/messages",
        queries=queries,
    )


def test_notifications_list(django_assert_num_queries, token_client, patient):
    now = timezone.now()
    kinds = list(NotificationKind)
    Notification.objects.bulk_create(
        Notification(
            user=patient,
            kind=kinds[n % len(kinds)],
            dedupe_key=f"queries:{n}",
            created_at=now - timedelta(minutes=ITEMS - n),
            status=NotificationStatus.SENT,
            sent_at=now,
        )
        for n in range(ITEMS)
    )
    _assert_pinned(
        "notifications",
        django_assert_num_queries,
        token_client(patient),
        "/api/v1/notifications",
        queries=1,
    )


@pytest.mark.parametrize(
    ("role", "queries"),
    [
        ("patient", 8),
        ("provider", 7),
        ("staff", 7),
    ],
)
def test_dashboard_queries_do_not_grow_with_the_data(
    django_assert_num_queries,
    token_client,
    provider,
    staff,
    make_user,
    organization,
    make_slot,
    book,
    role,
    queries,
):
    """Not a paginated list, but the same rule: as many queries for one consultation and one
    queue as for sixty consultations with three providers and a place in their three queues."""
    with time_machine.travel(NOON_IN_NEW_YORK, tick=False):  # today is today in every zone
        patient = make_user(Role.PATIENT)
        providers = [provider] + [
            make_user(Role.PROVIDER, organization=organization) for _ in range(PROVIDERS - 1)
        ]
        client = token_client({"patient": patient, "provider": provider, "staff": staff}[role])
        client.get("/api/v1/me")  # warm the token cache

        def count() -> int:
            _clear_cache("default")  # measure the uncached path
            with CaptureQueriesContext(connection) as ctx:
                assert client.get("/api/v1/dashboard").status_code == 200
            return len(ctx.captured_queries)

        soon = NOON_IN_NEW_YORK + timedelta(minutes=5)
        book(patient, make_slot(provider, start=soon))
        services.queue_join(patient=patient, provider=provider)
        few = count()
        for n in range(1, 60):
            start = soon + timedelta(minutes=30 * n)
            book(patient, make_slot(providers[n % PROVIDERS], start=start))
            if n < 10:
                services.queue_join(
                    patient=make_user(Role.PATIENT), provider=providers[n % PROVIDERS]
                )
        for p in providers[1:]:
            services.queue_join(patient=patient, provider=p)
        _clear_cache("default")  # on_commit invalidation does not run in these tests
        body = client.get("/api/v1/dashboard").json()
        listed = body.get("upcoming") or body.get("schedule") or body.get("consultations")
        assert len(listed) > 1  # the "many" case lists more than the "few" one
        if role == "patient":
            assert len(body["queue"]) == PROVIDERS
        assert count() == few
    if queries is not None:
        assert few == queries
