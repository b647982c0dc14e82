"""``otelwax doctor``: every configured service checked, each problem with its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from tests.conftest import free_port
from tests.promfixtures import prometheus_url_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _otelwax(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelwax", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip


def test_doctor_names_what_is_missing_and_how_to_fix_it(
    tmp_path: Path, kafka_bootstrap: str, prometheus_url: str
) -> None:
    topic = f"doctor_{uuid.uuid4().hex[:8]}"
    jaeger = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "clickhouse": {"path": f"{tmp_path}/chdb/{{flow}}"},
                "sinks": {
                    "remote_write": {"url": f"{prometheus_url}/api/v1/write"},
                    "jaeger": {"endpoint": jaeger, "insecure": True},
                },
                "flows": {"traces": {"source": {"topic": topic}}},
            }
        )
    )
    assert _otelwax("clickhouse", "init", "-c", str(cfg)).returncode == 0
    res = _otelwax("doctor", "-c", str(cfg))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert f"problem: kafka {kafka_bootstrap}: topic {topic!r} does not exist" in out
    assert f"otelwax kafka create-topics --bootstrap {kafka_bootstrap} {topic}" in out
    assert f"problem: jaeger {jaeger}: no answer" in out
    assert f"ok: remote-write {prometheus_url}/api/v1/write: answers" in out
    assert "traces (embedded" in out and "accept every column" in out  # tables ready
    assert "does not exist yet" not in out


def test_doctor_on_an_unreachable_kafka_answers_in_seconds(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"kafka": {"bootstrap_servers": addr}, "clickhouse": {"path": f"{tmp_path}/{{flow}}"}}
        )
    )
    t0 = time.monotonic()
    res = _otelwax("doctor", "-c", str(cfg))
    assert res.returncode == 1 and time.monotonic() - t0 < 30
    assert f"problem: kafka {addr}: no answer in 5 s" in res.stdout
    assert "$OTELWAX_KAFKA_BOOTSTRAP" in res.stdout
