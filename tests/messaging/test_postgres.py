"""PostgreSQL only: monthly partitions, and idempotency and markers under real concurrency."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection, connections

from medease.exceptions import Conflict
from messaging import partitions, selectors, services
from messaging.models import Message, MessageClientId, ReadMarker
from tests.messaging.conftest import make_consultation

pytestmark = [pytest.mark.postgres]


def run_together(count: int, work) -> list:
    """Run ``work(index)`` in ``count`` threads released at the same instant."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def runner(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as exc:  # reported to the test, not lost in the thread
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def partition_of(message_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM messaging_message WHERE id = %s", [message_id]
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_create_one_row(chat):
    def send(_):
        return services.message_send(
            consultation=chat.consultation, sender=chat.patient, body="once", client_id="same"
        )

    results = run_together(8, send)
    assert all(isinstance(result, tuple) for result in results), results
    assert len({message.pk for message, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert Message.objects.count() == 1 and MessageClientId.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_reuse_across_consultations_stores_one(chat):
    """Not serialized by the consultation lock: the unique constraint decides."""
    other = make_consultation(patient=chat.patient, provider=chat.provider, hours=6)
    targets = [chat.consultation, other] * 3

    def send(index):
        return services.message_send(
            consultation=targets[index], sender=chat.patient, body="x", client_id="k"
        )

    results = run_together(len(targets), send)
    created = [r for r in results if isinstance(r, tuple) and r[1]]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 1, results
    assert all(isinstance(r, (tuple, Conflict)) for r in results), results
    assert conflicts and all(c.code == "client_id_reused" for c in conflicts)
    assert Message.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_reads_leave_the_highest_marker(chat):
    ids = [
        services.message_send(
            consultation=chat.consultation, sender=chat.provider, body=str(n), client_id=str(n)
        )[0].pk
        for n in range(8)
    ]

    def read(index):
        return services.read_marker_advance(
            consultation=chat.consultation, user=chat.patient, message_id=ids[index]
        )

    results = run_together(len(ids), read)
    assert not [r for r in results if isinstance(r, BaseException)], results
    marker = ReadMarker.objects.get(consultation=chat.consultation, user=chat.patient)
    assert marker.last_read_message_id == ids[-1]


@pytest.mark.django_db
def test_migration_made_this_and_next_month():
    today = dt.datetime.now(dt.UTC).date()
    this_month = partitions.month_start(today)
    names = partitions.existing_partitions()
    assert partitions.partition_name(this_month) in names
    assert partitions.partition_name(partitions.next_month(this_month)) in names


@pytest.mark.django_db(transaction=True)
def test_ensure_partitions_is_idempotent_and_safe_concurrently():
    far = dt.date(2031, 1, 15)
    results = run_together(4, lambda _: partitions.ensure_partitions(months_ahead=2, today=far))
    assert not [r for r in results if isinstance(r, BaseException)], results
    created = sorted(name for result in results for name in result)
    assert created == [
        "messaging_message_p2031_01",
        "messaging_message_p2031_02",
        "messaging_message_p2031_03",
    ]
    assert partitions.ensure_partitions(months_ahead=2, today=far) == []
    with connection.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP TABLE "{name}"')


@pytest.mark.django_db
def test_beat_task_keeps_partitions_ahead(settings):
    from messaging.tasks import ensure_partitions

    settings.MESSAGING_PARTITION_MONTHS_AHEAD = 4
    ensure_partitions.apply()
    first = partitions.month_start(dt.datetime.now(dt.UTC).date())
    names = set(partitions.existing_partitions())
    for _ in range(5):
        assert partitions.partition_name(first) in names
        first = partitions.next_month(first)


@pytest.mark.django_db
def test_messages_land_in_their_month_and_dedupe_across_months(chat, time_machine):
    this_month = partitions.month_start(dt.datetime.now(dt.UTC).date())
    following = partitions.next_month(this_month)
    time_machine.move_to(dt.datetime.combine(this_month, dt.time(12), tzinfo=dt.UTC), tick=False)
    first, _ = services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="a", client_id="k1"
    )
    time_machine.move_to(dt.datetime.combine(following, dt.time(12), tzinfo=dt.UTC), tick=False)
    second, _ = services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="b", client_id="k2"
    )
    assert partition_of(first.pk) == partitions.partition_name(this_month)
    assert partition_of(second.pk) == partitions.partition_name(following)
    # The repeat a month later still finds the original (the key table is not partitioned).
    again, created = services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="a", client_id="k1"
    )
    assert (again.pk, created) == (first.pk, False)
    page, more = selectors.messages_page(consultation_id=chat.consultation.pk, limit=10)
    assert [m.pk for m in page] == [first.pk, second.pk] and not more


@pytest.mark.django_db
def test_history_uses_the_consultation_id_index(chat):
    with connection.cursor() as cursor:
        # Whether an ordered index walk exists, whatever tiny test tables cost: with sorts
        # and bitmap scans priced out, a plan that still sorts has no such walk.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute(
            "EXPLAIN SELECT * FROM messaging_message WHERE consultation_id = %s AND id > %s "
            "ORDER BY id LIMIT 21",
            [chat.consultation.pk, 0],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_bitmapscan")
        cursor.execute("RESET enable_sort")
    # Each partition's copy of the (consultation_id, id) index, merged in id order: no sort.
    assert "consultation_id_id_idx" in plan and "Sort  " not in plan, plan


@pytest.mark.django_db
def test_a_missing_partition_is_created_rather_than_refusing_the_message(chat, time_machine):
    """The beat job did not run for months: the send makes the partition itself."""
    far = dt.datetime(2035, 6, 15, 12, tzinfo=dt.UTC)
    assert partitions.partition_name(far.date().replace(day=1)) not in (
        partitions.existing_partitions()
    )
    time_machine.move_to(far, tick=False)
    message, created = services.message_send(
        consultation=chat.consultation, sender=chat.patient, body="hello", client_id="far"
    )
    assert created and partition_of(message.pk) == "messaging_message_p2035_06"
    # (The test's transaction rolls the new partitions back.)
