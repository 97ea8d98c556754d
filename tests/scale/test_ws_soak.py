"""The chat soak's harness (bench/ws_soak.py): it finds every missing id, and a short run
against a real server counts what it sent, stored, saw and reconnected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ws_soak import Report, Slot, evaluate, missing_deliveries, rss_growth

ROOT = Path(__file__).resolve().parents[2]


def test_missing_deliveries_lists_each_sockets_unseen_ids():
    patient = Slot(index=0, room=7, role="patient", seen={1, 2, 4})
    provider = Slot(index=1, room=7, role="provider", seen={1, 2, 3, 4})
    other = Slot(index=2, room=8, role="patient", seen=set())
    truth = {7: {1, 2, 3, 4}, 8: {9}}
    assert missing_deliveries([patient, provider, other], truth) == {
        "7/patient": [3],
        "8/patient": [9],
    }


def test_evaluate_fails_on_a_missing_id_a_lost_send_a_close_or_memory_growth():
    clean = Report(sockets=4, minutes=1, stored=10, rss_kib=[1000, 1050, 1090])
    assert all(check["pass"] for check in evaluate(clean))

    def failed(**changes) -> set[str]:
        report = Report(**{**clean.__dict__, **changes})
        return {check["check"] for check in evaluate(report) if not check["pass"]}

    assert failed(missing={"7/patient": [3]}) == {
        "every stored message seen by both sockets, by id"
    }
    assert failed(lost_sends=["soak-1-2-ab"]) == {"every send stored"}
    assert failed(server_closes={"1011 server": 1}) == {
        "no close we did not ask for, but 4408 (resync)"
    }
    assert not failed(server_closes={"4408 server": 3})
    assert failed(closed_at_end=2) == {"reconnects succeed"}
    assert failed(rss_kib=[1000, 1200]) == {"RSS growth < 10% over the first interval's"}
    assert failed(stored=0) == {"messages were sent and stored"}
    assert rss_growth([1000]) is None
    assert rss_growth([1000, 1099, 1020]) == pytest.approx(0.099)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_short_soak_against_a_real_server(tmp_path):
    """A real server, 6 sockets for 6 s, half of them reconnecting every 3 s: the harness's
    counts add up (sends, stores, reconnects with replay by id, an RSS sample per interval).
    The full soak (5,000 sockets, 10 minutes) is bench/ws_soak.py's default, not CI's."""
    out = tmp_path / "soak.json"
    env = {**os.environ, "MEDEASE_VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [sys.executable, "bench/ws_soak.py", "--consultations", "3", "--minutes", "0.1",
         "--interval", "3", "--rate", "5", "--reconnect", "0.5", "--drain", "15",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.exists(), result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["sockets"] == 6
    assert report["sent"] >= 15  # 5/s for 6 s, less what fell on two closed sockets
    # Each send is either stored or listed as lost, and the truth was read by id.
    assert report["stored"] + len(report["lost_sends"]) == report["sent"]
    assert report["stored"] > 0
    assert report["reconnects"] >= 3  # half of 6 sockets in the first interval, at least
    assert len(report["rss_kib"]) == 2
    # Exit status follows the checks.
    ok = all(check["pass"] for check in report["checks"])
    assert (result.returncode == 0) == ok, result.stdout[-2000:]
    assert ("SOAK PASSED" if ok else "SOAK FAILED") in result.stdout
