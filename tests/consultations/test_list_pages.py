"""The consultations list's pages (a statement compiled once per shape, re-bound per call;
``selectors.consultation_rows_page`` with ``CursorPagination.paginate_rows``) walk exactly
the rows the ORM's ``visible_to`` gives, forwards and backwards, through ties on the
start time (offset cursors), for every role and with a status filter."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
import redis
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.models import Role
from consultations import services
from consultations.api._base import paginator_for
from consultations.models import Consultation
from consultations.selectors import consultations as consultation_selectors
from medease import audit_stream
from medease.exceptions import NotFound
from tests.consultations.conftest import in_hours

pytestmark = pytest.mark.django_db


@pytest.fixture
def busy_clinic(make_user, organization, patient, other_patient, provider, make_slot, book):
    """Three providers of the clinic with visits at the same few start times (ties), the
    patient in most of them, another patient in the rest; one cancelled."""
    providers = [provider] + [make_user(Role.PROVIDER, organization=organization) for _ in range(2)]
    made = []
    for hour in (20, 21, 22, 23):
        for n, p in enumerate(providers):
            who = other_patient if (hour + n) % 4 == 0 else patient
            made.append(book(who, make_slot(p, start=in_hours(hour)), reason=f"{hour}/{n}"))
    services.consultation_cancel(consultation=made[1], actor=made[1].patient, reason="")
    return providers


ORDERING = ("scheduled_start", "id")


def _walk(paginate, url):
    """Follow ``next`` from ``url`` to the last page, then ``previous`` back to the first:
    (pages forward, pages backward), each page as (ids, next link, previous link)."""
    walks = []
    for direction in ("next", "previous"):
        pages = []
        while url:
            paginator = paginator_for(ORDERING)
            rows = paginate(paginator, Request(APIRequestFactory().get(url)))
            links = {"next": paginator.get_next_link(), "previous": paginator.get_previous_link()}
            pages.append(([row["id"] for row in rows], links["next"], links["previous"]))
            url = links[direction]
        walks.append(pages)
        url = pages[-1][2] if pages else None
    return walks


@pytest.mark.parametrize("limit", [1, 2, 5, 100])
@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("patient", None),
        ("other_patient", None),
        ("provider", None),
        ("staff", None),
        ("staff", "scheduled"),
        ("staff", "cancelled"),
        ("outsider", None),
    ],
)
def test_pages_and_links_are_drfs_both_ways(
    busy_clinic, patient, other_patient, provider, staff, other_provider, role, status, limit
):
    """Page by page, links included, what DRF's ``paginate_queryset`` gives over the ORM
    (ties on the start time make offset cursors; walking back through ties has DRF's own
    paging artifact, which is kept as it is)."""
    user = {
        "patient": patient,
        "other_patient": other_patient,
        "provider": provider,
        "staff": staff,
        "outsider": other_provider,
    }[role]
    clinician = role in ("provider", "staff")
    url = f"http://testserver/api/v1/consultations?limit={limit}"
    if status:
        url += f"&status={status}"

    def drf(paginator, request):
        queryset = consultation_selectors.consultation_rows_for_user(
            user=user, clinician=clinician, status=status
        )
        return paginator.paginate_queryset(queryset, request)

    def rows(paginator, request):
        def fetch(**window):
            return consultation_selectors.consultation_rows_page(
                user=user, clinician=clinician, ordering=ORDERING, status=status, **window
            )

        return paginator.paginate_rows(fetch, request, model=Consultation)

    walked = _walk(rows, url)
    assert walked == _walk(drf, url)
    expected = Consultation.objects.visible_to(user)
    if status:
        expected = expected.filter(status=status)
    forward = [pk for ids, _next, _previous in walked[0] for pk in ids]
    assert forward == list(expected.order_by(*ORDERING).values_list("id", flat=True))
    assert walked[1] or len(walked[0]) == 1  # a single page has no way back
    if role == "outsider":
        assert walked == [[([], None, None)], []]


def test_the_list_endpoint_pages_forward_through_ties(token_client, busy_clinic, staff):
    client = token_client(staff)
    seen, url, params = [], "/api/v1/consultations", {"limit": 2}
    while url:
        body = client.get(url, params).json()
        seen += [row["id"] for row in body["results"]]
        url, params = body["next"], None
    assert seen == list(
        Consultation.objects.visible_to(staff).order_by(*ORDERING).values_list("id", flat=True)
    )


def test_a_superuser_pages_every_row(busy_clinic, make_user):
    admin = make_user(Role.ADMIN)
    admin.is_superuser = True
    rows = consultation_selectors.consultation_rows_page(
        user=admin, clinician=True, ordering=("scheduled_start", "id"), limit=1000
    )
    assert [row["id"] for row in rows] == list(
        Consultation.objects.order_by("scheduled_start", "id").values_list("id", flat=True)
    )


def test_page_rows_are_the_orms_values_rows(busy_clinic, patient):
    """Same columns and values as ``values()`` (no conversion the raw rows would miss)."""
    for clinician in (False, True):
        rows = consultation_selectors.consultation_rows_page(
            user=patient, clinician=clinician, ordering=("scheduled_start", "id"), limit=100
        )
        assert rows == list(
            consultation_selectors.consultation_rows_for_user(
                user=patient, clinician=clinician
            ).order_by("scheduled_start", "id")
        )


def test_a_statement_is_reused_only_for_its_shape(busy_clinic, patient, provider):
    """The patient's statement is not the provider's: each shape compiles its own."""
    consultation_selectors._STATEMENTS.clear()
    ordering = ("scheduled_start", "id")
    for user in (patient, provider, patient):
        rows = consultation_selectors.consultation_rows_page(
            user=user, clinician=False, ordering=ordering, limit=100
        )
        field = "patient_id" if user.role == Role.PATIENT else "provider_id"
        assert rows and all(row[field] == user.pk for row in rows)
    assert len(consultation_selectors._STATEMENTS) == 2


def test_a_bad_cursor_is_400(token_client, patient):
    response = token_client(patient).get("/api/v1/consultations", {"cursor": "cD1hYmM="})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"cursor": ["Invalid cursor."]}


@pytest.mark.parametrize("role", ["patient", "other_patient", "provider", "staff", "outsider"])
def test_a_detail_row_is_the_orms_for_its_viewer_only(
    busy_clinic, patient, other_patient, provider, staff, other_provider, role
):
    user = {
        "patient": patient,
        "other_patient": other_patient,
        "provider": provider,
        "staff": staff,
        "outsider": other_provider,
    }[role]
    clinician = role in ("provider", "staff")
    visible = set(Consultation.objects.visible_to(user).values_list("id", flat=True))
    for consultation in Consultation.objects.order_by("id"):
        if consultation.pk in visible:
            row = consultation_selectors.consultation_row_get_for_user(
                user=user, consultation_id=consultation.pk, clinician=clinician
            )
            assert row == consultation_selectors.consultation_rows_for_user(
                user=user, clinician=clinician
            ).get(pk=consultation.pk)
        else:
            with pytest.raises(NotFound):
                consultation_selectors.consultation_row_get_for_user(
                    user=user, consultation_id=consultation.pk, clinician=clinician
                )
    with pytest.raises(NotFound):
        consultation_selectors.consultation_row_get_for_user(
            user=user, consultation_id=2**70, clinician=clinician
        )


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)  # outside a transaction: the stream path
def test_the_lists_audit_entry_is_one_event_per_listed_row(settings, token_client, busy_clinic):
    """On the stream path a page's events are one entry, one event per listed
    consultation, whose bytes are exactly values_encode()'s JSON (orjson writes the event
    values without that copy)."""
    settings.AUDIT_WRITE_PATH = "stream"
    settings.AUDIT_REDIS_URL = settings.REDIS_URL
    settings.AUDIT_STREAM_KEY = f"medease-test:audit:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.AUDIT_REDIS_URL)
    try:
        body = token_client(busy_clinic[0]).get("/api/v1/consultations", {"limit": 5}).json()
        ids = [row["id"] for row in body["results"]]
        (_, fields), *rest = client.xrange(settings.AUDIT_STREAM_KEY)
        assert rest == []
        raw = fields[audit_stream.FIELD.encode()]
        events = json.loads(raw)
        assert [event["object_id"] for event in events] == [str(pk) for pk in ids]
        assert {(e["action"], e["object_type"]) for e in events} == {("read", "consultation")}
        values = [
            dict(
                e,
                event_id=uuid.UUID(e["event_id"]),
                created_at=datetime.fromisoformat(e["created_at"]),
            )
            for e in events
        ]
        encoded = [audit_stream.values_encode(v) for v in values]
        assert raw == json.dumps(encoded, separators=(",", ":")).encode()
    finally:
        client.delete(settings.AUDIT_STREAM_KEY)
        client.close()
