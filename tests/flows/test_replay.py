"""``otelwax replay``: a time window of a flow's topic stored exactly once, whoever stored what
before (the flow, an earlier replay, a replay killed mid-way), against real Kafka and chdb."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from flows.replay import Segment, plan_segments
from tests import otlpgen
from tests.flows.conftest import ROOT, chdb_rows, produce
from tests.promfixtures import gauge, metrics_request

COUNT = "SELECT count(), uniqExact(TraceId, SpanId) FROM otel.{t}"


def replay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OTELWAX_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "otelwax", "replay", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_plan_skips_stored_recuts_unfinished_and_cuts_only_gaps() -> None:
    recorded = [(10, 19, "id"), (20, 29, "id"), (40, 49, "id")]
    segs, left = plan_segments(5, 60, recorded, {(10, 19), (40, 49)}, frontier=None)
    assert segs == [
        Segment(5, 9, "new"),
        Segment(10, 19, "stored", "id"),
        Segment(20, 29, "recorded", "id"),
        Segment(30, 39, "new"),
        Segment(40, 49, "stored", "id"),
        Segment(50, 59, "new"),
    ]
    assert left == 0
    # The flow's own table: nothing new at or past its frontier (the flow stores it).
    segs, left = plan_segments(5, 60, recorded, {(10, 19), (40, 49)}, frontier=50)
    assert segs[-1] == Segment(40, 49, "stored", "id") and left == 10
    # The flow's unfinished ranges at its frontier are its own to store.
    segs, left = plan_segments(5, 60, recorded, {(10, 19)}, frontier=20)
    assert segs == [Segment(5, 9, "new"), Segment(10, 19, "stored", "id")] and left == 40
    # A recorded range reaching into the window is kept whole (its token).
    segs, _ = plan_segments(15, 25, recorded, set(), frontier=None)
    assert segs == [Segment(10, 19, "recorded", "id"), Segment(20, 29, "recorded", "id")]


def test_replay_is_exactly_once_after_the_flow_into_another_table_and_twice(flow_run) -> None:
    run = flow_run(partitions=2)
    payloads = otlpgen.trace_payloads(20, n_resources=2, spans_per_resource=10)  # 400 spans
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()
    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, COUNT.format(t="otel_traces")) == [(400, 400)]
    cfg = str(run.config_path)

    # The window the flow stored: every range is marked stored, nothing is inserted.
    res = replay("traces", "-c", cfg, "--from", "-10m")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "0 new range(s) and 0 unfinished one(s) stored" in res.stdout, res.stdout
    assert "20 records in the window" in res.stdout
    assert chdb_rows(path, COUNT.format(t="otel_traces")) == [(400, 400)]

    # Into a fresh table: everything, once; a second replay there is a no-op.
    for n in range(2):
        res = replay("traces", "-c", cfg, "--from", "-10m", "--table", "backfill")
        assert res.returncode == 0, res.stderr[-3000:]
        assert chdb_rows(path, COUNT.format(t="backfill")) == [(400, 400)]
        assert ("0 new range(s)" in res.stdout) == (n == 1), res.stdout
    assert chdb_rows(path, COUNT.format(t="otel_traces")) == [(400, 400)]

    # Records the flow has not reached yet are left to it, not stored behind its back.
    produce(run.bootstrap, run.topic, otlpgen.trace_payloads(2, seed=9, n_resources=1))
    res = replay("traces", "-c", cfg, "--from", "-10m")
    assert "2 records left to the flow" in res.stdout, res.stdout
    run.run_to_end()
    assert chdb_rows(path, "SELECT count() = uniqExact(TraceId, SpanId) FROM otel.otel_traces") \
        == [(1,)]


@pytest.mark.extended  # make test-all; make test keeps the replay exactly-once tests
def test_replay_killed_mid_way_finishes_on_the_next_run(flow_run) -> None:
    run = flow_run(partitions=1)
    run.write_config(source__batch__max_records=2)  # 200 ranges: slow enough to be killed
    payloads = otlpgen.trace_payloads(400, n_resources=1, spans_per_resource=1)
    produce(run.bootstrap, run.topic, payloads)
    path = run.settings["clickhouse"]["path"]
    cfg = str(run.config_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "otelwax", "replay", "traces", "-c", cfg, "--from", "-10m",
           "--table", "backfill", "--progress-every", "0.05"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    killed_at = None
    deadline = time.monotonic() + 90
    assert proc.stderr is not None
    for line in proc.stderr:  # "replay traces:  12% 48/400 records"
        if "/400 records" in line and 40 <= int(line.split("/")[0].split()[-1]) <= 300:
            time.sleep(0.4)  # into the next batch: between its intents, inserts and marks
            proc.send_signal(signal.SIGKILL)
            killed_at = line.strip()
            break
        assert time.monotonic() < deadline
    proc.wait(30)
    assert killed_at, "the replay ended before it could be killed"

    res = replay("traces", "-c", cfg, "--from", "-10m", "--table", "backfill")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already stored skipped" in res.stdout
    assert chdb_rows(path, COUNT.format(t="backfill")) == [(400, 400)], (killed_at, res.stdout)


def test_replay_on_a_chdb_folder_a_running_flow_holds_says_to_stop_the_flow(flow_run) -> None:
    run = flow_run(partitions=1)
    p = run.start()
    deadline = time.monotonic() + 60
    while "start at" not in run.log_text():
        assert p.poll() is None and time.monotonic() < deadline, run.log_text()
        time.sleep(0.3)
    res = replay("traces", "-c", str(run.config_path), "--from", "-1h")
    assert res.returncode == 1, res.stderr
    assert "is in use, most likely by the running flows.traces: stop it" in res.stderr


def test_metrics_replay_leaves_unstored_records_to_the_flow_and_skips_stored_ones(
    kafka_bootstrap: str, make_topic, tmp_path
) -> None:
    topic = make_topic("mreplay", partitions=2)
    t = time.time_ns()
    reqs = [
        metrics_request({"service.name": "svc"}, [gauge("g", [(t + i, float(i), {"i": str(i)})])])
        for i in range(10)
    ]
    produce(kafka_bootstrap, topic, reqs)
    chdb = tmp_path / "chdb"
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_bootstrap},
        "source": {"topic": topic, "stop_at_end": True},
        "remote_write": None, "clickhouse": {"path": str(chdb), "create_schema": True},
    }))  # fmt: skip
    # Before the flow ran: its table is the flow's to fill, the replay stores nothing.
    res = replay("metrics", "-c", str(cfg), "--from", "-10m")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "10 records left to the flow" in res.stdout, res.stdout
    env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "bytewax.run", "flows.metrics"], cwd=ROOT, env=env,
                   check=True, timeout=120, capture_output=True)  # fmt: skip
    res = replay("metrics", "-c", str(cfg), "--from", "-10m")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "0 new range(s) and 0 unfinished one(s) stored" in res.stdout, res.stdout
    assert "0 records left" in res.stdout, res.stdout
    assert chdb_rows(chdb, "SELECT count() FROM otel.otel_metrics_gauge") == [(10,)]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "yesterday"], "'yesterday' is not a time"),
        (["--from", "2026-12-06T09:00:00"], "has no time zone"),
        (["--from", "-1h", "--to", "-2h"], "must be before --to"),
        (["--from", "-1h", "--table", "a;b"], "--table 'a;b'"),
        (["--from", "-1h", "--table", "m", "metrics"], "the metrics flow writes several"),
    ],
)
def test_bad_times_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    t0 = time.monotonic()
    signal_ = args.pop() if args[-1] == "metrics" else "traces"
    res = replay(signal_, *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert res.stderr.startswith("otelwax replay: error: ")
    assert time.monotonic() - t0 < 10
