"""Pure-Python Arrow → OTLP traces encoder: ``TRACES_SCHEMA`` rows back to an
``ExportTraceServiceRequest``. The reference for (and fallback of) the native encoder
``otelwax.codec.native.encode_traces``; used by the Jaeger sink (``connectors.otlp_export``).

    encode_traces_request(batch) -> ExportTraceServiceRequest
    encode_traces(batch) -> bytes                      # serialized request
    traces_encoder("auto" | "native" | "python") -> Callable[[pa.RecordBatch], bytes]

What comes back, and what does not (the table is lossy by design, see ``otelwax.codec``):

- Rows are grouped into ``ResourceSpans`` by (``ResourceAttributes``, ``ServiceName``) and into
  ``ScopeSpans`` by (``ScopeName``, ``ScopeVersion``), both in order of first appearance, like
  the native encoder. When ``ResourceAttributes`` has no ``service.name`` key but
  ``ServiceName`` is set (an operator changed it), ``service.name`` is appended to the resource.
- Ids are decoded from hex ("" → absent). A malformed id raises ``ValueError`` naming the row.
- ``SpanKind`` / ``StatusCode`` names go back to their enum numbers; unknown names → 0
  (``SPAN_KIND_UNSPECIFIED`` / ``STATUS_CODE_UNSET``). A ``Status`` is written only when the
  code is not UNSET or the message is not empty.
- ``end_time_unix_nano = Timestamp + Duration`` (unsigned, wrapping like the decoder's reading).
- **Every attribute value is written as a string ``AnyValue``** (``string_value``, also for
  ""; the native encoder leaves "" values unset, which decodes and shows in Jaeger the same
  way): the decoder rendered ints, bools, doubles, bytes, arrays and maps to strings, and they are
  not guessed back (``"42"`` may have been a string). So Arrow → OTLP → Arrow is lossless, while
  OTLP → Arrow → OTLP turns typed values into their string renderings (Jaeger shows an int tag
  ``http.response.status_code=200`` as the string ``"200"``).
- Not in the table, so not written: span flags, dropped-attribute/event/link counts, scope
  attributes, schema URLs.

Speed: columns are converted to Python lists once per batch and enums/timestamps are computed
with ``pyarrow.compute``/numpy; the per-span cost is building the protobuf messages.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelwax.protowire import length_delimited, varint
from otelwax.schemas import SPAN_KIND_NAMES, TRACES_SCHEMA

__all__ = ["encode_traces", "encode_traces_request", "encoder_name", "traces_encoder"]

log = logging.getLogger(__name__)

_SPAN_KINDS = pa.array(
    list(SPAN_KIND_NAMES),
    pa.string(),
)
_STATUS_CODES = pa.array(["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"], pa.string())
_NULLABLE = pa.schema([f.with_nullable(True) for f in TRACES_SCHEMA])


def _conform(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """Select ``TRACES_SCHEMA`` columns by name (cast when types differ) as one batch."""
    if isinstance(data, pa.Table):
        data = data.select(TRACES_SCHEMA.names).combine_chunks()
        batches = data.to_batches()
        data = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=data.schema)
    missing = [n for n in TRACES_SCHEMA.names if n not in data.schema.names]
    if missing:
        raise ValueError(f"batch lacks traces columns: {', '.join(missing)}")
    data = data.select(TRACES_SCHEMA.names)
    if data.schema.types != TRACES_SCHEMA.types:
        data = data.cast(_NULLABLE)  # operators may leave nulls: they encode as empty values
    return data


def _bins(arr: pa.Array) -> list[bytes]:
    """A string column as a list of UTF-8 ``bytes`` (nulls → b""), converted in one cast."""
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr.cast(pa.binary()).to_pylist()


def _strs(arr: pa.Array) -> list[str]:
    """A string column as a Python list, nulls as ""."""
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr.to_pylist()


def _offsets(arr: pa.ListArray | pa.MapArray) -> tuple[int, int, list[int], list[bool] | None]:
    offsets = arr.offsets.to_numpy()
    base, end = int(offsets[0]), int(offsets[-1])
    valid = arr.is_valid().to_pylist() if arr.null_count else None
    return base, end, (offsets - base).tolist(), valid


def _map_rows(arr: pa.MapArray) -> list[list[tuple[bytes, bytes]]]:
    """A map<string,string> column as per-row lists of (key, value) UTF-8 pairs; null → []."""
    base, end, bounds, valid = _offsets(arr)
    keys = _bins(arr.keys.slice(base, end - base))
    vals = _bins(arr.items.slice(base, end - base))
    pairs = list(zip(keys, vals, strict=True))
    if valid is None:
        return [pairs[bounds[i] : bounds[i + 1]] for i in range(len(arr))]
    return [pairs[bounds[i] : bounds[i + 1]] if valid[i] else [] for i in range(len(arr))]


def _list_rows(arr: pa.ListArray, conv: Callable[[pa.Array], list[Any]]) -> list[list[Any]]:
    """A list column as per-row Python lists (items converted by ``conv``); null → []."""
    base, end, bounds, valid = _offsets(arr)
    items = conv(arr.values.slice(base, end - base))
    if valid is None:
        return [items[bounds[i] : bounds[i + 1]] for i in range(len(arr))]
    return [items[bounds[i] : bounds[i + 1]] if valid[i] else [] for i in range(len(arr))]


def _ts_u64(arr: pa.Array) -> np.ndarray:
    """timestamp[ns] → uint64 nanoseconds (nulls → 0; negative int64 wraps like Go's uint64)."""
    ints = pc.fill_null(arr.cast(pa.int64()), 0)
    return ints.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)


def _fixed64_fields(tag: int, values: np.ndarray) -> bytes:
    """``tag`` byte + 8-byte little-endian value per row, as one buffer (9 bytes per row)."""
    rec = np.empty(len(values), dtype=np.dtype([("t", "u1"), ("v", "<u8")]))
    rec["t"] = tag
    rec["v"] = values
    return rec.tobytes()


def _ids(values: list[str], nbytes: int, what: str, row: int | None = None) -> list[bytes]:
    """Hex ids → bytes ("" → b""); ``row`` set: the values are the items of that row's list."""
    out: list[bytes] = []
    for i, v in enumerate(values):
        if not v:
            out.append(b"")
            continue
        try:
            b = bytes.fromhex(v)
        except ValueError:
            b = None
        if b is None or len(b) != nbytes:
            where = f"row {i}" if row is None else f"row {row}, item {i}"
            raise ValueError(f"{where}: {what} {v!r} is not {nbytes} bytes of hex")
        out.append(b)
    return out


# --- protobuf wire helpers (field numbers from opentelemetry/proto/trace/v1/trace.proto) ----


class _KvCache:
    """Encoded ``KeyValue{key, AnyValue{string_value}}`` fields under one tag, memoised: most
    attribute pairs repeat across spans (methods, routes, hosts), so each is encoded once."""

    __slots__ = ("_cache", "_tag")

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._cache: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
        cache = self._cache
        out = []
        for pair in pairs:
            b = cache.get(pair)
            if b is None:
                k, v = pair
                body = (length_delimited(b"\x0a", k) if k else b"") + length_delimited(
                    b"\x12", length_delimited(b"\x0a", v)
                )
                b = length_delimited(self._tag, body)
                if len(cache) < 200_000:
                    cache[pair] = b
            out.append(b)
        return out


# Field tags (field number << 3 | wire type).
_REQ_RESOURCE_SPANS = b"\x0a"
_RS_RESOURCE, _RS_SCOPE_SPANS = b"\x0a", b"\x12"
_RES_ATTR = b"\x0a"
_SS_SCOPE, _SS_SPANS = b"\x0a", b"\x12"
_SC_NAME, _SC_VERSION = b"\x0a", b"\x12"
_SPAN_TRACE_ID, _SPAN_SPAN_ID = b"\x0a\x10", b"\x12\x08"  # + 16 / 8 id bytes
_SPAN_STATE, _SPAN_PARENT = b"\x1a", b"\x22\x08"
_SPAN_NAME, _SPAN_KIND, _SPAN_START, _SPAN_END = b"\x2a", b"\x30", 0x39, 0x41
_SPAN_ATTR, _SPAN_EVENT, _SPAN_LINK, _SPAN_STATUS = b"\x4a", b"\x5a", b"\x6a", b"\x7a"
_EV_TIME, _EV_NAME, _EV_ATTR = b"\x09", b"\x12", b"\x1a"
_LK_TRACE_ID, _LK_SPAN_ID, _LK_STATE, _LK_ATTR = b"\x0a\x10", b"\x12\x08", b"\x1a", b"\x22"
_ST_MESSAGE, _ST_CODE = b"\x12", b"\x18"
_SERVICE_NAME = b"service.name"


def encode_traces(data: pa.RecordBatch | pa.Table) -> bytes:
    """Encode ``TRACES_SCHEMA`` rows as one serialized ``ExportTraceServiceRequest``.

    Writes the protobuf wire format directly (fields in field-number order, as protobuf's own
    serializer does); ``encode_traces_request`` parses the result into a message. Raises
    ``ValueError`` on a missing column or an id that is not hex of the right length.
    """
    # Hundreds of thousands of short-lived bytes/tuples would trigger needless GC passes.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _encode(_conform(data))
    finally:
        if enabled:
            gc.enable()


def _encode(batch: pa.RecordBatch) -> bytes:
    n = batch.num_rows
    if n == 0:
        return b""
    col = batch.column
    start = _ts_u64(col("Timestamp"))
    dur = pc.fill_null(col("Duration"), 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    with np.errstate(over="ignore"):
        end = start + dur
    rec = np.empty(n, dtype=np.dtype([("t1", "u1"), ("s", "<u8"), ("t2", "u1"), ("e", "<u8")]))
    rec["t1"], rec["s"], rec["t2"], rec["e"] = _SPAN_START, start, _SPAN_END, end
    times = rec.tobytes()  # 18 bytes per row: start and end fixed64 fields
    kinds = pc.fill_null(pc.index_in(col("SpanKind"), value_set=_SPAN_KINDS), 0).to_pylist()
    codes = pc.fill_null(pc.index_in(col("StatusCode"), value_set=_STATUS_CODES), 0).to_pylist()
    trace_ids = _ids(_strs(col("TraceId")), 16, "TraceId")
    span_ids = _ids(_strs(col("SpanId")), 8, "SpanId")
    parents = _ids(_strs(col("ParentSpanId")), 8, "ParentSpanId")
    states = _bins(col("TraceState"))
    names = _bins(col("SpanName"))
    services = _bins(col("ServiceName"))
    res_attrs = _map_rows(col("ResourceAttributes"))
    scope_names = _bins(col("ScopeName"))
    scope_versions = _bins(col("ScopeVersion"))
    span_attrs = _map_rows(col("SpanAttributes"))
    status_msgs = _bins(col("StatusMessage"))
    ev_col = col("Events.Timestamp")
    ev_base, ev_end, ev_bounds, ev_valid = _offsets(ev_col)
    # 9 bytes per event (tag + fixed64 time); row i's events are ev_bounds[i]..ev_bounds[i+1].
    ev_times = _fixed64_fields(0x09, _ts_u64(ev_col.values.slice(ev_base, ev_end - ev_base)))
    ev_names = _list_rows(col("Events.Name"), _bins)
    ev_attrs = _list_rows(col("Events.Attributes"), _map_rows)
    lk_trace = _list_rows(col("Links.TraceId"), _strs)
    lk_span = _list_rows(col("Links.SpanId"), _strs)
    lk_state = _list_rows(col("Links.TraceState"), _bins)
    lk_attrs = _list_rows(col("Links.Attributes"), _map_rows)

    span_kv, ev_kv, lk_kv, res_kv = (
        _KvCache(_SPAN_ATTR),
        _KvCache(_EV_ATTR),
        _KvCache(_LK_ATTR),
        _KvCache(_RES_ATTR),
    )
    # Group rows: (resource attrs, service) → (scope name, version) → encoded spans.
    resources: dict[tuple[Any, ...], tuple[int, dict[tuple[bytes, bytes], list[bytes]]]] = {}
    for row in range(n):
        rkey = (tuple(res_attrs[row]), services[row])
        entry = resources.get(rkey)
        if entry is None:
            entry = resources[rkey] = (row, {})
        scopes = entry[1]
        skey = (scope_names[row], scope_versions[row])
        spans = scopes.get(skey)
        if spans is None:
            spans = scopes[skey] = []

        parts: list[bytes] = []
        tid = trace_ids[row]
        if tid:
            parts.append(_SPAN_TRACE_ID + tid)
        sid = span_ids[row]
        if sid:
            parts.append(_SPAN_SPAN_ID + sid)
        if states[row]:
            parts.append(length_delimited(_SPAN_STATE, states[row]))
        pid = parents[row]
        if pid:
            parts.append(_SPAN_PARENT + pid)
        if names[row]:
            parts.append(length_delimited(_SPAN_NAME, names[row]))
        if kinds[row]:
            parts.append(_SPAN_KIND + varint(kinds[row]))
        parts.append(times[18 * row : 18 * row + 18])
        if span_attrs[row]:
            parts += span_kv.encode(span_attrs[row])
        enames, eattrs = ev_names[row], ev_attrs[row]
        e0 = ev_bounds[row]
        n_ev = 0 if ev_valid is not None and not ev_valid[row] else ev_bounds[row + 1] - e0
        if enames or eattrs or n_ev:
            if not n_ev == len(enames) == len(eattrs):
                raise ValueError(f"row {row}: Events.* lists differ in length")
            for j, (name, attrs) in enumerate(zip(enames, eattrs, strict=True)):
                ev = [ev_times[9 * (e0 + j) : 9 * (e0 + j) + 9]]
                if name:
                    ev.append(length_delimited(_EV_NAME, name))
                if attrs:
                    ev += ev_kv.encode(attrs)
                parts.append(length_delimited(_SPAN_EVENT, b"".join(ev)))
        lt = lk_trace[row]
        if lt or lk_span[row] or lk_state[row] or lk_attrs[row]:
            ls, lst, la = lk_span[row], lk_state[row], lk_attrs[row]
            if not len(lt) == len(ls) == len(lst) == len(la):
                raise ValueError(f"row {row}: Links.* lists differ in length")
            link_traces = _ids(lt, 16, "Links.TraceId", row)
            link_spans = _ids(ls, 8, "Links.SpanId", row)
            for t, s, st, attrs in zip(link_traces, link_spans, lst, la, strict=True):
                lk = []
                if t:
                    lk.append(_LK_TRACE_ID + t)
                if s:
                    lk.append(_LK_SPAN_ID + s)
                if st:
                    lk.append(length_delimited(_LK_STATE, st))
                if attrs:
                    lk += lk_kv.encode(attrs)
                parts.append(length_delimited(_SPAN_LINK, b"".join(lk)))
        code, msg = codes[row], status_msgs[row]
        if code or msg:
            status = (length_delimited(_ST_MESSAGE, msg) if msg else b"") + (
                _ST_CODE + varint(code) if code else b""
            )
            parts.append(length_delimited(_SPAN_STATUS, status))
        spans.append(length_delimited(_SS_SPANS, b"".join(parts)))

    out: list[bytes] = []
    for (pairs, svc), (_first, scopes) in resources.items():
        attrs = res_kv.encode(list(pairs))
        if svc and not any(k == _SERVICE_NAME for k, _ in pairs):
            attrs += res_kv.encode([(_SERVICE_NAME, svc)])
        rs = [length_delimited(_RS_RESOURCE, b"".join(attrs))]
        for (sname, sver), spans in scopes.items():
            scope = (length_delimited(_SC_NAME, sname) if sname else b"") + (
                length_delimited(_SC_VERSION, sver) if sver else b""
            )
            rs.append(
                length_delimited(
                    _RS_SCOPE_SPANS, length_delimited(_SS_SCOPE, scope) + b"".join(spans)
                )
            )
        out.append(length_delimited(_REQ_RESOURCE_SPANS, b"".join(rs)))
    return b"".join(out)


def encode_traces_request(data: pa.RecordBatch | pa.Table) -> ExportTraceServiceRequest:
    """Encode ``TRACES_SCHEMA`` rows as one ``ExportTraceServiceRequest`` message."""
    return ExportTraceServiceRequest.FromString(encode_traces(data))


def traces_encoder(prefer: str = "auto") -> tuple[str, Callable[[pa.RecordBatch], bytes]]:
    """Pick an Arrow → OTLP bytes encoder: ``("native", fn)`` or ``("python", fn)``.

    ``prefer``: "auto" (native when built, else Python), "native" (error when not built) or
    "python". ``$OTELWAX_CODEC=python`` also forces the Python encoder under "auto".
    """
    if prefer not in ("auto", "native", "python"):
        raise ValueError(f"encoder {prefer!r}: want auto, native or python")
    if prefer == "auto" and os.environ.get("OTELWAX_CODEC", "auto").lower() == "python":
        prefer = "python"
    if prefer != "python":
        from otelwax.codec import native

        if native.AVAILABLE:
            return "native", native.encode_traces
        if prefer == "native":
            raise ImportError(f"native encoder requested but not built: {native.IMPORT_ERROR}")
    return "python", encode_traces


def encoder_name(prefer: str = "auto") -> str:
    """Which encoder ``traces_encoder(prefer)`` would use."""
    return traces_encoder(prefer)[0]
