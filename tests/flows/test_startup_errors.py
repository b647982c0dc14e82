"""A flow that cannot start says why in one line, quickly, and exits 2 (issue: ~30 s, ~580
librdkafka lines, a Rust panic and a chained traceback for an unreachable Kafka)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, config: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OTELWAX_CONFIG": str(cfg), "PYTHONPATH": str(ROOT)}
    env.pop("OTELWAX_METRICS_PORT", None)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.traces"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    return res, time.monotonic() - t0


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    out = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 2, out[-20:]
    assert len(out) == 1, out[:20]  # no librdkafka flood, no panic, no traceback
    return out[0]


def test_kafka_unreachable(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    kafka = {"bootstrap_servers": addr, "connect_timeout_s": 2}
    res, took = _start(tmp_path, {"kafka": kafka, "clickhouse": {"path": str(tmp_path / "ch")}})
    line = _one_line(res)
    assert f"Kafka at {addr} did not answer within 2 s" in line
    assert "kafka.bootstrap_servers" in line and "$OTELWAX_KAFKA_BOOTSTRAP" in line
    assert took < 20


def test_topic_missing(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"missing_{uuid.uuid4().hex[:8]}"
    res, took = _start(
        tmp_path,
        {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "clickhouse": {"path": str(tmp_path / "ch")},
            "flows": {"traces": {"source": {"topic": topic}}},
        },
    )
    line = _one_line(res)
    assert f"Kafka topic {topic!r} does not exist" in line
    assert f"otelwax kafka create-topics --bootstrap {kafka_bootstrap} {topic}" in line
    assert took < 20


@pytest.mark.parametrize("addr", ["127.0.0.1"])
def test_metrics_port_in_use(tmp_path: Path, kafka_bootstrap: str, make_topic, addr: str) -> None:
    topic = make_topic("spans", partitions=1)
    with socket.socket() as busy:
        busy.bind((addr, 0))
        busy.listen()
        port = busy.getsockname()[1]
        res, took = _start(
            tmp_path,
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "clickhouse": {"path": str(tmp_path / "ch")},
                "flows": {
                    "traces": {
                        "source": {"topic": topic},
                        "metrics_port": port,
                        "metrics_addr": addr,
                    }
                },
            },
        )
    line = _one_line(res)
    assert f"metrics port {addr}:{port} is not available" in line and "metrics_port" in line
    assert took < 20
