"""Interop with a real OpenTelemetry Collector on both sides of Kafka.

1. Collector otlpreceiver -> kafkaexporter (otlp_proto, traces partitioned by trace id) ->
   flows.traces / flows.logs / flows.metrics -> embedded chdb: every span, log record and
   data point stored once, identified by SpanId, body and (name, time, value, attributes).
2. otelwax ingest shim -> Kafka -> Collector kafkareceiver -> otlphttpexporter -> the test:
   the Collector reads back exactly what the shim acknowledged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests import otlpgen
from tests.conftest import ROOT, free_port
from tests.connectors.ingest.conftest import start_shim
from tests.flows.conftest import FlowRun, chdb_json, consume_all, flow_runs
from tests.promfixtures import gauge, metrics_request

from .conftest import OtlpHttpSink, send_grpc, start_collector

SIGNALS = ("traces", "logs", "metrics")


def _payloads(seed: int) -> dict[str, list[bytes]]:
    """200 spans (40 traces), 60 log records and 30 gauge points, distinct per ``seed``."""
    t0 = time.time_ns() - 60 * 10**9
    return {
        "traces": otlpgen.trace_payloads(
            4, seed=seed, n_resources=2, spans_per_resource=25, spans_per_trace=5
        ),
        "logs": otlpgen.logs_payloads(3, seed=seed, n_resources=2, logs_per_resource=10),
        "metrics": [
            metrics_request(
                {"service.name": f"interop-{seed}"},
                [
                    gauge(
                        "interop.gauge",
                        [(t0 + i, float(i * 10 + p), {"p": str(p)}) for p in range(5)],
                    )
                ],
            )
            for i in range(6)
        ],
    }


def _span_ids(bodies: list[bytes]) -> Counter[tuple[str, str]]:
    return Counter(
        (s.trace_id.hex(), s.span_id.hex())
        for b in bodies
        for rs in ExportTraceServiceRequest.FromString(b).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )


def _log_bodies(bodies: list[bytes]) -> Counter[str]:
    return Counter(
        r.body.string_value
        for b in bodies
        for rl in ExportLogsServiceRequest.FromString(b).resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    )


def _points(bodies: list[bytes]) -> Counter[tuple[str, int, float, str]]:
    return Counter(
        (m.name, p.time_unix_nano, p.as_double, p.attributes[0].value.string_value)
        for b in bodies
        for rm in ExportMetricsServiceRequest.FromString(b).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.gauge.data_points
    )


@pytest.fixture
def traces_run(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> Iterator[Callable[..., FlowRun]]:
    (tmp_path / "traces").mkdir()
    yield from flow_runs(
        tmp_path / "traces", kafka_bootstrap, make_topic, prefix="col_spans", module="flows.traces"
    )


@pytest.fixture
def logs_run(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> Iterator[Callable[..., FlowRun]]:
    (tmp_path / "logs").mkdir()
    yield from flow_runs(
        tmp_path / "logs", kafka_bootstrap, make_topic, prefix="col_logs", module="flows.logs"
    )


def test_collector_kafkaexporter_feeds_the_flows(
    otelcol: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    traces_run: Callable[..., FlowRun],
    logs_run: Callable[..., FlowRun],
    tmp_path: Path,
) -> None:
    traces, logs = traces_run(partitions=4), logs_run()
    metrics_topic = make_topic("col_metrics", partitions=2)
    topics = {"traces": traces.topic, "logs": logs.topic, "metrics": metrics_topic}
    grpc_port = free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}}}},
        "exporters": {
            "kafka": {
                "brokers": [kafka_bootstrap],
                # Synchronous: an accepted Export means Kafka acknowledged the records.
                "sending_queue": {"enabled": False},
                "partition_traces_by_id": True,
                **{s: {"topic": topics[s], "encoding": "otlp_proto"} for s in SIGNALS},
            }
        },
        "service": {
            "pipelines": {s: {"receivers": ["otlp"], "exporters": ["kafka"]} for s in SIGNALS}
        },
    }
    sent = _payloads(seed=1)
    col = start_collector(otelcol, config, tmp_path, ready_port=grpc_port)
    try:
        for s in SIGNALS:
            send_grpc(f"127.0.0.1:{grpc_port}", s, sent[s])
    finally:
        assert col.stop() == 0, col.log()[-4000:]

    # The Collector's convention, which the shim follows too: one trace per record, keyed by
    # its hex trace id, so a trace stays in one partition.
    records = consume_all(kafka_bootstrap, traces.topic)
    partition_of: dict[str, set[int]] = {}
    for m in records:
        key = (m.key() or b"").decode()
        ids = {tid for tid, _ in _span_ids([m.value()])}
        assert ids == {key}, (key, ids)
        partition_of.setdefault(key, set()).add(m.partition())
    assert len(partition_of) == 40 and all(len(p) == 1 for p in partition_of.values())
    assert len({p for ps in partition_of.values() for p in ps}) > 1  # spread over partitions

    # The three flows read the Collector's records to the end, side by side.
    metrics_chdb = tmp_path / "chdb-metrics"
    metrics_cfg = tmp_path / "metrics.yaml"
    metrics_cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {"topic": metrics_topic, "stop_at_end": True},
                "remote_write": None,
                "clickhouse": {"path": str(metrics_chdb), "create_schema": True},
            }
        )
    )
    metrics_log = tmp_path / "flow-metrics.log"
    env = dict(
        os.environ,
        OTELWAX_CONFIG=str(metrics_cfg),
        PYTHONPATH=str(ROOT),
        OTELWAX_METRICS_PORT="none",
    )
    procs = []
    for run in (traces, logs):
        run.write_config(source__stop_at_end=True)
        procs.append((run.start(), run.log_text))
    with open(metrics_log, "wb") as fh:
        mp = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.metrics"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    procs.append((mp, lambda: metrics_log.read_text(errors="replace")[-6000:]))
    for p, log in procs:
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        assert rc == 0, log()

    stored_spans = chdb_json(
        Path(traces.settings["clickhouse"]["path"]), "SELECT TraceId, SpanId FROM otel.otel_traces"
    )
    assert Counter(tuple(r) for r in stored_spans) == _span_ids(sent["traces"])
    stored_logs = chdb_json(
        Path(logs.settings["clickhouse"]["path"]), "SELECT Body FROM otel.otel_logs"
    )
    assert Counter(r[0] for r in stored_logs) == _log_bodies(sent["logs"])
    stored_points = chdb_json(
        metrics_chdb,
        "SELECT MetricName, toUnixTimestamp64Nano(TimeUnix), Value, Attributes['p']"
        " FROM otel.otel_metrics_gauge",
    )
    assert Counter((n, int(t), float(v), p) for n, t, v, p in stored_points) == _points(
        sent["metrics"]
    )


def test_collector_kafkareceiver_reads_what_the_shim_wrote(
    otelcol: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    otlp_http_sink: OtlpHttpSink,
    tmp_path: Path,
) -> None:
    topics = {s: make_topic(f"shim_{s}", partitions=2) for s in SIGNALS}
    sent = _payloads(seed=2)
    shim = start_shim(kafka_bootstrap, topics, tmp_path)
    try:
        for s in SIGNALS:
            send_grpc(shim.grpc_target, s, sent[s])
    finally:
        assert shim.stop() == 0, shim.log()[-4000:]

    config = {
        "receivers": {
            "kafka": {
                "brokers": [kafka_bootstrap],
                "group_id": f"interop-{topics['traces']}",
                "initial_offset": "earliest",
                **{s: {"topics": [topics[s]], "encoding": "otlp_proto"} for s in SIGNALS},
            }
        },
        "exporters": {
            "otlphttp": {
                "endpoint": otlp_http_sink.endpoint,
                "encoding": "proto",
                "compression": "none",
                "sending_queue": {"enabled": False},
            }
        },
        "service": {
            "pipelines": {s: {"receivers": ["kafka"], "exporters": ["otlphttp"]} for s in SIGNALS}
        },
    }
    want = {
        "/v1/traces": _span_ids(sent["traces"]),
        "/v1/logs": _log_bodies(sent["logs"]),
        "/v1/metrics": _points(sent["metrics"]),
    }
    count = {"/v1/traces": _span_ids, "/v1/logs": _log_bodies, "/v1/metrics": _points}

    def got() -> dict[str, Counter[Any]]:
        return {path: count[path](otlp_http_sink.received(path)) for path in want}

    col = start_collector(otelcol, config, tmp_path)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and any(
            sum(c.values()) < sum(want[p].values()) for p, c in got().items()
        ):
            time.sleep(0.25)
        time.sleep(1.0)  # anything delivered twice arrives now
    finally:
        assert col.stop() == 0, col.log()[-4000:]
    assert got() == want, col.log()[-4000:]
