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
