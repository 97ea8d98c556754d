"""Processes for the scale tests: a streaming replica, redis-servers, uvicorn web nodes and a
Celery worker, each started in its own process group and always stopped again.

Nothing here imports Django: the servers under test read their settings from the
environment at start-up, so they run as separate processes with the environment each test
needs, and the tests drive them over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PG_REPLICA_SCRIPT = REPO / "scripts" / "cluster" / "pg_replica.py"
REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessDied(AssertionError):
    """A process a test waits for exited: stop waiting at once."""


def wait_until(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = ""
):
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ProcessDied:
            raise
        except Exception as exc:  # still starting: keep polling
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, grace: float = 10):
    """Stop a process started with start_new_session=True, and all its children."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class Postgres:
    """Connection facts of the primary the tests run against."""

    host: str
    port: int
    user: str
    password: str = ""

    def url(self, dbname: str, *, port: int | None = None) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgres://{auth}@{self.host}:{port or self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", *, port: int | None = None, **kwargs):
        return psycopg.connect(
            host=self.host,
            port=port or self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
            **kwargs,
        )

    def query(self, sql: str, params=(), *, dbname: str = "postgres", port: int | None = None):
        with self.connect(dbname, port=port) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []


@dataclass
class Replica:
    """A streaming replica of the primary, made with pg_basebackup -R."""

    primary: Postgres
    root: Path
    port: int
    apply_delay: str

    def _script(self, *args: str) -> None:
        subprocess.run(
            [PYTHON, str(PG_REPLICA_SCRIPT), *args, "--dir", str(self.root)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def create(self) -> None:
        self._script(
            "create",
            "--port",
            str(self.port),
            "--apply-delay",
            self.apply_delay,
            "--primary-host",
            self.primary.host,
            "--primary-port",
            str(self.primary.port),
            "--user",
            self.primary.user,
        )

    def stop(self) -> None:
        self._script("stop", "--mode", "fast")

    def start(self) -> None:
        self._script("start")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._script("destroy")

    def query(self, sql: str, params=(), *, dbname: str = "postgres"):
        return self.primary.query(sql, params, dbname=dbname, port=self.port)

    def pause_replay(self) -> None:
        self.query("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.query("SELECT pg_wal_replay_resume()")


@dataclass
class RedisServer:
    """A redis-server of our own on a spare port, so that tests may kill it."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=(self.root / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ping, timeout=20, what=f"redis-server on {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, sig=signal.SIGKILL)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung Redis)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)


class Http:
    """A thin httpx client that keeps no cookies: API clients are recognised by token only,
    so read-your-writes must not depend on the browser cookie."""

    def __init__(self, base_url: str, *, ip: str | None = None) -> None:
        self.base_url = base_url
        self.ip = ip
        self.client = httpx.Client(base_url=base_url, timeout=30)

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.ip:
            headers.setdefault("X-Forwarded-For", self.ip)
        response = self.client.request(method, path, headers=headers, **kwargs)
        self.client.cookies.clear()
        return response

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def close(self) -> None:
        self.client.close()


def aliases(response: httpx.Response, header: str = "X-DB-Selects") -> dict[str, int]:
    """Parse ``default=1,replica1=3`` from a diagnostics header."""
    raw = response.headers.get(header, "")
    result: dict[str, int] = {}
    for part in filter(None, raw.split(",")):
        name, _, count = part.partition("=")
        result[name] = int(count)
    return result


def recovery(response: httpx.Response) -> dict[str, str]:
    raw = response.headers.get("X-DB-Recovery", "")
    return dict(part.split("=", 1) for part in filter(None, raw.split(",")))


@dataclass
class Node:
    """One uvicorn web node (or a Celery worker) with its environment."""

    name: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # e.g. ["taskset", "-c", "0"] (bench/http_bench.py pins the server to one core)
    command_prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, *, ip: str | None = None) -> Http:
        return Http(self.url, ip=ip)

    def start(self, *, timeout: float = 90) -> None:
        self.spawn()
        self.wait_ready(timeout=timeout)

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                PYTHON,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "off",
                "--no-access-log",
                # The Procfile's websocket flags (docs/adr/0005-chat-transport.md).
                "--ws",
                "medease.keepalive:BatchedKeepaliveProtocol",
                "--ws-per-message-deflate",
                "false",
            ],
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, *, timeout: float = 90) -> None:
        def live() -> bool:
            if self.proc.poll() is not None:
                raise ProcessDied(f"{self.name} exited:\n{self.tail()}")
            return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200

        try:
            wait_until(live, timeout=timeout, interval=0.2, what=f"{self.name} to serve")
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Worker:
    """A Celery worker process (prefork, one child: the child is a fork, as in production)."""

    env: dict[str, str]
    log: Path
    queues: str
    include: str = ""
    proc: subprocess.Popen | None = None

    def start(self, *, timeout: float = 90) -> None:
        command = [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            self.queues,
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{unique('scale-')}@%h",
            "--loglevel",
            "INFO",
        ]
        if self.include:
            command += ["--include", self.include]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise ProcessDied(f"worker exited:\n{self.tail()}")
            return " ready." in self.log.read_text(errors="replace")

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what="the Celery worker")
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=15)
            self.proc = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_django(env: dict[str, str], code: str, *, timeout: float = 300) -> str:
    """Run Python with Django set up in a subprocess (migrate, seed); returns stdout."""
    script = "import django\ndjango.setup()\n" + code
    result = subprocess.run(
        [PYTHON, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        command = " ".join(args)
        raise AssertionError(f"manage.py {command} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def last_json_line(output: str):
    for line in reversed(output.strip().splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    raise AssertionError(f"no JSON in output:\n{output}")


def unique(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def started(*things) -> Iterator[None]:
    """Stop every started thing on the way out, whatever happens."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop() if hasattr(thing, "stop") else thing.kill()
