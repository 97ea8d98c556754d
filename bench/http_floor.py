#!/usr/bin/env python
"""Cost of each hot endpoint as a ratio to a bare Django view, measured side by side.

Two uvicorn processes run the Procfile's web command (tests/procfile.py), both pinned to
the same core with ``taskset`` while the load generator pins itself to the other cores:

* the **floor**: ``bench/floor_settings.py`` (the product's settings, ``MIDDLEWARE = []``)
  serving ``bench/floor_urls.py``, one view that runs ``SELECT 1`` through the same
  psycopg pool;
* the **app**: ``config.settings`` with ``DEBUG=0``, rate limits enforced in Redis but
  raised, the production audit path (``AUDIT_REDIS_URL``: PHI reads append to a Redis
  stream that the Procfile's ``audit`` process, pinned to the load cores, drains into
  PostgreSQL; its CPU per request is a column of its own), on demo data (``seed_demo``)
  plus bench data (patients with 45 consultations, a chat of 60 messages, providers with
  thousands of free slots to book).

Only one of them is under load at a time. Each round measures the floor and every endpoint
once, in alternating order (odd rounds reversed), so slow drifts of a shared machine hit
both sides alike. Per measurement: requests/s, p50/p95/p99 as the clients saw them, and
the server's CPU per request (utime+stime of the uvicorn process from /proc). The table
gives the median over rounds and, per endpoint, the median of its per-round ratios to the
floor of the same round, with the issue 11 targets as pass/fail.

It creates its own database on the PostgreSQL server of ``DATABASE_URL`` and its own
redis-server, and removes both at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/http_floor.py
    .venv/bin/python bench/http_floor.py --quick              # smoke: 1 short round
    .venv/bin/python bench/http_floor.py --fill large         # at size: manage.py fill_network
    .venv/bin/python bench/http_floor.py --template medease_big  # a copy of a filled database

At size (``--fill`` or ``--template``) the bench's own users and rows are the same as on demo
data; only everything around them is larger, so the two runs compare like with like.
    .venv/bin/python bench/http_floor.py --json out.json --profile consultations,messages

Results and conclusions: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis as redis_client  # noqa: E402

from bench.common import (  # noqa: E402
    CpuMeter,
    Meter,
    client_cpu,
    errors,
    hammer,
    keep_off_server_core,
    markdown_table,
    percentile,
    postgres_server,
    process_tree,
    scratch,
    server_core_prefix,
    web_environment,
)
from tests.procfile import PROCFILE, procfile_web_command  # noqa: E402
from tests.scale.harness import (  # noqa: E402
    REPO,
    Node,
    last_json_line,
    manage,
    run_django,
    stop_process_group,
    unique,
)

READS = (
    "dashboard_patient",
    "dashboard_provider",
    "dashboard_staff",
    "providers",
    "slots",
    "consultations",
    "consultation",
    "messages",
)
WRITES = ("chat_send", "booking")
ENDPOINTS = READS + WRITES
# Issue 11's targets, as ratios to the floor of the same round.
READ_MIN_RPS, READ_MAX_CPU, READ_MAX_P99 = 0.35, 3.0, 3.0
WRITE_MIN_RPS = 0.25

# Runs in a Django subprocess on the bench database, after seed_demo.
SEED = """
import json, random
from datetime import time, timedelta
from django.utils import timezone
from accounts import services as accounts
from accounts.models import Organization, Role, User
from consultations import services as clinic
from consultations.models import Slot
from consultations.slotting import Window
from messaging import services as chat

org = Organization.objects.get(slug="demo")
demo = list(User.objects.filter(organization=org, role=Role.PROVIDER,
                                email__endswith="@demo.medease.test").order_by("pk"))
staff = User.objects.get(email="staff@demo.medease.test")
soon = timezone.now() + timedelta(hours=2)
free = list(Slot.objects.filter(provider__in=demo, start__gt=soon, consultations__isnull=True)
            .order_by("start", "provider_id").values_list("pk", flat=True))
heavy, heavy_tokens, booked = [], [], []
for n in range({heavy}):
    patient = accounts.user_create(email=f"heavy{{n}}@bench.test", password=None,
                                   full_name=f"Heavy Patient {{n}}", validate=False)
    mine = []
    for _ in range({per_patient}):
        consultation, _ = clinic.consultation_book(patient=patient, slot_id=free.pop(),
                                                   reason="bench history")
        mine.append(consultation)
    for i in range({messages}):
        sender = patient if i % 2 else mine[0].provider
        chat.message_send(consultation=mine[0], sender=sender, body=f"message {{i}}",
                          client_id=f"seed-{{n}}-{{i}}")
    heavy_tokens.append(accounts.token_issue(user=patient)[0])
    booked.append([mine[0].pk, mine[1].pk])
# Bookings go to a clinic of their own, so the demo clinic's day (the staff dashboard)
# does not grow while the rounds run.
booking_org = accounts.organization_create(name="Bench Booking Clinic", slug="bench-booking")
bookers = []
for n in range({booking_providers}):
    provider = accounts.user_create(email=f"book{{n}}@bench.test", password=None,
                                    full_name=f"Dr. Booking {{n}}", role=Role.PROVIDER,
                                    organization=booking_org, consultation_minutes=10,
                                    validate=False)
    clinic.availability_replace(provider=provider,
                                windows=[Window(d, time(0), time(23, 50)) for d in range(7)])
    bookers.append(provider.pk)
slots = list(Slot.objects.filter(provider_id__in=bookers, start__gt=soon)
             .values_list("pk", flat=True))
random.shuffle(slots)
booking_tokens = []
for n in range({booking_patients}):
    patient = accounts.user_create(email=f"booker{{n}}@bench.test", password=None,
                                   full_name=f"Booking Patient {{n}}", validate=False)
    booking_tokens.append(accounts.token_issue(user=patient)[0])
print(json.dumps({{
    "providers": [p.pk for p in demo],
    "heavy_tokens": heavy_tokens,
    "heavy_consultations": booked,
    "provider_token": accounts.token_issue(user=mine[0].provider)[0],
    "staff_token": accounts.token_issue(user=staff)[0],
    "booking_tokens": booking_tokens,
    "booking_slots": slots,
}}))
"""


@dataclass
class ProcfileNode(Node):
    """A web node started with the Procfile's exact uvicorn command and flags."""

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [*self.command_prefix, *procfile_web_command(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Measurement:
    endpoint: str
    round: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms: float
    pg_cpu_ms: float
    client_cores: float
    redis_commands: float
    statuses: dict[str, int] = field(default_factory=dict)
    # CPU of the `manage.py audit_flush` process per request (the audit stream's drain).
    flush_cpu_ms: float = 0.0


class Load:
    """Builds each endpoint's requests from the seeded data and measures one endpoint."""

    def __init__(
        self, args: argparse.Namespace, data: dict, pg_pids, redis_commands, flush_pids=list
    ):
        self.redis_commands = redis_commands
        self.flush_pids = flush_pids
        self.args = args
        self.data = data
        self.pg_pids = pg_pids
        self.counter = 0
        self.slots = list(data["booking_slots"])
        self.run_tag = unique()

    def request(self, client: httpx.AsyncClient, endpoint: str):
        self.counter += 1
        n = self.counter
        d = self.data
        heavy = n % len(d["heavy_tokens"])
        patient = {"Authorization": f"Bearer {d['heavy_tokens'][heavy]}"}
        history, chat = d["heavy_consultations"][heavy]
        if endpoint == "floor":
            return client.get("/floor")
        if endpoint == "booking":
            token = d["booking_tokens"][n % len(d["booking_tokens"])]
            slot = self.slots.pop() if self.slots else 0  # 0: an error, counted as such
            return client.post(
                "/api/v1/consultations",
                headers={"Authorization": f"Bearer {token}"},
                json={"slot": slot, "reason": "bench"},
            )
        if endpoint == "chat_send":
            return client.post(
                f"/api/v1/consultations/{chat}/messages",
                headers=patient,
                json={"body": f"bench message {n}", "client_id": f"b-{self.run_tag}-{n}"},
            )
        if endpoint == "dashboard_provider":
            return client.get(
                "/api/v1/dashboard", headers={"Authorization": f"Bearer {d['provider_token']}"}
            )
        if endpoint == "dashboard_staff":
            return client.get(
                "/api/v1/dashboard", headers={"Authorization": f"Bearer {d['staff_token']}"}
            )
        provider = d["providers"][n % len(d["providers"])]
        path = {
            "dashboard_patient": "/api/v1/dashboard",
            "providers": "/api/v1/providers",
            "slots": f"/api/v1/providers/{provider}/slots",  # the default window: 7 days
            "consultations": "/api/v1/consultations?limit=20",
            "consultation": f"/api/v1/consultations/{history}",
            "messages": f"/api/v1/consultations/{history}/messages?limit=50",
        }[endpoint]
        return client.get(path, headers=patient)

    async def measure(
        self, url: str, endpoint: str, *, seconds: float, server_pids: list[int], round_: int
    ) -> Measurement:
        server = CpuMeter(lambda: server_pids)
        postgres, flush = CpuMeter(self.pg_pids), CpuMeter(self.flush_pids)
        client, redis_commands = client_cpu(), Meter(self.redis_commands)
        concurrency = self.args.concurrency
        latencies, statuses, elapsed = await hammer(
            url,
            lambda http: self.request(http, endpoint),
            concurrency=concurrency,
            seconds=seconds,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            meters=(server, postgres, flush, client, redis_commands),
        )
        cpu_used, pg_used, flush_used = server.used, postgres.used, flush.used
        client_used = client.used
        redis_used = redis_commands.used - 1  # the INFO that reads it
        count = len(latencies)
        return Measurement(
            endpoint=endpoint,
            round=round_,
            requests=count,
            errors=errors(statuses),
            seconds=round(elapsed, 2),
            rps=round(count / elapsed, 1),
            p50_ms=round(percentile(latencies, 0.50) * 1000, 1),
            p95_ms=round(percentile(latencies, 0.95) * 1000, 1),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
            cpu_ms=round(cpu_used * 1000 / max(count, 1), 2),
            pg_cpu_ms=round(max(pg_used, 0) * 1000 / max(count, 1), 2),
            client_cores=round(client_used / elapsed, 2),
            redis_commands=round(redis_used / max(count, 1), 1),
            statuses=dict(statuses),
            flush_cpu_ms=round(max(flush_used, 0) * 1000 / max(count, 1), 2),
        )


def summarize(measurements: list[Measurement]) -> list[dict]:
    """Medians per endpoint, and medians of the per-round ratios to the same round's floor."""
    floors = {m.round: m for m in measurements if m.endpoint == "floor"}
    rows = []
    for endpoint in ("floor", *ENDPOINTS):
        mine = [m for m in measurements if m.endpoint == endpoint]
        if not mine:
            continue

        def median(values):
            return round(statistics.median(values), 2)

        def ratio(attr: str, mine=mine) -> float:
            return median(
                [getattr(m, attr) / max(getattr(floors[m.round], attr), 1e-9) for m in mine]
            )

        row = {
            "endpoint": endpoint,
            "rounds": len(mine),
            "rps": median([m.rps for m in mine]),
            "p50_ms": median([m.p50_ms for m in mine]),
            "p95_ms": median([m.p95_ms for m in mine]),
            "p99_ms": median([m.p99_ms for m in mine]),
            "cpu_ms": median([m.cpu_ms for m in mine]),
            "pg_cpu_ms": median([m.pg_cpu_ms for m in mine]),
            "redis_commands": median([m.redis_commands for m in mine]),
            "flush_cpu_ms": median([m.flush_cpu_ms for m in mine]),
            "errors": sum(m.errors for m in mine),
            "requests": sum(m.requests for m in mine),
            "rps_x": ratio("rps"),
            "p50_x": ratio("p50_ms"),
            "p95_x": ratio("p95_ms"),
            "p99_x": ratio("p99_ms"),
            "cpu_x": ratio("cpu_ms"),
        }
        misses = []
        if endpoint in WRITES:
            row["target"] = f"req/s >= {WRITE_MIN_RPS}x"
            misses += ["req/s"] * (row["rps_x"] < WRITE_MIN_RPS)
        elif endpoint != "floor":
            row["target"] = (
                f"req/s >= {READ_MIN_RPS}x, CPU <= {READ_MAX_CPU}x, p99 <= {READ_MAX_P99}x"
            )
            misses += ["req/s"] * (row["rps_x"] < READ_MIN_RPS)
            misses += ["CPU"] * (row["cpu_x"] > READ_MAX_CPU)
            misses += ["p99"] * (row["p99_x"] > READ_MAX_P99)
        misses += ["errors"] * (row["errors"] > 0)
        row["misses"] = misses
        row["pass"] = None if endpoint == "floor" else not misses
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        verdict = "" if r["pass"] is None else "pass"
        if r["pass"] is False:
            verdict = "**FAIL** (" + ", ".join(r["misses"]) + ")"
        lines.append(
            (
                r["endpoint"],
                f"{r['rps']:.0f}",
                f"{r['rps_x']:.2f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['p99_x']:.2f}",
                f"{r['cpu_ms']:.2f}",
                f"{r['cpu_x']:.2f}",
                f"{r['pg_cpu_ms']:.2f}",
                f"{r['redis_commands']:.1f}",
                f"{r['flush_cpu_ms']:.2f}",
                r["errors"],
                verdict,
            )
        )
    return markdown_table(
        "endpoint | req/s | x floor | p50 ms | p95 ms | p99 ms | p99 x floor "
        "| server CPU ms/req | CPU x floor | PostgreSQL CPU ms/req | Redis commands/req "
        "| audit flush CPU ms/req | errors | target",
        lines,
    )


def pyspy_profile(load: Load, node: ProcfileNode, endpoint: str, out: Path, seconds: float):
    """Load one endpoint while py-spy samples the server; writes its collapsed stacks.

    ``bench/profile_top.py`` summarizes them; flamegraph.pl or speedscope draw them.
    """
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{endpoint}.txt"
    # --gil: only the thread holding the GIL is sampled, so the shares are of the CPU the
    # process spends in Python (threads waiting on PostgreSQL or Redis are left out).
    # --nonblocking: the server is not paused; 100 Hz keeps py-spy from falling behind.
    with (out / "py-spy.log").open("ab") as log:
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(node.proc.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "100",
                "--gil",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1)  # py-spy attaches
        asyncio.run(
            load.measure(
                node.url,
                endpoint,
                seconds=seconds + 1,
                server_pids=process_tree(node.proc.pid),
                round_=-1,
            )
        )
        spy.wait(timeout=120)
    return raw


def _start_audit_flush(env: dict, log: Path, cpus: list[int]) -> subprocess.Popen:
    """The Procfile's `audit` process (manage.py audit_flush), pinned to these CPUs."""
    line = next(line for line in PROCFILE.read_text().splitlines() if line.startswith("audit:"))
    words = line.removeprefix("audit:").strip().split()
    words = words[1:] if words[0] == "exec" else words
    if words[0] == "python":
        words[0] = sys.executable
    return subprocess.Popen(
        ["taskset", "-c", ",".join(map(str, cpus)), *words],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_drain(client, flusher: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    # Up (its consumer group exists: Django's start-up is not measured) and caught up.
    while not _flusher_ready(client) or client.xlen("medease:audit") > 0:
        if flusher.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the audit flusher did not drain the stream (see audit.log)")
        time.sleep(0.2)


def _flusher_ready(client) -> bool:
    try:
        groups = client.xinfo_groups("medease:audit")
    except redis_client.ResponseError:  # no stream yet
        return False
    return any(group["name"] == b"audit-flush" for group in groups)


def fill_arguments(value: str) -> list[str]:
    """``--fill`` as fill_network's options: "large" (its defaults) or four counts."""
    if not value:
        return []
    if value == "large":
        return ["--prefix", "benchfill"]
    counts = value.split(",")
    if len(counts) != 4 or not all(c.isdigit() for c in counts):
        raise SystemExit("--fill: 'large' or providers,patients,consultations,messages")
    names = ("--providers", "--patients", "--consultations", "--messages")
    return ["--prefix", "benchfill", *(x for pair in zip(names, counts, strict=True) for x in pair)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=10, help="DATABASE_POOL_MAX_SIZE")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 round of 2 s")
    parser.add_argument("--json", help="also write the measurements and summary here")
    parser.add_argument(
        "--profile",
        default="",
        help="after the rounds, py-spy these endpoints under load (comma-separated)",
    )
    parser.add_argument(
        "--fill",
        default="",
        help="run at size: 'large' (fill_network's defaults: 200 providers, 100k patients, 1M "
        "consultations, 10M messages) or providers,patients,consultations,messages",
    )
    parser.add_argument(
        "--template",
        default="",
        help="run at size on a copy of this (migrated, filled) database on the same server",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--profile-dir", default="var/bench-profile")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
    endpoints = [e for e in args.endpoints.split(",") if e]
    unknown = set(endpoints) - set(ENDPOINTS)
    if unknown:
        raise SystemExit(f"unknown endpoints: {sorted(unknown)}; choose from {ENDPOINTS}")

    fill = fill_arguments(args.fill)
    primary = postgres_server(args.database_url)
    app: ProcfileNode | None = None
    floor: ProcfileNode | None = None
    flusher: subprocess.Popen | None = None
    cpus = sorted(os.sched_getaffinity(0))
    measurements: list[Measurement] = []
    started = datetime.now(UTC)
    # A copy of a filled database takes minutes; filling it again, much longer. FILE_COPY:
    # copying the files beats writing all of them to the WAL (PostgreSQL 15's default).
    template = f' TEMPLATE "{args.template}" STRATEGY FILE_COPY' if args.template else ""
    with scratch(primary, prefix="bench", create_sql=template) as bench_db:
        try:
            # The production audit path: PHI reads append to a Redis stream (the bench's own
            # redis, database 2), drained into PostgreSQL by the Procfile's `audit` process.
            env = web_environment(
                bench_db,
                DATABASE_POOL_MAX_SIZE=str(args.pool),
                AUDIT_REDIS_URL=bench_db.redis.url(2),
            )
            print(f"setting up {bench_db.database} ...", file=sys.stderr)
            manage(env, "migrate", "--noinput")
            manage(env, "seed_demo", "--force")
            if fill:
                manage(env, "fill_network", *fill, timeout=4 * 3600)
            data = last_json_line(
                run_django(
                    env,
                    SEED.format(
                        heavy=4,
                        per_patient=45,
                        messages=60,
                        booking_providers=6,
                        booking_patients=32,
                    ),
                )
            )
            if fill or args.template:
                # The demo and bench accounts came after the network's statistics: their ids lie
                # beyond every histogram, and the consultations list's plan walked all users to
                # reach them (a merge join). Fresh statistics, as a network in steady state has
                # (docs/performance.md, "Query plans at size").
                primary.query("ANALYZE", dbname=bench_db.database)
            prefix = server_core_prefix(cpus)
            app = ProcfileNode(
                name="app", env=env, log=bench_db.root / "app.log", command_prefix=prefix
            )
            floor_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.floor_settings"}
            floor = ProcfileNode(
                name="floor", env=floor_env, log=bench_db.root / "floor.log", command_prefix=prefix
            )
            app.start()
            floor.start()
            # The flusher runs on the load generator's cores, off the servers' one; its CPU is
            # reported per request in a column of its own.
            flusher = _start_audit_flush(env, bench_db.root / "audit.log", cpus[1:] or cpus)
            if prefix:
                keep_off_server_core(cpus)
            nodes = {"floor": floor}
            info = redis_client.Redis(port=bench_db.redis.port)
            # The seed's own audit events are drained before the first round.
            _wait_for_drain(redis_client.Redis(port=bench_db.redis.port, db=2), flusher)
            load = Load(
                args,
                data,
                pg_pids=bench_db.backend_pids,
                redis_commands=lambda: info.info("stats")["total_commands_processed"],
                flush_pids=lambda: process_tree(flusher.pid),
            )
            names = ["floor", *endpoints]
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    node = nodes.get(name, app)
                    pids = process_tree(node.proc.pid)
                    asyncio.run(
                        load.measure(
                            node.url, name, seconds=args.warmup, server_pids=pids, round_=round_
                        )
                    )
                    m = asyncio.run(
                        load.measure(
                            node.url, name, seconds=args.duration, server_pids=pids, round_=round_
                        )
                    )
                    measurements.append(m)
                    print(
                        f"round {round_ + 1}/{args.rounds} {name:18} {m.rps:7.1f} req/s "
                        f"p50 {m.p50_ms:6.1f} p95 {m.p95_ms:6.1f} p99 {m.p99_ms:6.1f} ms "
                        f"cpu {m.cpu_ms:5.2f} ms/req pg {m.pg_cpu_ms:5.2f} "
                        f"redis {m.redis_commands:4.1f} cmd/req flush {m.flush_cpu_ms:4.2f} "
                        f"client {m.client_cores:.2f} cores "
                        f"{m.statuses}",
                        file=sys.stderr,
                    )
            for name in filter(None, args.profile.split(",")):
                raw = pyspy_profile(
                    load, nodes.get(name, app), name, Path(args.profile_dir), args.profile_seconds
                )
                print(f"profile of {name}: {raw}", file=sys.stderr)
        finally:
            for node in (app, floor):
                if node is not None:
                    node.stop()
            if flusher is not None:
                stop_process_group(flusher, grace=15)

    rows = summarize(measurements)
    load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{started:%Y-%m-%d %H:%M} UTC. Two uvicorn processes (Procfile command) pinned to "
        f"CPU {cpus[0]}, load generator on CPU {','.join(map(str, cpus[1:])) or '-'}; "
        f"{args.concurrency} connections; median of {args.rounds} interleaved rounds of "
        f"{args.duration:g} s per endpoint; ratios are medians of per-round ratios to the "
        f"floor (bare Django view, no middleware, SELECT 1 through the pool). "
        f"{os.cpu_count()} CPUs, load average {load_average}.\n"
    )
    if not rows:
        return
    print(table(rows))
    failed = [r["endpoint"] for r in rows if r["pass"] is False]
    print(f"\n{len(rows) - 1 - len(failed)} of {len(rows) - 1} endpoints meet their target.")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "args": vars(args),
                    "summary": rows,
                    "measurements": [asdict(m) for m in measurements],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
