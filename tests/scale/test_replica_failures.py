"""A replica that stops, or falls behind, leaves the rotation within seconds without a single
error answer, and comes back once healthy, with no restart of the web nodes.

While the replica is broken, a reader thread keeps browsing through both nodes; the test
looks at where each read ran (X-DB-Selects) and at every status code.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.scale.harness import Http, aliases, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


class Reader(threading.Thread):
    """Reads the caller's consultations (never cached) through every node until stopped."""

    def __init__(self, nodes, token: str, path: str = "/api/v1/consultations") -> None:
        super().__init__(daemon=True)
        self.https = [Http(node.url) for node in nodes]
        self.token = token
        self.path = path
        self.samples: list[tuple[float, int, dict[str, int], float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for http in self.https:
                started = time.monotonic()
                try:
                    response = http.get(self.path, token=self.token)
                    status, where = response.status_code, aliases(response)
                except Exception:  # a refused or dropped connection counts as a failure
                    status, where = 0, {}
                self.samples.append((started, status, where, time.monotonic() - started))

    def __enter__(self) -> Reader:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join(timeout=30)
        for http in self.https:
            http.close()

    def since(self, moment: float):
        return [s for s in list(self.samples) if s[0] >= moment]

    def replica_read_since(self, moment: float) -> bool:
        return any("replica1" in where for _, _, where, _ in self.since(moment))

    def last_replica_read(self) -> float:
        return max((t for t, _, where, _ in list(self.samples) if "replica1" in where), default=0)


@pytest.fixture
def reader_token(nodes, clinic, replica_in_rotation) -> str:
    # Login does not pin its user (the login request is anonymous), so reads go to replicas.
    _, _, token = clinic.patient(nodes[0].http())
    return token


def _summarise(reader: Reader, start: float) -> str:
    statuses = Counter(status for _, status, _, _ in reader.since(start))
    slowest = max((elapsed for *_, elapsed in reader.since(start)), default=0)
    return f"{len(reader.since(start))} reads, statuses {dict(statuses)}, slowest {slowest:.2f}s"


def test_a_stopped_replica_is_skipped_within_seconds_and_used_again(nodes, replica, reader_token):
    with Reader(nodes, reader_token) as reader:
        begin = time.monotonic()
        wait_until(lambda: reader.replica_read_since(begin), timeout=20, what="replica reads")

        stopped_at = time.monotonic()
        replica.stop()
        # Every read after the switch-over ran on the primary: wait for 3 s of those.
        wait_until(
            lambda: time.monotonic() - max(reader.last_replica_read(), stopped_at) > 3,
            timeout=30,
            what="reads to leave the stopped replica",
        )
        switched_after = max(reader.last_replica_read() - stopped_at, 0)

        restarted_at = time.monotonic()
        replica.start()
        started_at = time.monotonic()
        wait_until(
            lambda: reader.replica_read_since(started_at),
            timeout=60,
            interval=0.2,
            what="reads to return to the replica",
        )
        back_after = min(t for t, _, where, _ in reader.since(started_at) if "replica1" in where)
        back_after -= started_at

    summary = _summarise(reader, begin)
    print(
        f"\nstopped replica: last replica read {switched_after:.2f}s after the stop began; "
        f"its restart took {started_at - restarted_at:.1f}s; replica used again "
        f"{back_after:.2f}s after it was up; {summary}"
    )
    statuses = Counter(status for _, status, _, _ in reader.since(begin))
    assert set(statuses) == {200}, summary
    assert switched_after <= 5, summary
    assert back_after <= 15, summary


def test_a_lagging_replica_is_skipped_within_seconds_and_used_again(
    nodes, replica, primary, scale_db, reader_token
):
    primary.query(
        "CREATE TABLE IF NOT EXISTS scale_heartbeat (id bigserial PRIMARY KEY, at timestamptz)",
        dbname=scale_db.name,
    )
    writing = threading.Event()
    writing.set()

    def heartbeat() -> None:
        # The primary must move on for a paused replica to fall behind.
        with primary.connect(scale_db.name) as conn:
            while writing.is_set():
                conn.execute("INSERT INTO scale_heartbeat (at) VALUES (now())")
                time.sleep(0.1)

    writer = threading.Thread(target=heartbeat, daemon=True)
    writer.start()
    try:
        with Reader(nodes, reader_token) as reader:
            begin = time.monotonic()
            wait_until(lambda: reader.replica_read_since(begin), timeout=20, what="replica reads")

            paused_at = time.monotonic()
            replica.pause_replay()
            try:
                wait_until(
                    lambda: time.monotonic() - max(reader.last_replica_read(), paused_at) > 3,
                    timeout=30,
                    what="reads to leave the lagging replica",
                )
                left_after = max(reader.last_replica_read() - paused_at, 0)
                ready = Http(nodes[0].url).get("/health/ready")
                lag_seen = Http(nodes[1].url).get("/health/ready").json()["checks"]["replica1"]
            finally:
                replica.resume_replay()
            resumed_at = time.monotonic()
            wait_until(
                lambda: reader.replica_read_since(resumed_at),
                timeout=30,
                interval=0.2,
                what="reads to return to the caught-up replica",
            )
            back_after = min(
                t for t, _, where, _ in reader.since(resumed_at) if "replica1" in where
            )
            back_after -= resumed_at
    finally:
        writing.clear()
        writer.join(timeout=10)

    summary = _summarise(reader, begin)
    print(
        f"\nlagging replica: last replica read {left_after:.2f}s after replay paused "
        f"(MAX_REPLICA_LAG 2s); used again {back_after:.2f}s after replay resumed; "
        f"/health/ready said {lag_seen}; {summary}"
    )
    assert set(Counter(status for _, status, _, _ in reader.since(begin))) == {200}, summary
    # Lag passes 2 s two seconds after the pause, and the next probe (1 s) notices.
    assert left_after <= 5, summary
    assert back_after <= 10, summary
    # Replicas are optional: readiness stays 200 and says which one is behind.
    assert ready.status_code == 200
    assert lag_seen["status"] == "down" and "MAX_REPLICA_LAG" in lag_seen["error"], lag_seen
