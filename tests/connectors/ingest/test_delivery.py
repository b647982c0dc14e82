"""What the shim tells a client when Kafka cannot take (all of) a request, and how fast:
records a topic can never take are a partial success (no retry, no duplicates), a missing
topic is answered at once, and records that land for a failed request are counted."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.otlpgen import any_value, trace_request

from .conftest import consume, start_shim

PROTO = {"content-type": "application/x-protobuf"}
TRACE_SVC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOPIC_LIMIT = 8192
DUPLICATES = "otelwax_ingest_retry_duplicate_records_total"


def _span_ids(recs) -> list[bytes]:
    return [
        sp.span_id
        for rec in recs
        for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans
        for ss in rs.scope_spans
        for sp in ss.spans
    ]


@pytest.fixture
def small_topic(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    """Topics whose traces topic takes records of at most 8 KiB (max.message.bytes)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from connectors.kafka import create_topics, delete_topics

    suffix = uuid.uuid4().hex[:10]
    topics = {s: f"ingest_{s}_{suffix}" for s in ("traces", "metrics", "logs")}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = NewTopic(topics["traces"], 2, 1, config={"max.message.bytes": str(TOPIC_LIMIT)})
    admin.create_topics([new])[topics["traces"]].result(30)
    create_topics(kafka_bootstrap, [topics["metrics"], topics["logs"]], partitions=2)
    yield topics
    delete_topics(kafka_bootstrap, list(topics.values()))


def _with_big_span(seed: int) -> tuple[ExportTraceServiceRequest, bytes]:
    req = trace_request(1, 6, seed=seed, spans_per_trace=1)
    big = req.resource_spans[0].scope_spans[0].spans[2]
    # Random bytes: the broker checks the compressed size.
    blob = random.Random(seed).randbytes(3 * TOPIC_LIMIT)
    big.attributes.append(KeyValue(key="blob", value=any_value(blob)))
    return req, big.span_id


def test_record_too_large_for_the_topic_is_a_partial_success(
    kafka_bootstrap: str, small_topic: dict[str, str], tmp_path: Path
) -> None:
    # The producer would write records up to 1 MB, the topic takes 8 KiB: the big span can
    # never be written, its siblings can. Answering the request with a retryable failure
    # makes the client send the siblings again and again.
    shim = start_shim(kafka_bootstrap, small_topic, tmp_path)
    try:
        req, big = _with_big_span(seed=71)
        for _attempt in range(2):
            t0 = time.monotonic()
            r = httpx.post(
                shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO
            )
            assert r.status_code == 200, r.content
            assert time.monotonic() - t0 < 2
            ps = ExportTraceServiceResponse.FromString(r.content).partial_success
            assert ps.rejected_spans == 1
            assert "larger than the maximum Kafka record size" in ps.error_message
        with grpc.insecure_channel(shim.grpc_target) as ch:
            out = ch.unary_unary(TRACE_SVC)(req.SerializeToString(), timeout=10)
        assert ExportTraceServiceResponse.FromString(out).partial_success.rejected_spans == 1
        others = {sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans} - {big}
        recs = consume(
            kafka_bootstrap,
            small_topic["traces"],
            until=lambda rs: len(_span_ids(rs)) >= 3 * len(others),
        )
        got = _span_ids(recs)
        assert big not in got
        assert sorted(got) == sorted(list(others) * 3), "each accepted span once per request"
        assert shim.metrics().get((DUPLICATES, (("topic", small_topic["traces"]),)), 0) == 0
    finally:
        assert shim.stop() == 0, shim.log()


def test_record_refused_by_the_broker_is_a_partial_success(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path
) -> None:
    # The topic's limit is lowered after the shim read it: the broker refuses the big record,
    # and the request still is a partial success rather than a failure the client retries.
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("producer:\n  metadata_refresh_s: 3600\n")
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--config", str(cfg)])
    try:
        small = trace_request(1, 2, seed=75).SerializeToString()
        assert httpx.post(shim.http_url + "/v1/traces", content=small, headers=PROTO).is_success
        res = ConfigResource(
            ResourceType.TOPIC,
            fresh_topics["traces"],
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes",
                    str(TOPIC_LIMIT),
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.incremental_alter_configs([res])[res].result(30)
        req, big = _with_big_span(seed=72)
        # The first answer may be a 503 (the shim re-reads the topic's limits); the retry a
        # second later is a partial success, not another failure.
        statuses = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = httpx.post(
                shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO
            )
            statuses.append(r.status_code)
            if r.status_code != 503:
                break
            time.sleep(int(r.headers["retry-after"]))
        assert statuses[-1] == 200 and len(statuses) <= 2, statuses
        ps = ExportTraceServiceResponse.FromString(r.content).partial_success
        assert ps.rejected_spans == 1
        assert "larger than the maximum Kafka record size" in ps.error_message
        others = {sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans} - {big}
        recs = consume(
            kafka_bootstrap,
            fresh_topics["traces"],
            until=lambda rs: others <= set(_span_ids(rs)),
            timeout=10,
        )
        assert big not in _span_ids(recs)
    finally:
        assert shim.stop() == 0, shim.log()


def test_missing_topic_is_answered_at_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    missing = f"ingest_missing_{uuid.uuid4().hex[:10]}"
    topics = {"traces": missing, "metrics": missing + "_m", "logs": missing + "_l"}
    shim = start_shim(kafka_bootstrap, topics, tmp_path)
    try:
        body = trace_request(1, 3, seed=73).SerializeToString()
        t0 = time.monotonic()
        r = httpx.post(shim.http_url + "/v1/traces", content=body, headers=PROTO, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        msg = status_pb2.Status.FromString(r.content).message
        assert missing in msg and "does not exist" in msg
        assert elapsed < 2, f"answered after {elapsed:.1f}s"
        with grpc.insecure_channel(shim.grpc_target) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as ei:
                ch.unary_unary(TRACE_SVC)(body, timeout=30)
            assert time.monotonic() - t0 < 2
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "does not exist" in ei.value.details()
    finally:
        assert shim.stop() == 0, shim.log()


def test_records_landing_for_a_failed_request_are_counted(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path
) -> None:
    # A 1 KiB producer queue fills up in the middle of a request: the records queued before
    # are written, the request is answered 429 and its retry writes them again.
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("producer:\n  queue_max_kbytes: 1\n")
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--config", str(cfg)])
    try:
        req = trace_request(1, 8, seed=74, spans_per_trace=1)
        r = httpx.post(shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO)
        assert r.status_code == 429, r.content
        want = {sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans}
        recs = consume(
            kafka_bootstrap,
            fresh_topics["traces"],
            until=lambda rs: bool(want & set(_span_ids(rs))),
            timeout=10,
        )
        landed = len(recs)
        assert landed >= 1
        key = (DUPLICATES, (("topic", fresh_topics["traces"]),))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and shim.metrics().get(key, 0) < landed:
            time.sleep(0.1)
        assert shim.metrics().get(key, 0) == landed
    finally:
        assert shim.stop() == 0, shim.log()
