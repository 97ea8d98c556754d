"""Fixtures of the scale tests: a real streaming replica, a database of their own, Redis
servers of their own, web nodes (uvicorn processes) and a Celery worker.

Everything is session-scoped and torn down at the end (processes by process group,
directories removed, the database dropped), except what a test breaks on purpose, which it
builds for itself. The primary's server configuration is changed at most once, by
scripts/cluster/pg_replica.py: a ``host replication all 127.0.0.1/32 trust`` line is
appended to its pg_hba.conf when no rule allows local replication (documented in
docs/scaling.md, "Tests").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings

from tests.scale.harness import (
    PG_REPLICA_SCRIPT,
    REDIS_SERVER,
    Http,
    Node,
    Postgres,
    RedisServer,
    Replica,
    free_port,
    last_json_line,
    manage,
    run_django,
    unique,
    wait_until,
)

# recovery_min_apply_delay of the test replica: every write reaches it half a second late,
# so any read of the replica right after a write is stale and a test can see it.
APPLY_DELAY = "500ms"
# Small pools make "bounded" visible; the default is 20.
POOL_MAX_SIZE = 8
_ENV_PREFIXES_TO_DROP = (
    "DATABASE_",
    "REDIS_",
    "CELERY_",
    "RATE_",
    "RATELIMIT_",
    "MEDEASE_",
    "DB_ROUTING",
    "READ_YOUR_WRITES",
    "MAX_REPLICA",
    "REPLICA_",
    "PYTEST_",
    "DEBUG",
)


@pytest.fixture(scope="session")
def primary() -> Postgres:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the scale tests need PostgreSQL (DATABASE_URL)")
    server = Postgres(
        host=db["HOST"] or "127.0.0.1",
        port=int(db["PORT"] or 5432),
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or "",
    )
    ((version,),) = server.query("SHOW server_version_num")
    bindir = postgres_bindir(server_major=int(version) // 10000)
    missing = [p for p in (PG_REPLICA_SCRIPT, Path(REDIS_SERVER)) if not p.exists()]
    if missing or bindir is None:
        message = (
            "the scale tests need pg_basebackup and pg_ctl (PG_BIN, /usr/lib/postgresql/*/bin "
            f"or pg_config --bindir) and redis-server (missing: {missing})"
        )
        if settings.REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    # scripts/cluster/pg_replica.py, run by the replica fixture, reads PG_BIN.
    os.environ["PG_BIN"] = str(bindir)
    return server


def postgres_bindir(
    *, server_major: int, root: Path = Path("/usr/lib/postgresql"), pg_config: str | None = None
) -> Path | None:
    """The directory holding pg_basebackup and pg_ctl, or None.

    ``PG_BIN`` when set; otherwise the server's own major version (a replica must run the
    primary's major version), then ``pg_config --bindir``, then the highest version
    installed under ``root``.
    """

    def usable(directory: Path) -> bool:
        return all((directory / name).is_file() for name in ("pg_basebackup", "pg_ctl"))

    if os.environ.get("PG_BIN"):
        chosen = Path(os.environ["PG_BIN"])
        return chosen if usable(chosen) else None
    candidates = [root / str(server_major) / "bin"]
    pg_config = pg_config or shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    installed = [path for path in root.glob("*/bin") if path.parent.name.isdigit()]
    candidates += sorted(installed, key=lambda path: int(path.parent.name), reverse=True)
    return next((directory for directory in candidates if usable(directory)), None)


@pytest.fixture(scope="session")
def scale_root() -> Iterator[Path]:
    # Under /tmp itself (not pytest's 0700 tmp tree) so the postgres user can reach it.
    root = Path(tempfile.mkdtemp(prefix="medease-scale-"))
    root.chmod(0o755)
    yield root
    if os.environ.get("MEDEASE_SCALE_KEEP_LOGS"):
        # Debugging: keep the nodes' and worker's logs (the replica is removed regardless).
        print(f"\nscale test logs kept in {root}")
        return
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def replica(primary, scale_root) -> Iterator[Replica]:
    replica = Replica(
        primary=primary, root=scale_root / "replica", port=free_port(), apply_delay=APPLY_DELAY
    )
    try:
        replica.create()
    except Exception:
        replica.destroy()
        raise
    yield replica
    replica.destroy()


@pytest.fixture(scope="session")
def session_redis(scale_root) -> Iterator[RedisServer]:
    redis = RedisServer(root=scale_root / "redis-session")
    redis.start()
    yield redis
    redis.kill()


def node_env(
    *,
    primary: Postgres,
    database: str,
    redis_url: str,
    broker_url: str,
    var_dir: Path,
    replica_port: int | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a web node or worker: production-like, with diagnostics on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES_TO_DROP)}
    var_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        # The product's settings with cheap password hashes (tests/server_settings.py).
        DJANGO_SETTINGS_MODULE="tests.server_settings",
        DATABASE_URL=primary.url(database),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=broker_url,
        MEDEASE_REQUIRE_SERVICES="1",
        MEDEASE_VAR_DIR=str(var_dir),
        DEBUG="0",
        SECRET_KEY="scale-tests-" + "x" * 40,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="0",
        LOG_FORMAT="text",
        DB_ROUTING_DIAGNOSTICS="1",
        DATABASE_POOL_MAX_SIZE=str(POOL_MAX_SIZE),
        # Every test client is 127.0.0.1: tests give themselves addresses through
        # X-Forwarded-For (believed from loopback only because it is a trusted proxy here),
        # so that per-IP limits of one test do not spill into another.
        TRUSTED_PROXIES="127.0.0.1",
        RATE_REGISTER_IP="100000/h",
        RATE_API_USER="1000000/m",
    )
    if replica_port:
        env["DATABASE_REPLICA_URLS"] = primary.url(database, port=replica_port)
    env.update(extra)
    return env


@dataclass
class ScaleDb:
    name: str
    seed: dict
    env: dict[str, str]

    @property
    def password(self) -> str:
        return self.seed["password"]

    @property
    def provider_ids(self) -> list[int]:
        return [p["id"] for p in self.seed["providers"]]


@pytest.fixture(scope="session")
def scale_db(primary, replica, session_redis, scale_root) -> Iterator[ScaleDb]:
    name = unique("medease_scale_")
    try:
        primary.query(f'CREATE DATABASE "{name}"')
        env = node_env(
            primary=primary,
            database=name,
            redis_url=session_redis.url(0),
            broker_url=session_redis.url(1),
            var_dir=scale_root / "var-setup",
        )
        manage(env, "migrate", "--noinput")
        seed = last_json_line(
            run_django(
                env, "import json\nfrom tests.scale.seed import seed\nprint(json.dumps(seed()))"
            )
        )

        def replicated() -> bool:
            rows = replica.query(
                "SELECT count(*) FROM accounts_user WHERE email = %s",
                (seed["staff"]["email"],),
                dbname=name,
            )
            return rows[0][0] == 1

        wait_until(replicated, timeout=60, interval=0.2, what="the seed data on the replica")
        yield ScaleDb(name=name, seed=seed, env=env)
    finally:
        with contextlib.suppress(Exception):
            primary.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        node.spawn()
    try:
        for node in nodes:
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@pytest.fixture(scope="session")
def nodes(primary, replica, scale_db, session_redis, scale_root) -> Iterator[list[Node]]:
    """Two web nodes behind no balancer, sharing the primary, the replica and Redis."""
    made = []
    for name in ("node-a", "node-b"):
        env = node_env(
            primary=primary,
            database=scale_db.name,
            redis_url=session_redis.url(0),
            broker_url=session_redis.url(1),
            var_dir=scale_root / f"var-{name}",
            replica_port=replica.port,
            # Small enough for the cross-node tests to reach quickly, large enough for the
            # other tests never to.
            RATE_LOGIN_ACCOUNT="5/15m",
            RATE_LOGIN_IP="8/15m",
            RATE_BOOKING_USER="4/h",
            # Hour-long windows: django-ratelimit windows are fixed, and a short one could
            # roll over in the middle of a test.
            RATE_MESSAGE_USER="6/h",
        )
        made.append(Node(name=name, env=env, log=scale_root / f"{name}.log"))
    _start_nodes(made)
    yield made
    for node in made:
        node.stop()


def in_rotation(node: Node) -> bool:
    """Whether this node currently sends reads to the replica (its /health/ready says)."""
    body = Http(node.url).get("/health/ready").json()
    return body["checks"]["replica1"].get("in_rotation") is True


def wait_for_rotation(nodes: list[Node]) -> None:
    """Wait until every node uses the replica (a test before may have broken it)."""
    for node in nodes:
        wait_until(
            lambda node=node: in_rotation(node),
            timeout=30,
            interval=0.2,
            what=f"the replica back in rotation on {node.name}",
        )


@pytest.fixture
def replica_in_rotation(nodes) -> None:
    wait_for_rotation(nodes)


class SlotPool:
    """Future, unbooked slots handed out one by one, so tests never compete for one."""

    def __init__(self, primary: Postgres, database: str, provider_ids: list[int]) -> None:
        soon = datetime.now(UTC) + timedelta(hours=2)
        rows = primary.query(
            "SELECT s.id, s.provider_id FROM consultations_slot s WHERE s.start > %s"
            " AND s.provider_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM"
            " consultations_consultation c WHERE c.slot_id = s.id) ORDER BY s.start, s.id",
            (soon, provider_ids),
            dbname=database,
        )
        self._slots = list(rows)
        self._lock = threading.Lock()

    def take(self, provider_id: int | None = None) -> int:
        with self._lock:
            for index, (slot_id, owner) in enumerate(self._slots):
                if provider_id is None or owner == provider_id:
                    del self._slots[index]
                    return slot_id
        raise AssertionError("no free slot left")


@pytest.fixture(scope="session")
def slots(primary, scale_db) -> SlotPool:
    return SlotPool(primary, scale_db.name, scale_db.provider_ids)


class Clinic:
    """API flows shared by the tests (each call goes to the node it is given)."""

    def __init__(self, db: ScaleDb) -> None:
        self.db = db

    def register(self, http: Http, *, name: str = "Scale Patient") -> tuple[str, int]:
        email = f"{unique('patient-')}@scale.test"
        response = http.post(
            "/api/v1/auth/register",
            json={"email": email, "password": self.db.password, "full_name": name},
        )
        assert response.status_code == 201, response.text
        return email, response.json()["id"]

    def login(self, http: Http, email: str) -> str:
        response = http.post(
            "/api/v1/auth/login", json={"email": email, "password": self.db.password}
        )
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def patient(self, http: Http) -> tuple[str, int, str]:
        email, user_id = self.register(http)
        return email, user_id, self.login(http, email)

    def provider_token(self, http: Http, index: int = 0) -> tuple[int, str]:
        provider = self.db.seed["providers"][index]
        return provider["id"], self.login(http, provider["email"])

    def book(self, http: Http, token: str, slot_id: int, **kwargs):
        return http.post(
            "/api/v1/consultations",
            token=token,
            json={"slot": slot_id, "reason": "scale test"},
            **kwargs,
        )


@pytest.fixture(scope="session")
def clinic(scale_db) -> Clinic:
    return Clinic(scale_db)


@pytest.fixture
def test_ip() -> str:
    """A client address of this test's own (sent as X-Forwarded-For)."""
    value = int(unique()[:6], 16)
    return f"10.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
