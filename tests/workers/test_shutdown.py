"""Stopping the Procfile's processes: SIGTERM ends web, worker and beat within 10 s.

Each process is started from its Procfile line the way honcho starts it (``sh -c`` in a
session of its own) and stopped the way honcho stops it (SIGTERM to its process group). The
web process serves a test-only URLconf (tests/workers/shutdown_urls.py) with a slow and a
stuck endpoint; the worker also loads tests/workers/shutdown_tasks.py, whose long task
counts its starts in Redis. The broker is Redis under a key prefix of this test's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings

from tests.workers.conftest import celery_broker
from tests.workers.test_worker import _broker_base_url, _database_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
STOP_BUDGET = 10.0  # seconds from SIGTERM to exit, for every process
ERROR_LINE = re.compile(r"\bERROR\b|\bCRITICAL\b|Traceback")


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One Procfile line, started and signalled as honcho does."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {what} did not happen:\n{self.log()[-4000:]}")

    def terminate(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, signalled_at: float) -> float:
        """Seconds from the signal to exit; fails past the budget."""
        deadline = signalled_at + STOP_BUDGET
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still runs {STOP_BUDGET}s after SIGTERM:\n{self.log()[-4000:]}"
            ) from None
        # Nothing of it may outlive the command honcho waits for (a shell that did not exec,
        # a pool child).
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return time.monotonic() - signalled_at
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: part of it still runs {STOP_BUDGET}s after SIGTERM")

    def error_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if ERROR_LINE.search(line)]

    def cleanup(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def stack(tmp_path):
    """Start Procfile processes against this test's database, Redis and broker prefix."""
    broker_url = _broker_base_url()
    prefix = f"medease-test-{uuid.uuid4().hex[:10]}:"
    key = f"medease-test-shutdown-{uuid.uuid4().hex[:10]}"
    counters = redis.Redis.from_url(settings.REDIS_URL)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_REPLICA_URLS", "CELERY_TASK_ALWAYS_EAGER", "PYTEST_CURRENT_TEST"}
    }
    env.update(
        {
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": broker_url,
            "CELERY_BROKER_KEY_PREFIX": prefix,
            "MEDEASE_VAR_DIR": str(tmp_path / "var"),
            "SHUTDOWN_TEST_KEY": key,
            "WORKER_CONCURRENCY": "1",
            "PORT": str(free_port()),
            # honcho runs the Procfile with the virtualenv's bin first on PATH (Makefile).
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
    )
    commands = procfile()
    started: list[Process] = []

    def start(name: str, *, suffix: str = "", **extra_env: str) -> Process:
        process = Process(
            f"{name}-{len(started)}", commands[name] + suffix, {**env, **extra_env}, tmp_path
        )
        started.append(process)
        return process

    def count(name: str) -> int:
        return int(counters.get(f"{key}:{name}") or 0)

    def web_url(path: str) -> str:
        return f"http://127.0.0.1:{env['PORT']}{path}"

    with pytest.MonkeyPatch.context() as monkeypatch:
        options = {"global_keyprefix": prefix}
        with celery_broker(monkeypatch, broker_url, options) as app:
            yield {
                "start": start,
                "count": count,
                "url": web_url,
                "app": app,
                "release": lambda: counters.set(f"{key}:release", 1),
            }
    for process in started:
        process.cleanup()
    broker = redis.Redis.from_url(broker_url)
    for pattern, client in ((f"{prefix}*", broker), (f"{key}:*", counters)):
        stale = list(client.scan_iter(match=pattern, count=500))
        if stale:
            client.delete(*stale)


def start_web(stack) -> Process:
    web = stack["start"]("web", DJANGO_SETTINGS_MODULE="tests.workers.shutdown_settings")

    def answers() -> bool:
        try:
            return httpx.get(stack["url"]("/health/live"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    web.wait_until(answers, "answering /health/live")
    return web


def start_worker(stack) -> Process:
    worker = stack["start"]("worker", suffix=" --include tests.workers.shutdown_tasks")
    worker.wait_until(lambda: "ready." in worker.log(), "worker ready")
    return worker


def request_in_background(url: str) -> dict:
    """GET ``url`` in a thread; the dict gets the status (or the error) when it ends."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["status"] = httpx.get(url, timeout=30).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    outcome["thread"] = threading.Thread(target=run, daemon=True)
    outcome["thread"].start()
    return outcome


def test_sigterm_stops_web_worker_and_beat_in_time_and_hands_the_task_back(stack):
    web = start_web(stack)
    worker = start_worker(stack)
    beat = stack["start"]("beat")
    beat.wait_until(lambda: "beat: Starting" in beat.log(), "beat started")

    stack["app"].send_task("tests.shutdown.long_task", kwargs={"seconds": 60}, queue="default")
    worker.wait_until(lambda: stack["count"]("started") == 1, "the long task started")
    request = request_in_background(stack["url"]("/test/slow"))
    web.wait_until(lambda: stack["count"]("slow-started") == 1, "the slow request started")

    signalled_at = time.monotonic()
    for process in (web, worker, beat):
        process.terminate()
    stopped_after = {p.name: p.wait_stopped(signalled_at) for p in (web, worker, beat)}

    assert all(seconds < STOP_BUDGET for seconds in stopped_after.values()), stopped_after
    # The request in flight was finished, not cut off.
    request["thread"].join(timeout=5)
    assert request.get("status") == 200, request
    # The task was cancelled, not finished: a new worker gets it from the broker.
    assert stack["count"]("finished") == 0
    second = start_worker(stack)
    second.wait_until(lambda: stack["count"]("started") == 2, "the task redelivered")
    stack["release"]()
    second.wait_until(lambda: stack["count"]("finished") == 1, "the redelivered task finished")
    signalled_at = time.monotonic()
    second.terminate()
    second.wait_stopped(signalled_at)

    assert (stack["count"]("started"), stack["count"]("finished")) == (2, 1)
    assert "Restoring 1 unacknowledged message(s)" in worker.log()
    for process in (web, worker, beat, second):
        assert process.error_lines() == [], (process.name, process.error_lines())


def test_a_request_stuck_in_a_loop_does_not_hold_the_web_process(stack):
    web = start_web(stack)
    request = request_in_background(stack["url"]("/test/stuck"))
    web.wait_until(lambda: stack["count"]("stuck-started") == 1, "the stuck request started")

    signalled_at = time.monotonic()
    web.terminate()
    stopped_after = web.wait_stopped(signalled_at)

    # uvicorn waits --timeout-graceful-shutdown (3 s), cancels the request and exits; the
    # thread still looping does not keep the process alive.
    assert 2.5 < stopped_after < STOP_BUDGET
    assert web.process.returncode == -signal.SIGTERM
    request["thread"].join(timeout=5)
    assert "status" not in request, request  # the connection was closed, no answer
    assert [line for line in web.error_lines() if "timeout graceful shutdown" not in line] == []
