"""Celery tasks read what the request that enqueued them wrote, with a lagging replica.

A worker runs against the same primary, the same delayed replica (500 ms) and the same
broker as the web nodes. Without pinning, a task that starts within milliseconds of its
enqueue reads a replica that has not replayed the write yet.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
from celery import Celery

from medease import celery_routing, context
from tests.scale import celery_probe
from tests.scale.conftest import APPLY_DELAY, node_env
from tests.scale.harness import Worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

BOOKINGS = 5
QUEUE = "notifications"
APPLY_DELAY_SECONDS = timedelta(milliseconds=int(APPLY_DELAY.removesuffix("ms")))


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
    # The replica has the new user (its name is not what is checked).
    wait_until(
        lambda: (
            replica.query(
                "SELECT count(*) FROM accounts_user WHERE id = %s", (user_id,), dbname=scale_db.name
            )[0][0]
            == 1
        ),
        timeout=30,
        interval=0.05,
        what="the new user on the replica",
    )

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


def test_the_booking_confirmation_task_sees_the_booking(
    worker, publisher, session_redis, nodes, clinic, slots, primary, scale_db
):
    """End to end: a booking's confirmation is kicked by the web node on commit, enqueued
    tagged for the primary (medease.celery_routing) by the worker's outbox dispatcher, and
    delivered right after commit by a task that read the row on the primary while the
    replica had not replayed it yet."""
    a, b = (node.http() for node in nodes)
    broker = redis.Redis.from_url(session_redis.url(1))

    def confirmation(user_id: int) -> tuple | None:
        rows = primary.query(
            "SELECT status, created_at, sent_at FROM workers_notification"
            " WHERE user_id = %s AND kind = 'booking_confirmed'",
            (user_id,),
            dbname=scale_db.name,
        )
        return rows[0] if rows and rows[0][0] not in ("pending", "sending") else None

    # The first booking's message is caught in the broker, the worker not consuming: it
    # must carry the routing header (every MedEase task also reads the primary on its own,
    # so the delivery alone would not show whether the publish hook is wired).
    assert publisher.control.cancel_consumer(QUEUE, reply=True, timeout=10), "no worker"
    try:
        _, user_id, token = clinic.patient(a)
        response = clinic.book(a, token, slots.take())
        assert response.status_code == 201, response.text
        (raw,) = wait_until(lambda: broker.lrange(QUEUE, 0, -1), timeout=10, what="the message")
        headers = json.loads(raw)["headers"]
        assert headers["task"] == "workers.deliver_notification", headers
        assert headers.get(celery_routing.HEADER) == 1, headers
    finally:
        publisher.control.add_consumer(QUEUE, reply=True, timeout=10)
    wait_until(lambda: confirmation(user_id), timeout=30, what=f"delivery ({worker.tail(5)})")

    # The others one at a time (each by a new patient: bookings are rate limited per
    # user), so that no task waits behind another on the worker's single process.
    delivered = []
    for n in range(BOOKINGS):
        _, user_id, token = clinic.patient(a)
        response = clinic.book(a, token, slots.take())
        assert response.status_code == 201, response.text
        row = wait_until(
            lambda user_id=user_id: confirmation(user_id),
            timeout=30,
            interval=0.05,
            what=f"delivery {n} ({worker.tail(5)})",
        )
        assert row[0] == "sent", row
        delivered.append(row[2] - row[1])
    # A row sent sooner after it was written than the replica's apply delay was read by its
    # task before the replica had it: only the primary could answer. If every task ran
    # later than that, this run proved nothing.
    print(f"\nbooking confirmations sent after: {[d.total_seconds() for d in delivered]} s")
    assert min(delivered) < APPLY_DELAY_SECONDS, f"no task beat the replica: {delivered}"

    def listed_as_sent() -> bool:  # through the API too, once the replica has caught up
        listed = b.get("/api/v1/notifications", token=token)
        assert listed.status_code == 200, listed.text
        rows = [n for n in listed.json()["results"] if n["kind"] == "booking_confirmed"]
        return [n["status"] for n in rows] == ["sent"]

    wait_until(listed_as_sent, timeout=30, interval=0.25, what="the list of notifications")
