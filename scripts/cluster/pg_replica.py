#!/usr/bin/env python3
"""A throwaway PostgreSQL streaming replica of a local cluster, for tests and `make cluster`.

    pg_replica.py create  --dir DIR --port PORT [--apply-delay 500ms]
    pg_replica.py start   --dir DIR
    pg_replica.py stop    --dir DIR
    pg_replica.py destroy --dir DIR

``create`` takes a base backup with ``pg_basebackup -R`` (which writes ``standby.signal``
and ``primary_conninfo``), writes a minimal configuration of its own into the copy (Debian
keeps the primary's configuration outside the data directory), starts the server on
127.0.0.1:PORT and waits until it streams WAL. No replication slot is created, so a
replica that is never destroyed cannot make the primary keep WAL forever.

The primary must accept replication connections from 127.0.0.1 without a password. When
no rule in its pg_hba.conf allows that, ``create`` appends one
(``host replication all 127.0.0.1/32 trust``, marked with a comment) and reloads the
primary's configuration; it does so once, and says so. ``wal_level`` must be ``replica``
or ``logical`` (the default is ``replica``).

Run as root (the server processes then run as the ``postgres`` user through ``runuser``)
or as the cluster's owner. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
HBA_MARKER = "# added by medease scripts/cluster/pg_replica.py: local streaming replicas"
HBA_RULE = "host    replication     all             127.0.0.1/32            trust"
# Settings a hot standby needs at least as high as on its primary.
COPIED_LIMITS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def log(message: str) -> None:
    print(f"[pg_replica] {message}", file=sys.stderr, flush=True)


def as_owner(command: list[str]) -> list[str]:
    """Run a server command as the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)  # noqa: S603 - fixed argv, no shell


def psql(
    sql: str, *, host: str, port: int, user: str, dbname: str = "postgres", timeout: float = 30
) -> str:
    result = run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            user,
            "-d",
            dbname,
            "-c",
            sql,
        ],
        timeout=timeout,
    )
    return result.stdout.strip()


def ensure_replication_allowed(*, host: str, port: int, user: str) -> None:
    """Idempotently allow trust replication connections from 127.0.0.1 on the primary."""
    wal_level = psql("SHOW wal_level", host=host, port=port, user=user)
    if wal_level not in ("replica", "logical"):
        raise SystemExit(
            f"the primary has wal_level={wal_level}; set it to 'replica' and restart it"
        )
    allowed = psql(
        "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NULL"
        " AND 'replication' = ANY(database) AND type IN ('host', 'hostnossl')"
        " AND (address IS NULL OR address IN ('127.0.0.1', 'all', 'samehost'))"
        " AND auth_method = 'trust'",
        host=host,
        port=port,
        user=user,
    )
    if int(allowed or 0) > 0:
        return
    hba_file = Path(psql("SHOW hba_file", host=host, port=port, user=user))
    text = hba_file.read_text()
    if HBA_MARKER not in text:
        log(f"allowing local replication connections: appending to {hba_file}")
        with hba_file.open("a") as handle:
            handle.write(f"\n{HBA_MARKER}\n{HBA_RULE}\n")
    psql("SELECT pg_reload_conf()", host=host, port=port, user=user)
    # The reload is asynchronous: wait until the rule is live.
    for _ in range(100):
        if int(
            psql(
                "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database)"
                " AND auth_method = 'trust'",
                host=host,
                port=port,
                user=user,
            )
            or 0
        ):
            return
        time.sleep(0.1)


def data_dir(root: Path) -> Path:
    return root / "data"


def write_config(root: Path, *, port: int, apply_delay: str, limits: dict[str, str]) -> None:
    data = data_dir(root)
    lines = [
        "# Written by medease scripts/cluster/pg_replica.py (a throwaway local replica).",
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{root}'",
        "hot_standby = on",
        # Queries on the replica hold back cleanup on the primary instead of being
        # cancelled by replay conflicts.
        "hot_standby_feedback = on",
        "wal_receiver_status_interval = 1s",
        f"recovery_min_apply_delay = '{apply_delay}'",
        "shared_buffers = 32MB",
        # A throwaway copy: durability of the replica itself does not matter.
        "fsync = off",
        "logging_collector = off",
        "log_min_messages = warning",
        "cluster_name = 'medease-replica'",
        *(f"{name} = {value}" for name, value in limits.items()),
    ]
    (data / "postgresql.conf").write_text("\n".join(lines) + "\n")
    (data / "pg_hba.conf").write_text(
        "local   all   all                 trust\nhost    all   all   127.0.0.1/32  trust\n"
    )
    (data / "pg_ident.conf").write_text("")


def chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def create(args: argparse.Namespace) -> None:
    root = Path(args.dir).resolve()
    if data_dir(root).exists():
        raise SystemExit(f"{data_dir(root)} exists; destroy it first")
    ensure_replication_allowed(host=args.primary_host, port=args.primary_port, user=args.user)
    limits = {
        name: psql(f"SHOW {name}", host=args.primary_host, port=args.primary_port, user=args.user)
        for name in COPIED_LIMITS
    }
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    chown_postgres(root)
    started = time.monotonic()
    run(
        as_owner(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                args.primary_host,
                "-p",
                str(args.primary_port),
                "-U",
                args.user,
                "-D",
                str(data_dir(root)),
                "-R",  # standby.signal + primary_conninfo
                "-X",
                "stream",
                "-c",
                "fast",  # an immediate checkpoint instead of waiting for the next one
                "--no-sync",
            ]
        ),
        timeout=300,
    )
    log(f"base backup done in {time.monotonic() - started:.1f}s")
    write_config(root, port=args.port, apply_delay=args.apply_delay, limits=limits)
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        chown_postgres(data_dir(root) / name)
    start(args)


def start(args: argparse.Namespace) -> None:
    root = Path(args.dir).resolve()
    run(
        as_owner(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data_dir(root)),
                "-l",
                str(root / "postgres.log"),
                "-w",
                "-t",
                "120",
                "start",
            ]
        ),
        timeout=150,
    )
    port = read_port(root)
    deadline = time.monotonic() + 120
    while True:
        try:
            status = psql(
                "SELECT pg_is_in_recovery()::text || ' ' ||"
                " coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')",
                host="127.0.0.1",
                port=port,
                user=args.user,
                timeout=10,
            )
        except subprocess.CalledProcessError as exc:
            status = exc.stderr.strip()
        if status == "true streaming":
            log(f"replica streaming on 127.0.0.1:{port}")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"replica did not start streaming: {status}")
        time.sleep(0.2)


def read_port(root: Path) -> int:
    for line in (data_dir(root) / "postgresql.conf").read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=", 1)[1])
    raise SystemExit("no port in the replica's postgresql.conf")


def stop(args: argparse.Namespace) -> None:
    root = Path(args.dir).resolve()
    if not (data_dir(root) / "postmaster.pid").exists():
        return
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        as_owner(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data_dir(root)),
                "-m",
                args.mode,
                "-w",
                "-t",
                "60",
                "stop",
            ]
        ),
        check=False,
        capture_output=True,
        timeout=90,
    )


def destroy(args: argparse.Namespace) -> None:
    root = Path(args.dir).resolve()
    if data_dir(root).exists():
        args.mode = "immediate"
        stop(args)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["create", "start", "stop", "destroy"])
    parser.add_argument("--dir", required=True, help="directory holding the replica")
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument("--apply-delay", default="0", help="recovery_min_apply_delay")
    parser.add_argument("--mode", default="fast", help="pg_ctl stop mode")
    parser.add_argument("--primary-host", default="127.0.0.1")
    parser.add_argument("--primary-port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    args = parser.parse_args(argv)
    try:
        {"create": create, "start": start, "stop": stop, "destroy": destroy}[args.action](args)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"{' '.join(exc.cmd)} failed ({exc.returncode}):\n{exc.stderr or exc.stdout}"
        ) from exc


if __name__ == "__main__":
    main()
