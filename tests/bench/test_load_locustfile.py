"""The clinic-day locustfile (bench/load/) runs: headless Locust against the real server
(the Procfile's uvicorn on this test's database), with the load clinic's accounts made by
bench/load/seed.py. Every person signs in (no tokens kept), the main endpoints are called,
none fails, and a threshold that cannot be met turns into a FAIL line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.webserver import web_node

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(settings.BASE_DIR)
LOCUSTFILE = ROOT / "bench" / "load" / "locustfile.py"
MAIN = {
    "POST auth/login",
    "GET dashboard",
    "GET providers/{id}/slots",
    "POST consultations (book)",
    "GET consultations",
    "GET consultations/{id}/messages",
    "POST consultations/{id}/messages",
    "GET notifications",
}


def seed_load_clinic(out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "bench" / "load"))
    try:
        import seed as load_seed
    finally:
        sys.path.remove(str(ROOT / "bench" / "load"))
    data = load_seed.seed(patients=6, providers=2, staff=1, tokens=False)
    data.pop("tokens")
    out.write_text(json.dumps(data))
    return data


def test_the_clinic_day_runs_against_the_server(transactional_db, tmp_path):
    accounts = tmp_path / "accounts.json"
    data = seed_load_clinic(accounts)
    summary_path = tmp_path / "summary.json"
    # The web node believes loopback's X-Forwarded-For, as behind the cluster's nginx, so
    # each simulated person signs in from an address of their own.
    with web_node(tmp_path, TRUSTED_PROXIES="127.0.0.1", DATABASE_POOL_MAX_SIZE="4") as (base, log):
        env = {
            **os.environ,
            "LOAD_ACCOUNTS": str(accounts),
            "LOAD_TOKENS": str(tmp_path / "tokens.json"),
            "LOAD_SUMMARY": str(summary_path),
            "LOAD_THINK_SECONDS": "0.05,0.2",
            # Every action once first: the endpoints below are called whatever the dice say.
            "LOAD_WALKTHROUGH": "1",
            # Latency is not judged on a shared test machine, except by a p95 no server
            # meets: the run must say FAIL for it and exit non-zero.
            "LOAD_P95_MS": "0.001",
            "LOAD_P99_MS": "1000000",
        }
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("locust")),
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--only-summary",
                "-u",
                "3",
                "-r",
                "3",
                "-t",
                "8s",
                "--host",
                base,
                # One person of each role (the weights would pick patients first).
                "--config-users",
                json.dumps(
                    [
                        {"user_class_name": name, "fixed_count": 1}
                        for name in ("Patient", "Provider", "Staff")
                    ]
                ),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = run.stdout + run.stderr
    summary = json.loads(summary_path.read_text())
    called = {row["name"]: row for row in summary["endpoints"]}
    assert set(called) >= MAIN, (sorted(called), output[-3000:])
    assert all(called[name]["requests"] > 0 for name in MAIN)
    assert summary["errors"] == 0, (summary["errors_by_kind"], log.read_text()[-3000:])
    assert summary["users"] == 3
    # Nobody had a token: each of the three people signed in.
    assert called["POST auth/login"]["requests"] >= 3
    assert called["GET providers/{id}/queue"]["requests"] > 0
    assert summary["checks"]["errors < 0.1%"]["ok"] is True
    assert summary["checks"]["p95 < 0.001 ms"]["ok"] is False
    assert "FAIL  p95 < 0.001 ms" in output and "thresholds: FAIL" in output
    assert run.returncode == 1, output[-3000:]
    # Every token the run signed in with is kept for the next run.
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    emails = {a["email"] for role in ("patients", "providers", "staff") for a in data[role]}
    assert set(tokens) <= emails and len(tokens) == 3
