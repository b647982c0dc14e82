"""The native OTLP ⇄ Arrow codec gives the same batches and errors as the pure-Python reference.

Differential tests: every request is decoded by ``otelwax.codec.native`` and by
``otelwax.codec.pydecode`` (whose own tests pin the rendering rules) and the results must be
equal — schema, every column, error indices and rows per payload.
"""

from __future__ import annotations

import math
import os
import random
import struct
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m_pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelwax.codec import DecodeResult, native, pydecode, pymetrics
from otelwax.metric_schemas import METRIC_SCHEMAS
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from tests.otelwax.test_native_fuzz import tables_equal
from tests.otlpgen import any_value, kv, logs_payloads, trace_payloads

pytestmark = pytest.mark.skipif(
    not native.AVAILABLE,
    reason=f"otelwax._native is not built (install with cargo present): {native.IMPORT_ERROR}",
)

TID = bytes(range(1, 17))
SID = bytes(range(1, 9))


# --- helpers -----------------------------------------------------------------------------------


def assert_same(got: DecodeResult, want: DecodeResult, schema: pa.Schema) -> None:
    assert got.batch.schema.equals(schema, check_metadata=True)
    assert [i for i, _ in got.errors] == [i for i, _ in want.errors], (got.errors, want.errors)
    assert got.rows_per_payload == want.rows_per_payload
    for name in schema.names:
        g, w = got.batch.column(name), want.batch.column(name)
        assert g.equals(w), (
            f"column {name}: native {g.to_pylist()[:3]} != python {w.to_pylist()[:3]}"
        )
    assert got.batch.equals(want.batch)


def same_traces(payloads: list[bytes]) -> DecodeResult:
    got = native.decode_traces(payloads)
    assert_same(got, pydecode.decode_traces(payloads), TRACES_SCHEMA)
    return got


def same_logs(payloads: list[bytes]) -> DecodeResult:
    got = native.decode_logs(payloads)
    assert_same(got, pydecode.decode_logs(payloads), LOGS_SCHEMA)
    return got


def one_span(resource_attrs=(), scope=None, **span_kw) -> bytes:
    span_kw.setdefault("trace_id", TID)
    span_kw.setdefault("span_id", SID)
    span_kw.setdefault("name", "s")
    rs = ResourceSpans(resource=Resource(attributes=list(resource_attrs)))
    ss = ScopeSpans(spans=[Span(**span_kw)])
    if scope is not None:
        ss.scope.CopyFrom(scope)
    rs.scope_spans.append(ss)
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


def one_log(resource_attrs=(), **log_kw) -> bytes:
    rl = ResourceLogs(
        resource=Resource(attributes=list(resource_attrs)),
        scope_logs=[ScopeLogs(log_records=[LogRecord(**log_kw)])],
    )
    return ExportLogsServiceRequest(resource_logs=[rl]).SerializeToString()


DOUBLES = [
    0.0, -0.0, 1.0, -1.0, 0.1, 1 / 3, 2.5, 1e16, 1e-7, 1e-6, 9.99e-7, 1e20, 1e21, 1.5e21,
    1e-300, 5e-324, 1.7976931348623157e308, 123456789.123, -4.5e-10, math.nan, math.inf,
    -math.inf,
]  # fmt: skip
STRINGS = [
    "", "plain", 'q"uote', "back\\slash", "nl\nret\rtab\t", "\x00\x01\x1f\x7f", "<a>&b",
    "\u2028\u2029", "café", "日本語", "emoji 🚀", "\ufeff",
]  # fmt: skip


# --- fixed cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"all_value_types": True},
        {"unicode": True},
        {"all_value_types": True, "unicode": True, "links_per_span": 2, "events_per_span": 3},
        {"events_per_span": 0, "attrs_per_span": 0},
    ],
)
def test_generated_traces_equal_reference(kw):
    got = same_traces(trace_payloads(4, seed=7, **kw))
    assert got.batch.num_rows == 400
    assert got.errors == []


@pytest.mark.parametrize("kw", [{}, {"all_value_types": True, "unicode": True}])
def test_generated_logs_equal_reference(kw):
    got = same_logs(logs_payloads(4, seed=3, **kw))
    assert got.batch.num_rows == 400


def test_every_scalar_and_nested_value_renders_like_reference():
    values = [None, True, False, 0, -42, 2**63 - 1, -(2**63), b"", b"\x00\xff", b"abcd"]
    values += DOUBLES + STRINGS
    values += [
        [],
        {},
        [1, "two", 3.5, None, True, b"\x01", [math.nan, math.inf, 1e-7, 1e21]],
        {"b": 1, "a": [1, {"z": None, "y": "<&>"}], "é": "x", "": 0.1},
        {s: s for s in STRINGS},
        [[[[]]], {"k": {"k": {"k": []}}}],
        DOUBLES,
    ]
    attrs = [kv(f"k{i}", v) for i, v in enumerate(values)]
    got = same_traces(
        [
            one_span(resource_attrs=attrs, attributes=attrs),
            one_log(resource_attrs=attrs, attributes=attrs),  # traces view of a logs message
        ]
    )
    assert got.rows_per_payload == [1, 1]
    rendered = dict(got.batch.column("SpanAttributes")[0].as_py())
    assert rendered["k0"] == ""  # unset AnyValue


def test_random_doubles_render_like_reference():
    # Shortest round-trip digits with round-half-even ties (2.50000762939453125 → ...312).
    rng = random.Random(5)
    vals = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(1500)]
    vals += [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(1500)]
    vals += [2.50000762939453125, 2.0**70, 2.0**-30, 1e100, 1e-100, 3e21, 4.4e-7, 1e-6 * 0.999999]
    vals = [v for v in vals if not math.isnan(v)]
    same_traces([one_span(attributes=[kv("d", v), kv("j", [v])]) for v in vals])


def test_log_bodies_of_every_type():
    bodies = [None, "text", 7, 2.5, True, b"\x01\x02", [1, "a"], {"z": 1, "a": [None]}]
    bodies += DOUBLES + STRINGS
    payloads = [
        one_log(body=any_value(b), time_unix_nano=5, observed_time_unix_nano=9) for b in bodies
    ]
    got = same_logs(payloads)
    assert got.batch.num_rows == len(bodies)


def test_kvlist_duplicate_keys_last_wins_and_strindex_is_unset():
    dup = AnyValue(kvlist_value=KeyValueList(values=[kv("a", 1), kv("b", 2), kv("a", 3)]))
    strindex = AnyValue(string_value_strindex=4)
    got = same_traces(
        [one_span(attributes=[KeyValue(key="d", value=dup), KeyValue(key="s", value=strindex)])]
    )
    assert got.batch.column("SpanAttributes")[0].as_py() == [("d", '{"a":3,"b":2}'), ("s", "")]


def test_span_fields_enums_ids_and_times():
    payloads = [
        one_span(
            kind=k,
            status=Status(code=c, message="m"),
            start_time_unix_nano=10,
            end_time_unix_nano=e,
        )
        for k in (0, 1, 2, 3, 4, 5, 6, 99)
        for c, e in ((0, 15), (1, 5), (2, 10), (7, 2**64 - 1))
    ]
    payloads += [
        one_span(trace_id=b"", span_id=b"", parent_span_id=bytes(8)),
        one_span(trace_id=bytes(16), span_id=bytes(8), parent_span_id=SID, trace_state="a=b"),
        one_span(start_time_unix_nano=2**64 - 1, end_time_unix_nano=2**63),
        one_span(
            events=[Span.Event(time_unix_nano=3, name="e", attributes=[kv("x", 1)]), Span.Event()],
            links=[
                Span.Link(trace_id=TID, span_id=SID, trace_state="t", attributes=[kv("y", [1])]),
                Span.Link(),
            ],
            flags=0x301,
            dropped_attributes_count=3,
        ),
        one_span(scope=InstrumentationScope(name="lib", version="1.0", attributes=[kv("a", 1)])),
        one_span(scope=InstrumentationScope()),
        one_span(resource_attrs=[kv("service.name", 5), kv("service.name", "second")]),
    ]
    got = same_traces(payloads)
    assert got.errors == []


def test_log_fields():
    payloads = [
        one_log(
            time_unix_nano=t,
            observed_time_unix_nano=o,
            severity_number=sev,
            severity_text="WARN",
            flags=flags,
            trace_id=TID,
            span_id=SID,
            event_name="ev",
            attributes=[kv("a", 1.5)],
        )
        for t, o in ((0, 9), (7, 9), (0, 0))
        for sev in (0, 9, 24, 300, -5)
        for flags in (0, 1, 0x1FF)
    ]
    rl = ResourceLogs(
        resource=Resource(attributes=[kv("service.name", "svc")]),
        schema_url="https://r",
        scope_logs=[
            ScopeLogs(
                scope=InstrumentationScope(name="n", version="v", attributes=[kv("sa", [1, 2])]),
                schema_url="https://s",
                log_records=[LogRecord(body=any_value("x")), LogRecord()],
            ),
            ScopeLogs(),
        ],
    )
    payloads.append(
        ExportLogsServiceRequest(resource_logs=[rl, ResourceLogs()]).SerializeToString()
    )
    got = same_logs(payloads)
    assert got.errors == []


def test_empty_inputs():
    got = same_traces([])
    assert got.batch.num_rows == 0
    same_traces(
        [b"", ExportTraceServiceRequest(resource_spans=[ResourceSpans()]).SerializeToString()]
    )
    same_logs([])
    same_logs([b""])


# --- errors ------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_bad_payloads_are_reported_per_record_and_keep_the_rest():
    good = trace_payloads(3, seed=11)
    bad = [
        one_span(trace_id=b"\x01" * 15),  # wrong id length
        one_span(span_id=bytes(3)),  # all-zero but wrong length
        one_span(links=[Span.Link(span_id=b"\x01" * 9)]),
        good[0][:-3],  # truncated
        b"\x0a" + _varint(2**62) + b"x",  # huge length
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # overlong varint
        b"\x0f",  # invalid wire type
        b"\x0a\x03\x12\x01\xff",  # truncated nested message
        # invalid UTF-8 in a span name
        one_span(name="X").replace(b"\x2a\x01X", b"\x2a\x01\xff"),
    ]
    payloads = [good[0], *bad, good[1], good[2]]
    got = same_traces(payloads)
    assert [i for i, _ in got.errors] == list(range(1, len(bad) + 1))
    assert all(reason for _, reason in got.errors)
    assert got.rows_per_payload == [100] + [0] * len(bad) + [100, 100]
    assert got.batch.num_rows == 300

    logs_bad = [one_log(trace_id=b"\x01"), one_log(span_id=b"\x02" * 16), b"\x0a\x05"]
    got = same_logs([*logs_bad, *logs_payloads(1)])
    assert [i for i, _ in got.errors] == [0, 1, 2]


def test_every_truncation_of_a_request_matches_reference():
    p = trace_payloads(1, seed=5, all_value_types=True, unicode=True, links_per_span=1)[0]
    p = ExportTraceServiceRequest.FromString(p)
    del p.resource_spans[1:]
    del p.resource_spans[0].scope_spans[0].spans[2:]
    data = p.SerializeToString()
    same_traces([data[:n] for n in range(len(data) + 1)])


def test_wrong_wire_types_match_reference():
    # Every known field number at every wire type, at each nesting level.
    def field(num: int, wt: int) -> bytes:
        tag = _varint((num << 3) | wt)
        return tag + {0: b"\x01", 1: b"\x00" * 8, 2: b"\x01a", 5: b"\x00" * 4}[wt]

    payloads = []
    for num in range(1, 17):
        for wt in (0, 1, 2, 5):
            f = field(num, wt)
            span = _msg(1, TID) + _msg(2, SID) + f
            payloads.append(_msg(1, _msg(2, _msg(2, span))))  # inside Span
            payloads.append(_msg(1, _msg(2, f)))  # inside ScopeSpans
            payloads.append(_msg(1, f))  # inside ResourceSpans
            payloads.append(f)  # top level
            av = _msg(1, b"k") + _msg(2, f)  # inside AnyValue of an attribute
            payloads.append(_msg(1, _msg(2, _msg(2, span + _msg(9, av)))))
    same_traces(payloads)


def _msg(num: int, body: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(body)) + body


def test_attribute_encodings_around_the_one_byte_shape_match_reference():
    # The decoder reads "key, one scalar value, one-byte tags and lengths" directly and hands
    # everything else to its general path: both sides of every edge must render the same.
    def field(num: int, wt: int, body: bytes) -> bytes:
        return _varint((num << 3) | wt) + (_varint(len(body)) if wt == 2 else b"") + body

    def attr(key: bytes, *value_fields: bytes, extra: bytes = b"") -> bytes:
        return _msg(1, key) + _msg(2, b"".join(value_fields)) + extra

    values = [
        b"",  # empty AnyValue
        *(field(1, 2, b"s" * n) for n in (0, 1, 124, 125, 126, 127, 128)),
        field(1, 2, "café".encode()),
        field(1, 2, b"\xff"),  # invalid UTF-8
        field(1, 2, b"a") + field(1, 2, b"b"),  # last member wins
        field(3, 0, b"\x05") + field(1, 2, b"x"),  # int then string
        *(field(2, 0, _varint(v)) for v in (0, 1, 2, 300)),
        *(field(3, 0, _varint(v)) for v in (0, 127, 128, 2**63 - 1, 2**64 - 1)),
        field(3, 0, b"\x80\x00"),  # padded varint
        field(3, 0, b"\x80"),  # truncated varint
        *(field(4, 1, struct.pack("<d", d)) for d in (0.5, -0.0, math.nan, 1e300)),
        field(4, 1, b"\x00" * 7),  # truncated double
        *(field(7, 2, bytes(range(n))) for n in (0, 1, 2, 3, 125, 126)),
        field(5, 2, field(1, 2, field(1, 2, b"a"))),  # array
        field(9, 0, b"\x01"),  # unknown member
        field(1, 0, b"\x01"),  # string member with the wrong wire type
    ]
    keys = [b"", b"k", b"k" * 127, b"k" * 128, "ключ".encode(), b"\xfe"]
    attrs = [attr(k, v) for k in keys for v in values]
    attrs += [
        _msg(2, field(1, 2, b"v")) + _msg(1, b"k"),  # value before key
        _msg(1, b"k"),  # no value
        attr(b"k", field(1, 2, b"v"), extra=_msg(2, field(3, 0, b"\x07"))),  # value repeated
        attr(b"k", field(1, 2, b"v"), extra=field(5, 0, b"\x01")),  # unknown field after
        _varint((1 << 3) | 2) + b"\x80\x01" + b"k" * 128 + _msg(2, b""),  # 2-byte key length
    ]
    span = _msg(1, TID) + _msg(2, SID)
    payloads = []
    for a in attrs:
        payloads.append(_msg(1, _msg(2, _msg(2, span + _msg(9, a)))))  # span attribute
        payloads.append(_msg(1, _msg(1, _msg(1, a)) + _msg(2, _msg(2, span))))  # resource
    same_traces(payloads)


def test_scope_after_its_spans_applies_to_them():
    scope = _msg(1, b"late") + _msg(2, b"1.0")
    spans = _msg(2, _msg(1, TID) + _msg(2, SID)) * 3
    payload = _msg(1, _msg(2, spans + _msg(1, scope)) + _msg(2, _msg(2, _msg(1, TID))))
    got = same_traces([payload])
    assert got.batch.column("ScopeName").to_pylist() == ["late"] * 3 + [""]


def test_random_bytes_never_crash():
    rng = random.Random(1234)
    payloads = [rng.randbytes(rng.randint(0, 200)) for _ in range(500)]
    got = native.decode_traces(payloads)
    assert len(got.rows_per_payload) == 500
    got = native.decode_logs(payloads)
    assert len(got.rows_per_payload) == 500


def _nested(depth: int, pattern: str) -> bytes:
    """An AnyValue nested ``depth`` times (built by hand: the protobuf runtime refuses to)."""
    v = _msg(1, b"x")
    for i in range(depth):
        if pattern[i % len(pattern)] == "a":
            v = _msg(5, _msg(1, v))  # AnyValue{array_value: ArrayValue{values: [v]}}
        else:
            v = _msg(6, _msg(1, _msg(1, b"k") + _msg(2, v)))  # kvlist {"k": v}
    return v


def test_deep_nesting_hits_the_same_limit_as_protobuf():
    payloads = []
    for depth in (1, 20, 30, 31, 32, 33, 45, 46, 47, 48, 49, 60, 200):
        for pattern in ("a", "k", "ak", "aak"):
            v = _nested(depth, pattern)
            attr = _msg(1, b"deep") + _msg(2, v)
            span = _msg(1, TID) + _msg(2, SID) + _msg(9, attr)
            event = _msg(11, _msg(3, attr))
            payloads.append(_msg(1, _msg(2, _msg(2, span))))
            payloads.append(_msg(1, _msg(2, _msg(2, span + event))))
            payloads.append(_msg(1, _msg(1, _msg(1, attr)) + _msg(2, _msg(2, span))))
    got = same_traces(payloads)
    assert got.errors and got.batch.num_rows > 0
    bodies = [_msg(1, _msg(2, _msg(2, _msg(5, _nested(d, "ak"))))) for d in (10, 38, 39, 40, 41)]
    same_logs(bodies)


def test_huge_declared_lengths_do_not_hang():
    # 100 payloads claiming nested lengths of ~2^63 bytes each: rejected immediately.
    payloads = [b"\x0a" + _varint(2**63 - i) + b"\x0a\x00" for i in range(100)]
    t0 = time.perf_counter()
    got = native.decode_traces(payloads)
    assert time.perf_counter() - t0 < 1.0
    assert len(got.errors) == 100


# --- hypothesis: generated requests covering every field -------------------------------------

_text = st.text(max_size=12)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(DOUBLES),
    _text,
    st.sampled_from(STRINGS),
    st.binary(max_size=10),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(_text, inner, max_size=4),
    ),
    max_leaves=12,
)
_attrs = st.lists(st.tuples(_text, _values), max_size=5).map(lambda xs: [kv(k, v) for k, v in xs])
_ids16 = st.one_of(st.just(b""), st.just(bytes(16)), st.binary(min_size=16, max_size=16))
_ids8 = st.one_of(st.just(b""), st.just(bytes(8)), st.binary(min_size=8, max_size=8))
_u64 = st.integers(min_value=0, max_value=2**64 - 1)

_spans = st.builds(
    Span,
    trace_id=_ids16,
    span_id=_ids8,
    parent_span_id=_ids8,
    trace_state=_text,
    name=_text,
    kind=st.integers(min_value=-3, max_value=8),
    start_time_unix_nano=_u64,
    end_time_unix_nano=_u64,
    attributes=_attrs,
    events=st.lists(
        st.builds(Span.Event, time_unix_nano=_u64, name=_text, attributes=_attrs), max_size=2
    ),
    links=st.lists(
        st.builds(Span.Link, trace_id=_ids16, span_id=_ids8, trace_state=_text, attributes=_attrs),
        max_size=2,
    ),
    status=st.builds(Status, code=st.integers(min_value=0, max_value=4), message=_text),
)
_scopes = st.one_of(
    st.none(),
    st.builds(InstrumentationScope, name=_text, version=_text, attributes=_attrs),
)


def _scope_spans(scope, spans):
    ss = ScopeSpans(spans=spans)
    if scope is not None:
        ss.scope.CopyFrom(scope)
    return ss


_resource_spans = st.builds(
    lambda attrs, scopes, url: ResourceSpans(
        resource=Resource(attributes=attrs), scope_spans=scopes, schema_url=url
    ),
    _attrs,
    st.lists(st.builds(_scope_spans, _scopes, st.lists(_spans, max_size=3)), max_size=3),
    _text,
)
_trace_requests = st.lists(_resource_spans, max_size=3).map(
    lambda rs: ExportTraceServiceRequest(resource_spans=rs).SerializeToString()
)

_logs = st.builds(
    LogRecord,
    time_unix_nano=_u64,
    observed_time_unix_nano=_u64,
    severity_number=st.integers(min_value=-2, max_value=400),
    severity_text=_text,
    body=_values.map(any_value),
    attributes=_attrs,
    flags=st.integers(min_value=0, max_value=2**32 - 1),
    trace_id=_ids16,
    span_id=_ids8,
    event_name=_text,
)


def _scope_logs(scope, recs, url):
    sl = ScopeLogs(log_records=recs, schema_url=url)
    if scope is not None:
        sl.scope.CopyFrom(scope)
    return sl


_logs_requests = st.lists(
    st.builds(
        lambda attrs, scopes, url: ResourceLogs(
            resource=Resource(attributes=attrs), scope_logs=scopes, schema_url=url
        ),
        _attrs,
        st.lists(st.builds(_scope_logs, _scopes, st.lists(_logs, max_size=3), _text), max_size=3),
        _text,
    ),
    max_size=3,
).map(lambda rl: ExportLogsServiceRequest(resource_logs=rl).SerializeToString())

_hyp = settings(
    max_examples=int(os.environ.get("OTELWAX_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_hyp
@given(st.lists(_trace_requests, min_size=1, max_size=4))
def test_hypothesis_traces_equal_reference(payloads):
    same_traces(payloads)


@_hyp
@given(st.lists(_logs_requests, min_size=1, max_size=4))
def test_hypothesis_logs_equal_reference(payloads):
    same_logs(payloads)


# --- encode: Arrow → OTLP → Arrow ---------------------------------------------------------------


def _grouped(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Rows in the order encode emits them: by first appearance of resource, then scope."""
    res = batch.column("ResourceAttributes").to_pylist()
    svc = batch.column("ServiceName").to_pylist()
    names = batch.column("ScopeName").to_pylist()
    vers = batch.column("ScopeVersion").to_pylist()
    first_res: dict = {}
    first_scope: dict = {}
    keys = []
    for i in range(batch.num_rows):
        rk = (tuple(res[i]), svc[i])
        r = first_res.setdefault(rk, len(first_res))
        s = first_scope.setdefault((rk, names[i], vers[i]), len(first_scope))
        keys.append((r, s, i))
    order = [k[2] for k in sorted(keys)]
    return batch.take(pa.array(order, pa.int64()))


@pytest.mark.parametrize(
    "kw",
    [{}, {"all_value_types": True, "unicode": True, "links_per_span": 2, "events_per_span": 2}],
)
def test_encode_round_trip_is_lossless(kw):
    batch = native.decode_traces(trace_payloads(3, seed=9, **kw)).batch
    data = native.encode_traces(batch)
    again = native.decode_traces([data])
    assert again.errors == []
    assert again.batch.equals(_grouped(batch))
    # the reference decoder reads the encoded request the same way
    assert pydecode.decode_traces([data]).batch.equals(again.batch)
    # a table of several chunks encodes to one request holding every row
    table = pa.Table.from_batches([batch.slice(0, 50), batch.slice(50)])
    assert native.decode_traces([native.encode_traces(table)]).batch.num_rows == batch.num_rows


@_hyp
@given(st.lists(_trace_requests, min_size=1, max_size=3))
def test_hypothesis_encode_round_trip(payloads):
    batch = native.decode_traces(payloads).batch
    again = native.decode_traces([native.encode_traces(batch)])
    assert again.errors == []
    assert again.batch.equals(_grouped(batch))


def test_encode_interleaved_resources_groups_rows():
    a = [kv("service.name", "a")]
    b = [kv("service.name", "b")]
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=x),
                scope_spans=[ScopeSpans(spans=[Span(trace_id=TID, span_id=bytes([i + 1]) * 8)])],
            )
            for i, x in enumerate([a, b, a])
        ]
    ).SerializeToString()
    batch = native.decode_traces([req]).batch
    out = ExportTraceServiceRequest.FromString(native.encode_traces(batch))
    assert len(out.resource_spans) == 2
    assert [len(rs.scope_spans[0].spans) for rs in out.resource_spans] == [2, 1]


def test_encode_rejects_bad_ids_and_adds_service_name():
    batch = native.decode_traces([one_span()]).batch
    bad = batch.set_column(1, "TraceId", pa.array(["zz"]))
    with pytest.raises(ValueError, match="TraceId"):
        native.encode_traces(bad)
    # ServiceName without a service.name attribute becomes one
    svc = batch.set_column(7, "ServiceName", pa.array(["checkout"]))
    req = ExportTraceServiceRequest.FromString(native.encode_traces(svc))
    assert [(a.key, a.value.string_value) for a in req.resource_spans[0].resource.attributes] == [
        ("service.name", "checkout")
    ]


def test_encode_empty_batch():
    empty = TRACES_SCHEMA.empty_table().to_batches() or [
        pa.RecordBatch.from_pylist([], schema=TRACES_SCHEMA)
    ]
    assert native.encode_traces(empty[0]) == b""


def test_batch_outlives_its_payloads():
    # The batch outlives the payload list (zero-copy hand-off keeps its own buffers).
    payloads = trace_payloads(2)
    batch = native.decode_traces(payloads).batch
    del payloads
    assert batch.num_rows == 200
    assert batch.column("TraceId")[0].as_py() != ""


# --- metrics -----------------------------------------------------------------------------------

_f64 = st.one_of(st.floats(allow_nan=False), st.sampled_from([0.0, -0.0, 1.5, math.inf]))
_i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_u32 = st.integers(min_value=0, max_value=2**32 - 1)
_s32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_u64s = st.lists(_u64, max_size=4)


def _number_value(d: dict, as_int):
    if as_int is None:
        return d
    if isinstance(as_int, float):
        return {**d, "as_double": as_int}
    return {**d, "as_int": as_int}


_exemplars = st.lists(
    st.builds(
        lambda attrs, t, v, sid, tid: m_pb.Exemplar(
            **_number_value(
                {
                    "filtered_attributes": attrs,
                    "time_unix_nano": t,
                    "span_id": sid,
                    "trace_id": tid,
                },
                v,
            )
        ),
        _attrs,
        _u64,
        st.one_of(st.none(), _i64, _f64),
        _ids8,
        _ids16,
    ),
    max_size=2,
)
_common_point = {"attributes": _attrs, "start_time_unix_nano": _u64, "time_unix_nano": _u64}
_number_points = st.lists(
    st.builds(
        lambda kw, v: m_pb.NumberDataPoint(**_number_value(kw, v)),
        st.fixed_dictionaries({**_common_point, "exemplars": _exemplars, "flags": _u32}),
        st.one_of(st.none(), _i64, _f64),
    ),
    min_size=1,
    max_size=3,
)
_optional = st.one_of(st.none(), _f64)


def _hist_point(kw, s, mn, mx):
    extra = {k: v for k, v in (("sum", s), ("min", mn), ("max", mx)) if v is not None}
    return m_pb.HistogramDataPoint(**kw, **extra)


_hist_points = st.lists(
    st.builds(
        _hist_point,
        st.fixed_dictionaries(
            {
                **_common_point,
                "count": _u64,
                "bucket_counts": _u64s,
                "explicit_bounds": st.lists(_f64, max_size=4),
                "exemplars": _exemplars,
                "flags": _u32,
            }
        ),
        _optional,
        _optional,
        _optional,
    ),
    min_size=1,
    max_size=3,
)
_buckets = st.builds(m_pb.ExponentialHistogramDataPoint.Buckets, offset=_s32, bucket_counts=_u64s)


def _exp_point(kw, s, mn, mx):
    extra = {k: v for k, v in (("sum", s), ("min", mn), ("max", mx)) if v is not None}
    return m_pb.ExponentialHistogramDataPoint(**kw, **extra)


_exp_points = st.lists(
    st.builds(
        _exp_point,
        st.fixed_dictionaries(
            {
                **_common_point,
                "count": _u64,
                "scale": _s32,
                "zero_count": _u64,
                "positive": _buckets,
                "negative": _buckets,
                "flags": _u32,
                "exemplars": _exemplars,
                "zero_threshold": _f64,
            }
        ),
        _optional,
        _optional,
        _optional,
    ),
    min_size=1,
    max_size=3,
)
_summary_points = st.lists(
    st.builds(
        m_pb.SummaryDataPoint,
        attributes=_attrs,
        start_time_unix_nano=_u64,
        time_unix_nano=_u64,
        count=_u64,
        sum=_f64,
        quantile_values=st.lists(
            st.builds(m_pb.SummaryDataPoint.ValueAtQuantile, quantile=_f64, value=_f64),
            max_size=3,
        ),
        flags=_u32,
    ),
    min_size=1,
    max_size=3,
)
_temporality = st.integers(min_value=0, max_value=3)
_data = st.one_of(
    st.none(),
    _number_points.map(lambda p: {"gauge": m_pb.Gauge(data_points=p)}),
    st.builds(
        lambda p, t, m: {"sum": m_pb.Sum(data_points=p, aggregation_temporality=t, is_monotonic=m)},
        _number_points,
        _temporality,
        st.booleans(),
    ),
    st.builds(
        lambda p, t: {"histogram": m_pb.Histogram(data_points=p, aggregation_temporality=t)},
        _hist_points,
        _temporality,
    ),
    st.builds(
        lambda p, t: {
            "exponential_histogram": m_pb.ExponentialHistogram(
                data_points=p, aggregation_temporality=t
            )
        },
        _exp_points,
        _temporality,
    ),
    _summary_points.map(lambda p: {"summary": m_pb.Summary(data_points=p)}),
)
_metric = st.builds(
    lambda name, desc, unit, data, meta: m_pb.Metric(
        name=name, description=desc, unit=unit, metadata=meta, **(data or {})
    ),
    _text,
    _text,
    _text,
    _data,
    _attrs,
)


def _scope_metrics(scope, metrics, url):
    sm = m_pb.ScopeMetrics(metrics=metrics, schema_url=url)
    if scope is not None:
        sm.scope.CopyFrom(scope)
        sm.scope.dropped_attributes_count = len(url)
    return sm


_metrics_requests = st.lists(
    st.builds(
        lambda attrs, scopes, url: m_pb.ResourceMetrics(
            resource=Resource(attributes=attrs), scope_metrics=scopes, schema_url=url
        ),
        _attrs,
        st.lists(
            st.builds(_scope_metrics, _scopes, st.lists(_metric, max_size=3), _text), max_size=2
        ),
        _text,
    ),
    min_size=1,
    max_size=2,
).map(lambda rm: ExportMetricsServiceRequest(resource_metrics=rm).SerializeToString())


def same_metrics(payloads: list[bytes]):
    got = native.decode_metrics(payloads)
    want = pymetrics.decode_metrics(payloads)
    assert [i for i, _ in got.errors] == [i for i, _ in want.errors], (got.errors, want.errors)
    assert got.rows_per_payload == want.rows_per_payload
    assert list(got.tables) == list(want.tables)
    for name, w in want.tables.items():
        g = got.tables[name]
        assert g.schema.equals(METRIC_SCHEMAS[name], check_metadata=True)
        assert tables_equal(g, w), name
    return got


@_hyp
@given(st.lists(_metrics_requests, min_size=1, max_size=3))
def test_hypothesis_metrics_equal_reference(payloads):
    same_metrics(payloads)


def test_metrics_every_type_and_bad_payloads():
    scope = InstrumentationScope(name="m", version="1", attributes=[kv("a", 1)])
    pts = [
        m_pb.NumberDataPoint(as_int=-5, time_unix_nano=2, attributes=[kv("k", "v")]),
        m_pb.NumberDataPoint(
            as_double=2.5,
            exemplars=[
                m_pb.Exemplar(
                    as_int=3, span_id=SID, trace_id=TID, filtered_attributes=[kv("x", [1])]
                )
            ],
        ),
        m_pb.NumberDataPoint(),
    ]
    metrics = [
        m_pb.Metric(name="g", unit="By", gauge=m_pb.Gauge(data_points=pts)),
        m_pb.Metric(
            name="s", sum=m_pb.Sum(data_points=pts, aggregation_temporality=1, is_monotonic=True)
        ),
        m_pb.Metric(
            name="h",
            histogram=m_pb.Histogram(
                data_points=[
                    m_pb.HistogramDataPoint(
                        count=3,
                        sum=1.5,
                        bucket_counts=[1, 2],
                        explicit_bounds=[0.5],
                        min=0.1,
                        max=9,
                    ),
                    m_pb.HistogramDataPoint(),
                ],
                aggregation_temporality=2,
            ),
        ),
        m_pb.Metric(
            name="e",
            exponential_histogram=m_pb.ExponentialHistogram(
                data_points=[
                    m_pb.ExponentialHistogramDataPoint(
                        count=4,
                        scale=-3,
                        zero_count=1,
                        positive=m_pb.ExponentialHistogramDataPoint.Buckets(
                            offset=-2, bucket_counts=[1, 2**40]
                        ),
                        negative=m_pb.ExponentialHistogramDataPoint.Buckets(
                            offset=5, bucket_counts=[3]
                        ),
                        min=-1,
                    )
                ]
            ),
        ),
        m_pb.Metric(
            name="q",
            summary=m_pb.Summary(
                data_points=[
                    m_pb.SummaryDataPoint(
                        count=9,
                        sum=4.5,
                        quantile_values=[
                            m_pb.SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=7)
                        ],
                    )
                ]
            ),
        ),
        m_pb.Metric(name="empty"),
    ]
    good = ExportMetricsServiceRequest(
        resource_metrics=[
            m_pb.ResourceMetrics(
                resource=Resource(attributes=[kv("service.name", "svc")]),
                schema_url="https://r",
                scope_metrics=[
                    m_pb.ScopeMetrics(scope=scope, metrics=metrics, schema_url="https://s")
                ],
            )
        ]
    ).SerializeToString()
    bad_exemplar = ExportMetricsServiceRequest(
        resource_metrics=[
            m_pb.ResourceMetrics(
                scope_metrics=[
                    m_pb.ScopeMetrics(
                        metrics=[
                            m_pb.Metric(
                                gauge=m_pb.Gauge(
                                    data_points=[
                                        m_pb.NumberDataPoint(
                                            exemplars=[m_pb.Exemplar(span_id=b"\x01")]
                                        )
                                    ]
                                )
                            )
                        ]
                    )
                ]
            )
        ]
    ).SerializeToString()
    got = same_metrics([good, bad_exemplar, good[:-5], good])
    assert [i for i, _ in got.errors] == [1, 2]
    assert got.rows_per_payload == [10, 0, 0, 10]
    # every truncation, and the oneof replaced by a later member
    same_metrics([good[:n] for n in range(0, len(good), 7)])


def test_concurrent_decodes_in_threads_give_the_same_batches():
    # The GIL is released while decoding; concurrent calls must not interfere.
    from concurrent.futures import ThreadPoolExecutor

    payloads = trace_payloads(20, seed=21, all_value_types=True)
    want = native.decode_traces(payloads).batch
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: native.decode_traces(payloads).batch, range(8)))
    assert all(r.equals(want) for r in results)
