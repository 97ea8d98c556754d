#!/usr/bin/env python
"""Chat delivery benchmark: MedEase's websocket fan-out as a ratio to a bare relay.

Two servers run side by side, each one uvicorn process started with the Procfile's web
command and flags, pinned to the same core (``taskset``), while this load generator (and
its redis-server) run on the other cores:

* **relay**, the floor (bench/relay.py): a bare ASGI app that subscribes once per process
  to a Redis pub/sub channel per room and writes each message to that room's sockets;
* **medease**, the real application (config.asgi): authenticated sockets, messages stored
  before they are fanned out through the channel layer, presence, audit.

Scenarios, run in interleaved rounds (relay, medease; then medease, relay; ...):

* ``fanout``: one consultation with N sockets; the other participant sends M messages over
  its own socket at R messages/s; every one of the N sockets should get every message;
* ``pairs``: C consultations with two sockets each (patient and provider); messages at an
  aggregate R/s for D seconds, spread over the consultations round-robin, each sent over
  the websocket by one participant and delivered to the other.

Per run: p50/p99 delivery latency (client send to client receive), delivered fraction
(within DELIVERY_DEADLINE of the last send), server CPU per delivery (utime+stime from
/proc over the sending phase, divided by deliveries), RSS growth per idle socket; then
the median over rounds and each as a ratio to the floor. Rate limits are raised through the
environment (RATE_MESSAGE_USER, MESSAGING_WS_RATE_EVENTS).

Everything is local and bounded: a redis-server of its own on a spare port, PostgreSQL
(``DATABASE_URL``: a throwaway ``medease_wsbench_<random>`` database is created there and
dropped) or SQLite in a temporary directory, loopback only, timeouts on every wait.

    .venv/bin/python bench/ws_bench.py --quick                 # a few minutes
    .venv/bin/python bench/ws_bench.py --fanout-sockets 1000 --pairs 2500 --pairs-rate 250
    .venv/bin/python bench/ws_bench.py --quick --json var/ws_bench.json

Results and what they say: docs/performance.md ("Chat delivery"), docs/adr/0005.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.procfile import procfile_web_command  # noqa: E402

TARGETS = ("relay", "medease")
APPS = {"relay": "bench.relay:app", "medease": "config.asgi:application"}
DELIVERY_DEADLINE = 10.0
CONNECT_CONCURRENCY = 50
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Run:
    scenario: str
    target: str
    round: int
    sockets: int
    messages: int
    rate: float
    expected: int
    delivered: int
    flagged: int  # deliveries not made to sockets that were told to resync (4408)
    closed_by_server: dict  # close code → sockets the server closed during the run
    p50_ms: float
    p99_ms: float
    cpu_us_per_delivery: float
    kib_per_socket: float
    connect_seconds: float


class Server:
    """One uvicorn process (the Procfile's web command) on its own port, pinned."""

    def __init__(self, target: str, env: dict, log: Path, cpu: int | None) -> None:
        self.target = target
        self.port = free_port()
        command = procfile_web_command(self.port)
        command[command.index("config.asgi:application")] = APPS[target]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        self.log = log
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        path = "/health/live" if target == "medease" else "/"

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{target} exited; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, timeout=120, what=f"{target} to start")

    @property
    def pid(self) -> int:
        return self.process.pid


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="medease-ws-bench-"))
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.database_url = ""
        self.env = {
            **os.environ,
            "MEDEASE_VAR_DIR": str(self.tmp / "var"),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/1",
            "DEBUG": "0",
            "SECRET_KEY": "ws-bench-not-a-secret-" + "x" * 40,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
            # The benchmark measures delivery, not our abuse limits.
            "RATE_API_USER": "1000000/m",
            "RATE_MESSAGE_USER": "1000000/m",
            "MESSAGING_WS_RATE_EVENTS": "1000000",
            "MESSAGING_TICKET_TTL_SECONDS": "600",
        }
        for name in ("DATABASE_REPLICA_URLS", "CHANNEL_LAYER_REDIS_URL", "AUDIT_REDIS_URL"):
            self.env.pop(name, None)
        self.cpus = sorted(os.sched_getaffinity(0))

    # --- Infrastructure ------------------------------------------------------------------

    def pin_self(self) -> int | None:
        """The servers get the first core; this process (and its redis) the others."""
        if len(self.cpus) < 2 or not shutil.which("taskset"):
            print("warning: fewer than 2 cores or no taskset; not pinning", file=sys.stderr)
            return None
        os.sched_setaffinity(0, set(self.cpus[1:]))
        return self.cpus[0]

    def start_redis(self) -> None:
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.redis = subprocess.Popen(
            [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), 0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(pong, timeout=20, what="redis-server")

    def create_database(self) -> None:
        server = os.environ.get("DATABASE_URL", "")
        if not server.startswith("postgres"):
            self.env.pop("DATABASE_URL", None)  # SQLite under MEDEASE_VAR_DIR
            os.environ.pop("DATABASE_URL", None)
            return
        import psycopg

        name = f"medease_wsbench_{secrets.token_hex(4)}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(server)
        self.database_url = urlunsplit(parts._replace(path=f"/{name}"))
        self.server_database_url = server
        self.env["DATABASE_URL"] = self.database_url

    def drop_database(self) -> None:
        if not self.database_url:
            return
        import psycopg
        from django.db import connections

        connections.close_all()
        name = urlsplit(self.database_url).path.lstrip("/")
        with psycopg.connect(self.server_database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def setup_django(self) -> None:
        os.environ.update(self.env)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.make_data()

    def make_data(self) -> None:
        from datetime import timedelta

        from django.utils import timezone

        from accounts import services as accounts
        from accounts.models import Role
        from consultations.models import Consultation

        organization = accounts.organization_create(name="Bench clinic", slug="bench")
        self.provider = accounts.user_create(
            email="provider@bench.test", password=None, full_name="Bench Provider",
            role=Role.PROVIDER, organization=organization, specialty="GP", validate=False,
        )  # fmt: skip
        self.patient = accounts.user_create(
            email="patient@bench.test", password=None, full_name="Bench Patient", validate=False
        )
        start = timezone.now() + timedelta(days=1)
        count = max(self.args.pairs) + 1
        Consultation.objects.bulk_create(
            Consultation(
                patient=self.patient,
                provider=self.provider,
                organization=organization,
                scheduled_start=start + timedelta(hours=n),
                scheduled_end=start + timedelta(hours=n, minutes=30),
            )
            for n in range(count)
        )
        self.consultations = list(
            Consultation.objects.filter(provider=self.provider)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        _, self.patient_token = accounts.token_issue(user=self.patient)
        _, self.provider_token = accounts.token_issue(user=self.provider)

    def tickets(self, target: str, role: str, count: int) -> list[str]:
        if target == "relay":
            return ["-"] * count
        from messaging import services

        user, token = (
            (self.patient, self.patient_token)
            if role == "patient"
            else (self.provider, self.provider_token)
        )
        return [services.ws_ticket_issue(user=user, token=token) for _ in range(count)]

    # --- Client side ---------------------------------------------------------------------

    async def open_sockets(
        self, server: Server, rooms: list[int], tickets: list[str], sink, closed=None
    ):
        """Open one socket per (room, ticket); ``sink(index, frame, time)`` gets every
        frame, ``closed[index]`` the close code of a socket the server closed."""
        from websockets.asyncio.client import connect

        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        sockets: list = [None] * len(rooms)
        readers: list[asyncio.Task] = []

        async def read(index: int, ws) -> None:
            with contextlib.suppress(Exception):
                async for frame in ws:
                    sink(index, frame, time.perf_counter())
            if closed is not None:
                closed.setdefault(index, ws.close_code)

        async def open_one(index: int) -> None:
            url = (
                f"ws://127.0.0.1:{server.port}/ws/consultations/{rooms[index]}/"
                f"?ticket={tickets[index]}"
            )
            async with limit:
                ws = await connect(url, open_timeout=120, max_size=2**20)
            sockets[index] = ws
            readers.append(asyncio.ensure_future(read(index, ws)))

        await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(len(rooms)))), 600)
        return sockets, readers

    @staticmethod
    async def close_sockets(sockets, readers) -> None:
        await asyncio.gather(
            *(ws.close() for ws in sockets if ws is not None), return_exceptions=True
        )
        for task in readers:
            task.cancel()
        await asyncio.sleep(1.0)

    async def warm(self, server: Server, room: int) -> None:
        """One connection and one message load every code path before baselines."""
        (ticket,) = self.tickets(server.target, "provider", 1)
        got = asyncio.Event()
        sockets, readers = await self.open_sockets(
            server, [room], [ticket], lambda i, frame, t: got.set() if "message" in frame else None
        )
        await sockets[0].send(
            json.dumps({"type": "message.send", "body": "warm", "client_id": secrets.token_hex(8)})
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(got.wait(), 10)
        await self.close_sockets(sockets, readers)

    async def measure(
        self, server: Server, scenario: str, round_: int, *, rooms, roles, plan, rate
    ) -> Run:
        """Open sockets (rooms[i], roles[i]), then send ``plan``: (sender index, recipient
        indexes) per message, at ``rate`` messages/s."""
        target = server.target
        await self.warm(server, rooms[0])
        await asyncio.sleep(0.5)
        rss_before = rss_kib(server.pid)

        arrivals: dict[str, dict[int, float]] = {}
        wanted: dict[str, set[int]] = {}
        flagged: set[int] = set()
        closed: dict[int, int | None] = {}

        def sink(index: int, frame: str, now: float) -> None:
            if frame.startswith('{"type":"resync"'):
                flagged.add(index)
            if not frame.startswith('{"type":"message"'):
                return
            client_id = json.loads(frame)["message"]["client_id"]
            if index in wanted.get(client_id, ()):
                arrivals.setdefault(client_id, {})[index] = now

        tickets: list[str] = []
        for role in ("patient", "provider"):
            indexes = [i for i, r in enumerate(roles) if r == role]
            for index, ticket in zip(
                indexes, self.tickets(target, role, len(indexes)), strict=True
            ):
                tickets.append((index, ticket))
        tickets = [ticket for _, ticket in sorted(tickets)]
        started = time.perf_counter()
        sockets, readers = await self.open_sockets(server, rooms, tickets, sink, closed)
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(2.0)  # presence, groups, subscriptions settle
        rss_idle = rss_kib(server.pid)

        sent_at: dict[str, float] = {}
        cpu_before = cpu_seconds(server.pid)
        begin = time.perf_counter()
        for n, (sender, recipients) in enumerate(plan):
            due = begin + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            client_id = f"{target[0]}{round_}-{n}-{secrets.token_hex(4)}"
            wanted[client_id] = set(recipients)
            sent_at[client_id] = time.perf_counter()
            with contextlib.suppress(Exception):
                await sockets[sender].send(
                    json.dumps({"type": "message.send", "body": "x" * 120, "client_id": client_id})
                )
        expected = sum(len(r) for _, r in plan)
        deadline = time.perf_counter() + DELIVERY_DEADLINE
        while time.perf_counter() < deadline:
            if sum(len(v) for v in arrivals.values()) >= expected:
                break
            await asyncio.sleep(0.02)
        cpu_used = cpu_seconds(server.pid) - cpu_before

        latencies = [
            (t - sent_at[client_id]) * 1000
            for client_id, times in arrivals.items()
            for t in times.values()
        ]
        delivered = len(latencies)
        missed_but_told = sum(
            1
            for client_id, recipients in wanted.items()
            for index in recipients
            if index in flagged and index not in arrivals.get(client_id, {})
        )
        codes: dict[str, int] = {}
        for code in closed.values():
            codes[str(code)] = codes.get(str(code), 0) + 1
        await self.close_sockets(sockets, readers)
        return Run(
            scenario=scenario,
            target=target,
            round=round_,
            sockets=len(rooms),
            messages=len(plan),
            rate=rate,
            expected=expected,
            delivered=delivered,
            flagged=missed_but_told,
            closed_by_server=codes,
            p50_ms=round(statistics.median(latencies), 2) if latencies else float("nan"),
            p99_ms=round(percentile(latencies, 99), 2),
            cpu_us_per_delivery=round(cpu_used * 1e6 / max(delivered, 1), 1),
            kib_per_socket=round((rss_idle - rss_before) / len(rooms), 1),
            connect_seconds=round(connect_seconds, 2),
        )

    async def fanout(self, server: Server, round_: int, size: int) -> Run:
        room = self.consultations[0]
        # Index 0 is the sender (provider); 1..size the receiving sockets (patient).
        rooms = [room] * (size + 1)
        roles = ["provider"] + ["patient"] * size
        plan = [(0, range(1, size + 1))] * self.args.fanout_messages
        return await self.measure(
            server, f"fanout {size}", round_, rooms=rooms, roles=roles, plan=plan,
            rate=self.args.fanout_rate,
        )  # fmt: skip

    async def pairs(self, server: Server, round_: int, count: int) -> Run:
        rooms, roles = [], []
        for room in self.consultations[1 : count + 1]:
            rooms += [room, room]
            roles += ["patient", "provider"]
        total = int(self.args.pairs_rate * self.args.pairs_seconds)
        plan = []
        for n in range(total):
            pair = n % count
            side = (n // count) % 2  # patient and provider take turns in each consultation
            plan.append((2 * pair + side, (2 * pair + 1 - side,)))
        return await self.measure(
            server, f"pairs {count}x2 @{self.args.pairs_rate:g}/s", round_, rooms=rooms,
            roles=roles, plan=plan, rate=self.args.pairs_rate,
        )  # fmt: skip

    # --- The whole run -------------------------------------------------------------------

    def run(self) -> list[Run]:
        runs: list[Run] = []
        servers: dict[str, Server] = {}
        try:
            server_cpu = self.pin_self()
            self.start_redis()
            self.create_database()
            self.setup_django()
            loop = self.loop
            for round_ in range(1, self.args.rounds + 1):
                order = TARGETS if round_ % 2 else TARGETS[::-1]
                jobs = [("fanout", size) for size in self.args.fanout_sockets]
                jobs += [("pairs", count) for count in self.args.pairs]
                for kind, size in jobs:
                    for target in order:
                        # A fresh process per run: RSS per socket is not hidden by memory
                        # an earlier run freed, and runs do not inherit each other's state.
                        log = self.tmp / f"{target}-{kind}-{size}-{round_}.log"
                        servers[target] = Server(target, self.env, log, server_cpu)
                        measure = self.fanout if kind == "fanout" else self.pairs
                        try:
                            result = loop.run_until_complete(measure(servers[target], round_, size))
                        finally:
                            stop(servers.pop(target).process)
                        runs.append(result)
                        print(json.dumps(asdict(result)), flush=True)
        finally:
            for server in servers.values():
                stop(server.process)
            if self.args.keep:
                print(f"kept {self.tmp}", file=sys.stderr)
            with contextlib.suppress(Exception):
                self.drop_database()
            stop(self.redis)
            if not self.args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return runs

    @property
    def loop(self):
        if not hasattr(self, "_loop"):
            try:
                import uvloop

                self._loop = uvloop.new_event_loop()
            except ImportError:
                self._loop = asyncio.new_event_loop()
        return self._loop


# --- Report ----------------------------------------------------------------------------


def summarize(runs: list[Run]) -> list[dict]:
    """Median over rounds per scenario and target, with MedEase's ratios to the floor."""
    rows = []
    scenarios = list(dict.fromkeys(run.scenario for run in runs))
    for scenario in scenarios:
        by_target = {}
        for target in TARGETS:
            mine = [r for r in runs if r.scenario == scenario and r.target == target]
            if not mine:
                continue
            by_target[target] = {
                "scenario": scenario,
                "target": target,
                "rounds": len(mine),
                "sockets": mine[0].sockets,
                "messages": mine[0].messages,
                "delivered": statistics.median(r.delivered / r.expected for r in mine),
                "delivered_or_flagged": statistics.median(
                    (r.delivered + r.flagged) / r.expected for r in mine
                ),
                "p50_ms": statistics.median(r.p50_ms for r in mine),
                "p99_ms": statistics.median(r.p99_ms for r in mine),
                "cpu_us_per_delivery": statistics.median(r.cpu_us_per_delivery for r in mine),
                "kib_per_socket": statistics.median(r.kib_per_socket for r in mine),
            }
        floor = by_target.get("relay")
        for target, row in by_target.items():
            if floor and target != "relay":
                for key in ("p50_ms", "p99_ms", "cpu_us_per_delivery", "kib_per_socket"):
                    row[f"{key}_ratio"] = (
                        round(row[key] / floor[key], 2) if floor[key] > 0 else float("nan")
                    )
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | server | delivered (or flagged) | p50 ms | p99 ms | CPU µs / delivery "
        "| KiB / idle socket |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def cell(row: dict, key: str, digits: int = 1) -> str:
        value = f"{row[key]:,.{digits}f}"
        ratio = row.get(f"{key}_ratio")
        return f"{value} ({ratio:g}x)" if ratio is not None else value

    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['target']} | {row['delivered']:.1%} "
            f"({row['delivered_or_flagged']:.1%}) "
            f"| {cell(row, 'p50_ms')} | {cell(row, 'p99_ms')} "
            f"| {cell(row, 'cpu_us_per_delivery', 0)} | {cell(row, 'kib_per_socket')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(n) for n in s.split(",") if n]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fanout-sockets", type=ints, default=None, help="e.g. 200,1000")
    parser.add_argument("--fanout-messages", type=int, default=None)
    parser.add_argument("--fanout-rate", type=float, default=10.0, help="messages/s")
    parser.add_argument("--pairs", type=ints, default=None, help="consultations, e.g. 500,2500")
    parser.add_argument("--pairs-rate", type=float, default=None, help="aggregate messages/s")
    parser.add_argument("--pairs-seconds", type=float, default=None)
    parser.add_argument("--json", help="write runs and summary as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    quick = {
        "fanout_sockets": [200], "fanout_messages": 30, "pairs": [250],
        "pairs_rate": 50.0, "pairs_seconds": 8.0,
    }  # fmt: skip
    full = {
        "fanout_sockets": [200, 1000], "fanout_messages": 100, "pairs": [500, 2500],
        "pairs_rate": 250.0, "pairs_seconds": 20.0,
    }  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    wanted = (max(args.fanout_sockets, default=0) + 2 * max(args.pairs, default=0)) * 2 + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))

    started = time.monotonic()
    runs = Bench(args).run()
    rows = summarize(runs)
    print()
    print(table(rows))
    print(f"\n{len(runs)} runs in {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": [asdict(r) for r in runs], "summary": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
