#!/usr/bin/env python
"""Chat websocket fan-out benchmark: which ASGI server, which channel layer.

For each combination of server (uvicorn, daphne) and channels_redis layer
(``RedisChannelLayer`` "core", ``RedisPubSubChannelLayer`` "pubsub") this starts one real
server process on the real application (config.asgi), opens N idle websockets to one
consultation (200, then 1,000), and measures:

* memory per idle socket: the server's RSS growth divided by N;
* fan-out latency: a participant sends M messages over its own socket; for every message and
  every receiving socket, the time from the send to the socket receiving it (p50, p99). It
  includes the whole path: the send service's INSERT, commit, group_send, the layer, the
  consumer, the server's write, the client's read;
* delivery ratio: deliveries / (N x M) within a 5 s deadline per message.

Everything is local and bounded: a redis-server of its own on a spare port (never a shared
one), SQLite in a temporary directory (or ``--database-url``), loopback only, timeouts on
every wait. The client side is one asyncio process (uvloop when installed), so on a small
machine part of the latency is the client's own work on N sockets: compare the rows with
each other, not with another machine. Typical run: about 2-3 minutes on two slow cores.

    .venv/bin/python bench/ws_bench.py                      # all four combinations
    .venv/bin/python bench/ws_bench.py --servers uvicorn --layers core --sizes 200
    .venv/bin/python bench/ws_bench.py --output var/ws_bench.json

Not part of the test suite. Results and the decision: docs/adr/0005-chat-transport.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _uvicorn(ws: str, *extra: str):
    return lambda port: [
        sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--ws", ws, "--lifespan", "off", "--no-access-log",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


SERVERS = {
    # uvicorn as the Procfile ran it before this benchmark (permessage-deflate offered).
    "uvicorn": _uvicorn("websockets"),
    # Without permessage-deflate: no zlib state per socket, no compression per frame
    # (daphne/autobahn does not negotiate it at all).
    "uvicorn-nodeflate": _uvicorn("websockets", "--ws-per-message-deflate", "false"),
    # uvicorn's newer websockets implementation (the old one is deprecated).
    "uvicorn-sansio": _uvicorn("websockets-sansio", "--ws-per-message-deflate", "false"),
    "daphne": lambda port: [
        sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0",
        "config.asgi:application",
    ],
}  # fmt: skip
LAYERS = ("core", "pubsub")
DELIVERY_DEADLINE = 5.0
UNUSABLE = None  # bench users never sign in; tokens are issued directly
CONNECT_CONCURRENCY = 50


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


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class Result:
    server: str
    layer: str
    sockets: int
    messages: int
    connect_seconds: float
    rss_idle_mib: float
    kib_per_socket: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivery_ratio: float


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="medease-ws-bench-"))
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "MEDEASE_VAR_DIR": str(self.tmp / "var"),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DEBUG": "0",
            "SECRET_KEY": "ws-bench-not-a-secret-" + "x" * 40,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            # The benchmark measures fan-out, not our abuse limits.
            "RATE_API_USER": "1000000/m",
            "RATE_MESSAGE_USER": "1000000/m",
            "MESSAGING_WS_RATE_EVENTS": "1000000",
            "MESSAGING_TICKET_TTL_SECONDS": "300",
        }
        self.env.pop("DATABASE_REPLICA_URLS", None)
        self.env.pop("CHANNEL_LAYER_REDIS_URL", None)
        if args.database_url:
            self.env["DATABASE_URL"] = args.database_url
        else:
            self.env.pop("DATABASE_URL", None)

    # --- Infrastructure ------------------------------------------------------------------

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
            email="provider@bench.test", password=UNUSABLE, full_name="Bench Provider",
            role=Role.PROVIDER, organization=organization, specialty="GP", validate=False,
        )  # fmt: skip
        self.patient = accounts.user_create(
            email="patient@bench.test",
            password=UNUSABLE,
            full_name="Bench Patient",
            validate=False,
        )
        start = timezone.now() + timedelta(hours=1)
        self.consultation = Consultation.objects.create(
            patient=self.patient,
            provider=self.provider,
            organization=organization,
            scheduled_start=start,
            scheduled_end=start + timedelta(hours=1),
        )
        _, self.patient_token = accounts.token_issue(user=self.patient)
        _, self.provider_token = accounts.token_issue(user=self.provider)

    def tickets(self, user, token, count: int) -> list[str]:
        from messaging import services

        return [services.ws_ticket_issue(user=user, token=token) for _ in range(count)]

    def flush_redis(self) -> None:
        with socket.create_connection(("127.0.0.1", self.redis_port), 2) as sock:
            sock.sendall(b"FLUSHALL\r\n")  # our own throwaway server, never a shared one
            sock.recv(16)

    def start_server(self, server: str, layer: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**self.env, "CHANNEL_LAYER_BACKEND": layer}
        log = (self.tmp / f"{server}-{layer}.log").open("wb")
        process = subprocess.Popen(
            SERVERS[server](port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{server} exited; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, timeout=90, what=f"{server} to start")
        return process, port

    # --- One measurement -----------------------------------------------------------------

    async def measure(self, server: str, layer: str, port: int, pid: int, size: int) -> Result:
        from websockets.asyncio.client import connect

        cid = self.consultation.pk
        base = f"ws://127.0.0.1:{port}/ws/consultations/{cid}/?ticket="
        arrivals: dict[str, list[float]] = {}
        sockets = []
        readers = []

        async def reader(ws) -> None:
            with contextlib.suppress(Exception):
                async for frame in ws:
                    now = time.perf_counter()
                    if '"type":"message"' in frame:
                        client_id = json.loads(frame)["message"]["client_id"]
                        arrivals.setdefault(client_id, []).append(now)

        async def drain(ws) -> None:
            with contextlib.suppress(Exception):
                async for _frame in ws:
                    pass

        # Warm-up: one connection loads every code path before the baseline is taken.
        (warm,) = self.tickets(self.patient, self.patient_token, 1)
        async with connect(base + warm) as ws:
            await asyncio.sleep(0.2)
            await ws.close()
        await asyncio.sleep(0.5)
        rss_before = rss_kib(pid)

        tickets = self.tickets(self.patient, self.patient_token, size)
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        started = time.perf_counter()

        async def open_one(ticket: str) -> None:
            async with limit:
                ws = await connect(base + ticket, ping_interval=None, open_timeout=60)
                sockets.append(ws)
                readers.append(asyncio.ensure_future(reader(ws)))

        await asyncio.wait_for(asyncio.gather(*(open_one(t) for t in tickets)), 300)
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(2.0)  # let connects settle (presence, groups)
        rss_idle = rss_kib(pid)

        (sender_ticket,) = self.tickets(self.provider, self.provider_token, 1)
        sender = await connect(base + sender_ticket, ping_interval=None)
        # The sender's own copy (its acknowledgement) is not a delivery: drain it unrecorded.
        sender_reader = asyncio.ensure_future(drain(sender))
        latencies: list[float] = []
        delivered = 0
        for n in range(self.args.messages):
            client_id = f"{server}-{layer}-{size}-{n}"
            sent_at = time.perf_counter()
            await sender.send(
                json.dumps({"type": "message.send", "body": "x" * 120, "client_id": client_id})
            )
            deadline = sent_at + DELIVERY_DEADLINE
            while len(arrivals.get(client_id, ())) < size and time.perf_counter() < deadline:
                await asyncio.sleep(0.005)
            times = arrivals.get(client_id, [])
            delivered += min(len(times), size)
            if self.args.verbose:
                print(f"  message {n}: {len(times)}/{size} delivered", file=sys.stderr)
            latencies.extend((t - sent_at) * 1000 for t in times)
            await asyncio.sleep(0.1)

        await sender.close()
        sender_reader.cancel()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in readers:
            task.cancel()
        await asyncio.sleep(1.0)

        latencies.sort()

        def pct(p: float) -> float:
            if not latencies:
                return float("nan")
            return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))]

        return Result(
            server=server,
            layer=layer,
            sockets=size,
            messages=self.args.messages,
            connect_seconds=round(connect_seconds, 2),
            rss_idle_mib=round(rss_idle / 1024, 1),
            kib_per_socket=round((rss_idle - rss_before) / size, 1),
            p50_ms=round(statistics.median(latencies), 1) if latencies else float("nan"),
            p99_ms=round(pct(99), 1),
            max_ms=round(latencies[-1], 1) if latencies else float("nan"),
            delivery_ratio=round(delivered / (size * self.args.messages), 4),
        )

    # --- The whole run -------------------------------------------------------------------

    def run(self) -> list[Result]:
        results: list[Result] = []
        try:
            self.start_redis()
            self.setup_django()
            for server in self.args.servers:
                for layer in self.args.layers:
                    self.flush_redis()
                    process, port = self.start_server(server, layer)
                    try:
                        for size in self.args.sizes:
                            result = self.loop.run_until_complete(
                                self.measure(server, layer, port, process.pid, size)
                            )
                            results.append(result)
                            print(json.dumps(asdict(result)), flush=True)
                    finally:
                        stop(process)
        finally:
            stop(self.redis)
            if not self.args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                print(f"kept {self.tmp}", file=sys.stderr)
        return results

    @property
    def loop(self):
        if not hasattr(self, "_loop"):
            try:
                import uvloop

                self._loop = uvloop.new_event_loop()
            except ImportError:
                self._loop = asyncio.new_event_loop()
        return self._loop


def table(results: list[Result]) -> str:
    lines = [
        "| server | layer | sockets | p50 ms | p99 ms | max ms | delivered | KiB/idle socket "
        "| connect s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.layer} | {r.sockets} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} "
            f"| {r.delivery_ratio:.2%} | {r.kib_per_socket} | {r.connect_seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="uvicorn,daphne", type=lambda s: s.split(","))
    parser.add_argument("--layers", default="core,pubsub", type=lambda s: s.split(","))
    parser.add_argument(
        "--sizes", default="200,1000", type=lambda s: [int(n) for n in s.split(",")]
    )
    parser.add_argument("--messages", default=20, type=int, help="messages per size")
    parser.add_argument("--database-url", default="", help="PostgreSQL instead of SQLite")
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--verbose", action="store_true", help="deliveries of every message")
    args = parser.parse_args()
    for server in args.servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")
    for layer in args.layers:
        if layer not in LAYERS:
            parser.error(f"unknown layer {layer!r}; choose from {', '.join(LAYERS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(args.sizes) * 2 + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(wanted, soft)), hard))

    started = time.monotonic()
    results = Bench(args).run()
    print()
    print(table(results))
    print(f"\n{len(results)} runs in {time.monotonic() - started:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
