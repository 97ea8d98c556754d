"""Serving the real product from a test: the Procfile's web command on a free loopback
port, on the test's own database and Redis, so what the test writes the server sees.

The server's settings are the product's with cheap password hashes
(tests/server_settings.py): a registration or login at the product's Argon2 cost took
seconds on the shared CI box, and no test of a started server is about that cost."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from tests.procfile import procfile_web_command

BASE_DIR = Path(settings.BASE_DIR)
START_TIMEOUT = 90  # two slow shared cores


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(port: int | None = None) -> str:
    """The test database's URL (optionally through another port, e.g. a proxy)."""
    params = connection.settings_dict
    auth = params["USER"] or ""
    if params.get("PASSWORD"):
        auth += f":{params['PASSWORD']}"
    host = params["HOST"] or "127.0.0.1"
    return f"postgres://{auth}@{host}:{port or params['PORT'] or 5432}/{params['NAME']}"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_until_live(base: str, process: subprocess.Popen, log: Path, what: str) -> None:
    """Poll /health/live until it answers 200; fail with the log if the server dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not up in {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def web_node(tmp_path: Path, name: str = "web", **extra_env: str) -> Iterator[tuple[str, Path]]:
    """One web process serving the product (two of them are two nodes of one cluster);
    yields its base URL and its log file, and stops it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "MEDEASE_REQUIRE_SERVICES": "1",
        "MEDEASE_VAR_DIR": str(tmp_path / f"var-{name}"),
        "DATABASE_REPLICA_URLS": "",
        "DATABASE_POOL_MAX_SIZE": "4",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            procfile_web_command(port), cwd=BASE_DIR, env=env, stdout=out, stderr=out
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_live(base, process, log, f"web server {name}")
        yield base, log
    finally:
        stop(process)
