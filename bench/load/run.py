#!/usr/bin/env python
"""`make load`: the clinic day of bench/load/locustfile.py through `make cluster` (nginx,
two web nodes, a streaming replica), with the thresholds checked and printed.

    .venv/bin/python bench/load/run.py                      # steps 50,100,... until one fails
    .venv/bin/python bench/load/run.py --users 200 --duration 120   # one run at 200 users
    .venv/bin/python bench/load/run.py --steps 100,200,300 --duration 60 --repeat-last

First it seeds the load clinic on the cluster's database (bench/load/seed.py, with the
cluster's environment) and gives every account a token, so a step starts with its people
signed in (their sign-ins during the day are part of the mix). Step mode runs Locust
headless for each number of users, stops at the first step that fails a threshold, and
prints a table: users, req/s, API p50/p95/p99, errors, and the CPU the web nodes and
PostgreSQL used per request, from /proc (so "req/s per web core" does not depend on what
else the machine runs), the load average, and the replica's lag seen by /health/ready.
Exit code 0 when the single run (or, in step mode, at least the first step) met the
thresholds. Bounded: every step has its duration; only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts" / "cluster"))
import cluster  # noqa: E402 - the cluster's own environment, ports and state directory

STATE = ROOT / "var" / "load"
LOCUST = str(Path(sys.executable).with_name("locust"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def web_pids() -> list[int]:
    pids = []
    for index in range(1, len(cluster.WEB_PORTS) + 1):
        pid = cluster.pid_of(f"web{index}")
        if pid:
            pids.extend(tree(pid))
    return pids


def primary_pids() -> list[int]:
    """The primary's backends serving the cluster's database (the server is shared with
    other databases, whose backends are not counted)."""
    out = subprocess.run(
        [
            "psql",
            cluster.DATABASE_URL,
            "-Atc",
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(line) for line in out.split() if line.strip().isdigit()]


def replica_pids() -> list[int]:
    """The replica's whole server: its reads for the nodes and its WAL replay (of every
    database on the primary's server, not only the cluster's)."""
    postmaster = cluster.REPLICA_DIR / "data" / "postmaster.pid"
    if not postmaster.exists():
        return []
    return tree(int(postmaster.read_text().split()[0]))


class CpuMeter:
    """CPU seconds a set of processes used between start() and stop() (processes that
    appear in between count from zero: pools open connections under load)."""

    def __init__(self, find) -> None:
        self.find = find

    def start(self) -> None:
        self.before = {pid: cpu_seconds(pid) for pid in self.find()}

    def stop(self) -> float:
        return sum(cpu_seconds(pid) - self.before.get(pid, 0.0) for pid in self.find())


class LagSampler(threading.Thread):
    """The worst replica lag /health/ready reported while a step ran (every 2 s)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.worst, self.done = base, None, threading.Event()

    def run(self) -> None:
        while not self.done.wait(2):
            try:
                with urllib.request.urlopen(f"{self.base}/health/ready", timeout=2) as response:  # noqa: S310
                    checks = json.loads(response.read())["checks"]
            except Exception:  # noqa: S112 - a missed sample is not a result
                continue
            for name, check in checks.items():
                lag = (
                    check.get("lag_seconds", check.get("lag")) if isinstance(check, dict) else None
                )
                if name.startswith("replica") and isinstance(lag, int | float):
                    self.worst = max(self.worst or 0.0, float(lag))


def seed(args: argparse.Namespace, env: dict[str, str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            str(HERE / "seed.py"),
            "--patients",
            str(args.patients),
            "--providers",
            str(args.providers),
            "--out",
            str(STATE / "accounts.json"),
            "--tokens",
            str(STATE / "tokens.json"),
        ],
        env=env,
        check=True,
    )


def step(args: argparse.Namespace, users: int, label: str) -> dict:
    summary_path = STATE / f"summary-{label}.json"
    summary_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOAD_ACCOUNTS": str(STATE / "accounts.json"),
        "LOAD_TOKENS": str(STATE / "tokens.json"),
        "LOAD_SUMMARY": str(summary_path),
    }
    web, db, replica = CpuMeter(web_pids), CpuMeter(primary_pids), CpuMeter(replica_pids)
    lag = LagSampler(args.host)
    spawn_rate = args.spawn_rate or max(users / 5, 1)
    command = [
        LOCUST,
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        f"{spawn_rate:g}",
        "-t",
        f"{args.duration}s",
        "--stop-timeout",
        "10",
        "--host",
        args.host,
        "--loglevel",
        "WARNING",
    ]
    print(f"\n=== {users} users for {args.duration} s ({label}) ===", flush=True)
    load_before = os.getloadavg()[0]
    web.start()
    db.start()
    replica.start()
    lag.start()
    started = time.monotonic()
    code = subprocess.run(command, env=env, check=False, cwd=ROOT).returncode
    seconds = time.monotonic() - started
    web_cpu, db_cpu, replica_cpu = web.stop(), db.stop(), replica.stop()
    lag.done.set()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    requests = summary.get("requests", 0)
    summary.update(
        users=users,
        exit_code=code,
        wall_seconds=seconds,
        web_cpu_seconds=web_cpu,
        web_cores_busy=web_cpu / seconds,
        db_cpu_seconds=db_cpu,
        web_ms_per_request=1000 * web_cpu / requests if requests else None,
        db_ms_per_request=1000 * db_cpu / requests if requests else None,
        replica_cpu_seconds=replica_cpu,
        replica_ms_per_request=1000 * replica_cpu / requests if requests else None,
        rps_per_web_core=requests / web_cpu if web_cpu else None,
        load_average=(load_before, os.getloadavg()[0]),
        replica_lag=lag.worst,
    )
    summary["passed"] = bool(summary.get("passed")) and code == 0
    return summary


def fmt(value, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


COLUMNS = (
    "users",
    "req/s",
    "API p50 / p95 / p99 ms",
    "errors",
    "web cores busy",
    "web ms/req",
    "req/s per web core",
    "users per web core",
    "primary ms/req",
    "replica ms/req",
    "replica lag s",
    "load avg",
    "thresholds",
)


def table(results: list[dict]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---:|" * (len(COLUMNS) - 2) + "---|---|",
    ]
    for r in results:
        busy = r.get("web_cores_busy")
        cells = [
            str(r["users"]),
            fmt(r.get("rps"), ".1f"),
            " / ".join(fmt(r.get(f"api_{p}"), ".0f") for p in ("p50", "p95", "p99")),
            fmt(r.get("error_rate"), ".2%"),
            fmt(busy, ".2f"),
            fmt(r.get("web_ms_per_request"), ".1f"),
            fmt(r.get("rps_per_web_core"), ".0f"),
            fmt(r["users"] / busy if busy else None, ".0f"),
            fmt(r.get("db_ms_per_request"), ".2f"),
            fmt(r.get("replica_ms_per_request"), ".2f"),
            fmt(r.get("replica_lag"), ".2f"),
            "{:.1f} → {:.1f}".format(*r["load_average"]),
            "PASS" if r["passed"] else "FAIL",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host", default=f"http://127.0.0.1:{cluster.PORT}", help="nginx of `make cluster`"
    )
    parser.add_argument("--users", type=int, help="one run at this many users (no steps)")
    parser.add_argument("--steps", default="50,100,150,200,250,300,400,500", help="users per step")
    parser.add_argument("--duration", type=int, default=60, help="seconds per step")
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second")
    parser.add_argument(
        "--repeat-last", action="store_true", help="run the last passing step again"
    )
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--providers", type=int, default=20)
    parser.add_argument("--no-seed", action="store_true", help="reuse var/load/accounts.json")
    parser.add_argument("--json", type=Path, help="write every step's summary there")
    args = parser.parse_args()

    try:
        with urllib.request.urlopen(f"{args.host}/health/ready", timeout=5) as response:  # noqa: S310
            response.read()
    except Exception as exc:
        raise SystemExit(f"no cluster at {args.host} ({exc}): run `make cluster` first") from None
    if not args.no_seed:
        seed(args, cluster.cluster_env())

    results: list[dict] = []
    if args.users:
        results.append(step(args, args.users, f"{args.users}"))
    else:
        for users in (int(n) for n in args.steps.split(",")):
            result = step(args, users, f"{users}")
            results.append(result)
            if not result["passed"]:
                break
        passing = [r for r in results if r["passed"]]
        if args.repeat_last:
            # The last step that passed (or the first, failed one): is the result stable?
            again = (passing or results)[-1]["users"]
            results.append(step(args, again, f"{again}-again"))
    print("\n" + table(results))
    passing = [r for r in results if r["passed"]]
    if passing:
        best = max(passing, key=lambda r: r["rps"])
        print(
            f"\nmost users meeting the thresholds: {best['users']} at {best['rps']:.1f} req/s "
            f"({best['web_cores_busy']:.2f} web cores busy: "
            f"{fmt(best.get('rps_per_web_core'), '.0f')} req/s per fully used web core)"
        )
    else:
        print("\nno step met the thresholds")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.exit(0 if passing and (args.users is None or results[0]["passed"]) else 1)


if __name__ == "__main__":
    main()
