"""No audit event is lost once its response was sent (docs/adr/0007-audit-write-path.md).

Real processes: the Procfile's uvicorn with the stream write path and the Procfile's
``audit`` flusher, on this test's PostgreSQL and Redis. Clients read a consultation under
load; the web process and the flusher are SIGKILLed mid-load; a new flusher drains the
stream; every 200 the clients received has exactly one audit row (by request id). A
flusher cut off from PostgreSQL keeps the events in the stream and writes them when the
database is back; a web process cut off from the stream's Redis writes synchronously.
Outages are made with a TCP proxy in front of the real server that this test stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import Slot
from medease.audit_stream import FIELD, GROUP
from medease.models import AuditEvent
from tests.procfile import PROCFILE, procfile_web_command
from tests.webserver import START_TIMEOUT, database_url, free_port

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

BASE_DIR = Path(settings.BASE_DIR)
DRAIN_TIMEOUT = 60
CLIENTS = 4
KILL_AFTER = 100  # responses answered between the two SIGKILLs


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DRAIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


class TcpProxy:
    """Forwards 127.0.0.1:port to a server; ``stop`` refuses and cuts every connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            self._close(sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _address = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)


class Stack:
    """The web and audit processes of the Procfile, against this test's services."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            command, cwd=BASE_DIR, env={**self.env, **env}, stdout=log, stderr=log
        )
        process.log_path = log.name
        self.processes.append(process)
        return process

    def web(self, **env: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        process = self._start("web", procfile_web_command(port), env)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"web exited:\n{self.log(process)}")
            try:
                return httpx.get(f"{base}/health/live", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, "web answers /health/live", timeout=START_TIMEOUT)
        return process, base

    def audit(self, *, consumer: str, **env: str) -> subprocess.Popen:
        """The Procfile's ``audit`` line, run by a shell as honcho runs it (it execs)."""
        line = next(x for x in PROCFILE.read_text().splitlines() if x.startswith("audit:"))
        command = line.removeprefix("audit:").strip()
        return self._start(
            "audit", ["sh", "-c", command], {"AUDIT_FLUSH_CONSUMER": consumer, **env}
        )

    @staticmethod
    def log(process: subprocess.Popen) -> str:
        return Path(process.log_path).read_text(errors="replace")[-4000:]

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def stream_key():
    key = f"medease-test:audit:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield key
    client.delete(key, f"{key}:unreadable")


@pytest.fixture
def stack(transactional_db, tmp_path, stream_key):
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"PYTEST_CURRENT_TEST"}},
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url(),
        "DATABASE_REPLICA_URLS": "",
        "DATABASE_POOL_MAX_SIZE": "4",
        "REDIS_URL": settings.REDIS_URL,
        "AUDIT_REDIS_URL": settings.REDIS_URL,
        "AUDIT_WRITE_PATH": "stream",
        "AUDIT_STREAM_KEY": stream_key,
        "AUDIT_FLUSH_BATCH": "50",
        "AUDIT_FLUSH_BLOCK_MS": "200",
        "AUDIT_FLUSH_CLAIM_IDLE_SECONDS": "1",
        "RATE_API_USER": "100000/m",
        "MEDEASE_REQUIRE_SERVICES": "1",
        "MEDEASE_VAR_DIR": str(tmp_path / "var"),
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    processes = Stack(tmp_path, env)
    try:
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture
def reading(make_user, organization):
    """A booked consultation and its patient's token: (consultation, headers)."""
    provider = make_user(Role.PROVIDER, organization=organization)
    patient = make_user(Role.PATIENT)
    start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
    consultation, _created = consultation_services.consultation_book(
        patient=patient, slot_id=slot.pk, reason="Checkup", idempotency_key=""
    )
    raw, _token = account_services.token_issue(user=patient)
    return consultation, {"Authorization": f"Bearer {raw}"}


def audited_reads(consultation) -> Counter:
    """Read events of the consultation per request id."""
    rows = AuditEvent.objects.filter(
        action="read", object_type="consultation", object_id=str(consultation.pk)
    ).values_list("request_id", flat=True)
    return Counter(rows)


def get_many(base: str, consultation, headers: dict, count: int) -> list[str]:
    """``count`` sequential reads; the request ids of the 200s."""
    ids = []
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        for _ in range(count):
            response = client.get(f"/api/v1/consultations/{consultation.pk}")
            assert response.status_code == 200, response.text
            ids.append(response.headers["X-Request-ID"])
    return ids


def stream_request_ids(client: redis.Redis, key: str) -> list[str]:
    return [
        event["request_id"]
        for _id, fields in client.xrange(key)
        for event in json.loads(fields[FIELD.encode()])
    ]


def stream_drained(key: str) -> Callable[[], bool]:
    client = redis.Redis.from_url(settings.REDIS_URL)

    def drained() -> bool:
        if client.xlen(key):
            return False
        groups = client.xinfo_groups(key)
        return all(group["pending"] == 0 for group in groups)

    return drained


def test_sigkill_of_web_and_flusher_under_load_loses_no_audit_event(stack, reading, stream_key):
    consultation, headers = reading
    web, base = stack.web()
    flusher = stack.audit(consumer="flusher-a")

    received: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"/api/v1/consultations/{consultation.pk}")
                except httpx.HTTPError:
                    return  # the server is gone
                with lock:
                    if response.status_code == 200:
                        received.append(response.headers["X-Request-ID"])
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: len(received) >= 40 and sum(audited_reads(consultation).values()) >= 20,
            "the flusher writing under load",
        )
        # The flusher dies first, holding whatever it had read, so that reads answered
        # after it are only in the stream when the web process dies too.
        flusher.send_signal(signal.SIGKILL)
        after_flusher = len(received)
        wait_for(lambda: len(received) >= after_flusher + KILL_AFTER, "more reads answered")
        web.send_signal(signal.SIGKILL)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    web.wait(timeout=10)
    flusher.wait(timeout=10)
    assert not failures, failures[:5]
    with lock:
        answered = list(received)
    assert sum(audited_reads(consultation).values()) < len(answered)

    # Another consumer name: the dead one's unacknowledged entries are claimed (XAUTOCLAIM).
    stack.audit(consumer="flusher-b")
    wait_for(stream_drained(stream_key), "the stream drained after the restart")

    audited = audited_reads(consultation)
    missing = [request_id for request_id in answered if audited[request_id] == 0]
    assert not missing, f"{len(missing)} of {len(answered)} answered reads have no audit row"
    assert {audited[request_id] for request_id in answered} == {1}, "a read audited twice"
    # Reads the server finished but whose answers were cut by the kill may be audited too.
    assert len(answered) <= sum(audited.values()) <= len(answered) + CLIENTS


def test_a_flusher_without_the_database_keeps_the_events_and_writes_them_later(
    stack, reading, stream_key
):
    consultation, headers = reading
    params = connection.settings_dict
    postgres = TcpProxy((params["HOST"] or "127.0.0.1", int(params["PORT"] or 5432)))
    postgres.start()
    try:
        _web, base = stack.web()
        flusher = stack.audit(consumer="flusher-a", DATABASE_URL=database_url(postgres.port))
        first = get_many(base, consultation, headers, 10)
        wait_for(lambda: sum(audited_reads(consultation).values()) == 10, "the first batch")

        postgres.stop()
        second = get_many(base, consultation, headers, 20)  # the web still reaches PostgreSQL
        queue = redis.Redis.from_url(settings.REDIS_URL)
        # The flusher read some and failed to write them: all wait in the stream.
        wait_for(
            lambda: (
                queue.xpending(stream_key, GROUP)["pending"] > 0
                and "write failed" in stack.log(flusher)
            ),
            "the flusher failing to write what it read",
        )
        assert queue.xlen(stream_key) == 20
        assert sum(audited_reads(consultation).values()) == 10
        assert flusher.poll() is None, stack.log(flusher)

        postgres.start()
        wait_for(stream_drained(stream_key), "the stream drained once PostgreSQL is back")
    finally:
        postgres.stop()
    audited = audited_reads(consultation)
    assert audited == Counter(first + second)
    assert flusher.poll() is None, stack.log(flusher)


def test_without_the_streams_redis_reads_are_audited_synchronously(stack, reading, stream_key):
    consultation, headers = reading
    server = redis.Redis.from_url(settings.REDIS_URL).connection_pool.connection_kwargs
    audit_redis = TcpProxy((server["host"], server["port"]))
    audit_redis.start()
    try:
        _web, base = stack.web(
            AUDIT_REDIS_URL=f"redis://127.0.0.1:{audit_redis.port}/{server.get('db', 0)}"
        )
        queued = get_many(base, consultation, headers, 5)
        queue = redis.Redis.from_url(settings.REDIS_URL)
        # No flusher runs: they wait in the stream.
        assert stream_request_ids(queue, stream_key) == queued
        assert sum(audited_reads(consultation).values()) == 0

        audit_redis.stop()
        direct = get_many(base, consultation, headers, 20)
        # Written by the request itself, before its response.
        assert audited_reads(consultation) == Counter(direct)
    finally:
        audit_redis.stop()
    assert stream_request_ids(queue, stream_key) == queued


@pytest.mark.parametrize(
    ("env", "started_line"),
    [
        ({}, "audit flush: consumer flusher-a"),
        # Without a stream the process idles, so one Procfile serves both setups.
        ({"AUDIT_REDIS_URL": "", "AUDIT_WRITE_PATH": "sync"}, "no AUDIT_REDIS_URL"),
    ],
)
def test_sigterm_stops_the_flusher_within_ten_seconds(stack, env, started_line):
    flusher = stack.audit(consumer="flusher-a", **env)
    wait_for(
        lambda: started_line in stack.log(flusher), "the flusher started", timeout=START_TIMEOUT
    )
    started = time.monotonic()
    flusher.send_signal(signal.SIGTERM)
    flusher.wait(timeout=10)
    assert time.monotonic() - started < 10
    assert flusher.returncode == 0, stack.log(flusher)
    assert "Traceback" not in stack.log(flusher) and "ERROR" not in stack.log(flusher)
