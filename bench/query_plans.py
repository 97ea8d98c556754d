#!/usr/bin/env python
"""EXPLAIN (ANALYZE, BUFFERS) of the SQL the hot endpoints really run, on a filled database.

Each endpoint is called through django.test.Client with a bearer token, as a client would,
with the caches emptied first (so the cached reads reach the database) and its queries
captured; every SELECT is then explained six times and the run of median execution time of
the last five is reported (warm cache, as a busy server sees it). Writes (booking, the audit
rows, token touch) run inside a transaction that is rolled back, so the database is left as
it was. Fill the database first:

    DATABASE_URL=postgres://.../medease_big .venv/bin/python manage.py fill_network
    DATABASE_URL=postgres://.../medease_big .venv/bin/python bench/query_plans.py > plans.md

Prints Markdown: per endpoint, per query, the SQL, the plan and a warning for sequential
scans of large tables and sorts of many rows. Results: docs/performance.md, "Query plans at
size".
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.cache import caches  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from accounts import services as accounts  # noqa: E402
from accounts.models import Role, User  # noqa: E402

LARGE_ROWS = 10_000


class Rollback(Exception):
    pass


def pick() -> dict:
    """The users and rows the endpoints are asked about: the heaviest patient and provider."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT patient_id FROM consultations_consultation GROUP BY patient_id "
            "ORDER BY COUNT(*) DESC LIMIT 1"
        )
        patient = cursor.fetchone()[0]
        cursor.execute(
            "SELECT provider_id FROM consultations_consultation "
            "WHERE scheduled_start >= now() - interval '1 day' GROUP BY provider_id "
            "ORDER BY COUNT(*) DESC LIMIT 1"
        )
        provider = cursor.fetchone()[0]
        # The patient's longest chat: history pages that really page.
        cursor.execute(
            "SELECT m.consultation_id, COUNT(*) FROM messaging_message m "
            "JOIN consultations_consultation c ON c.id = m.consultation_id "
            "WHERE c.patient_id = %s GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            [patient],
        )
        chat, chat_length = cursor.fetchone()
        cursor.execute(
            "SELECT id FROM messaging_message WHERE consultation_id = %s ORDER BY id "
            "OFFSET %s LIMIT 1",
            [chat, chat_length // 2],
        )
        middle = cursor.fetchone()[0]
        cursor.execute(
            "SELECT s.id FROM consultations_slot s WHERE s.provider_id = %s AND s.start > now() "
            "AND NOT EXISTS (SELECT 1 FROM consultations_consultation c WHERE c.slot_id = s.id) "
            "ORDER BY s.start LIMIT 1",
            [provider],
        )
        slot = cursor.fetchone()[0]
    provider_user = User.objects.get(pk=provider)
    staff = User.objects.filter(
        role=Role.STAFF, organization_id=provider_user.organization_id
    ).first()
    return {
        "patient": User.objects.get(pk=patient),
        "provider": provider_user,
        "staff": staff,
        "chat": chat,
        "chat_length": chat_length,
        "middle": middle,
        "slot": slot,
    }


def endpoints(p: dict) -> list[tuple[str, str, str, str, dict | None]]:
    """(name, user key, method, path, body)."""
    return [
        ("consultations list, patient", "patient", "GET", "/api/v1/consultations?limit=20", None),
        (
            "consultations list, provider",
            "provider",
            "GET",
            "/api/v1/consultations?limit=20",
            None,
        ),
        ("consultations list, staff", "staff", "GET", "/api/v1/consultations?limit=20", None),
        ("consultation detail", "patient", "GET", f"/api/v1/consultations/{p['chat']}", None),
        (
            "message history, 50",
            "patient",
            "GET",
            f"/api/v1/consultations/{p['chat']}/messages?limit=50",
            None,
        ),
        (
            "message history, after",
            "patient",
            "GET",
            f"/api/v1/consultations/{p['chat']}/messages?after={p['middle']}&limit=50",
            None,
        ),
        (
            "slots, provider week",
            "patient",
            "GET",
            f"/api/v1/providers/{p['provider'].pk}/slots",  # the default window: 7 days
            None,
        ),
        ("dashboard, patient", "patient", "GET", "/api/v1/dashboard", None),
        ("dashboard, provider", "provider", "GET", "/api/v1/dashboard", None),
        ("dashboard, staff", "staff", "GET", "/api/v1/dashboard", None),
        ("booking", "patient", "POST", "/api/v1/consultations", {"slot": p["slot"]}),
    ]


WARNINGS = (
    (re.compile(r"Seq Scan on (\w+).*rows=(\d+) loops"), "sequential scan of {0} ({1} rows)"),
    (re.compile(r"Sort .*rows=(\d+) loops"), "sort of {0} rows"),
)


def warnings_of(plan: list[str]) -> list[str]:
    found = []
    for line in plan:
        for pattern, text in WARNINGS:
            match = pattern.search(line)
            if match and int(match.groups()[-1]) >= LARGE_ROWS:
                found.append(text.format(*match.groups()))
    return found


def explain(sql: str, runs: int = 5) -> list[str]:
    """The plan of the run with the median execution time (the first run warms the cache;
    a shared machine's stalls land on single runs, not on the median)."""
    plans = []
    with connection.cursor() as cursor:
        for _ in range(runs + 1):
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            plans.append([row[0] for row in cursor.fetchall()])
    plans = sorted(plans[1:], key=execution_ms)
    return plans[len(plans) // 2]


def explain_rolled_back(sql: str) -> list[str]:
    plan: list[str] = []
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # Once: a second run of the same insert would collide with the first.
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            plan = [row[0] for row in cursor.fetchall()]
            raise Rollback
    except Rollback:
        pass
    return plan


def execution_ms(plan: list[str]) -> float:
    last = next((line for line in reversed(plan) if line.startswith("Execution Time")), "")
    return float(last.split(":")[1].split()[0]) if last else 0.0


def run(name: str, client: Client, method: str, path: str, body) -> tuple[int, list[str]]:
    for alias in settings.CACHES:
        caches[alias].clear()
    queries: list[str] = []
    status = 0
    try:
        with transaction.atomic():
            with CaptureQueriesContext(connection) as captured:
                if method == "GET":
                    response = client.get(path)
                else:
                    response = client.post(path, body, content_type="application/json")
            status = response.status_code
            queries = [q["sql"] for q in captured.captured_queries]
            raise Rollback
    except Rollback:
        pass
    return status, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="endpoint names containing this")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("query plans need the filled PostgreSQL database (DATABASE_URL)")
    p = pick()
    clients = {}
    for key in ("patient", "provider", "staff"):
        raw, _token = accounts.token_issue(user=p[key])
        clients[key] = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COUNT(*) FROM consultations_consultation), "
            "(SELECT reltuples::bigint FROM pg_class WHERE relname = 'messaging_message_p' "
            "|| to_char(now(), 'YYYY_MM')), "
            "(SELECT SUM(reltuples)::bigint FROM pg_class "
            "WHERE relname LIKE 'messaging_message_p%%' AND relkind = 'r'), "
            "(SELECT COUNT(*) FROM consultations_consultation WHERE patient_id = %s), "
            "(SELECT COUNT(*) FROM consultations_consultation WHERE provider_id = %s)",
            [p["patient"].pk, p["provider"].pk],
        )
        total, _month, messages, mine, theirs = cursor.fetchone()
    print(
        f"Database {connection.settings_dict['NAME']}: {total:,} consultations, ~{messages:,} "
        f"messages. Patient {p['patient'].pk} has {mine} consultations, provider "
        f"{p['provider'].pk} {theirs}; chat {p['chat']} has {p['chat_length']} messages.\n"
    )
    for name, who, method, path, body in endpoints(p):
        if args.only and args.only not in name:
            continue
        # One call first, so per-process caches (token, user) are as under load.
        run(name, clients[who], method, path, body)
        status, queries = run(name, clients[who], method, path, body)
        print(f"## {name}: {method} {path} -> {status}, {len(queries)} queries\n")
        for sql in queries:
            head = sql.lstrip().split(None, 1)[0].upper()
            if head == "INSERT":
                # The write with its constraint checks (booking: the slot's unique index and
                # the no-overlap exclusion constraint), rolled back.
                plan = explain_rolled_back(sql)
            elif head in ("SELECT", "WITH"):
                plan = explain(sql)
            else:
                print(f"- (not explained) `{sql[:160]}`\n")
                continue
            print("```sql\n" + sql + "\n```\n")
            print("```\n" + "\n".join(plan) + "\n```\n")
            for warning in warnings_of(plan):
                print(f"**WARNING: {warning}**\n")


if __name__ == "__main__":
    main()
