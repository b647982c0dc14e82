"""The lazy wire split: records hold exactly the request's items, one trace per trace record,
each with its own resource and scope, never above the size limit."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from connectors.ingest import wire
from connectors.ingest.wire import WireError, resource_key, split_request
from otelwax.protowire import varint
from tests.otlpgen import any_value, logs_request, trace_request

NATIVE = wire.native_split_traces


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a trace test against the native split and the pure-Python reference."""
    if request.param == "native":
        if NATIVE is None:
            pytest.skip("otelwax._native without split_traces")
    else:
        monkeypatch.setattr(wire, "native_split_traces", None)
    return request.param


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
def test_trace_split_is_lossless(impl: str, seed: int, limit: int, per_trace: int) -> None:
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


def test_oversized_span_is_rejected_rest_kept(impl: str) -> None:
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
def test_malformed_wire_raises(impl: str, payload: bytes) -> None:
    with pytest.raises(WireError):
        split_request(payload, "traces", 1_000_000)


@pytest.mark.skipif(NATIVE is None, reason="otelwax._native without split_traces")
@pytest.mark.parametrize("limit", [1_000_000, 3000, 700])
@pytest.mark.parametrize("seed", range(3))
def test_native_split_is_byte_identical_to_python(
    seed: int, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same records, keys and order as the reference: the Kafka content does not depend on
    which splitter ran (spans of one trace spread over resources and scopes included)."""
    req = trace_request(
        3, 30, seed=seed, spans_per_trace=7, links_per_span=1, all_value_types=True, unicode=True
    )
    req.resource_spans.append(req.resource_spans[0])  # a trace under two resources
    req.resource_spans[1].scope_spans.append(req.resource_spans[1].scope_spans[0])
    empty_tid = req.resource_spans[2].scope_spans[0].spans[3]
    empty_tid.trace_id = b""  # key None
    payload = req.SerializeToString()
    native = split_request(payload, "traces", limit, validate=True)
    monkeypatch.setattr(wire, "native_split_traces", None)
    python = split_request(payload, "traces", limit)
    assert native.records == python.records
    assert (native.items, native.rejected, native.error) == (
        python.items,
        python.rejected,
        python.error,
    )
    if limit == 1_000_000:
        assert any(k is None for k, _ in native.records)


def unparsable_requests() -> list[tuple[str, bytes]]:
    """Requests a protobuf parser refuses although their envelope (resource, scope, span
    framing) is well formed: the flaw is inside a span, an attribute or the scope."""
    good = trace_request(1, 2, seed=1)
    out = []
    span = good.resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    # Span.name (field 5) with invalid UTF-8, appended to a valid span.
    bad_span = span + b"\x2a\x02\xff\xfe"
    out.append(("span-name-utf8", _with_span(good, bad_span)))
    # An attribute (field 9) whose KeyValue is truncated inside.
    out.append(("attribute-truncated", _with_span(good, span + b"\x4a\x03\x0a\x05a")))
    # An event (field 11) with a bad wire type inside.
    out.append(("event-bad-wire-type", _with_span(good, span + b"\x5a\x01\x0f")))
    # A resource attribute key with invalid UTF-8.
    resource = _ld(0x0A, _ld(0x0A, b"\xc3\x28"))  # Resource{attributes: [KeyValue{key}]}
    rs = _ld(0x0A, resource) + _ld(0x12, _ld(0x12, span))
    out.append(("resource-key-utf8", _ld(0x0A, rs)))
    return out


def _with_span(base: ExportTraceServiceRequest, span: bytes) -> bytes:
    """``base`` serialized with one more raw span in its first scope."""
    scope = base.resource_spans[0].scope_spans[0].SerializeToString() + _ld(0x12, span)
    rs = base.resource_spans[0].resource.SerializeToString()
    return _ld(0x0A, _ld(0x0A, rs) + _ld(0x12, scope))


def _ld(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


@pytest.mark.skipif(NATIVE is None, reason="otelwax._native without split_traces")
@pytest.mark.parametrize(
    ("name", "payload"), unparsable_requests(), ids=[n for n, _ in unparsable_requests()]
)
def test_native_split_validates_like_protobuf(name: str, payload: bytes) -> None:
    """What upb refuses, the one-pass split refuses too (so the shim can skip the parse)."""
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(payload)
    with pytest.raises(WireError):
        split_request(payload, "traces", 1_000_000, validate=True)
    split_request(payload, "traces", 1_000_000)  # the envelope itself is fine
