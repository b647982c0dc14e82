"""The soak's smoke variant: the whole stack on private ports for 2 minutes with a reduced
fault set (flows SIGKILLed, ClickHouse restarted, poison records, far-dated spans, a 10x
burst), then the reconciliation: nothing acknowledged lost, no duplicate rows, no stuck flow.

It starts its own Kafka, ClickHouse server, Prometheus and Jaeger (ports 27500-27999), never
the shared ones. ``python -m soak --help`` runs the long version (``make soak``).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_soak_smoke_nothing_acknowledged_is_lost_duplicated_or_stuck(tmp_path) -> None:
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--duration", "50s", "--faults", "smoke", "--each", "1",
         "--outage", "10s", "--traces-per-s", "30", "--drain", "120s", "--idle-close", "10s",
         "--seed", "12",
         "--port-base", "27500", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode != 2, f"the soak stack did not start:\n{proc.stdout[-4000:]}"
    assert result["table"], "the soak printed no reconciliation"
    assert result["violations"] == [], proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_soak_refuses_a_run_folder_with_an_earlier_runs_data(tmp_path) -> None:
    """Reusing a run folder would resume the flows from the old run's snapshots and count the
    old run's records as lost: the soak says so in one line and starts nothing (exit 2)."""
    out = tmp_path / "soak"
    (out / "kafka").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--duration", "1s", "--faults", "none", "--port-base",
         "27500", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"run folder {out} is not empty" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["kafka"]
