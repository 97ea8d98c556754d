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
  the websocket by one participant and delivered to the other;
* ``two-node``: the same pairs with every patient socket on one server process and every
  provider socket on another, so each delivery crosses processes through Redis; both
  processes are pinned to the same server core as the single-process runs (relay and
  MedEase alike), and their CPU is added up;
* ``idle``: N sockets (N/2 consultations x 2) open and quiet for S seconds: the server's
  share of a core while idle (presence heartbeats and the like) and RSS per socket.

Per run: p50/p99 delivery latency (client send to client receive), delivered fraction
(within DELIVERY_DEADLINE of the last send), server CPU per delivery (utime+stime from
/proc over the sending phase, divided by deliveries), RSS growth per idle socket; then
the median over rounds and each as a ratio to the floor, and issue 12's targets as
pass/fail (``--issue12`` runs exactly its scenarios). Rate limits are raised through the
environment (RATE_MESSAGE_USER, MESSAGING_WS_RATE_EVENTS). The bench raises its own
RLIMIT_NOFILE for the sockets it opens; the servers inherit it.

Everything is local and bounded: a redis-server of its own on a spare port, PostgreSQL
(``DATABASE_URL``: a throwaway ``medease_wsbench_<random>`` database is created there and
dropped) or SQLite in a temporary directory, loopback only, timeouts on every wait.

    .venv/bin/python bench/ws_bench.py --quick                 # a few minutes
    .venv/bin/python bench/ws_bench.py --issue12 --rounds 2    # issue 12's targets
    .venv/bin/python bench/ws_bench.py --fanout-sockets 1000 --pairs 2500 --pairs-rate 250
    .venv/bin/python bench/ws_bench.py --quick --json var/ws_bench.json

Results and what they say: docs/performance.md ("Chat delivery"), docs/adr/0005.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
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
LATE_MS = 100.0
CLIENT_ID = re.compile(r'"client_id":\s*"([^"]*)"')
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
    nodes: int = 1
    idle_core_share: float | None = None  # idle runs: server CPU seconds per second
    load1: float = 0.0  # the machine's 1-minute load average at the end of the run
    # Where the tail is: deliveries over LATE_MS, counted by the second (from the first
    # send) their message was sent in; and that first send's wall-clock time, to line the
    # seconds up with a server's logs.
    late_by_second: dict | None = None
    began_at: float = 0.0


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
        wanted = getattr(self.args, "server_cpu", None)  # ws_soak and ws_memory have none
        server = wanted if wanted in self.cpus else self.cpus[0]
        os.sched_setaffinity(0, set(self.cpus) - {server})
        return server

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
        count = max([*self.args.pairs, *self.args.two_node, *(n // 2 for n in self.args.idle)])
        count += 1
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
        from messaging import tickets

        user, token = (
            (self.patient, self.patient_token)
            if role == "patient"
            else (self.provider, self.provider_token)
        )
        # As POST ws-ticket does once the request is authenticated, without a database read
        # (issued from this process's event loop: a query per connecting task would hold a
        # pool connection per task context).
        return [
            tickets.ticket_store(user_id=user.pk, token_id=token.pk, user=user, token=token)
            for _ in range(count)
        ]

    # --- Client side ---------------------------------------------------------------------

    async def open_sockets(
        self, servers, rooms: list[int], tickets: list[str], sink, closed=None, placement=None
    ):
        """Open one socket per (room, ticket), on ``servers[placement[i]]`` (default: the
        first); ``sink(index, frame, time)`` gets every frame, ``closed[index]`` the close
        code of a socket the server closed."""
        if isinstance(servers, Server):
            servers = [servers]
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
            server = servers[placement[index] if placement else 0]
            url = (
                f"ws://127.0.0.1:{server.port}/ws/consultations/{rooms[index]}/"
                f"?ticket={tickets[index]}"
            )
            async with limit:
                # No client pings: browsers send none (the server's keepalive pings remain).
                ws = await connect(url, open_timeout=120, max_size=2**20, ping_interval=None)
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
        self, servers: list[Server], scenario: str, round_: int, *, rooms, roles, plan, rate,
        placement=None, idle_seconds: float = 0.0,
    ) -> Run:  # fmt: skip
        """Open sockets (rooms[i], roles[i]) on servers[placement[i]], then send ``plan``:
        (sender index, recipient indexes) per message, at ``rate`` messages/s. With no plan,
        measure the servers' CPU over ``idle_seconds`` of quiet instead."""
        target = servers[0].target
        for server in servers:
            await self.warm(server, rooms[0])
        await asyncio.sleep(0.5)
        rss_before = sum(rss_kib(server.pid) for server in servers)

        arrivals: dict[str, dict[int, float]] = {}
        wanted: dict[str, set[int]] = {}
        flagged: set[int] = set()
        closed: dict[int, int | None] = {}

        def sink(index: int, frame: str, now: float) -> None:
            if frame.startswith('{"type":"resync"'):
                flagged.add(index)
            if not frame.startswith('{"type":"message"'):
                return
            # A search, not a parse: this process reads every socket's frames on one core,
            # and MedEase's frames (sender, times, ...) cost more to parse than the relay's.
            found = CLIENT_ID.search(frame)
            if found and index in wanted.get(found[1], ()):
                arrivals.setdefault(found[1], {})[index] = now

        tickets: list[str] = []
        for role in ("patient", "provider"):
            indexes = [i for i, r in enumerate(roles) if r == role]
            for index, ticket in zip(
                indexes, self.tickets(target, role, len(indexes)), strict=True
            ):
                tickets.append((index, ticket))
        tickets = [ticket for _, ticket in sorted(tickets)]
        started = time.perf_counter()
        sockets, readers = await self.open_sockets(servers, rooms, tickets, sink, closed, placement)
        connect_seconds = time.perf_counter() - started
        # Presence, groups, subscriptions settle (a few seconds more for thousands).
        await asyncio.sleep(2.0 + len(rooms) / 1000)
        rss_idle = sum(rss_kib(server.pid) for server in servers)
        # This process holds as many sockets as the server: a full collection here would
        # hold up reading and count against either server alike, so what the run opened is
        # kept out of this collector's sight until the sockets close.
        gc.collect()
        gc.freeze()

        def cpu() -> float:
            return sum(cpu_seconds(server.pid) for server in servers)

        idle_core_share = None
        if not plan:
            profilers = self.profile(servers, scenario, round_, idle_seconds)
            cpu_before = cpu()
            await asyncio.sleep(idle_seconds)
            idle_core_share = round((cpu() - cpu_before) / idle_seconds, 4)
            self.wait_for_profilers(profilers)

        sent_at: dict[str, float] = {}
        profilers = self.profile(servers, scenario, round_, len(plan) / rate) if plan else []
        cpu_before = cpu()
        begin = time.perf_counter()
        began_at = time.time()
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
        cpu_used = cpu() - cpu_before
        self.wait_for_profilers(profilers)

        latencies = [
            (t - sent_at[client_id]) * 1000
            for client_id, times in arrivals.items()
            for t in times.values()
        ]
        late_by_second: dict[str, int] = {}
        for client_id, times in arrivals.items():
            late = sum(1 for t in times.values() if (t - sent_at[client_id]) * 1000 > LATE_MS)
            if late:
                second = str(int(sent_at[client_id] - begin))
                late_by_second[second] = late_by_second.get(second, 0) + late
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
        gc.unfreeze()
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
            nodes=len(servers),
            idle_core_share=idle_core_share,
            load1=round(os.getloadavg()[0], 2),
            late_by_second=late_by_second if plan else None,
            began_at=round(began_at, 3),
        )

    @staticmethod
    def wait_for_profilers(profilers) -> None:
        for profiler in profilers:  # py-spy writes its stacks when its --duration is up
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=30)

    def profile(self, servers, scenario: str, round_: int, seconds: float) -> list:
        """With ``--profile DIR``: py-spy samples each MedEase server over the sending phase
        (or the quiet one of an idle run), counting only samples that hold the GIL (CPU, not
        waits), as raw collapsed stacks for bench/profile_top.py. The relay is not
        profiled."""
        if not getattr(self.args, "profile", None) or servers[0].target != "medease":
            return []
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", scenario).strip("-")
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        duration = str(max(1, int(seconds)))
        return [
            subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--gil",
                    "--nonblocking",
                    "--duration",
                    duration,
                    "--output",
                    str(out / f"{slug}-r{round_}-n{node}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for node, server in enumerate(servers)
        ]

    async def fanout(self, servers: list[Server], round_: int, size: int) -> Run:
        room = self.consultations[0]
        # Index 0 is the sender (provider); 1..size the receiving sockets (patient).
        rooms = [room] * (size + 1)
        roles = ["provider"] + ["patient"] * size
        plan = [(0, range(1, size + 1))] * self.args.fanout_messages
        return await self.measure(
            servers, f"fanout {size}", round_, rooms=rooms, roles=roles, plan=plan,
            rate=self.args.fanout_rate,
        )  # fmt: skip

    def pair_sockets(self, count: int) -> tuple[list[int], list[str]]:
        rooms, roles = [], []
        for room in self.consultations[1 : count + 1]:
            rooms += [room, room]
            roles += ["patient", "provider"]
        return rooms, roles

    async def pairs(self, servers: list[Server], round_: int, count: int) -> Run:
        rooms, roles = self.pair_sockets(count)
        total = int(self.args.pairs_rate * self.args.pairs_seconds)
        plan = []
        for n in range(total):
            pair = n % count
            side = (n // count) % 2  # patient and provider take turns in each consultation
            plan.append((2 * pair + side, (2 * pair + 1 - side,)))
        # Two nodes: patients on the first process, providers on the second.
        placement = [index % 2 for index in range(len(rooms))] if len(servers) == 2 else None
        name = f"pairs {count}x2 @{self.args.pairs_rate:g}/s"
        return await self.measure(
            servers, name + (", 2 nodes" if placement else ""), round_, rooms=rooms,
            roles=roles, plan=plan, rate=self.args.pairs_rate, placement=placement,
        )  # fmt: skip

    async def idle(self, servers: list[Server], round_: int, count: int) -> Run:
        rooms, roles = self.pair_sockets(count // 2)
        return await self.measure(
            servers, f"idle {len(rooms)}", round_, rooms=rooms, roles=roles, plan=[],
            rate=1.0, idle_seconds=self.args.idle_seconds,
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
                order = [t for t in TARGETS if t in self.args.targets]
                order = order if round_ % 2 else order[::-1]
                jobs = [("fanout", size, 1) for size in self.args.fanout_sockets]
                jobs += [("pairs", count, 1) for count in self.args.pairs]
                jobs += [("pairs", count, 2) for count in self.args.two_node]
                jobs += [("idle", count, 1) for count in self.args.idle]
                for kind, size, nodes in jobs:
                    for target in order:
                        # A fresh process per run: RSS per socket is not hidden by memory
                        # an earlier run freed, and runs do not inherit each other's state.
                        for node in range(nodes):
                            log = self.tmp / f"{target}-{kind}-{size}-{round_}-{node}.log"
                            servers[(target, node)] = Server(target, self.env, log, server_cpu)
                        mine = [servers[(target, node)] for node in range(nodes)]
                        measure = {"fanout": self.fanout, "pairs": self.pairs, "idle": self.idle}
                        try:
                            result = loop.run_until_complete(measure[kind](mine, round_, size))
                        finally:
                            for node in range(nodes):
                                stop(servers.pop((target, node)).process)
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

            def fraction(r: Run, flagged: bool = False) -> float:
                if not r.expected:
                    return 1.0
                return (r.delivered + (r.flagged if flagged else 0)) / r.expected

            idle = [r.idle_core_share for r in mine if r.idle_core_share is not None]
            by_target[target] = {
                "scenario": scenario,
                "target": target,
                "rounds": len(mine),
                "sockets": mine[0].sockets,
                "nodes": mine[0].nodes,
                "messages": mine[0].messages,
                "delivered": statistics.median(fraction(r) for r in mine),
                "delivered_min": min(fraction(r) for r in mine),
                "delivered_or_flagged": statistics.median(fraction(r, True) for r in mine),
                "closed_by_server": sum(sum(r.closed_by_server.values()) for r in mine),
                "p50_ms": statistics.median(r.p50_ms for r in mine),
                "p99_ms": statistics.median(r.p99_ms for r in mine),
                "cpu_us_per_delivery": statistics.median(r.cpu_us_per_delivery for r in mine),
                "kib_per_socket": statistics.median(r.kib_per_socket for r in mine),
                "idle_core_share": statistics.median(idle) if idle else None,
                "load1": [r.load1 for r in mine],
            }
        floor = by_target.get("relay")
        for target, row in by_target.items():
            if floor and target != "relay":
                for key in (
                    "p50_ms", "p99_ms", "cpu_us_per_delivery", "kib_per_socket", "idle_core_share"
                ):  # fmt: skip
                    mine, theirs = row[key], floor[key]
                    if mine is None or theirs is None or math.isnan(mine) or not theirs > 0:
                        continue
                    row[f"{key}_ratio"] = round(mine / theirs, 2)
            rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 12's targets, each checked on MedEase's row (ratios to the same run's floor)."""
    by = {(row["scenario"], row["target"]): row for row in rows}
    checks: list[dict] = []

    def check(row: dict, goal: str, measured: str, ok: bool) -> None:
        checks.append({"scenario": row["scenario"], "target": goal, "measured": measured,
                       "pass": bool(ok)})  # fmt: skip

    def ratio(row: dict, key: str) -> float:
        return row.get(f"{key}_ratio", float("nan"))

    for row in rows:
        if row["target"] != "medease":
            continue
        scenario = row["scenario"]
        if row["messages"]:
            check(row, "every message delivered (worst round)", f"{row['delivered_min']:.2%}",
                  row["delivered_min"] >= 1.0)  # fmt: skip
        if scenario.startswith("fanout"):
            check(row, "p99 <= 2x floor", f"{ratio(row, 'p99_ms'):g}x", ratio(row, "p99_ms") <= 2)
            check(row, "p99 <= 50 ms", f"{row['p99_ms']:,.1f} ms", row["p99_ms"] <= 50)
            check(row, "CPU / delivery <= 2x floor", f"{ratio(row, 'cpu_us_per_delivery'):g}x",
                  ratio(row, "cpu_us_per_delivery") <= 2)  # fmt: skip
        elif scenario.startswith("pairs") and row["nodes"] == 1:
            check(row, "p99 <= 100 ms", f"{row['p99_ms']:,.1f} ms", row["p99_ms"] <= 100)
            check(row, "CPU / delivery <= 2x floor", f"{ratio(row, 'cpu_us_per_delivery'):g}x",
                  ratio(row, "cpu_us_per_delivery") <= 2)  # fmt: skip
        elif scenario.startswith("pairs"):
            single = by.get((scenario.removesuffix(", 2 nodes"), "medease"))
            if single and single["cpu_us_per_delivery"] > 0:
                cost = row["cpu_us_per_delivery"] / single["cpu_us_per_delivery"]
                measured = f"{cost:.2f}x"
                # The floor's own two-node cost, for reference (not a target).
                relay = by.get((scenario, "relay"))
                relay_single = by.get((single["scenario"], "relay"))
                if relay and relay_single and relay_single["cpu_us_per_delivery"] > 0:
                    reference = relay["cpu_us_per_delivery"] / relay_single["cpu_us_per_delivery"]
                    measured += f" (relay {reference:.2f}x)"
                check(row, "CPU / delivery <= 1.5x one process", measured, cost <= 1.5)
        elif scenario.startswith("idle"):
            check(row, "KiB / idle socket <= floor", f"{ratio(row, 'kib_per_socket'):g}x",
                  ratio(row, "kib_per_socket") <= 1)  # fmt: skip
            share = row["idle_core_share"]
            check(row, "idle sockets < 5% of a core", f"{share:.1%}", share < 0.05)
    return checks


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | server | delivered (or flagged) | p50 ms | p99 ms | CPU µs / delivery "
        "| KiB / idle socket | idle CPU (core) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(row: dict, key: str, digits: int = 1, percent: bool = False) -> str:
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        text = f"{value:.1%}" if percent else f"{value:,.{digits}f}"
        ratio = row.get(f"{key}_ratio")
        return f"{text} ({ratio:g}x)" if ratio is not None else text

    for row in rows:
        delivered = "-"
        if row["messages"]:
            delivered = f"{row['delivered']:.1%} ({row['delivered_or_flagged']:.1%})"
        lines.append(
            f"| {row['scenario']} | {row['target']} | {delivered} "
            f"| {cell(row, 'p50_ms')} | {cell(row, 'p99_ms')} "
            f"| {cell(row, 'cpu_us_per_delivery', 0) if row['messages'] else '-'} "
            f"| {cell(row, 'kib_per_socket')} | {cell(row, 'idle_core_share', percent=True)} |"
        )
    return "\n".join(lines)


def targets_table(checks: list[dict]) -> str:
    lines = ["| scenario | issue 12 target | MedEase | |", "|---|---|---:|---|"]
    for check in checks:
        verdict = "pass" if check["pass"] else "**FAIL**"
        lines.append(
            f"| {check['scenario']} | {check['target']} | {check['measured']} | {verdict} |"
        )
    return "\n".join(lines)


PRESETS = {
    "quick": {
        "fanout_sockets": [200], "fanout_messages": 30, "pairs": [250], "pairs_rate": 50.0,
        "pairs_seconds": 8.0, "two_node": [250], "idle": [500], "idle_seconds": 10.0,
    },
    "full": {
        "fanout_sockets": [200, 1000], "fanout_messages": 100, "pairs": [500, 2500],
        "pairs_rate": 250.0, "pairs_seconds": 20.0, "two_node": [2500], "idle": [5000],
        "idle_seconds": 30.0,
    },
    # Exactly issue 12's scenarios: 1,000 sockets at 10 messages/s; 2,500 x 2 at 250/s on
    # one process and across two; 5,000 idle sockets for 30 s.
    "issue12": {
        "fanout_sockets": [1000], "fanout_messages": 100, "pairs": [2500], "pairs_rate": 250.0,
        "pairs_seconds": 20.0, "two_node": [2500], "idle": [5000], "idle_seconds": 30.0,
    },
}  # fmt: skip


def raise_open_files(sockets: int) -> None:
    """Each socket is a descriptor here and one in the server (which inherits this limit)."""
    wanted = 2 * sockets + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            print(f"warning: RLIMIT_NOFILE hard limit {hard} < {wanted}", file=sys.stderr)
            wanted = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(n) for n in s.split(",") if n]  # noqa: E731
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    preset.add_argument("--issue12", action="store_true", help="issue 12's scenarios only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fanout-sockets", type=ints, default=None, help="e.g. 200,1000")
    parser.add_argument("--fanout-messages", type=int, default=None)
    parser.add_argument("--fanout-rate", type=float, default=10.0, help="messages/s")
    parser.add_argument("--pairs", type=ints, default=None, help="consultations, e.g. 500,2500")
    parser.add_argument("--pairs-rate", type=float, default=None, help="aggregate messages/s")
    parser.add_argument("--pairs-seconds", type=float, default=None)
    parser.add_argument(
        "--two-node", type=ints, default=None, help="pairs across two processes, e.g. 2500"
    )
    parser.add_argument("--idle", type=ints, default=None, help="idle sockets, e.g. 5000")
    parser.add_argument("--idle-seconds", type=float, default=None)
    parser.add_argument(
        "--targets", type=lambda s: s.split(","), default=list(TARGETS), help="relay,medease"
    )
    parser.add_argument("--json", help="write runs, summary and targets as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--server-cpu",
        type=int,
        default=None,
        help="the core the servers run on (default: the first)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy each MedEase server while it sends (raw stacks)"
    )
    args = parser.parse_args()
    # A terminated run still stops its servers and drops its database (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = "quick" if args.quick else "issue12" if args.issue12 else "full"
    for key, value in PRESETS[chosen].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    raise_open_files(
        max([*(n + 1 for n in args.fanout_sockets), *(2 * n for n in args.pairs),
             *(2 * n for n in args.two_node), *args.idle, 1])
    )  # fmt: skip

    # The load generator's collector works in the same batches as the web process's
    # (WEB_GC_THRESHOLDS), for the same reason.
    gc.set_threshold(50_000, 20, 10)
    started = time.monotonic()
    load_before = os.getloadavg()
    runs = Bench(args).run()
    rows = summarize(runs)
    checks = targets(rows)
    print()
    print(table(rows))
    print()
    print(targets_table(checks))
    load_after = os.getloadavg()
    print(
        f"\n{len(runs)} runs in {time.monotonic() - started:.0f} s; load average "
        f"{' '.join(f'{n:.2f}' for n in load_before)} before, "
        f"{' '.join(f'{n:.2f}' for n in load_after)} after; per run: "
        f"{', '.join(f'{r.load1:g}' for r in runs)}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"runs": [asdict(r) for r in runs], "summary": rows, "targets": checks},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
