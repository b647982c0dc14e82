"""The lazy wire split: records hold exactly the request's items, one trace per trace record,
each with its own resource and scope, never above the size limit."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from connectors.ingest.wire import WireError, resource_key, split_request
from tests.otlpgen import any_value, logs_request, trace_request


def _spans(req: ExportTraceServiceRequest) -> list[tuple[bytes, bytes, bytes]]:
    """(resource, scope, span) serialized, for every span."""
    return [
        (rs.resource.SerializeToString(), ss.scope.SerializeToString(), sp.SerializeToString())
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for sp in ss.spans
    ]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [1_000_000, 6000, 1500])
@pytest.mark.parametrize("per_trace", [1, 3, 50])
def test_trace_split_is_lossless(seed: int, limit: int, per_trace: int) -> None:
    req = trace_request(4, 25, seed=seed, spans_per_trace=per_trace, links_per_span=seed % 2)
    res = split_request(req.SerializeToString(), "traces", limit)
    assert res.items == 100
    got = []
    for key, value in res.records:
        assert len(value) <= limit
        part = ExportTraceServiceRequest.FromString(value)
        tids = {sp.trace_id for sp in _iter_spans(part)}
        assert len(tids) == 1, "one trace per record"
        assert key == next(iter(tids)).hex().encode()
        got.extend(_spans(part))
    if res.rejected:
        assert set(got) < set(_spans(req)) and len(got) + res.rejected == 100
    else:
        assert sorted(got) == sorted(_spans(req))
    if limit >= 6000:
        assert res.rejected == 0
        n_traces = len({s.trace_id for s in _iter_spans(req)})
        if limit == 1_000_000:
            assert len(res.records) == n_traces


def _iter_spans(req: ExportTraceServiceRequest):
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield from ss.spans


def test_oversized_span_is_rejected_rest_kept() -> None:
    req = trace_request(1, 10, seed=3)
    big = req.resource_spans[0].scope_spans[0].spans[4]
    big.attributes.append(KeyValue(key="blob", value=any_value("x" * 5000)))
    res = split_request(req.SerializeToString(), "traces", 4000)
    assert res.rejected == 1
    assert res.error and "larger than the maximum Kafka record size" in res.error
    kept = [
        sp.span_id
        for _k, v in res.records
        for sp in _iter_spans(ExportTraceServiceRequest.FromString(v))
    ]
    assert sorted(kept) == sorted(s.span_id for s in _iter_spans(req) if s.span_id != big.span_id)


def test_logs_split_per_resource_keyed_by_attributes() -> None:
    req = logs_request(3, 30, seed=5)
    payload = req.SerializeToString()
    res = split_request(payload, "logs", 1_000_000)
    assert res.items == 90 and len(res.records) == 3
    for (key, value), rl in zip(res.records, req.resource_logs, strict=True):
        assert ExportLogsServiceRequest.FromString(value).resource_logs[0] == rl
        assert key == resource_key(rl.resource.SerializeToString())
    # Attribute order does not change the key.
    r = req.resource_logs[0].resource
    rev = type(r)()
    rev.attributes.extend(reversed(r.attributes))
    assert resource_key(rev.SerializeToString()) == resource_key(r.SerializeToString())
    # Small limit: same keys, more records, nothing lost.
    res2 = split_request(payload, "logs", 3000)
    assert len(res2.records) > 3 and res2.rejected == 0
    n = sum(
        len(sl.log_records)
        for _k, v in res2.records
        for rl in ExportLogsServiceRequest.FromString(v).resource_logs
        for sl in rl.scope_logs
    )
    assert n == 90
    assert {k for k, _ in res2.records} == {k for k, _ in res.records}


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\x05abc", b"\x0a\x03\x12\x05ab", b"\x0f", b"\x00\x00", b"\x0a\x80"],
    ids=["overrun", "nested-overrun", "group-wire-type", "field-zero", "truncated-varint"],
)
def test_malformed_wire_raises(payload: bytes) -> None:
    with pytest.raises(WireError):
        split_request(payload, "traces", 1_000_000)
