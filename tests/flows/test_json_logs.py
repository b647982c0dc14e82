"""A running flow process with ``OTELWAX_LOG_FORMAT=json``: its log is JSON lines, and what a
step logs (a poison record, the source starting, the sink opening) names that step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import otlpgen
from tests.flows.conftest import FlowRun, flow_runs, produce
from tests.promfixtures import prometheus_url_fixture  # noqa: F401


@pytest.fixture
def traces_run(tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]):
    yield from flow_runs(
        tmp_path, kafka_bootstrap, make_topic, prefix="jsonlogs", module="flows.traces"
    )


def json_records(run: FlowRun) -> list[dict[str, Any]]:
    """Every JSON line the flow wrote (stdout and stderr); asserts no Python log line is
    plain text."""
    recs = []
    for path in run.logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                recs.append(json.loads(line))
            else:  # bytewax's own (Rust) output may be plain; Python logging may not
                assert " INFO " not in line and " WARNING " not in line, line
    return recs


def test_poison_record_is_logged_as_json_with_its_step_id(traces_run) -> None:
    run = traces_run(partitions=1)
    good = otlpgen.trace_payloads(4, seed=3, n_resources=1, spans_per_resource=2)
    garbage = b"\xff\xfe not protobuf \x00\x01"
    produce(run.bootstrap, run.topic, [good[0], garbage, *good[1:]], partition=0)
    run.run_to_end(env={"OTELWAX_LOG_FORMAT": "json"})

    recs = json_records(run)
    flow = "traces"  # the dataflow id (sink.flow)
    bad = [r for r in recs if "undecodable" in r["msg"]]
    assert len(bad) == 1, recs
    (rec,) = bad
    assert rec["level"] == "WARNING" and rec["flow"] == flow
    assert rec["step_id"] == f"{flow}.dead_letters"
    assert (rec["topic"], rec["partition"], rec["offset"]) == (run.topic, 0, 1)
    assert rec["reason"] and rec["reason"] in rec["msg"]
    # the other steps' lines name their own step
    steps = {r.get("step_id") for r in recs}
    assert {f"{flow}.kafka", f"{flow}.clickhouse"} <= steps, steps
    sink = next(r for r in recs if r.get("step_id") == f"{flow}.clickhouse")
    assert sink["worker"] == 0 and sink["logger"].startswith("connectors.clickhouse")


def test_metrics_flow_with_bytewax_source_logs_decode_errors_with_its_step(
    kafka_bootstrap: str, make_topic: Callable[..., str], prometheus_url: str, tmp_path: Path
) -> None:
    """flows.metrics' ``source: bytewax`` (bytewax's KafkaSource) still runs, now through the
    step wrappers: a gauge reaches Prometheus and the bad record's line names the decode step."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    from tests.flows.conftest import ROOT
    from tests.promfixtures import gauge, metrics_request, unique_job, wait_for

    topic, dlq = make_topic("jsonmetrics", partitions=1), make_topic("jsondlq", partitions=1)
    job = unique_job("jsonlogs")
    good = metrics_request(
        {"service.name": job}, [gauge("queue.depth", [(time.time_ns(), 7.0, {})])]
    )
    produce(kafka_bootstrap, topic, [good, b"\xff\xfe not protobuf"], partition=0)
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {"topic": topic, "stop_at_end": True},
                "clickhouse": None,
                "remote_write": {"url": f"{prometheus_url}/api/v1/write"},
                "dead_letters": {"topic": dlq},
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OTELWAX_LOG_FORMAT="json")
    env.pop("OTELWAX_CONFIG", None)
    res = subprocess.run(
        [sys.executable, "-m", "bytewax.run", f"flows.metrics:build({str(cfg)!r})"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    wait_for(prometheus_url, f'queue_depth{{job="{job}"}}', 1)
    recs = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
    bad = [r for r in recs if "undecodable record" in r["msg"]]
    assert len(bad) == 1, res.stderr[-3000:]
    assert bad[0]["offset"] == 1, bad[0]
    from tests.flows.conftest import consume_all

    assert [m.value() for m in consume_all(kafka_bootstrap, dlq)] == [b"\xff\xfe not protobuf"]
    assert bad[0]["step_id"] == "otelwax_metrics.decode" and bad[0]["level"] == "WARNING"
