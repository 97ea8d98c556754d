"""Monthly partitions of ``messaging_message`` on PostgreSQL (nothing to do elsewhere)."""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction

from messaging.models import Message

# Any constant works; it only has to be the same in every process that runs this.
_ADVISORY_LOCK_KEY = 0x6D7367_7061  # "msg" "pa"


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(first: dt.date) -> dt.date:
    return (first + dt.timedelta(days=32)).replace(day=1)


def partition_name(first: dt.date) -> str:
    return f"{Message._meta.db_table}_p{first:%Y_%m}"


def is_missing_partition(exc: BaseException) -> bool:
    """Whether an insert failed because no partition covers the row (SQLSTATE 23514)."""
    cause = exc.__cause__ or exc
    return getattr(cause, "sqlstate", None) == "23514" and "no partition" in str(cause)


def existing_partitions() -> list[str]:
    """Names of the partitions attached to the message table (PostgreSQL), oldest first."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname
            FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = %s
            ORDER BY child.relname
            """,
            [Message._meta.db_table],
        )
        return [row[0] for row in cursor.fetchall()]


def ensure_partitions(*, months_ahead: int, today: dt.date | None = None) -> list[str]:
    """Create the partitions of this month and the next ``months_ahead`` months if missing.

    Idempotent and safe when two runs overlap: ``CREATE TABLE IF NOT EXISTS`` alone can
    still collide on the catalog when two sessions create the same table at once, so runs
    take a transaction-level advisory lock first. Returns the names of partitions created.
    """
    if connection.vendor != "postgresql":
        return []
    table = Message._meta.db_table
    first = month_start(today or dt.datetime.now(dt.UTC).date())
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])
        have = set(existing_partitions())
        for _ in range(months_ahead + 1):
            following = next_month(first)
            name = partition_name(first)
            if name not in have:
                # Names and bounds come from dates we computed, never from input.
                cursor.execute(
                    f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" '
                    f"FOR VALUES FROM ('{first.isoformat()} 00:00:00+00') "
                    f"TO ('{following.isoformat()} 00:00:00+00')"
                )
                created.append(name)
            first = following
    return created
