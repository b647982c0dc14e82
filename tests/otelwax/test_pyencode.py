"""Arrow → OTLP traces encoder: decoding what it wrote gives the same rows back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelwax.codec import native, pyencode
from otelwax.codec.pydecode import decode_traces
from otelwax.codec.pyencode import encode_traces, encode_traces_request, traces_encoder
from otelwax.schemas import TRACES_SCHEMA
from tests.otlpgen import kv, span_count, trace_payloads, trace_request

TID = "0102030405060708090a0b0c0d0e0f10"
SID = "0102030405060708"


def decoded(payloads: list[bytes]) -> pa.RecordBatch:
    res = decode_traces(payloads)
    assert res.errors == []
    return res.batch


def roundtrip(batch: pa.RecordBatch) -> pa.RecordBatch:
    return decoded([encode_traces(batch)])


def by_span(batch: pa.RecordBatch) -> pa.Table:
    t = pa.Table.from_batches([batch])
    return t.take(pc.sort_indices(t, [("SpanId", "ascending")]))


def rows(**overrides) -> pa.RecordBatch:
    """A one-row TRACES_SCHEMA batch with sensible defaults, columns overridable."""
    base = {
        "Timestamp": [1_700_000_000_000_000_000],
        "TraceId": [TID],
        "SpanId": [SID],
        "ParentSpanId": [""],
        "TraceState": [""],
        "SpanName": ["GET /"],
        "SpanKind": ["SPAN_KIND_SERVER"],
        "ServiceName": ["svc"],
        "ResourceAttributes": [[("service.name", "svc")]],
        "ScopeName": ["lib"],
        "ScopeVersion": ["1.0"],
        "SpanAttributes": [[("k", "v")]],
        "Duration": [1000],
        "StatusCode": ["STATUS_CODE_UNSET"],
        "StatusMessage": [""],
        "Events.Timestamp": [[]],
        "Events.Name": [[]],
        "Events.Attributes": [[]],
        "Links.TraceId": [[]],
        "Links.SpanId": [[]],
        "Links.TraceState": [[]],
        "Links.Attributes": [[]],
    }
    base.update(overrides)
    n = len(next(iter(overrides.values()))) if overrides else 1
    for k, v in base.items():
        if len(v) != n:
            base[k] = v * n
    return pa.RecordBatch.from_pydict(base, schema=TRACES_SCHEMA)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"events_per_span": 3, "links_per_span": 2},
        {"unicode": True, "links_per_span": 1, "spans_per_trace": 1},
        {"all_value_types": True, "unicode": True, "events_per_span": 0},
    ],
    ids=["default", "events_links", "unicode", "typed_values"],
)
def test_arrow_otlp_arrow_roundtrip_is_lossless(kw):
    payloads = trace_payloads(4, seed=7, **kw)
    batch = decoded(payloads)
    assert batch.num_rows == 400
    again = roundtrip(batch)
    assert again.schema.equals(TRACES_SCHEMA)
    # Same order: rows of one request keep resource/scope order, requests are distinct groups.
    assert again.equals(batch)


def test_request_structure_statuses_events_links():
    req = trace_request(2, 10, seed=3, events_per_span=2, links_per_span=1)
    out = encode_traces_request(decoded([req.SerializeToString()]))
    assert span_count(out) == 20
    assert len(out.resource_spans) == 2
    for rs_in, rs_out in zip(req.resource_spans, out.resource_spans, strict=True):
        assert rs_out.scope_spans[0].scope.name == rs_in.scope_spans[0].scope.name
        assert rs_out.scope_spans[0].scope.version == rs_in.scope_spans[0].scope.version
        for a, b in zip(rs_in.scope_spans[0].spans, rs_out.scope_spans[0].spans, strict=True):
            assert (b.trace_id, b.span_id, b.parent_span_id) == (
                a.trace_id,
                a.span_id,
                a.parent_span_id,
            )
            assert (b.name, b.kind, b.trace_state) == (a.name, a.kind, a.trace_state)
            assert (b.start_time_unix_nano, b.end_time_unix_nano) == (
                a.start_time_unix_nano,
                a.end_time_unix_nano,
            )
            assert (b.status.code, b.status.message) == (a.status.code, a.status.message)
            assert [(e.time_unix_nano, e.name) for e in b.events] == [
                (e.time_unix_nano, e.name) for e in a.events
            ]
            assert [(lk.trace_id, lk.span_id, lk.trace_state) for lk in b.links] == [
                (lk.trace_id, lk.span_id, lk.trace_state) for lk in a.links
            ]
            assert [x.key for x in b.links[0].attributes] == ["link.kind"]


def test_typed_attribute_values_go_back_as_strings():
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "s"), kv("pid", 42)]),
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes.fromhex(TID),
                                span_id=bytes.fromhex(SID),
                                name="x",
                                attributes=[kv("code", 200), kv("ok", True), kv("r", 0.5)],
                            )
                        ]
                    )
                ],
            )
        ]
    )
    out = encode_traces_request(decoded([req.SerializeToString()]))
    span = out.resource_spans[0].scope_spans[0].spans[0]
    got = {a.key: (a.value.WhichOneof("value"), a.value.string_value) for a in span.attributes}
    assert got == {
        "code": ("string_value", "200"),
        "ok": ("string_value", "true"),
        "r": ("string_value", "0.5"),
    }
    res = {a.key: a.value.string_value for a in out.resource_spans[0].resource.attributes}
    assert res == {"service.name": "s", "pid": "42"}


def test_groups_interleaved_rows_by_resource_and_scope():
    b = rows(
        SpanId=[f"{i:016x}" for i in range(1, 7)],
        ResourceAttributes=[[("service.name", "a")], [("service.name", "b")]] * 3,
        ServiceName=["a", "b"] * 3,
        ScopeName=["s1", "s1", "s2", "s2", "s1", "s1"],
    )
    out = encode_traces_request(b)
    layout = [
        (
            rs.resource.attributes[0].value.string_value,
            [(ss.scope.name, [sp.span_id.hex()[-1] for sp in ss.spans]) for ss in rs.scope_spans],
        )
        for rs in out.resource_spans
    ]
    assert layout == [
        ("a", [("s1", ["1", "5"]), ("s2", ["3"])]),
        ("b", [("s1", ["2", "6"]), ("s2", ["4"])]),
    ]
    assert by_span(roundtrip(b)).equals(by_span(b))


def test_service_name_added_when_resource_lacks_it():
    b = rows(ServiceName=["renamed"], ResourceAttributes=[[("host.name", "h")]])
    out = encode_traces_request(b)
    attrs = [(a.key, a.value.string_value) for a in out.resource_spans[0].resource.attributes]
    assert attrs == [("host.name", "h"), ("service.name", "renamed")]
    assert roundtrip(b).column("ServiceName").to_pylist() == ["renamed"]


def test_enum_names_back_to_numbers_unknown_is_zero():
    b = rows(
        SpanId=[f"{i:016x}" for i in range(1, 5)],
        SpanKind=["SPAN_KIND_CLIENT", "SPAN_KIND_CONSUMER", "bogus", ""],
        StatusCode=["STATUS_CODE_ERROR", "STATUS_CODE_OK", "bogus", "STATUS_CODE_UNSET"],
        StatusMessage=["boom", "", "", "msg only"],
    )
    spans = encode_traces_request(b).resource_spans[0].scope_spans[0].spans
    assert [s.kind for s in spans] == [3, 5, 0, 0]
    assert [(s.status.code, s.status.message) for s in spans] == [
        (2, "boom"),
        (1, ""),
        (0, ""),
        (0, "msg only"),
    ]
    assert [s.HasField("status") for s in spans] == [True, True, False, True]


def test_end_is_start_plus_duration_and_high_timestamps_wrap_back():
    raw = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes.fromhex(TID),
                                span_id=bytes.fromhex(SID),
                                start_time_unix_nano=2**63 + 5,
                                end_time_unix_nano=2**63 + 105,
                                status=Status(code=2),
                            )
                        ]
                    )
                ]
            )
        ]
    )
    b = decoded([raw.SerializeToString()])
    span = encode_traces_request(b).resource_spans[0].scope_spans[0].spans[0]
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (2**63 + 5, 2**63 + 105)


def test_wire_bytes_are_canonical_protobuf():
    batch = decoded(trace_payloads(2, seed=1, events_per_span=2, links_per_span=1, unicode=True))
    enc = encode_traces(batch)
    assert ExportTraceServiceRequest.FromString(enc).SerializeToString() == enc


def test_bad_ids_name_the_row():
    with pytest.raises(ValueError, match=r"row 1: SpanId 'zz' is not 8 bytes of hex"):
        encode_traces(rows(SpanId=[SID, "zz"]))
    with pytest.raises(ValueError, match=r"row 0: TraceId .* is not 16 bytes"):
        encode_traces(rows(TraceId=["abcd"]))
    with pytest.raises(ValueError, match=r"row 0, item 0: Links.SpanId"):
        encode_traces(
            rows(
                **{
                    "Links.TraceId": [[TID]],
                    "Links.SpanId": [["01"]],
                    "Links.TraceState": [[""]],
                    "Links.Attributes": [[[]]],
                }
            )
        )
    with pytest.raises(ValueError, match=r"Events\.\* lists differ"):
        encode_traces(rows(**{"Events.Name": [["a"]]}))


def test_nulls_extra_columns_order_and_slices():
    b = decoded(trace_payloads(1, seed=5, events_per_span=2, links_per_span=1))
    # Reordered with an extra column: selected by name.
    shuffled = pa.RecordBatch.from_arrays(
        [b.column(n) for n in reversed(b.schema.names)] + [pa.array([1] * b.num_rows)],
        names=[*reversed(b.schema.names), "extra"],
    )
    assert encode_traces(shuffled) == encode_traces(b)
    # A slice encodes like a copy of it (offsets of nested columns honoured).
    sl = b.slice(37, 21)
    copy = pa.RecordBatch.from_pylist(sl.to_pylist(), schema=TRACES_SCHEMA)
    assert encode_traces(sl) == encode_traces(copy)
    assert roundtrip(sl).equals(copy)
    # Nulls (operators may produce them) encode as empty values.
    nullable = pa.schema([f.with_nullable(True) for f in TRACES_SCHEMA])
    n = rows().to_pydict()
    n["TraceState"] = [None]
    n["SpanAttributes"] = [[("k", None)]]
    n["Events.Name"] = [None]
    n["Events.Timestamp"] = [None]
    n["Events.Attributes"] = [None]
    span = (
        encode_traces_request(pa.RecordBatch.from_pydict(n, schema=nullable))
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
    )
    assert span.trace_state == ""
    assert [(a.key, a.value.string_value) for a in span.attributes] == [("k", "")]
    assert len(span.events) == 0
    # Missing columns are an error naming them.
    with pytest.raises(ValueError, match="lacks traces columns: SpanId"):
        encode_traces(b.drop_columns(["SpanId"]))


def test_empty_batch_and_table_input():
    assert encode_traces(TRACES_SCHEMA.empty_table()) == b""
    b = decoded(trace_payloads(2, seed=9))
    t = pa.Table.from_batches([b.slice(0, 50), b.slice(50)])
    assert encode_traces(t) == encode_traces(b)


def test_encoder_choice():
    assert traces_encoder("python") == ("python", pyencode.encode_traces)
    name, _ = traces_encoder("auto")
    assert name == ("native" if native.AVAILABLE else "python")
    if not native.AVAILABLE:
        with pytest.raises(ImportError, match="native encoder requested"):
            traces_encoder("native")
    with pytest.raises(ValueError):
        traces_encoder("fast")


@pytest.mark.skipif(not native.AVAILABLE, reason="native codec not built")
def test_native_encoder_gives_the_same_rows():
    batch = decoded(trace_payloads(3, seed=11, events_per_span=2, links_per_span=1, unicode=True))
    assert decoded([native.encode_traces(batch)]).equals(roundtrip(batch))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n_resources=st.integers(1, 4),
    spans=st.integers(1, 8),
    events=st.integers(0, 3),
    links=st.integers(0, 2),
    attrs=st.integers(0, 12),
    typed=st.booleans(),
    uni=st.booleans(),
    cut=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_roundtrip_property(seed, n_resources, spans, events, links, attrs, typed, uni, cut):
    req = trace_request(
        n_resources,
        spans,
        seed=seed,
        events_per_span=events,
        links_per_span=links,
        attrs_per_span=attrs,
        all_value_types=typed,
        unicode=uni,
    )
    batch = decoded([req.SerializeToString()])
    lo, hi = sorted(cut)
    part = batch.slice(lo, hi - lo)
    assert roundtrip(batch).equals(batch)
    assert by_span(roundtrip(part)).equals(by_span(part))
