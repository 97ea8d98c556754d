"""Unread counts (messaging.selectors.unread_counts_for): one query, and the counts the
read markers imply, across message partitions, deleted and edited messages and the user's
own messages, checked against a plain count in Python."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from messaging import selectors
from messaging.models import Message, ReadMarker
from tests.messaging.conftest import make_consultation

pytestmark = pytest.mark.django_db


def _next_month():
    """A moment in the next month, whose partition the migration creates with the current."""
    first = (timezone.now().replace(day=1) + timedelta(days=32)).replace(day=1)
    return first + timedelta(days=1)


def _message(consultation, sender, *, next_month: bool = False, **fields) -> Message:
    return Message.objects.create(
        consultation=consultation,
        sender=sender,
        body="hello",
        client_id=f"c-{Message.objects.count()}",
        created_at=_next_month() if next_month else timezone.now(),
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
