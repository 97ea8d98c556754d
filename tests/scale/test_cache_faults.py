"""Redis faults: with the cache's Redis killed or hung, reads and writes still answer from the
database, chat sends still store, logins fail closed with a clear 503, and everything
recovers when Redis is back, without restarting the web node.

The node has a redis-server of its own (cache, rate limits, channel layer); the Celery
broker stays on the session's Redis, so this is the cache outage alone
(docs/adr/0004-cache-and-rate-limit-faults.md).
"""

from __future__ import annotations

import time

import pytest

from tests.scale.conftest import node_env
from tests.scale.harness import Node, RedisServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# A request makes several cache calls, each bounded by CACHE_SOCKET_TIMEOUT (0.5 s).
SLOWEST_ACCEPTABLE = 3.0


@pytest.fixture
def cache_redis(scale_root):
    redis = RedisServer(root=scale_root / "redis-faults")
    redis.start()
    yield redis
    if redis.proc is not None:
        redis.thaw() if redis.proc.poll() is None else None
    redis.kill()


@pytest.fixture
def fault_node(primary, replica, scale_db, session_redis, cache_redis, scale_root):
    env = node_env(
        primary=primary,
        database=scale_db.name,
        redis_url=cache_redis.url(0),
        broker_url=session_redis.url(1),
        var_dir=scale_root / "var-faults",
        replica_port=replica.port,
    )
    node = Node(name="node-faults", env=env, log=scale_root / "node-faults.log")
    node.start()
    yield node
    node.stop()


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _exercise(http, clinic, slots, scale_db, token, consultation_id, label: str) -> dict:
    """Every read endpoint, and the writes that must not need Redis."""
    provider_id = scale_db.provider_ids[0]
    results = {}
    for path in (
        "/api/v1/me",
        "/api/v1/providers",
        f"/api/v1/providers/{provider_id}/slots",
        "/api/v1/dashboard",
        "/api/v1/consultations",
        f"/api/v1/consultations/{consultation_id}",
        f"/api/v1/consultations/{consultation_id}/messages",
        "/api/v1/notifications",
    ):
        response, elapsed = _timed(lambda path=path: http.get(path, token=token))
        results[f"GET {path}"] = (response.status_code, elapsed)
    response, elapsed = _timed(
        lambda: http.patch("/api/v1/me", token=token, json={"full_name": f"During {label}"})
    )
    results["PATCH me"] = (response.status_code, elapsed)
    response, elapsed = _timed(lambda: clinic.book(http, token, slots.take()))
    results["POST consultations"] = (response.status_code, elapsed)
    response, elapsed = _timed(
        lambda: http.post(
            f"/api/v1/consultations/{consultation_id}/messages",
            token=token,
            json={"body": f"sent while {label}", "client_id": f"fault-{label}-{time.time()}"},
        )
    )
    results["POST messages"] = (response.status_code, elapsed)
    return results


def _assert_served(results: dict) -> None:
    wrong = {name: r for name, r in results.items() if r[0] not in (200, 201)}
    slow = {name: r for name, r in results.items() if r[1] > SLOWEST_ACCEPTABLE}
    assert not wrong, wrong
    assert not slow, slow


def test_a_dead_redis_degrades_to_the_database_and_recovers(
    fault_node, cache_redis, clinic, slots, scale_db
):
    http = fault_node.http(ip="10.77.0.1")
    email, _, token = clinic.patient(http)
    booked = clinic.book(http, token, slots.take())
    assert booked.status_code == 201, booked.text
    consultation_id = booked.json()["id"]

    cache_redis.kill()
    down = _exercise(http, clinic, slots, scale_db, token, consultation_id, "redis-down")
    login, login_time = _timed(
        lambda: http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
    )
    register, _ = _timed(
        lambda: http.post(
            "/api/v1/auth/register",
            json={"email": "x-" + email, "password": clinic.db.password, "full_name": "X"},
        )
    )
    ready = http.get("/health/ready")
    history = http.get(f"/api/v1/consultations/{consultation_id}/messages", token=token)
    print(f"\nRedis down: {down}; login {login.status_code} in {login_time:.2f}s")

    _assert_served(down)
    # The message sent during the outage was stored.
    assert any("redis-down" in m["body"] for m in history.json()["results"])
    # Logins and sign-ups fail closed: a clear 503 with Retry-After, never a 500.
    assert login.status_code == 503, login.text
    assert login.json()["error"]["code"] == "unavailable"
    assert int(login.headers["Retry-After"]) >= 1
    assert register.status_code == 503, register.text
    assert ready.status_code == 503
    assert ready.json()["checks"]["cache"]["status"] == "down"

    cache_redis.start()  # same port, empty: the node reconnects by itself

    def logs_in() -> bool:
        response = http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
        return response.status_code == 200

    wait_until(logs_in, timeout=20, interval=0.25, what="logins to work again")
    assert http.get("/health/ready").status_code == 200
    _assert_served(_exercise(http, clinic, slots, scale_db, token, consultation_id, "back"))


def test_a_hung_redis_costs_bounded_time_and_recovers(
    fault_node, cache_redis, clinic, slots, scale_db
):
    """SIGSTOP: connections open, nothing answers; socket timeouts bound every call."""
    http = fault_node.http(ip="10.77.0.2")
    email, _, token = clinic.patient(http)
    booked = clinic.book(http, token, slots.take())
    assert booked.status_code == 201, booked.text
    consultation_id = booked.json()["id"]

    cache_redis.freeze()
    try:
        hung = _exercise(http, clinic, slots, scale_db, token, consultation_id, "redis-hung")
        login = http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
    finally:
        cache_redis.thaw()
    print(f"\nRedis hung: {hung}; login {login.status_code}")
    _assert_served(hung)
    assert login.status_code == 503, login.text

    def logs_in() -> bool:
        response = http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
        return response.status_code == 200

    wait_until(logs_in, timeout=20, interval=0.25, what="logins to work again")
