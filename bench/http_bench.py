#!/usr/bin/env python
"""HTTP throughput and latency of one web node, per CPU core: login, me, provider list, ...

Self-contained and bounded. On the PostgreSQL server of ``DATABASE_URL`` (or
``--database-url``) it creates a database of its own (``medease_bench_<random>``),
migrates and seeds it; it starts a redis-server of its own on a spare port; it starts one
uvicorn process (the production unit: one process per core) pinned to CPU 0 with
``taskset`` while the load generator pins itself to the other CPUs; then, for each
scenario, it warms up, runs ``--duration`` seconds with ``--concurrency`` clients on
loopback, and reports:

* requests/s and latency p50/p99 as seen by the clients;
* the CPU the server process used (from /proc), hence **requests/s per fully used core**
  = requests / server CPU-seconds. That figure does not depend on what else the machine
  was doing (PostgreSQL, Redis and the load generator share it), which is what a capacity
  plan needs; PostgreSQL's own CPU is reported apart.

Everything is removed at the end (processes, database). Typical run: about a minute and a
half on two slow cores.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/http_bench.py
    .venv/bin/python bench/http_bench.py --scenarios me,providers --duration 20 --json out.json

Results and how the capacity plan uses them: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    CpuMeter,
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
from tests.scale.harness import Node, last_json_line, manage, run_django, unique  # noqa: E402

SCENARIOS = ("login", "me", "providers", "slots", "consultations", "dashboard", "message_send")
BENCH_PASSWORD = "bench-password-9-long"  # noqa: S105 - a throwaway bench database

SEED = """
import json
from tests.scale.seed import seed
from accounts import services
data = seed(providers=4)
emails = []
for n in range({users}):
    user = services.user_create(email=f"bench{{n}}-{tag}@bench.test", password={password!r},
                                full_name=f"Bench {{n}}", validate=False)
    emails.append(user.email)
data["patients"] = emails
print(json.dumps(data))
"""


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float
    server_cores_used: float
    rps_per_core: float
    server_cpu_ms_per_request: float
    postgres_cpu_ms_per_request: float
    client_cores_used: float


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        url: str,
        seed: dict,
        tokens: list[str],
        pg_pids: Callable[[], list[int]],
    ):
        self.pg_pids = pg_pids
        self.consultations: list[int] = []
        self.args = args
        self.url = url
        self.seed = seed
        self.tokens = tokens
        self.counter = 0

    def request(self, client: httpx.AsyncClient, scenario: str):
        self.counter += 1
        n = self.counter
        token = self.tokens[n % len(self.tokens)]
        headers = {"Authorization": f"Bearer {token}"}
        provider = self.seed["providers"][n % len(self.seed["providers"])]["id"]
        if scenario == "login":
            email = self.seed["patients"][n % len(self.seed["patients"])]
            return client.post(
                "/api/v1/auth/login", json={"email": email, "password": BENCH_PASSWORD}
            )
        if scenario == "message_send":
            # Stored, then fanned out through the channel layer (no socket listens here).
            consultation = self.consultations[n % len(self.tokens)]
            return client.post(
                f"/api/v1/consultations/{consultation}/messages",
                headers=headers,
                json={"body": f"bench message {n}", "client_id": f"bench-{n}"},
            )
        path = {
            "me": "/api/v1/me",
            "providers": "/api/v1/providers",
            "slots": f"/api/v1/providers/{provider}/slots",
            "consultations": "/api/v1/consultations",
            "dashboard": "/api/v1/dashboard",
        }[scenario]
        return client.get(path, headers=headers)

    async def run(self, scenario: str, *, seconds: float, server_pids: list[int]) -> Result:
        server, postgres, client = (
            CpuMeter(lambda: server_pids),
            CpuMeter(self.pg_pids),
            client_cpu(),
        )
        latencies, statuses, elapsed = await hammer(
            self.url,
            lambda http: self.request(http, scenario),
            concurrency=self.args.concurrency,
            seconds=seconds,
            limits=httpx.Limits(max_connections=self.args.concurrency),
            meters=(server, postgres, client),
        )
        cpu_used, pg_used, client_used = server.used, postgres.used, client.used
        count = len(latencies)
        return Result(
            scenario=scenario,
            requests=count,
            errors=errors(statuses),
            seconds=round(elapsed, 2),
            rps=round(count / elapsed, 1),
            p50_ms=round(percentile(latencies, 0.50) * 1000, 1),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
            server_cpu_seconds=round(cpu_used, 2),
            server_cores_used=round(cpu_used / elapsed, 2),
            rps_per_core=round(count / cpu_used, 1) if cpu_used else 0.0,
            server_cpu_ms_per_request=round(cpu_used * 1000 / max(count, 1), 2),
            postgres_cpu_ms_per_request=round(max(pg_used, 0) * 1000 / max(count, 1), 2),
            client_cores_used=round(client_used / elapsed, 2),
        )


def book_one_each(url: str, tokens: list[str], seed: dict) -> list[int]:
    """Each bench patient books a slot, so that it has a consultation to chat in."""
    booked = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for index, token in enumerate(tokens):
            headers = {"Authorization": f"Bearer {token}"}
            provider = seed["providers"][index % len(seed["providers"])]["id"]
            for slot in client.get(
                f"/api/v1/providers/{provider}/slots?limit=100", headers=headers
            ).json()["results"]:
                response = client.post(
                    "/api/v1/consultations",
                    headers=headers,
                    json={"slot": slot["id"], "reason": "bench"},
                )
                client.cookies.clear()
                if response.status_code == 201:
                    booked.append(response.json()["id"])
                    break
            else:
                raise SystemExit("no free slot to book for the message_send scenario")
    return booked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--pool", type=int, default=10, help="DATABASE_POOL_MAX_SIZE")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)}; choose from {SCENARIOS}")

    primary = postgres_server(args.database_url)
    node: Node | None = None
    cpus = sorted(os.sched_getaffinity(0))
    with scratch(primary, prefix="bench") as bench_db:
        try:
            env = web_environment(bench_db, DATABASE_POOL_MAX_SIZE=str(args.pool))
            print(f"setting up {bench_db.database} ...", file=sys.stderr)
            manage(env, "migrate", "--noinput")
            seed = last_json_line(
                run_django(
                    env,
                    SEED.format(users=args.users, tag=unique(), password=BENCH_PASSWORD),
                )
            )
            # One web process on one core; the load generator keeps off that core.
            prefix = server_core_prefix(cpus)
            node = Node(name="bench", env=env, log=bench_db.root / "server.log")
            node.command_prefix = prefix
            if prefix:
                keep_off_server_core(cpus)
            node.start()
            server_pids = process_tree(node.proc.pid)

            with httpx.Client(base_url=node.url, timeout=30) as client:
                tokens = []
                for email in seed["patients"]:
                    response = client.post(
                        "/api/v1/auth/login", json={"email": email, "password": BENCH_PASSWORD}
                    )
                    response.raise_for_status()
                    tokens.append(response.json()["token"])
                    client.cookies.clear()
            bench = Bench(args, node.url, seed, tokens, pg_pids=bench_db.backend_pids)
            if "message_send" in scenarios:
                bench.consultations = book_one_each(node.url, tokens, seed)
            results = []
            for scenario in scenarios:
                asyncio.run(bench.run(scenario, seconds=args.warmup, server_pids=server_pids))
                result = asyncio.run(
                    bench.run(scenario, seconds=args.duration, server_pids=server_pids)
                )
                results.append(result)
                print(
                    f"{scenario:14} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.1f} ms  "
                    f"p99 {result.p99_ms:7.1f} ms  server {result.server_cores_used:.2f} cores "
                    f"→ {result.rps_per_core:7.1f} req/s per core, PostgreSQL "
                    f"{result.postgres_cpu_ms_per_request} ms/request, errors {result.errors}",
                    file=sys.stderr,
                )
        finally:
            if node is not None:
                node.stop()

    table = markdown_table(
        "scenario | req/s | p50 ms | p99 ms | server cores used | **req/s per core** "
        "| web CPU ms/req | PostgreSQL CPU ms/req | client cores | errors",
        [
            (
                r.scenario,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.server_cores_used,
                f"**{r.rps_per_core}**",
                r.server_cpu_ms_per_request,
                r.postgres_cpu_ms_per_request,
                r.client_cores_used,
                r.errors,
            )
            for r in results
        ],
    )
    print(
        f"\nOne uvicorn process pinned to CPU {cpus[0]}, {args.concurrency} concurrent clients, "
        f"{args.duration:.0f} s per scenario, {os.cpu_count()} CPUs "
        f"({statistics.mean(os.getloadavg()):.2f} load average):\n"
    )
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
