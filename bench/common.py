"""What the HTTP benches share: scratch services, pinning, process CPU, the load loop, tables.

Used by http_bench.py, http_floor.py and storage_bench.py. Each of them puts the repository
root on ``sys.path`` before importing this module (they run as scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.scale.harness import Postgres, RedisServer, unique

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The benches measure the work, not the limits.
RAISED_LIMITS = {
    name: "1000000/m"
    for name in (
        "RATE_LOGIN_ACCOUNT",
        "RATE_LOGIN_IP",
        "RATE_REGISTER_IP",
        "RATE_API_USER",
        "RATE_BOOKING_USER",
        "RATE_MESSAGE_USER",
    )
}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (fields 14 and 15 of /proc/<pid>/stat); gone: 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += process_tree(int(child))
    return pids


def backend_pids(primary: Postgres, database: str) -> list[int]:
    """The PostgreSQL backends serving the bench database (the server's pooled connections)."""
    rows = primary.query("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
    return [pid for (pid,) in rows]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def postgres_server(database_url: str) -> Postgres:
    """The PostgreSQL server of ``--database-url``; its database part is not used."""
    if not database_url.startswith("postgres"):
        raise SystemExit("set DATABASE_URL (or --database-url) to a PostgreSQL server")
    parsed = urlparse(database_url)
    return Postgres(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password or "",
    )


class Scratch:
    """A database and a redis-server of the bench's own, and a temporary directory."""

    def __init__(self, primary: Postgres, database: str, root: Path) -> None:
        self.primary = primary
        self.database = database
        self.root = root
        self.redis = RedisServer(root=root / "redis")

    def backend_pids(self) -> list[int]:
        return backend_pids(self.primary, self.database)


@contextlib.contextmanager
def scratch(primary: Postgres, *, prefix: str, create_sql: str = "") -> Iterator[Scratch]:
    """Creates them, yields, and removes all three whatever happened (the database FORCEd)."""
    s = Scratch(
        primary,
        unique(f"medease_{prefix}_"),
        Path(tempfile.mkdtemp(prefix=f"medease-{prefix.replace('_', '-')}-")),
    )
    try:
        primary.query(f'CREATE DATABASE "{s.database}"{create_sql}')
        s.redis.start()
        yield s
    finally:
        s.redis.kill()
        with contextlib.suppress(Exception):
            primary.query(f'DROP DATABASE IF EXISTS "{s.database}" WITH (FORCE)')
        shutil.rmtree(s.root, ignore_errors=True)


def web_environment(s: Scratch, **settings: str) -> dict[str, str]:
    """This process's environment minus the product's settings, then the bench's own ones."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_", "REDIS_", "CELERY_", "RATE_", "MEDEASE_", "STORAGE_", "DEBUG")
        )
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=s.primary.url(s.database),
        REDIS_URL=s.redis.url(0),
        CELERY_BROKER_URL=s.redis.url(1),
        MEDEASE_VAR_DIR=str(s.root / "var"),
        DEBUG="0",
        SECRET_KEY="bench-" + "x" * 50,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="0",
        LOG_LEVEL="WARNING",
        **RAISED_LIMITS,
    )
    env.update(settings)
    return env


def server_core_prefix(cpus: list[int]) -> list[str]:
    """``taskset`` pinning a server to the first CPU; none with a single CPU or no taskset."""
    if len(cpus) > 1 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpus[0])]
    return []


def keep_off_server_core(cpus: list[int]) -> None:
    """The load generator (this process) leaves the servers' core to them."""
    os.sched_setaffinity(0, set(cpus[1:]))


class Meter:
    """A reading taken just before and just after the load; ``used`` is the difference."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.used = 0.0

    def start(self) -> None:
        self.before = self.read()

    def stop(self) -> None:
        self.used = self.read() - self.before


class CpuMeter(Meter):
    """CPU-seconds of some processes; ``pids`` is asked again at the end and only those alive
    throughout count (a pool's PostgreSQL backends come and go)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__(lambda: cpu_seconds(self.pids_before))
        self.pids = pids

    def start(self) -> None:
        self.pids_before = self.pids()
        super().start()

    def stop(self) -> None:
        alive = set(self.pids())
        self.used = cpu_seconds([p for p in self.pids_before if p in alive]) - self.before


def client_cpu() -> Meter:
    """This process's CPU: the load generator's."""
    return Meter(lambda: sum(os.times()[:2]))


async def hammer(
    url: str,
    request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    *,
    concurrency: int,
    seconds: float,
    limits: httpx.Limits,
    meters: Sequence[Meter] = (),
) -> tuple[list[float], Counter[str], float]:
    """``concurrency`` clients send ``request(client)`` back to back for ``seconds``.

    Returns each request's latency, the count of each status (an exception's class name
    where no response came) and the seconds it took. The meters are read right around the
    load, after the client's set-up.
    """
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = await request(client)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                # A login sets a session cookie; each request stands on its own token.
                client.cookies.clear()

        for meter in meters:
            meter.start()
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        for meter in meters:
            meter.stop()
    return latencies, statuses, elapsed


def errors(statuses: Counter[str]) -> int:
    return sum(count for status, count in statuses.items() if status not in ("200", "201"))


def markdown_table(header: str, rows: list[tuple]) -> str:
    """``header``: the column names separated by " | "; a row: one value a column."""
    columns = header.split(" | ")
    lines = [f"| {header} |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
