"""Hand-built Arrow batches for operator tests (importable by other tests).

    spans_batch(rows) -> pa.RecordBatch   # TRACES_SCHEMA; each row a dict of overrides
    logs_batch(rows)  -> pa.RecordBatch   # LOGS_SCHEMA
    random_spans(n, seed=0, spans_per_trace=10) -> pa.RecordBatch   # big, vectorised build

Attribute maps are given as dicts or lists of (key, value) pairs; ``None`` makes a null map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA

BASE_NS = 1_700_000_000_000_000_000

_SPAN_DEFAULTS: dict[str, Any] = {
    "Timestamp": BASE_NS,
    "TraceId": "0af7651916cd43dd8448eb211c80319c",
    "SpanId": "b7ad6b7169203331",
    "ParentSpanId": "",
    "TraceState": "",
    "SpanName": "GET /",
    "SpanKind": "SPAN_KIND_SERVER",
    "ServiceName": "svc",
    "ResourceAttributes": {"service.name": "svc"},
    "ScopeName": "scope",
    "ScopeVersion": "1",
    "SpanAttributes": {},
    "Duration": 1_000_000,
    "StatusCode": "STATUS_CODE_UNSET",
    "StatusMessage": "",
    "Events.Timestamp": [],
    "Events.Name": [],
    "Events.Attributes": [],
    "Links.TraceId": [],
    "Links.SpanId": [],
    "Links.TraceState": [],
    "Links.Attributes": [],
}

_LOG_DEFAULTS: dict[str, Any] = {
    "Timestamp": BASE_NS,
    "TraceId": "",
    "SpanId": "",
    "TraceFlags": 0,
    "SeverityText": "INFO",
    "SeverityNumber": 9,
    "ServiceName": "svc",
    "Body": "hello",
    "ResourceSchemaUrl": "",
    "ResourceAttributes": {"service.name": "svc"},
    "ScopeSchemaUrl": "",
    "ScopeName": "scope",
    "ScopeVersion": "1",
    "ScopeAttributes": {},
    "LogAttributes": {},
    "EventName": "",
}


def _norm(v: Any) -> Any:
    if isinstance(v, dict):
        return list(v.items())
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return [list(x.items()) for x in v]
    return v


def _batch(
    rows: list[dict[str, Any]], schema: pa.Schema, defaults: dict[str, Any]
) -> pa.RecordBatch:
    cols = []
    for f in schema:
        vals = [_norm(r.get(f.name, defaults[f.name])) for r in rows]
        # Nulls are allowed in hand-built batches (edge cases), so build with a nullable type.
        cols.append(pa.array(vals, f.type))
    nullable = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
    batch = pa.RecordBatch.from_arrays(cols, schema=nullable)
    if not any(c.null_count for c in cols):
        batch = batch.cast(schema)
    return batch


def spans_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """A TRACES_SCHEMA batch; each dict overrides defaults for one row."""
    return _batch(rows, TRACES_SCHEMA, _SPAN_DEFAULTS)


def logs_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """A LOGS_SCHEMA batch; each dict overrides defaults for one row."""
    return _batch(rows, LOGS_SCHEMA, _LOG_DEFAULTS)


def random_trace_ids(n: int, seed: int = 0) -> pa.Array:
    """``n`` random 32-hex trace ids (vectorised)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = hexd[raw >> 4]
    chars[:, 1::2] = hexd[raw & 15]
    offsets = pa.array(np.arange(0, 32 * n + 1, 32, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets.buffers()[1], pa.py_buffer(chars.tobytes()))


def random_spans(n: int, seed: int = 0, spans_per_trace: int = 10) -> pa.RecordBatch:
    """A realistic-looking TRACES_SCHEMA batch of ``n`` rows built without Python row loops."""
    rng = np.random.default_rng(seed)
    n_traces = max(1, n // spans_per_trace)
    tids = random_trace_ids(n_traces, seed).take(pa.array(np.arange(n) // spans_per_trace))
    sids = random_trace_ids(n, seed + 1)
    sids = pa.compute.utf8_slice_codeunits(sids, 0, 16)
    first = (np.arange(n) % spans_per_trace) == 0
    parent = pa.compute.if_else(pa.array(first), "", sids)
    services = np.array(["cart", "checkout", "frontend", "payment", "shipping"])
    svc = pa.array(services[rng.integers(0, 5, n)])
    routes = np.array(["/api/cart", "/health", "/api/pay", "/ready", "/api/ship", "/api/x"])
    route = routes[rng.integers(0, len(routes), n)]
    users = np.array([f"user{i}@example.com" for i in range(1000)])
    user = users[rng.integers(0, 1000, n)]
    status = np.array(["200", "200", "200", "404", "500"])[rng.integers(0, 5, n)]
    k = 8
    keys = np.tile(
        np.array(
            [
                "http.route",
                "http.request.method",
                "http.response.status_code",
                "user.email",
                "net.peer.name",
                "authorization",
                "db.statement",
                "thread.id",
            ]
        ),
        n,
    )
    vals = np.empty((n, k), dtype=object)
    vals[:, 0] = route
    vals[:, 1] = "GET"
    vals[:, 2] = status
    vals[:, 3] = user
    vals[:, 4] = "peer.example.internal"
    vals[:, 5] = "Bearer abcdefghijklmnop.qrstuvwxyz"
    vals[:, 6] = "SELECT * FROM t WHERE id = ?"
    vals[:, 7] = "17"
    offs = pa.array(np.arange(0, k * n + 1, k, dtype=np.int32))
    span_attrs = pa.MapArray.from_arrays(
        offs,
        pa.array(keys),
        pa.array(vals.ravel().astype(str)),
        type=TRACES_SCHEMA.field("SpanAttributes").type,
    )
    res_off = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    res_keys = pa.array(np.tile(np.array(["service.name", "host.name"]), n))
    res_vals_np = np.empty((n, 2), dtype=object)
    res_vals_np[:, 0] = services[rng.integers(0, 5, n)]
    res_vals_np[:, 1] = "host-1"
    res_attrs = pa.MapArray.from_arrays(
        res_off,
        res_keys,
        pa.array(res_vals_np.ravel().astype(str)),
        type=TRACES_SCHEMA.field("ResourceAttributes").type,
    )
    dur = rng.integers(1_000, 3_000_000_000, n).astype(np.uint64)
    err = rng.random(n) < 0.01
    empty_list = lambda t: pa.ListArray.from_arrays(  # noqa: E731
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], t)
    )
    cols = {
        "Timestamp": pa.array(BASE_NS + np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ns")),
        "TraceId": tids,
        "SpanId": sids,
        "ParentSpanId": parent,
        "TraceState": pa.repeat(pa.scalar(""), n),
        "SpanName": pa.array(route),
        "SpanKind": pa.repeat(pa.scalar("SPAN_KIND_SERVER"), n),
        "ServiceName": svc,
        "ResourceAttributes": res_attrs,
        "ScopeName": pa.repeat(pa.scalar("io.opentelemetry"), n),
        "ScopeVersion": pa.repeat(pa.scalar("1.0"), n),
        "SpanAttributes": span_attrs,
        "Duration": pa.array(dur, pa.uint64()),
        "StatusCode": pa.array(np.where(err, "STATUS_CODE_ERROR", "STATUS_CODE_UNSET")),
        "StatusMessage": pa.repeat(pa.scalar(""), n),
        "Events.Timestamp": empty_list(pa.timestamp("ns")),
        "Events.Name": empty_list(pa.string()),
        "Events.Attributes": empty_list(TRACES_SCHEMA.field("SpanAttributes").type),
        "Links.TraceId": empty_list(pa.string()),
        "Links.SpanId": empty_list(pa.string()),
        "Links.TraceState": empty_list(pa.string()),
        "Links.Attributes": empty_list(TRACES_SCHEMA.field("SpanAttributes").type),
    }
    return pa.RecordBatch.from_arrays(
        [cols[f.name].cast(f.type) for f in TRACES_SCHEMA], schema=TRACES_SCHEMA
    )


# --- OTLP payloads for end-to-end operator tests (flows) ----------------------------------------

PII_VALUES = (
    "alice.smith@example.com",
    "4111 1111 1111 1111",
    "Bearer s3cr3t-t0k3n",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
)
"""Values that must never be found in stored rows after ``{type: redact}``."""


def pii_trace_payloads(n_traces: int = 20, spans_per_trace: int = 5, seed: int = 0) -> list[bytes]:
    """Serialized ExportTraceServiceRequests (one per trace, service ``pii-test``) whose spans
    carry ``PII_VALUES`` in attributes, event attributes and the status message, and where the
    first span of every even trace has ``http.route = /health``.

    For a flow test: produce them to ``otlp_spans`` keyed by trace id, run ``flows.traces``
    with ``configs/examples/pii-and-sampling.yaml``-like operators, then search the stored rows
    for ``PII_VALUES`` and ``/health`` (none may be found).
    """
    import random

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    from tests.otlpgen import kv

    rng = random.Random(seed)
    out = []
    for t in range(n_traces):
        trace_id = rng.randbytes(16)
        spans = []
        for i in range(spans_per_trace):
            route = "/health" if (t % 2 == 0 and i == 0) else f"/api/orders/{i}"
            span = Span(
                trace_id=trace_id,
                span_id=rng.randbytes(8),
                name=f"GET {route}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=BASE_NS + t * 1_000_000_000 + i,
                end_time_unix_nano=BASE_NS + t * 1_000_000_000 + i + 5_000_000,
                attributes=[
                    kv("http.route", route),
                    kv("user.email", PII_VALUES[0]),
                    kv("payment.card", f"card {PII_VALUES[1]}"),
                    kv("http.request.header.authorization", PII_VALUES[2]),
                    kv("session", PII_VALUES[3]),
                ],
            )
            span.events.add(
                time_unix_nano=BASE_NS + t, name="log",
                attributes=[kv("message", f"mail to {PII_VALUES[0]}")],
            )  # fmt: skip
            spans.append(span)
        req = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(attributes=[kv("service.name", "pii-test")]),
                    scope_spans=[ScopeSpans(spans=spans)],
                )
            ]
        )
        out.append(req.SerializeToString())
    return out
