"""Celery tasks read what the request that enqueued them wrote, with a lagging replica.

A worker runs against the same primary, the same delayed replica (500 ms) and the same
broker as the web nodes. Without pinning, a task that starts within milliseconds of its
enqueue reads a replica that has not replayed the write yet.
"""

from __future__ import annotations

import json
import time

import pytest
from celery import Celery

from medease import context
from tests.scale import celery_probe
from tests.scale.conftest import node_env
from tests.scale.harness import Worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def worker(primary, replica, scale_db, session_redis, scale_root):
    env = node_env(
        primary=primary,
        database=scale_db.name,
        redis_url=session_redis.url(0),
        broker_url=session_redis.url(1),
        var_dir=scale_root / "var-worker",
        replica_port=replica.port,
    )
    worker = Worker(
        env=env,
        log=scale_root / "worker.log",
        queues=f"notifications,{celery_probe.QUEUE}",
        include="tests.scale.celery_probe",
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def publisher(session_redis):
    app = Celery("scale-tests-publisher", broker=session_redis.url(1))
    # Celery prefers a CELERY_BROKER_URL environment variable (CI sets one) over broker=;
    # broker_write_url in the app's own config wins over it for publishing.
    app.conf.broker_write_url = session_redis.url(1)
    yield app
    app.pool.force_close_all()


def test_a_task_enqueued_after_a_write_reads_the_primary(
    worker, publisher, primary, replica, scale_db, nodes, clinic, tmp_path
):
    http = nodes[0].http()
    _, user_id = clinic.register(http)
    time.sleep(1)  # the replica has the new user (its name is not what is checked)

    def write_then_enqueue(name: str, *, request_wrote: bool) -> dict:
        # The write a request would make, straight on the primary...
        primary.query(
            "UPDATE accounts_user SET full_name = %s WHERE id = %s",
            (name, user_id),
            dbname=scale_db.name,
        )
        out = tmp_path / f"{name.replace(' ', '-')}.json"
        # ...and the enqueue from that request's context (medease.celery_routing tags it).
        token = context.begin(context.RequestState(request_id="scale", wrote=request_wrote))
        try:
            publisher.send_task(
                "scale_probe.read_full_name",
                args=[user_id, str(out)],
                queue=celery_probe.QUEUE,
            )
        finally:
            context.end(token)
        return wait_until(
            lambda: json.loads(out.read_text()) if out.exists() else None,
            timeout=30,
            what=f"the probe task ({worker.tail(5)})",
        )

    pinned = [write_then_enqueue(f"After Write {n}", request_wrote=True) for n in range(3)]
    for n, report in enumerate(pinned):
        assert report["full_name"] == f"After Write {n}", report
        assert report["selects"] == {"default": 1}, report

    # Control: the same task enqueued by code that did not write reads the replica, which
    # is still half a second behind: that is the stale read the tag prevents.
    unpinned = [write_then_enqueue(f"No Write {n}", request_wrote=False) for n in range(5)]
    assert all(report["selects"] == {"replica1": 1} for report in unpinned), unpinned
    stale = sum(report["full_name"] != f"No Write {n}" for n, report in enumerate(unpinned))
    print(f"\nunpinned control tasks that read stale data: {stale} of {len(unpinned)}")
    assert stale >= 1, "the replica was never behind: the pinned case proves nothing"


def test_the_booking_confirmation_task_sees_the_booking(worker, nodes, clinic, slots):
    """End to end: a booking's outbox row is delivered by a worker right after commit."""
    a, b = (node.http() for node in nodes)
    _, _, token = clinic.patient(a)
    response = clinic.book(a, token, slots.take())
    assert response.status_code == 201, response.text

    def delivered():
        listed = b.get("/api/v1/notifications", token=token)
        assert listed.status_code == 200, listed.text
        rows = [n for n in listed.json()["results"] if n["kind"] == "booking_confirmed"]
        return rows and rows[0]["status"] == "sent" and rows[0]

    # Delivered within seconds; had the task read a lagging replica it would have found
    # no row and left it to the outbox sweeper, minutes later.
    wait_until(delivered, timeout=30, interval=0.25, what=f"delivery ({worker.tail(5)})")
