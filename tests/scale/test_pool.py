"""Pooled connections under ASGI: 2,000 requests, and the server backends stay bounded.

Django's psycopg pool (``OPTIONS["pool"]``, CONN_MAX_AGE = 0) hands each request a
connection and takes it back at the end; a leak (CONN_MAX_AGE > 0 under ASGI, where every
request runs in a new thread) would grow the backends with the requests instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.scale.conftest import POOL_MAX_SIZE, node_env
from tests.scale.harness import Node

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REQUESTS = 2000
CONCURRENCY = 32
APP_NAME = "medease-scale-pool"


@pytest.fixture
def pool_node(primary, replica, scale_db, session_redis, scale_root):
    env = node_env(
        primary=primary,
        database=scale_db.name,
        redis_url=session_redis.url(0),
        broker_url=session_redis.url(1),
        var_dir=scale_root / "var-pool",
        replica_port=replica.port,
        # libpq names every connection of this process, so only its backends are counted.
        PGAPPNAME=APP_NAME,
    )
    node = Node(name="node-pool", env=env, log=scale_root / "node-pool.log")
    node.start()
    yield node
    node.stop()


def _backends(primary, replica, database: str) -> tuple[int, int]:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
    on_primary = primary.query(sql, (database, APP_NAME))[0][0]
    on_replica = replica.query(sql, (database, APP_NAME))[0][0]
    return on_primary, on_replica


async def _load(url: str, readers: list[str], writer: str, provider_id: int) -> Counter:
    """Nine requests in ten read (as several users); one in ten writes (as another user,
    who is therefore pinned to the primary while the readers use the replica)."""
    statuses: Counter[int] = Counter()
    paths = [
        "/api/v1/me",
        "/api/v1/consultations",
        f"/api/v1/providers/{provider_id}/slots",
        "/api/v1/notifications",
    ]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(REQUESTS):
        queue.put_nowait(number)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        async def one_client() -> None:
            while not queue.empty():
                number = queue.get_nowait()
                if number % 10 == 9:
                    response = await client.patch(
                        "/api/v1/me", headers=auth(writer), json={"full_name": f"Load {number}"}
                    )
                else:
                    response = await client.get(
                        paths[number % len(paths)],
                        headers=auth(readers[number % len(readers)]),
                    )
                statuses[response.status_code] += 1
                client.cookies.clear()

        await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
    return statuses


def test_two_thousand_requests_keep_the_backends_bounded(
    pool_node, primary, replica, scale_db, clinic
):
    http = pool_node.http()
    readers = [clinic.patient(http)[2] for _ in range(4)]
    _, _, writer = clinic.patient(http)
    peak = [0, 0]
    sampling = threading.Event()
    sampling.set()

    def sample() -> None:
        while sampling.is_set():
            on_primary, on_replica = _backends(primary, replica, scale_db.name)
            peak[0], peak[1] = max(peak[0], on_primary), max(peak[1], on_replica)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        statuses = asyncio.run(_load(pool_node.url, readers, writer, scale_db.provider_ids[0]))
    finally:
        sampling.clear()
        sampler.join(timeout=10)
    elapsed = time.monotonic() - started
    after = _backends(primary, replica, scale_db.name)
    print(
        f"\n{REQUESTS} requests ({CONCURRENCY} concurrent) in {elapsed:.1f}s "
        f"({REQUESTS / elapsed:.0f}/s), statuses {dict(statuses)}; backends of the node: "
        f"peak {peak[0]} on the primary and {peak[1]} on the replica, "
        f"{after[0]} and {after[1]} after (pool max_size {POOL_MAX_SIZE} each)"
    )
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) == REQUESTS
    # One pool per alias; "+ 2" leaves room for a connection being replaced.
    assert peak[0] in range(1, POOL_MAX_SIZE + 3), peak
    assert peak[1] in range(1, POOL_MAX_SIZE + 3), peak
    assert after[0] <= POOL_MAX_SIZE and after[1] <= POOL_MAX_SIZE
