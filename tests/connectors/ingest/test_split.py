"""Requests bigger than the Kafka record limit are split (same key), never dropped; a single
item too big for any record is refused as a partial success."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.otlpgen import any_value, logs_request, trace_request

from .conftest import Shim, consume, start_shim
from .test_json import to_otlp_json

LIMIT = 8192
PROTO = {"content-type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def split_shim(
    kafka_bootstrap: str, module_topics: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shim]:
    s = start_shim(
        kafka_bootstrap,
        module_topics,
        tmp_path_factory.mktemp("shim"),
        ["--max-message-bytes", str(LIMIT)],
    )
    yield s
    assert s.stop() == 0, s.log()


def _spans(value: bytes):
    for rs in ExportTraceServiceRequest.FromString(value).resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                yield rs, sp


def test_big_trace_request_arrives_complete_in_pieces(split_shim: Shim) -> None:
    # 3 traces of 200 spans (~90 KB each): far above the 8 KB record limit.
    req = trace_request(3, 200, seed=21, spans_per_trace=200)
    want = {sp.span_id: sp.trace_id for rs in req.resource_spans for sp in rs.scope_spans[0].spans}
    r = httpx.post(
        split_shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO
    )
    assert r.status_code == 200
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()

    def mine(recs):
        return [(rec, sp) for rec in recs for _rs, sp in _spans(rec.value) if sp.span_id in want]

    recs = consume(
        split_shim.bootstrap,
        split_shim.topics["traces"],
        until=lambda rs: len(mine(rs)) >= len(want),
    )
    got = mine(recs)
    assert sorted(sp.span_id for _r, sp in got) == sorted(want), "all spans, once"
    pieces = {id(rec) for rec, _sp in got}
    assert len(pieces) >= 3 * 10, "each trace was split into many records"
    for rec, sp in got:
        assert len(rec.value) <= LIMIT
        assert rec.key == want[sp.span_id].hex().encode()
    # Every piece keeps its resource: the spans of one trace share the same resource.
    for rec in {id(rec): rec for rec, _ in got}.values():
        resources = {rs.resource.SerializeToString() for rs, _sp in _spans(rec.value)}
        assert len(resources) == 1


@pytest.mark.parametrize("door", ["proto", "json", "grpc"])
def test_single_oversized_span_is_partial_success(split_shim: Shim, door: str) -> None:
    req = trace_request(1, 6, seed={"proto": 22, "json": 23, "grpc": 24}[door], spans_per_trace=1)
    big = req.resource_spans[0].scope_spans[0].spans[2]
    big.attributes.append(KeyValue(key="blob", value=any_value("x" * (2 * LIMIT))))
    if door == "grpc":
        import grpc

        with grpc.insecure_channel(split_shim.grpc_target) as ch:
            call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            out = call(req.SerializeToString(), timeout=10)
        ps = ExportTraceServiceResponse.FromString(out).partial_success
        assert ps.rejected_spans == 1
        msg = ps.error_message
    elif door == "json":
        r = httpx.post(
            split_shim.http_url + "/v1/traces",
            content=to_otlp_json(req),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200
        ps = r.json()["partialSuccess"]
        assert ps["rejectedSpans"] == "1"
        msg = ps["errorMessage"]
    else:
        r = httpx.post(
            split_shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO
        )
        assert r.status_code == 200
        ps = ExportTraceServiceResponse.FromString(r.content).partial_success
        assert ps.rejected_spans == 1
        msg = ps.error_message
    assert "larger than the maximum Kafka record size" in msg
    others = {sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans} - {big.span_id}

    def mine(recs):
        return [sp.span_id for rec in recs for _rs, sp in _spans(rec.value) if sp.span_id in others]

    recs = consume(
        split_shim.bootstrap,
        split_shim.topics["traces"],
        until=lambda rs: len(mine(rs)) >= len(others),
    )
    assert sorted(mine(recs)) == sorted(others)
    assert not any(sp.span_id == big.span_id for rec in recs for _rs, sp in _spans(rec.value))


def test_big_logs_request_split_by_records(split_shim: Shim) -> None:
    req = logs_request(1, 400, seed=23)
    bodies = {
        lr.SerializeToString() for rl in req.resource_logs for lr in rl.scope_logs[0].log_records
    }
    r = httpx.post(split_shim.http_url + "/v1/logs", content=req.SerializeToString(), headers=PROTO)
    assert r.status_code == 200

    def mine(recs):
        return [
            (rec, lr.SerializeToString())
            for rec in recs
            for rl in ExportLogsServiceRequest.FromString(rec.value).resource_logs
            for sl in rl.scope_logs
            for lr in sl.log_records
            if lr.SerializeToString() in bodies
        ]

    recs = consume(
        split_shim.bootstrap, split_shim.topics["logs"], until=lambda rs: len(mine(rs)) >= 400
    )
    got = mine(recs)
    assert len(got) == 400 and {b for _r, b in got} == bodies
    assert len({id(r) for r, _b in got}) > 1
    assert len({r.key for r, _b in got}) == 1, "pieces of one resource keep one key"
    assert all(len(r.value) <= LIMIT for r, _b in got)
