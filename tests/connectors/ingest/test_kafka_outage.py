"""Kafka stopped mid-run: clients get retryable errors (503 / UNAVAILABLE), every request the
shim acknowledged is in Kafka afterwards, and the shim resumes by itself when Kafka is back.

Uses a broker of its own (port 29092, data in .data/kafka-ingest) that it may stop.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, port_open
from tests.otlpgen import trace_request

from .conftest import consume, start_shim

PORT = 29092
BOOTSTRAP = f"127.0.0.1:{PORT}"
ENV = dict(
    os.environ,
    KAFKA_PORT=str(PORT),
    KAFKA_CONTROLLER_PORT=str(PORT + 1),
    KAFKA_DATA=str(ROOT / ".data" / "kafka-ingest"),
    KAFKA_PARTITIONS="2",
)
TRACE_SVC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _kafka(cmd: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "kafka.sh"), cmd], check=True, env=ENV, capture_output=True
    )


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[str]:
    """A broker this module may stop and restart."""
    _kafka("start")
    yield BOOTSTRAP
    _kafka("wipe")  # stops it and removes its data


@pytest.mark.slow
@pytest.mark.extended  # make test-all; make soak injects kafka_restart (CI time)
def test_kafka_outage_backpressure_and_no_loss(own_kafka: str, tmp_path: Path) -> None:
    from connectors.kafka import create_topics

    suffix = uuid.uuid4().hex[:8]
    topics = {s: f"outage_{s}_{suffix}" for s in ("traces", "metrics", "logs")}
    create_topics(own_kafka, list(topics.values()), partitions=2)
    shim = start_shim(own_kafka, topics, tmp_path, ["--delivery-timeout", "4"])
    acked: set[bytes] = set()
    refused: dict[int, int] = {}
    grpc_codes: set[grpc.StatusCode] = set()
    seq = 0

    def send(client: httpx.Client) -> int:
        nonlocal seq
        seq += 1
        req = trace_request(1, 10, seed=hash((suffix, seq)) & 0xFFFFFFFF, spans_per_trace=5)
        try:
            r = client.post(
                shim.http_url + "/v1/traces",
                content=req.SerializeToString(),
                headers={"content-type": "application/x-protobuf"},
            )
        except httpx.TimeoutException:
            refused[0] = refused.get(0, 0) + 1
            return 0
        if r.status_code == 200:
            acked.update(sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans)
        else:
            assert r.status_code in (429, 503), r.text
            assert int(r.headers["retry-after"]) >= 1
            refused[r.status_code] = refused.get(r.status_code, 0) + 1
        return r.status_code

    try:
        with httpx.Client(timeout=15) as client:
            t_end = time.monotonic() + 2
            while time.monotonic() < t_end:
                assert send(client) == 200
                time.sleep(0.01)
            acked_before = len(acked)

            _kafka("stop")
            assert not port_open("127.0.0.1", PORT)
            # Keep sending while Kafka is down: in-flight requests time out into 503, new
            # ones are refused at once.
            statuses = []
            t_end = time.monotonic() + 8
            while time.monotonic() < t_end:
                statuses.append(send(client))
                time.sleep(0.05)
            assert 503 in statuses, statuses
            assert statuses[-1] == 503
            with grpc.insecure_channel(shim.grpc_target) as ch:
                call = ch.unary_unary(TRACE_SVC)
                with pytest.raises(grpc.RpcError) as ei:
                    call(trace_request(1, 2, seed=99).SerializeToString(), timeout=10)
                grpc_codes.add(ei.value.code())
            assert httpx.get(shim.http_url + "/healthz").json()["kafka"] == "down"
            # Refusals are counted (the alerts in docker/prometheus rely on these series).
            text = httpx.get(f"http://127.0.0.1:{shim.metrics_port}/metrics").text
            refused_spans = sum(
                smp.value
                for fam in text_string_to_metric_families(text)
                for smp in fam.samples
                if smp.name == "otelwax_dropped_total"
                and smp.labels
                == {"component": "ingest_traces", "unit": "spans", "reason": "kafka_unavailable"}
            )
            assert refused_spans >= 10

            _kafka("start")
            # The shim recovers by itself.
            deadline = time.monotonic() + 40
            ok = 0
            while time.monotonic() < deadline and ok < 20:
                ok = ok + 1 if send(client) == 200 else 0
                time.sleep(0.05)
            assert ok == 20, f"shim did not recover: refused={refused}"
            assert len(acked) > acked_before
    finally:
        assert shim.stop() == 0, shim.log()

    assert grpc_codes <= {grpc.StatusCode.UNAVAILABLE}
    spans: list[bytes] = []

    def collect(recs):
        spans.clear()
        for rec in recs:
            for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans:
                for ss in rs.scope_spans:
                    spans.extend(sp.span_id for sp in ss.spans)
        return acked <= set(spans)

    consume(own_kafka, topics["traces"], until=collect, timeout=60)
    missing = acked - set(spans)
    assert not missing, f"{len(missing)} acknowledged spans lost (refused: {refused})"
