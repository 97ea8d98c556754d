"""Unread counts (messaging.selectors.unread_counts_for): one query, and the counts the
read markers imply, across message partitions, deleted and edited messages and the user's
own messages, checked against a plain count in Python; on PostgreSQL, only the partitions
from the consultation's creation on are read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from consultations.models import Consultation
from messaging import partitions, selectors
from messaging.models import Message, ReadMarker
from tests.messaging.conftest import make_consultation

pytestmark = pytest.mark.django_db


def _next_month():
    """A moment in the next month, whose partition the migration creates with the current."""
    first = (timezone.now().replace(day=1) + timedelta(days=32)).replace(day=1)
    return first + timedelta(days=1)


def _last_month():
    """Noon on the 2nd of the previous month, whose partition the tests create."""
    first = (timezone.now().replace(day=1) - timedelta(days=1)).replace(day=1)
    return first.replace(day=2, hour=12, minute=0, second=0, microsecond=0)


def _created_last_month(consultation, at):
    """The consultation as if booked at ``at`` (the previous month, which gets its
    partition: the migration creates only the current and next month's)."""
    partitions.ensure_partitions(months_ahead=0, today=at.date())
    Consultation.objects.filter(pk=consultation.pk).update(created_at=at)
    consultation.refresh_from_db()


def _message(consultation, sender, *, next_month: bool = False, at=None, **fields) -> Message:
    return Message.objects.create(
        consultation=consultation,
        sender=sender,
        body="hello",
        client_id=f"c-{Message.objects.count()}",
        created_at=at or (_next_month() if next_month else timezone.now()),
        **fields,
    )


def _expected(user, consultation) -> int:
    """The definition, spelled out row by row."""
    marker = (
        ReadMarker.objects.filter(consultation=consultation, user=user)
        .values_list("last_read_message_id", flat=True)
        .first()
        or 0
    )
    return sum(
        1
        for m in Message.objects.filter(consultation=consultation)
        if m.sender_id != user.pk and m.deleted_at is None and m.id > marker
    )


@pytest.fixture
def two_chats(make_user, organization):
    patient = make_user(Role.PATIENT)
    provider = make_user(Role.PROVIDER, organization=organization)
    staff = make_user(Role.STAFF, organization=organization)
    first = make_consultation(patient=patient, provider=provider)
    second = make_consultation(patient=patient, provider=provider, hours=3)
    return patient, provider, staff, first, second


def test_counts_follow_markers_deletions_and_own_messages(two_chats):
    patient, provider, staff, first, second = two_chats
    now = timezone.now()
    early = _message(first, provider)
    _message(first, patient)  # the patient's own: never unread for them
    _message(first, provider, deleted_at=now)  # deleted: never unread
    _message(first, provider, edited_at=now)  # edited: still unread
    # The next month's partition (on PostgreSQL): counted like any other.
    _message(first, provider, next_month=True)
    _message(second, staff)
    ReadMarker.objects.create(consultation=first, user=patient, last_read_message_id=early.pk)

    ids = [first.pk, second.pk]
    assert selectors.unread_counts_for(user=patient, consultation_ids=ids) == {
        first.pk: 2,
        second.pk: 1,
    }
    # No marker: everything others sent (the patient's message, and staff's).
    assert selectors.unread_counts_for(user=provider, consultation_ids=ids) == {
        first.pk: 1,
        second.pk: 1,
    }
    for user in (patient, provider, staff):
        counts = selectors.unread_counts_for(user=user, consultation_ids=ids)
        assert counts == {c.pk: _expected(user, c) for c in (first, second)}


def test_marker_at_the_newest_message_reads_zero(two_chats):
    patient, provider, _, first, _ = two_chats
    _message(first, provider)
    last = _message(first, provider, next_month=True)
    ReadMarker.objects.create(consultation=first, user=patient, last_read_message_id=last.pk)
    assert selectors.unread_count_for(user=patient, consultation=first) == 0


def test_unknown_and_repeated_ids_and_no_messages(two_chats):
    patient, _, _, first, second = two_chats
    counts = selectors.unread_counts_for(
        user=patient, consultation_ids=[second.pk, first.pk, first.pk, 987654321]
    )
    assert counts == {first.pk: 0, second.pk: 0, 987654321: 0}
    assert selectors.unread_counts_for(user=patient, consultation_ids=[]) == {}


def test_one_query_whatever_the_number_of_consultations(two_chats):
    patient, provider, _, first, second = two_chats
    _message(first, provider)
    _message(second, provider)
    with CaptureQueriesContext(connection) as queries:
        counts = selectors.unread_counts_for(user=patient, consultation_ids=[first.pk, second.pk])
    assert counts == {first.pk: 1, second.pk: 1}
    assert len(queries.captured_queries) == 1


def test_counts_a_chat_begun_in_an_earlier_partition(two_chats):
    """A chat booked last month: its messages of that month and this one all count, and one
    stamped a few hours before the consultation (an app server's clock behind) too."""
    patient, provider, staff, first, second = two_chats
    booked = _last_month()
    _created_last_month(first, booked)
    _message(first, provider, at=booked - timedelta(hours=3))  # clocks disagree
    _message(first, provider, at=booked + timedelta(days=5))
    read = _message(first, provider, at=booked + timedelta(days=6))
    _message(first, provider, at=booked + timedelta(days=7), deleted_at=timezone.now())
    _message(first, provider, at=booked + timedelta(days=8))
    _message(first, patient)
    _message(first, provider)
    _message(second, staff)  # second: booked this month

    counts = selectors.unread_counts_for(user=patient, consultation_ids=[first.pk, second.pk])
    assert counts == {first.pk: 5, second.pk: 1}
    ReadMarker.objects.create(consultation=first, user=patient, last_read_message_id=read.pk)
    for user in (patient, provider, staff):
        counts = selectors.unread_counts_for(user=user, consultation_ids=[first.pk, second.pk])
        assert counts == {c.pk: _expected(user, c) for c in (first, second)}
    assert selectors.unread_counts_for(user=patient, consultation_ids=[first.pk]) == {first.pk: 2}


@pytest.mark.postgres
def test_partitions_before_the_consultation_are_not_read(two_chats):
    """PostgreSQL prunes, per consultation at run time, the partitions older than it: a
    chat booked this month never reads last month's, one booked last month does."""
    patient, provider, _, first, second = two_chats
    _created_last_month(first, _last_month())
    _message(first, provider, at=_last_month() + timedelta(days=1))
    _message(second, provider)
    with CaptureQueriesContext(connection) as queries:
        selectors.unread_counts_for(user=patient, consultation_ids=[second.pk])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + queries.captured_queries[0]["sql"])
        plan = [line for (line,) in cursor.fetchall()]
    last_month = partitions.partition_name(_last_month().date())
    scans = [line for line in plan if f" on {last_month} " in line]
    assert scans and all("never executed" in line for line in scans), plan

    with CaptureQueriesContext(connection) as queries:
        counts = selectors.unread_counts_for(user=patient, consultation_ids=[first.pk])
    assert counts == {first.pk: 1}
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + queries.captured_queries[0]["sql"])
        plan = [line for (line,) in cursor.fetchall()]
    scans = [line for line in plan if f" on {last_month} " in line]
    assert scans and not any("never executed" in line for line in scans), plan
