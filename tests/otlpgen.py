"""Realistic, seedable OTLP test data shared by every test and benchmark.

Stable API (other tests import it — add parameters with defaults, never change meanings):

    trace_request(n_resources=5, spans_per_resource=20, *, seed=0, ...) -> ExportTraceServiceRequest
    trace_payloads(n_requests, *, seed=0, **kw) -> list[bytes]
    logs_request(n_resources=5, logs_per_resource=20, *, seed=0, ...) -> ExportLogsServiceRequest
    logs_payloads(n_requests, *, seed=0, **kw) -> list[bytes]
    any_value(py) -> AnyValue              # Python value -> AnyValue (dict = kvlist, list = array)
    random_any_value(rng, depth=2) -> AnyValue   # any of the AnyValue kinds, nested
    span_count(request) / log_count(request) -> int

Defaults match the PERF_FACTS workload: 100 spans per request (5 resources x 20 spans),
8 attributes and 1 event per span, ~450 bytes per span serialized. The same ``seed`` gives
byte-identical requests; different seeds (or ``seed`` + request index in ``trace_payloads``)
give disjoint trace/span ids with overwhelming probability, so rows can be counted by SpanId.

Knobs: ``events_per_span``, ``links_per_span``, ``attrs_per_span``, ``all_value_types`` (adds
bool/int/double/bytes/array/kvlist/empty attribute values), ``unicode`` (non-ASCII names,
keys and values incl. emoji and characters JSON must escape), ``base_time_ns`` (start of the
time range; default a fixed instant so data is reproducible), ``spans_per_trace`` (spans that
share one trace id, parent/child linked).
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

__all__ = [
    "BASE_TIME_NS",
    "any_value",
    "kv",
    "log_count",
    "logs_payloads",
    "logs_request",
    "random_any_value",
    "span_count",
    "trace_payloads",
    "trace_request",
]

BASE_TIME_NS = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z, fixed for reproducibility

_SERVICES = ["frontend", "checkout", "payment", "cart", "shipping", "email", "ad", "quote"]
_ROUTES = ["/api/cart", "/api/checkout", "/api/products/{id}", "/healthz", "/api/currency"]
_METHODS = ["GET", "POST", "PUT", "DELETE"]
_UNICODE = [
    "café",
    "Ωmega",
    "日本語",
    "emoji 🚀",
    'quote " back \\ slash',
    "<tag> & more",
    "\u2028",
]
_SEVERITIES = [(5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR")]


def any_value(v: Any) -> AnyValue:
    """Convert a Python value to an AnyValue: str, bool, int, float, bytes, list, dict, None."""
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes | bytearray):
        return AnyValue(bytes_value=bytes(v))
    if isinstance(v, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, x) for k, x in v.items()]))
    raise TypeError(f"no AnyValue for {type(v).__name__}")


def kv(key: str, value: Any) -> KeyValue:
    """A KeyValue from a key and a Python value (see ``any_value``)."""
    return KeyValue(key=key, value=value if isinstance(value, AnyValue) else any_value(value))


def random_any_value(rng: random.Random, depth: int = 2) -> AnyValue:
    """A random AnyValue of any kind (nested arrays/kvlists down to ``depth``)."""
    kinds = ["str", "bool", "int", "double", "bytes", "empty"]
    if depth > 0:
        kinds += ["array", "kvlist"]
    k = rng.choice(kinds)
    if k == "str":
        return AnyValue(string_value=rng.choice([*_UNICODE, "plain", ""]))
    if k == "bool":
        return AnyValue(bool_value=rng.random() < 0.5)
    if k == "int":
        return AnyValue(int_value=rng.choice([0, -42, 2**63 - 1, -(2**63), rng.randint(-999, 999)]))
    if k == "double":
        return AnyValue(
            double_value=rng.choice(
                [0.0, 1.0, 0.1, -2.5, 1e16, 1e-7, 1e21, 1.5e300, float("nan"), float("inf")]
            )
        )
    if k == "bytes":
        return AnyValue(bytes_value=rng.randbytes(rng.randint(0, 12)))
    if k == "empty":
        return AnyValue()
    if k == "array":
        return AnyValue(
            array_value=ArrayValue(
                values=[random_any_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
            )
        )
    return AnyValue(
        kvlist_value=KeyValueList(
            values=[
                KeyValue(
                    key=rng.choice(["a", "b", "z", "ключ", "<k>"]),
                    value=random_any_value(rng, depth - 1),
                )
                for _ in range(rng.randint(0, 3))
            ]
        )
    )


def _resource(rng: random.Random, i: int, unicode: bool, all_value_types: bool) -> Resource:
    svc = _SERVICES[i % len(_SERVICES)]
    if unicode and i % 2:
        svc = f"{svc}-{rng.choice(_UNICODE)}"
    attrs = [
        kv("service.name", svc),
        kv("service.version", f"1.{i}.{rng.randint(0, 9)}"),
        kv("service.instance.id", f"{svc}-{rng.getrandbits(32):08x}"),
        kv("host.name", f"node-{rng.randint(1, 20)}"),
        kv("telemetry.sdk.language", "python"),
        kv("telemetry.sdk.name", "opentelemetry"),
    ]
    if all_value_types:
        attrs.append(kv("process.pid", rng.randint(1, 65535)))
        attrs.append(kv("container.labels", {"team": "core", "tier": i}))
    return Resource(attributes=attrs)


def _span_attrs(rng: random.Random, n: int, unicode: bool, all_value_types: bool) -> list[KeyValue]:
    base: list[tuple[str, Any]] = [
        ("http.request.method", rng.choice(_METHODS)),
        ("http.route", rng.choice(_ROUTES)),
        ("http.response.status_code", rng.choice([200, 200, 200, 404, 500])),
        ("url.scheme", "https"),
        ("server.address", "shop.example.com"),
        ("server.port", 443),
        ("network.protocol.version", "1.1"),
        ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("app.user.id", f"u{rng.randint(1, 100000)}"),
        ("app.cart.items", rng.randint(0, 20)),
    ]
    attrs = [kv(k, v) for k, v in base[:n]]
    for j in range(len(base), n):
        attrs.append(kv(f"app.extra.{j}", f"value-{rng.getrandbits(24):06x}"))
    if unicode:
        attrs.append(kv(rng.choice(_UNICODE), rng.choice(_UNICODE)))
    if all_value_types:
        attrs += [
            kv("app.flag", rng.random() < 0.5),
            kv("app.ratio", rng.choice([0.25, 1.0, 1e-7, 1e16, 3.14159])),
            kv("app.blob", rng.randbytes(6)),
            kv("app.list", ["a", 1, 2.5, True, None]),
            kv("app.map", {"z": 1, "a": "<b>", "m": [1, {"x": None}]}),
            KeyValue(key="app.empty", value=AnyValue()),
            kv("app.any", random_any_value(rng)),
        ]
    return attrs


def trace_request(
    n_resources: int = 5,
    spans_per_resource: int = 20,
    *,
    seed: int = 0,
    attrs_per_span: int = 8,
    events_per_span: int = 1,
    links_per_span: int = 0,
    spans_per_trace: int = 5,
    all_value_types: bool = False,
    unicode: bool = False,
    base_time_ns: int = BASE_TIME_NS,
) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest with ``n_resources`` x ``spans_per_resource`` spans.

    Every span has a unique random span id; ``spans_per_trace`` consecutive spans share a
    trace id (the first is the root, later ones are its children). Spans cover all kinds and
    status codes, one scope per resource.
    """
    rng = random.Random(seed)
    req = ExportTraceServiceRequest()
    t = base_time_ns + rng.randint(0, 10**12)
    for r in range(n_resources):
        rs = ResourceSpans(
            resource=_resource(rng, r, unicode, all_value_types),
            schema_url="https://opentelemetry.io/schemas/1.26.0",
        )
        ss = ScopeSpans(
            scope=InstrumentationScope(name=f"otelwax.test.{r % 3}", version="0.1.0"),
            schema_url="https://opentelemetry.io/schemas/1.26.0",
        )
        trace_id = b""
        root = b""
        for s in range(spans_per_resource):
            if s % max(1, spans_per_trace) == 0:
                trace_id = rng.randbytes(16)
                root = b""
            span_id = rng.randbytes(8)
            start = t + rng.randint(0, 10**9)
            dur = rng.randint(10_000, 500_000_000)
            name = f"{rng.choice(_METHODS)} {rng.choice(_ROUTES)}"
            if unicode and s % 3 == 0:
                name += " " + rng.choice(_UNICODE)
            code = rng.choice([0, 0, 1, 2])
            span = Span(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=root,
                trace_state="vendor=abc" if s % 4 == 0 else "",
                name=name,
                kind=s % 6,
                start_time_unix_nano=start,
                end_time_unix_nano=start + dur,
                attributes=_span_attrs(rng, attrs_per_span, unicode, all_value_types),
                status=Status(code=code, message="boom: upstream failed" if code == 2 else ""),
            )
            for e in range(events_per_span):
                ev = span.events.add()
                ev.time_unix_nano = start + dur // (events_per_span + 1) * (e + 1)
                ev.name = "exception" if code == 2 else f"event-{e}"
                ev.attributes.extend(
                    [kv("exception.type", "ValueError"), kv("event.seq", e)]
                    if code == 2
                    else [kv("event.seq", e)]
                )
            for _ in range(links_per_span):
                lk = span.links.add()
                lk.trace_id = rng.randbytes(16)
                lk.span_id = rng.randbytes(8)
                lk.trace_state = "k=v"
                lk.attributes.append(kv("link.kind", "follows_from"))
            ss.spans.append(span)
            if not root:
                root = span_id
        rs.scope_spans.append(ss)
        req.resource_spans.append(rs)
    return req


def trace_payloads(n_requests: int, *, seed: int = 0, **kw: Any) -> list[bytes]:
    """``n_requests`` serialized trace requests (request i uses seed ``seed * 1_000_003 + i``)."""
    return [
        trace_request(seed=seed * 1_000_003 + i, **kw).SerializeToString()
        for i in range(n_requests)
    ]


def logs_request(
    n_resources: int = 5,
    logs_per_resource: int = 20,
    *,
    seed: int = 0,
    attrs_per_log: int = 4,
    all_value_types: bool = False,
    unicode: bool = False,
    base_time_ns: int = BASE_TIME_NS,
) -> ExportLogsServiceRequest:
    """An ExportLogsServiceRequest with ``n_resources`` x ``logs_per_resource`` log records.

    Every 5th record has time_unix_nano = 0 (observed time is the fallback), most records carry
    trace/span ids, bodies are strings (and every kind when ``all_value_types``).
    """
    rng = random.Random(seed)
    req = ExportLogsServiceRequest()
    t = base_time_ns + rng.randint(0, 10**12)
    for r in range(n_resources):
        rl = ResourceLogs(
            resource=_resource(rng, r, unicode, all_value_types),
            schema_url="https://opentelemetry.io/schemas/1.26.0",
        )
        sl = ScopeLogs(
            scope=InstrumentationScope(
                name=f"otelwax.logger.{r % 2}", version="2.0", attributes=[kv("scope.attr", r)]
            ),
            schema_url="https://opentelemetry.io/schemas/1.25.0",
        )
        for i in range(logs_per_resource):
            ts = t + rng.randint(0, 10**9)
            sev_num, sev_text = rng.choice(_SEVERITIES)
            body: AnyValue
            if all_value_types and i % 3 == 0:
                body = random_any_value(rng)
            else:
                msg = f"request {rng.getrandbits(32):08x} handled in {rng.randint(1, 900)} ms"
                if unicode and i % 2:
                    msg += " " + rng.choice(_UNICODE)
                body = AnyValue(string_value=msg)
            attrs = [kv(f"log.attr.{j}", f"v{rng.randint(0, 99)}") for j in range(attrs_per_log)]
            if all_value_types:
                attrs.append(kv("log.count", rng.randint(0, 10)))
                attrs.append(kv("log.map", {"k": [1, 2]}))
            rec = LogRecord(
                time_unix_nano=0 if i % 5 == 4 else ts,
                observed_time_unix_nano=ts + 1000,
                severity_number=sev_num,
                severity_text=sev_text,
                body=body,
                attributes=attrs,
                flags=1 if i % 2 else 0,
                trace_id=rng.randbytes(16) if i % 4 else b"",
                span_id=rng.randbytes(8) if i % 4 else b"",
                event_name="app.login" if i % 7 == 0 else "",
            )
            sl.log_records.append(rec)
        rl.scope_logs.append(sl)
        req.resource_logs.append(rl)
    return req


def logs_payloads(n_requests: int, *, seed: int = 0, **kw: Any) -> list[bytes]:
    """``n_requests`` serialized logs requests (request i uses seed ``seed * 1_000_003 + i``)."""
    return [
        logs_request(seed=seed * 1_000_003 + i, **kw).SerializeToString() for i in range(n_requests)
    ]


def span_count(req: ExportTraceServiceRequest) -> int:
    """Number of spans in a trace request."""
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def log_count(req: ExportLogsServiceRequest) -> int:
    """Number of log records in a logs request."""
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
