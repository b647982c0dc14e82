"""The pure-Python OTLP → Arrow decoder follows every rendering rule of the codec contract."""

from __future__ import annotations

import base64

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelwax.codec import pydecode
from otelwax.codec.pydecode import decode_logs, decode_traces, render_any_value, render_double
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from tests.otlpgen import (
    any_value,
    kv,
    log_count,
    logs_payloads,
    logs_request,
    span_count,
    trace_payloads,
    trace_request,
)

TID = bytes(range(1, 17))
SID = bytes(range(1, 9))


def one_span(resource_attrs=(), scope=None, **span_kw) -> bytes:
    """A request holding one span (defaults: valid ids, name "s")."""
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


def row(payload: bytes) -> dict:
    res = decode_traces([payload])
    assert res.errors == [], res.errors
    assert res.batch.num_rows == 1
    return res.batch.to_pylist()[0]


def attr_value(v) -> str:
    """SpanAttributes value rendered for a single attribute holding ``v``."""
    return row(one_span(attributes=[kv("k", v)]))["SpanAttributes"][0][1]


# --- doubles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "want"),
    [
        (1.0, "1"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (0.0, "0"),
        (-0.0, "-0"),
        (1e16, "10000000000000000"),
        (1e-7, "0.0000001"),
        (1.5e-5, "0.000015"),
        (123456789.125, "123456789.125"),
        (1.2345678901234568e17, "123456789012345680"),
        (1e21, "1000000000000000000000"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_double_renders_positional_shortest(x: float, want: str) -> None:
    assert render_double(x) == want
    assert attr_value(x) == want


def test_huge_double_is_positional_without_exponent() -> None:
    s = render_double(1.5e300)
    assert s == "15" + "0" * 299
    assert float(s) == 1.5e300


# --- scalars -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "want"),
    [
        ("plain", "plain"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-42, "-42"),
        (2**63 - 1, "9223372036854775807"),
        (-(2**63), "-9223372036854775808"),
        (b"\x00\xffhi", base64.b64encode(b"\x00\xffhi").decode()),
        (b"", ""),
        (b"a", "YQ=="),
        (None, ""),
        ("日本語 🚀", "日本語 🚀"),
    ],
)
def test_scalar_values(v, want: str) -> None:
    assert attr_value(v) == want


# --- arrays and kvlists as JSON ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "want"),
    [
        ([], "[]"),
        ({}, "{}"),
        (["a", 1, True, None], '["a",1,true,null]'),
        ({"b": 1, "a": 2, "é": 3, "Z": 0}, '{"Z":0,"a":2,"b":1,"é":3}'),
        (["<a href='x'>&</a>"], "[\"\\u003ca href='x'\\u003e\\u0026\\u003c/a\\u003e\"]"),
        (['q"b\\s'], '["q\\"b\\\\s"]'),
        (
            ["\n\r\t\x00\x01\x1f\x08\x0c\x7f"],
            '["\\n\\r\\t\\u0000\\u0001\\u001f\\u0008\\u000c\x7f"]',
        ),
        (["\u2028\u2029 ü 🚀"], '["\\u2028\\u2029 ü 🚀"]'),
        ([b"\x01\x02"], '["AQI="]'),
        ([1.0, 0.5, -0.0, 1e20, 1e21, 1e-6, 1e-7, 1.5e-300, 2.5e300], None),
        ([float("nan"), float("inf"), float("-inf")], "[null,null,null]"),
        ({"m": {"z": [1, {"y": None}], "a": []}}, '{"m":{"a":[],"z":[1,{"y":null}]}}'),
    ],
)
def test_array_and_kvlist_json(v, want: str | None) -> None:
    if want is None:  # doubles: Go encoding/json formatting
        want = "[1,0.5,-0,100000000000000000000,1e+21,0.000001,1e-7,1.5e-300,2.5e+300]"
    assert attr_value(v) == want


def test_kvlist_duplicate_keys_last_wins_in_json() -> None:
    v = any_value({"a": 1})
    v.kvlist_value.values.append(kv("a", 2))
    assert render_any_value(v) == '{"a":2}'


def test_attribute_maps_keep_order_and_duplicates() -> None:
    attrs = [kv("z", "1"), kv("a", "2"), kv("z", "3")]
    assert row(one_span(attributes=attrs))["SpanAttributes"] == [("z", "1"), ("a", "2"), ("z", "3")]


def test_strindex_value_renders_as_empty() -> None:
    v = AnyValue(string_value_strindex=3)
    assert render_any_value(v) == ""
    assert pydecode.render_json(v) == "null"


# --- ids, enums, durations ---------------------------------------------------------------------


def test_ids_are_lowercase_hex_and_zero_or_empty_is_empty() -> None:
    r = row(one_span(trace_id=bytes(16), span_id=b"", parent_span_id=bytes(8)))
    assert (r["TraceId"], r["SpanId"], r["ParentSpanId"]) == ("", "", "")
    r = row(one_span(trace_id=b"\xab" * 16, span_id=b"\xcd" * 8, parent_span_id=SID))
    assert r["TraceId"] == "ab" * 16
    assert r["SpanId"] == "cd" * 8
    assert r["ParentSpanId"] == "0102030405060708"


@pytest.mark.parametrize(
    "kw",
    [
        {"trace_id": b"\x01" * 15},
        {"span_id": b"\x01" * 9},
        {"parent_span_id": b"\x01" * 4},
    ],
)
def test_bad_id_length_fails_only_that_payload(kw) -> None:
    good = one_span()
    res = decode_traces([good, one_span(**kw), good])
    assert [i for i, _ in res.errors] == [1]
    assert "bytes, want 0 or" in res.errors[0][1]
    assert res.rows_per_payload == [1, 0, 1]
    assert res.batch.num_rows == 2


def test_bad_link_id_fails_payload() -> None:
    sp = Span(trace_id=TID, span_id=SID, name="s")
    lk = sp.links.add()
    lk.trace_id = b"\x01\x02"
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[sp])])]
    )
    res = decode_traces([req.SerializeToString()])
    assert res.batch.num_rows == 0
    assert res.errors and "link trace_id" in res.errors[0][1]


@pytest.mark.parametrize(
    ("kind", "want"),
    [
        (0, "SPAN_KIND_UNSPECIFIED"),
        (1, "SPAN_KIND_INTERNAL"),
        (2, "SPAN_KIND_SERVER"),
        (3, "SPAN_KIND_CLIENT"),
        (4, "SPAN_KIND_PRODUCER"),
        (5, "SPAN_KIND_CONSUMER"),
        (6, ""),
        (99, ""),
        (-1, ""),
    ],
)
def test_span_kind_names(kind: int, want: str) -> None:
    assert row(one_span(kind=kind))["SpanKind"] == want


@pytest.mark.parametrize(
    ("code", "want"),
    [(0, "STATUS_CODE_UNSET"), (1, "STATUS_CODE_OK"), (2, "STATUS_CODE_ERROR"), (3, ""), (-7, "")],
)
def test_status_code_names(code: int, want: str) -> None:
    r = row(one_span(status=Status(code=code, message="m")))
    assert (r["StatusCode"], r["StatusMessage"]) == (want, "m")


def test_duration_and_timestamp() -> None:
    r = row(one_span(start_time_unix_nano=1_000_000_123, end_time_unix_nano=1_500_000_123))
    assert r["Duration"] == 500_000_000
    ts = decode_traces([one_span(start_time_unix_nano=1_000_000_123)]).batch.column("Timestamp")
    assert ts.cast(pa.int64()).to_pylist() == [1_000_000_123]


def test_end_before_start_gives_zero_duration() -> None:
    assert row(one_span(start_time_unix_nano=10, end_time_unix_nano=5))["Duration"] == 0


def test_timestamps_beyond_int64_wrap_like_go() -> None:
    big = 2**64 - 5
    res = decode_traces([one_span(start_time_unix_nano=big, end_time_unix_nano=2**64 - 1)])
    assert res.batch.column("Timestamp").cast(pa.int64()).to_pylist() == [-5]
    assert res.batch.column("Duration").to_pylist() == [4]


# --- resources, scopes, events, links ----------------------------------------------------------


def test_service_name_first_match_and_absent() -> None:
    attrs = [kv("service.name", 7), kv("service.name", "second")]
    assert row(one_span(resource_attrs=attrs))["ServiceName"] == "7"
    assert row(one_span(resource_attrs=[kv("host", "h")]))["ServiceName"] == ""


def test_events_and_links_nested_columns() -> None:
    sp = Span(trace_id=TID, span_id=SID, name="s", start_time_unix_nano=1, end_time_unix_nano=9)
    for i in range(2):
        e = sp.events.add()
        e.time_unix_nano = 100 + i
        e.name = f"e{i}"
        e.attributes.append(kv("i", i))
    lk = sp.links.add()
    lk.trace_id = b"\xaa" * 16
    lk.span_id = bytes(8)
    lk.trace_state = "x=y"
    lk.attributes.extend([kv("l", 1.5), kv("m", [1])])
    sp2 = Span(trace_id=TID, span_id=b"\x02" * 8, name="no events")
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[sp, sp2])])]
    )
    b = decode_traces([req.SerializeToString()]).batch
    assert b.column("Events.Timestamp").cast(pa.list_(pa.int64())).to_pylist() == [[100, 101], []]
    assert b.column("Events.Name").to_pylist() == [["e0", "e1"], []]
    assert b.column("Events.Attributes").to_pylist() == [[[("i", "0")], [("i", "1")]], []]
    assert b.column("Links.TraceId").to_pylist() == [["aa" * 16], []]
    assert b.column("Links.SpanId").to_pylist() == [[""], []]
    assert b.column("Links.TraceState").to_pylist() == [["x=y"], []]
    assert b.column("Links.Attributes").to_pylist() == [[[("l", "1.5"), ("m", "[1]")]], []]


def test_resource_and_scope_fields_spread_to_every_span() -> None:
    req = trace_request(3, 4, seed=5)
    b = decode_traces([req.SerializeToString()]).batch
    names = []
    for rs in req.resource_spans:
        svc = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
        for ss in rs.scope_spans:
            names += [(svc, ss.scope.name, ss.scope.version, len(rs.resource.attributes))] * len(
                ss.spans
            )
    got = list(
        zip(
            b.column("ServiceName").to_pylist(),
            b.column("ScopeName").to_pylist(),
            b.column("ScopeVersion").to_pylist(),
            [len(m) for m in b.column("ResourceAttributes").to_pylist()],
            strict=True,
        )
    )
    assert got == names


def test_generated_request_fields_roundtrip() -> None:
    req = trace_request(2, 3, seed=9, links_per_span=1, events_per_span=2)
    b = decode_traces([req.SerializeToString()]).batch.to_pylist()
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    for r, s in zip(b, spans, strict=True):
        assert r["TraceId"] == s.trace_id.hex()
        assert r["SpanId"] == s.span_id.hex()
        assert r["SpanName"] == s.name
        assert r["Duration"] == s.end_time_unix_nano - s.start_time_unix_nano
        assert [k for k, _ in r["SpanAttributes"]] == [a.key for a in s.attributes]
        assert len(r["Events.Name"]) == 2
        assert r["Links.SpanId"] == [s.links[0].span_id.hex()]


# --- errors ------------------------------------------------------------------------------------


def test_garbage_and_truncated_payloads_are_errors_others_kept() -> None:
    good = trace_payloads(2, seed=1)
    res = decode_traces([good[0], b"\xff\xff\xff garbage", good[1][:-7], good[1]])
    assert [i for i, _ in res.errors] == [1, 2]
    assert all(r.startswith("invalid protobuf") for _, r in res.errors)
    assert res.rows_per_payload == [100, 0, 0, 100]
    assert res.batch.num_rows == 200
    assert res.batch.schema == TRACES_SCHEMA


def test_invalid_utf8_is_an_error() -> None:
    bad = one_span(name="XYZW").replace(b"XYZW", b"\xff\xfeXY")
    res = decode_traces([bad, one_span()])
    assert [i for i, _ in res.errors] == [0]
    assert res.rows_per_payload == [0, 1]


def test_empty_input_and_empty_request() -> None:
    res = decode_traces([])
    assert res.batch.num_rows == 0
    assert res.batch.schema == TRACES_SCHEMA
    res = decode_traces([b""])
    assert (res.batch.num_rows, res.errors, res.rows_per_payload) == (0, [], [0])
    res = decode_logs([])
    assert res.batch.schema == LOGS_SCHEMA


# --- logs --------------------------------------------------------------------------------------


def test_logs_fields_and_timestamp_fallback() -> None:
    rl = ResourceLogs(
        resource=Resource(attributes=[kv("service.name", "svc")]),
        schema_url="res-schema",
    )
    sl = rl.scope_logs.add()
    sl.schema_url = "scope-schema"
    sl.scope.name = "lib"
    sl.scope.version = "1.2"
    sl.scope.attributes.append(kv("sa", True))
    sl.log_records.extend(
        [
            LogRecord(
                time_unix_nano=5,
                observed_time_unix_nano=6,
                severity_number=9,
                severity_text="INFO",
                body=any_value({"msg": "<hi>"}),
                attributes=[kv("a", 1)],
                flags=0x1FF,
                trace_id=TID,
                span_id=SID,
                event_name="ev",
            ),
            LogRecord(time_unix_nano=0, observed_time_unix_nano=77, severity_number=300),
            LogRecord(severity_number=-3, body=any_value(2.5)),
        ]
    )
    payload = ExportLogsServiceRequest(resource_logs=[rl]).SerializeToString()
    res = decode_logs([payload])
    assert res.errors == []
    rows = res.batch.to_pylist()
    assert res.batch.column("Timestamp").cast(pa.int64()).to_pylist() == [5, 77, 0]
    r = rows[0]
    assert r["TraceId"] == TID.hex() and r["SpanId"] == SID.hex()
    assert r["TraceFlags"] == 0xFF
    assert (r["SeverityText"], r["SeverityNumber"]) == ("INFO", 9)
    assert r["ServiceName"] == "svc"
    assert r["Body"] == '{"msg":"\\u003chi\\u003e"}'
    assert (r["ResourceSchemaUrl"], r["ScopeSchemaUrl"]) == ("res-schema", "scope-schema")
    assert r["ResourceAttributes"] == [("service.name", "svc")]
    assert (r["ScopeName"], r["ScopeVersion"]) == ("lib", "1.2")
    assert r["ScopeAttributes"] == [("sa", "true")]
    assert r["LogAttributes"] == [("a", "1")]
    assert r["EventName"] == "ev"
    assert [x["SeverityNumber"] for x in rows] == [9, 255, 0]
    assert rows[2]["Body"] == "2.5"
    assert rows[1]["TraceId"] == "" and rows[1]["Body"] == ""


def test_logs_bad_ids_and_garbage() -> None:
    good = logs_payloads(1, seed=3)[0]
    res = decode_logs([one_log(trace_id=b"\x01" * 3), b"\x0a\xff", good])
    assert [i for i, _ in res.errors] == [0, 1]
    assert res.rows_per_payload == [0, 0, 100]


def test_logs_generated_counts() -> None:
    reqs = [logs_request(3, 7, seed=s, all_value_types=True, unicode=True) for s in range(3)]
    res = decode_logs([r.SerializeToString() for r in reqs])
    assert res.rows_per_payload == [log_count(r) for r in reqs] == [21, 21, 21]


# --- properties --------------------------------------------------------------------------------

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_decoding_arbitrary_bytes_never_raises(payloads: list[bytes]) -> None:
    for fn in (decode_traces, decode_logs):
        res = fn(payloads)
        assert len(res.rows_per_payload) == len(payloads)
        assert res.batch.num_rows == sum(res.rows_per_payload)
        assert all(res.rows_per_payload[i] == 0 for i, _ in res.errors)


@PROPS
@given(
    seed=st.integers(0, 10_000),
    cut=st.integers(0, 2000),
    flip=st.integers(0, 2000),
    bit=st.integers(0, 7),
)
def test_mutated_payloads_never_raise(seed: int, cut: int, flip: int, bit: int) -> None:
    p = bytearray(trace_request(2, 3, seed=seed, all_value_types=True, links_per_span=1)
                  .SerializeToString())  # fmt: skip
    p[flip % len(p)] ^= 1 << bit
    res = decode_traces([bytes(p), bytes(p[: cut % len(p)])])
    assert res.batch.num_rows == sum(res.rows_per_payload)


@PROPS
@given(
    seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    n_res=st.integers(0, 3),
    n_spans=st.integers(0, 6),
    events=st.integers(0, 2),
    links=st.integers(0, 2),
    flags=st.booleans(),
)
def test_rows_equal_spans_and_batches_compose(
    seeds: list[int], n_res: int, n_spans: int, events: int, links: int, flags: bool
) -> None:
    reqs = [
        trace_request(
            n_res,
            n_spans,
            seed=s,
            events_per_span=events,
            links_per_span=links,
            all_value_types=flags,
            unicode=flags,
        )
        for s in seeds
    ]
    payloads = [r.SerializeToString() for r in reqs]
    res = decode_traces(payloads)
    assert res.errors == []
    assert res.rows_per_payload == [span_count(r) for r in reqs]
    assert res.batch.num_rows == sum(span_count(r) for r in reqs)
    # Decoding a batch equals concatenating the decodes of each payload.
    parts = [decode_traces([p]).batch for p in payloads]
    assert pa.Table.from_batches(parts, TRACES_SCHEMA).equals(
        pa.Table.from_batches([res.batch], TRACES_SCHEMA)
    )


# --- dispatch and agreement with the native core -----------------------------------------------


def test_dispatch_picks_an_implementation_and_agrees_with_python() -> None:
    from otelwax import codec

    name = codec.codec_name()
    assert name in ("native", "python")
    payloads = [*trace_payloads(3, seed=5, all_value_types=True, links_per_span=1), b"\xff"]
    got = codec.decode_traces(payloads)
    want = decode_traces(payloads)
    assert got.batch.equals(want.batch)
    assert got.rows_per_payload == want.rows_per_payload
    assert [i for i, _ in got.errors] == [i for i, _ in want.errors] == [3]


@PROPS
@given(seed=st.integers(0, 10_000), flags=st.booleans(), links=st.integers(0, 2))
def test_native_core_equals_reference(seed: int, flags: bool, links: int) -> None:
    native = pytest.importorskip("otelwax._native")
    from otelwax.codec import _as_result

    tp = trace_payloads(2, seed=seed, all_value_types=flags, unicode=flags, links_per_span=links)
    assert _as_result(native.decode_traces(tp)).batch.equals(decode_traces(tp).batch)
    lp = logs_payloads(2, seed=seed, all_value_types=flags, unicode=flags)
    assert _as_result(native.decode_logs(lp)).batch.equals(decode_logs(lp).batch)
