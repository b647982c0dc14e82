"""Poison batches and dead-letter failures in a real traces flow (Kafka → flow process → chdb).

An operator that raises on some rows must not crash-loop the flow: after the configured
attempts the failing rows go to the DLQ (with the error and the step id) and the rest of
the range is stored. A DLQ that cannot take a record (missing topic) stops the flow loudly.
"""

from __future__ import annotations

import random
import threading
import time

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from connectors.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_STEP, H_TOPIC
from tests import otlpgen
from tests.conftest import free_port
from tests.flows.conftest import chdb_rows, consume_all, produce, scrape_metrics

SMALL = {"n_resources": 2, "spans_per_resource": 10}  # 20 spans per request
MARKER = "poison"
POISON_OP = {
    "module": "tests.operators.user_ops_fixtures:fail_on_marker",
    "name": "poison_check",
    "config": {"marker": MARKER},
}


def _span_ids(payload: bytes) -> list[str]:
    req = ExportTraceServiceRequest.FromString(payload)
    return [s.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _with_marker(payload: bytes) -> tuple[bytes, str]:
    """The request with one span renamed to the marker; returns it and that span's id."""
    req = ExportTraceServiceRequest.FromString(payload)
    span = req.resource_spans[1].scope_spans[0].spans[4]
    span.name = MARKER
    return req.SerializeToString(), span.span_id.hex()


def test_poison_rows_go_to_the_dlq_and_the_flow_keeps_storing(flow_run) -> None:
    port = free_port()
    run = flow_run(partitions=2, operators=[POISON_OP], metrics_port=port)
    payloads = otlpgen.trace_payloads(40, seed=21, **SMALL)
    poison_ids = set()
    for i in (7, 23):
        payloads[i], sid = _with_marker(payloads[i])
        poison_ids.add(sid)
    produce(run.bootstrap, run.topic, payloads)
    good_ids = {s for p in payloads for s in _span_ids(p)} - poison_ids

    p = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
    stored = f'otelwax_sent_total{{component="clickhouse_sink",unit="rows"}} {len(good_ids)}.0'
    dropped = (
        'otelwax_dropped_total{component="operator.poison_check",reason="operator_error",'
        'unit="rows"} 2.0'
    )
    text, deadline = "", time.monotonic() + 90
    while p.poll() is None and time.monotonic() < deadline and not all(
        w in text for w in (stored, dropped)
    ):
        text = scrape_metrics(port, stored, dropped, timeout=3)
    alive = p.poll() is None
    p.kill()
    p.wait()
    assert alive, f"the flow exited; log:\n{run.log_text()}"
    counters = [ln for ln in text.splitlines() if ln.startswith(("otelwax_sent", "otelwax_drop"))]
    assert stored in text and dropped in text, counters

    rows = chdb_rows(run.settings["clickhouse"]["path"], "SELECT SpanId FROM otel.otel_traces")
    assert sorted(r[0] for r in rows) == sorted(good_ids)

    dead = consume_all(run.bootstrap, run.settings["dead_letters"]["topic"])
    assert dead, run.log_text()
    got = set()
    for m in dead:
        h = dict(m.headers())
        assert "op_0_poison_check" in h[H_STEP].decode()
        assert "poison span" in h[H_ERROR].decode()
        assert h[H_TOPIC].decode() == run.topic
        assert int(h[H_PARTITION]) in (0, 1)
        assert int(h[H_OFFSET]) >= 0
        rows_back = pa.ipc.open_stream(m.value()).read_all()
        assert set(rows_back.column("SpanName").to_pylist()) == {MARKER}
        got.update(rows_back.column("SpanId").to_pylist())
    assert got == poison_ids
    log = run.log_text(10**9)
    assert "Traceback" not in log, log
    lines = [ln for ln in log.splitlines() if "op_0_poison_check" in ln and "DLQ" in ln]
    assert lines, log


def test_action_fail_stops_the_flow_naming_the_step(flow_run) -> None:
    run = flow_run(
        partitions=1, operators=[POISON_OP], operators_on_error={"attempts": 2, "action": "fail"}
    )
    payloads = otlpgen.trace_payloads(5, seed=22, **SMALL)
    payloads[2], _ = _with_marker(payloads[2])
    produce(run.bootstrap, run.topic, payloads)
    run.write_config(source__stop_at_end=True)
    rc = run.wait(run.start(), timeout=60)
    log = run.log_text(10**9)
    assert rc != 0, log
    assert "op_0_poison_check" in log and "poison span" in log, log
    assert consume_all(run.bootstrap, run.settings["dead_letters"]["topic"], timeout=3) == []


def test_a_record_of_the_shims_max_size_reaches_the_dlq(flow_run) -> None:
    """The shim writes values up to ``max_message_bytes`` (1 MB by default); an undecodable
    one of that size must reach the DLQ with its headers, not crash the flow."""
    run = flow_run(partitions=1)
    good = otlpgen.trace_payloads(10, seed=23, **SMALL)
    huge = b"\xff" + bytes(range(256)) * 3906  # 999_937 bytes, not protobuf
    shim_like = Producer(
        {
            "bootstrap.servers": run.bootstrap,
            "message.max.bytes": 1_000_000 + 4096,  # connectors.kafka_producer's setting
            "compression.type": "lz4",
        }
    )
    for v in (*good[:5], huge, *good[5:]):
        shim_like.produce(run.topic, value=v, key=b"k", partition=0)
    assert shim_like.flush(30) == 0
    run.run_to_end(timeout=90)

    (n,) = chdb_rows(run.settings["clickhouse"]["path"], "SELECT count() FROM otel.otel_traces")[0]
    assert n == 10 * 20
    dead = consume_all(run.bootstrap, run.settings["dead_letters"]["topic"])
    assert [(int(dict(m.headers())[H_OFFSET]), m.value() == huge) for m in dead] == [(5, True)]


def test_a_missing_dlq_topic_fails_loudly_within_seconds(flow_run) -> None:
    run = flow_run(partitions=1, dead_letters={"topic": "otelwax_no_such_dlq_topic"})
    produce(run.bootstrap, run.topic, [*otlpgen.trace_payloads(3, seed=24, **SMALL), b"\x00bad"])
    run.write_config(source__stop_at_end=True)
    t0 = time.monotonic()
    rc = run.wait(run.start(), timeout=45)
    took = time.monotonic() - t0
    log = run.log_text(10**9)
    assert rc != 0, log
    assert took < 20, (took, log)
    errors = [
        ln
        for ln in log.splitlines()
        if " ERROR " in ln and "otelwax_no_such_dlq_topic" in ln and "dead_letters" in ln
    ]
    assert len(errors) == 1, log


@pytest.mark.slow
@pytest.mark.extended  # make test-all; the soak smoke SIGKILLs flows with operators too
def test_a_replay_after_sigkill_makes_the_same_decision(flow_run) -> None:
    """Killed at random moments, restarted: every good span stored exactly once, every poison
    span in the DLQ (maybe more than once: dead letters are at-least-once), none stored."""
    rnd = random.Random()
    run = flow_run(
        partitions=2,
        operators=[POISON_OP],
        source={"batch": {"max_records": 1000, "max_delay_s": 0.15}, "poll_max_messages": 8},
    )
    payloads = otlpgen.trace_payloads(300, seed=rnd.randrange(1 << 30), **SMALL)
    poison_ids = set()
    for i in range(5, 300, 25):
        payloads[i], sid = _with_marker(payloads[i])
        poison_ids.add(sid)
    good_ids = {s for p in payloads for s in _span_ids(p)} - poison_ids

    def late_produce() -> None:  # records keep arriving, so ranges are cut while it runs
        for i in range(0, 300, 10):
            produce(run.bootstrap, run.topic, payloads[i : i + 10])
            time.sleep(0.3)

    producer = threading.Thread(target=late_produce, daemon=True)
    producer.start()
    for _ in range(3):
        p = run.start()
        deadline = time.monotonic() + 30  # kill while it reads, not while it starts
        while ": start at" not in run.logs[-1].read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(rnd.uniform(0.3, 2.0))
        p.kill()
        p.wait()
    producer.join(60)
    run.run_to_end(timeout=120)

    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces") == [
        (len(good_ids), len(good_ids))
    ]
    rows = chdb_rows(path, "SELECT SpanId FROM otel.otel_traces")
    assert not poison_ids & {r[0] for r in rows}
    dead = consume_all(run.bootstrap, run.settings["dead_letters"]["topic"])
    got = {s for m in dead for s in pa.ipc.open_stream(m.value()).read_all()["SpanId"].to_pylist()}
    assert got == poison_ids
