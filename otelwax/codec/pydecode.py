"""Pure-Python OTLP protobuf → Arrow decoder: the reference implementation of the codec contract.

See ``otelwax.codec`` for the contract and the rendering rules; the native core must produce
equal batches. Speed notes (see PERF_FACTS): one pass over the parsed messages appends to
preallocated column lists; per-resource and per-scope values (ServiceName, ResourceAttributes,
scope fields) are rendered once and spread to rows with one ``take`` per batch; enums, durations
and timestamps are computed with numpy; every Arrow array is built once per batch.
"""

from __future__ import annotations

import base64
import gc
import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelwax.codec import DecodeResult
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA

__all__ = ["decode_logs", "decode_traces", "render_any_value", "render_double", "render_json"]

_STR = pa.string()
_TS = pa.timestamp("ns")
_ATTRS = pa.map_(pa.string(), pa.string())
_Z16 = bytes(16)
_Z8 = bytes(8)
_SPAN_KINDS = pa.array(
    [
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
        "",
    ],
    _STR,
)
_STATUS_CODES = pa.array(["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR", ""], _STR)


class _Invalid(ValueError):
    """A payload breaks a contract rule (bad id length, ...): the whole payload is an error."""


# --- AnyValue rendering ------------------------------------------------------------------------


def render_double(x: float) -> str:
    """Shortest round-trip digits, positional, no exponent, no trailing ".0"; NaN/±Inf named."""
    if x != x:
        return "NaN"
    if x == math.inf:
        return "+Inf"
    if x == -math.inf:
        return "-Inf"
    r = repr(x)
    if "e" in r:
        r = format(Decimal(r), "f")
        if "." in r:
            r = r.rstrip("0").rstrip(".")
        return r
    if r.endswith(".0"):
        return r[:-2]
    return r


def _json_double(x: float) -> str:
    if x != x or x in (math.inf, -math.inf):
        return "null"
    a = abs(x)
    if a == 0 or 1e-6 <= a < 1e21:
        return render_double(x)
    r = repr(x)  # e.g. '1e-07', '1.5e+300' (Python always writes the exponent sign)
    mant, _, exp = r.partition("e")
    sign, digits = exp[0], exp[1:].lstrip("0") or "0"
    if sign == "+" and len(digits) < 2:
        digits = digits.rjust(2, "0")  # Go keeps at least two exponent digits for "+"
    return f"{mant}e{sign}{digits}"


_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        '"': '\\"',
        "\\": "\\\\",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
_ESC_RE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')


def _esc(m: re.Match[str]) -> str:
    return _ESCAPES[m.group()]


def _json_str(s: str) -> str:
    return '"' + _ESC_RE.sub(_esc, s) + '"'


def render_json(v: Any) -> str:
    """Compact Go-encoding/json rendering of an AnyValue's raw value (kvlist keys sorted)."""
    w = v.WhichOneof("value")
    if w == "string_value":
        return _json_str(v.string_value)
    if w == "int_value":
        return str(v.int_value)
    if w == "bool_value":
        return "true" if v.bool_value else "false"
    if w == "double_value":
        return _json_double(v.double_value)
    if w == "bytes_value":
        return '"' + base64.b64encode(v.bytes_value).decode("ascii") + '"'
    if w == "array_value":
        return "[" + ",".join([render_json(x) for x in v.array_value.values]) + "]"
    if w == "kvlist_value":
        d = {kv.key: kv.value for kv in v.kvlist_value.values}  # later duplicate keys win
        return "{" + ",".join([_json_str(k) + ":" + render_json(d[k]) for k in sorted(d)]) + "}"
    return "null"  # unset, or string_value_strindex (no dictionary here)


def render_any_value(v: Any) -> str:
    """An AnyValue as a string, like pdata ``Value.AsString`` (see the rules in otelwax.codec)."""
    w = v.WhichOneof("value")
    if w == "string_value":
        return v.string_value
    if w == "int_value":
        return str(v.int_value)
    if w == "bool_value":
        return "true" if v.bool_value else "false"
    if w == "double_value":
        return render_double(v.double_value)
    if w == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if w == "array_value" or w == "kvlist_value":
        return render_json(v)
    return ""


def _render_attrs(attrs: Any, keys: list[str], vals: list[str]) -> None:
    """Append each attribute's key and rendered value (input order, duplicates kept)."""
    ka = keys.append
    va = vals.append
    for a in attrs:
        ka(a.key)
        v = a.value
        s = v.string_value
        va(s if s else render_any_value(v))


def _hex_id(b: bytes, size: int, zero: bytes, what: str) -> str:
    n = len(b)
    if n == size:
        return "" if b == zero else b.hex()
    if n == 0:
        return ""
    raise _Invalid(f"{what} has {n} bytes, want 0 or {size}")


# --- Arrow assembly ----------------------------------------------------------------------------


def _offsets(off: list[int]) -> pa.Array:
    return pa.array(off, pa.int32())


def _map(off: list[int], keys: list[str], vals: list[str]) -> pa.Array:
    return pa.MapArray.from_arrays(_offsets(off), pa.array(keys, _STR), pa.array(vals, _STR))


def _list(off: list[int], values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(_offsets(off), values)


def _ts(values: list[int]) -> np.ndarray:
    """fixed64 nanoseconds → int64 (values ≥ 2^63 wrap like Go's int64(ts))."""
    return np.array(values, dtype=np.uint64).view(np.int64)


def _ts_array(values: list[int]) -> pa.Array:
    return pa.array(_ts(values), _TS)


def _enum_take(names: pa.Array, codes: list[int]) -> pa.Array:
    a = np.array(codes, dtype=np.int64)
    unknown = len(names) - 1
    a = np.where((a >= 0) & (a < unknown), a, unknown)
    return names.take(pa.array(a))


def _run(fn: Callable[[Sequence[bytes]], DecodeResult], payloads: Sequence[bytes]) -> DecodeResult:
    # Millions of short-lived protobuf wrappers would trigger needless GC passes.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(payloads)
    finally:
        if enabled:
            gc.enable()


def _reason(exc: Exception) -> str:
    if isinstance(exc, DecodeError):
        return f"invalid protobuf: {exc}"
    if isinstance(exc, _Invalid):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --- traces ------------------------------------------------------------------------------------


def decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportTraceServiceRequest`` payloads into one ``TRACES_SCHEMA`` batch."""
    return _run(_decode_traces, payloads)


def _decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    parse = ExportTraceServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []

    # per resource
    r_service: list[str] = []
    r_off: list[int] = [0]
    r_keys: list[str] = []
    r_vals: list[str] = []
    # per scope
    sc_res: list[int] = []
    sc_name: list[str] = []
    sc_version: list[str] = []
    sc_rows: list[int] = []
    # per span
    start: list[int] = []
    end: list[int] = []
    trace_id: list[str] = []
    span_id: list[str] = []
    parent_id: list[str] = []
    trace_state: list[str] = []
    name: list[str] = []
    kind: list[int] = []
    s_off: list[int] = [0]
    s_keys: list[str] = []
    s_vals: list[str] = []
    st_code: list[int] = []
    st_msg: list[str] = []
    # events
    ev_off: list[int] = [0]
    ev_ts: list[int] = []
    ev_name: list[str] = []
    ev_a_off: list[int] = [0]
    ev_keys: list[str] = []
    ev_vals: list[str] = []
    # links
    lk_off: list[int] = [0]
    lk_tid: list[str] = []
    lk_sid: list[str] = []
    lk_state: list[str] = []
    lk_a_off: list[int] = [0]
    lk_keys: list[str] = []
    lk_vals: list[str] = []

    all_lists = (
        r_service, r_off, r_keys, r_vals, sc_res, sc_name, sc_version, sc_rows,
        start, end, trace_id, span_id, parent_id, trace_state, name, kind, s_off, s_keys,
        s_vals, st_code, st_msg, ev_off, ev_ts, ev_name, ev_a_off, ev_keys, ev_vals,
        lk_off, lk_tid, lk_sid, lk_state, lk_a_off, lk_keys, lk_vals,
    )  # fmt: skip

    for idx, payload in enumerate(payloads):
        mark = [len(x) for x in all_lists]
        try:
            req = parse(payload)
            n_rows = 0
            for rs in req.resource_spans:
                ri = len(r_service)
                svc = None
                for a in rs.resource.attributes:
                    r_keys.append(a.key)
                    v = a.value
                    s = v.string_value
                    rv = s if s else render_any_value(v)
                    r_vals.append(rv)
                    if svc is None and a.key == "service.name":
                        svc = rv  # the first service.name wins, like pcommon.Map.Get
                r_service.append(svc or "")
                r_off.append(len(r_keys))
                for ss in rs.scope_spans:
                    spans = ss.spans
                    scope = ss.scope
                    sc_res.append(ri)
                    sc_name.append(scope.name)
                    sc_version.append(scope.version)
                    sc_rows.append(len(spans))
                    n_rows += len(spans)
                    for sp in spans:
                        b = sp.trace_id
                        trace_id.append(
                            ("" if b == _Z16 else b.hex())
                            if len(b) == 16
                            else _hex_id(b, 16, _Z16, "span trace_id")
                        )
                        b = sp.span_id
                        span_id.append(
                            ("" if b == _Z8 else b.hex())
                            if len(b) == 8
                            else _hex_id(b, 8, _Z8, "span span_id")
                        )
                        b = sp.parent_span_id
                        parent_id.append(
                            ("" if b == _Z8 else b.hex())
                            if len(b) == 8
                            else _hex_id(b, 8, _Z8, "span parent_span_id")
                        )
                        trace_state.append(sp.trace_state)
                        name.append(sp.name)
                        kind.append(sp.kind)
                        start.append(sp.start_time_unix_nano)
                        end.append(sp.end_time_unix_nano)
                        st = sp.status
                        st_code.append(st.code)
                        st_msg.append(st.message)
                        _render_attrs(sp.attributes, s_keys, s_vals)
                        s_off.append(len(s_keys))
                        evs = sp.events
                        if evs:
                            for e in evs:
                                ev_ts.append(e.time_unix_nano)
                                ev_name.append(e.name)
                                _render_attrs(e.attributes, ev_keys, ev_vals)
                                ev_a_off.append(len(ev_keys))
                        ev_off.append(len(ev_name))
                        lks = sp.links
                        if lks:
                            for lk in lks:
                                lk_tid.append(_hex_id(lk.trace_id, 16, _Z16, "link trace_id"))
                                lk_sid.append(_hex_id(lk.span_id, 8, _Z8, "link span_id"))
                                lk_state.append(lk.trace_state)
                                _render_attrs(lk.attributes, lk_keys, lk_vals)
                                lk_a_off.append(len(lk_keys))
                        lk_off.append(len(lk_tid))
            rows_per_payload.append(n_rows)
        except Exception as exc:  # one bad payload must not lose the others
            for lst, n in zip(all_lists, mark, strict=True):
                del lst[n:]
            errors.append((idx, _reason(exc)))
            rows_per_payload.append(0)

    span_scope = np.repeat(np.arange(len(sc_rows), dtype=np.int64), sc_rows)
    span_res = pa.array(np.asarray(sc_res, dtype=np.int64)[span_scope])
    span_scope_a = pa.array(span_scope)
    starts = _ts(start)
    ends = _ts(end)
    ustart = starts.view(np.uint64)
    uend = ends.view(np.uint64)
    duration = np.where(uend >= ustart, uend - ustart, np.uint64(0))

    ev_attrs = _map(ev_a_off, ev_keys, ev_vals)
    lk_attrs = _map(lk_a_off, lk_keys, lk_vals)
    arrays = [
        pa.array(starts, _TS),
        pa.array(trace_id, _STR),
        pa.array(span_id, _STR),
        pa.array(parent_id, _STR),
        pa.array(trace_state, _STR),
        pa.array(name, _STR),
        _enum_take(_SPAN_KINDS, kind),
        pa.array(r_service, _STR).take(span_res),
        _map(r_off, r_keys, r_vals).take(span_res),
        pa.array(sc_name, _STR).take(span_scope_a),
        pa.array(sc_version, _STR).take(span_scope_a),
        _map(s_off, s_keys, s_vals),
        pa.array(duration, pa.uint64()),
        _enum_take(_STATUS_CODES, st_code),
        pa.array(st_msg, _STR),
        _list(ev_off, _ts_array(ev_ts)),
        _list(ev_off, pa.array(ev_name, _STR)),
        _list(ev_off, ev_attrs),
        _list(lk_off, pa.array(lk_tid, _STR)),
        _list(lk_off, pa.array(lk_sid, _STR)),
        _list(lk_off, pa.array(lk_state, _STR)),
        _list(lk_off, lk_attrs),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=TRACES_SCHEMA)
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows_per_payload)


# --- logs --------------------------------------------------------------------------------------


def decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportLogsServiceRequest`` payloads into one ``LOGS_SCHEMA`` batch."""
    return _run(_decode_logs, payloads)


def _decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    parse = ExportLogsServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []

    r_service: list[str] = []
    r_schema: list[str] = []
    r_off: list[int] = [0]
    r_keys: list[str] = []
    r_vals: list[str] = []
    sc_res: list[int] = []
    sc_schema: list[str] = []
    sc_name: list[str] = []
    sc_version: list[str] = []
    sc_off: list[int] = [0]
    sc_keys: list[str] = []
    sc_vals: list[str] = []
    sc_rows: list[int] = []
    ts: list[int] = []
    trace_id: list[str] = []
    span_id: list[str] = []
    flags: list[int] = []
    sev_text: list[str] = []
    sev_num: list[int] = []
    body: list[str] = []
    l_off: list[int] = [0]
    l_keys: list[str] = []
    l_vals: list[str] = []
    event_name: list[str] = []

    all_lists = (
        r_service, r_schema, r_off, r_keys, r_vals, sc_res, sc_schema, sc_name, sc_version,
        sc_off, sc_keys, sc_vals, sc_rows, ts, trace_id, span_id, flags, sev_text, sev_num,
        body, l_off, l_keys, l_vals, event_name,
    )  # fmt: skip

    for idx, payload in enumerate(payloads):
        mark = [len(x) for x in all_lists]
        try:
            req = parse(payload)
            n_rows = 0
            for rl in req.resource_logs:
                ri = len(r_service)
                svc = None
                for a in rl.resource.attributes:
                    r_keys.append(a.key)
                    v = a.value
                    s = v.string_value
                    rv = s if s else render_any_value(v)
                    r_vals.append(rv)
                    if svc is None and a.key == "service.name":
                        svc = rv
                r_service.append(svc or "")
                r_schema.append(rl.schema_url)
                r_off.append(len(r_keys))
                for sl in rl.scope_logs:
                    recs = sl.log_records
                    scope = sl.scope
                    sc_res.append(ri)
                    sc_schema.append(sl.schema_url)
                    sc_name.append(scope.name)
                    sc_version.append(scope.version)
                    _render_attrs(scope.attributes, sc_keys, sc_vals)
                    sc_off.append(len(sc_keys))
                    sc_rows.append(len(recs))
                    n_rows += len(recs)
                    for lr in recs:
                        t = lr.time_unix_nano
                        ts.append(t if t else lr.observed_time_unix_nano)
                        trace_id.append(_hex_id(lr.trace_id, 16, _Z16, "log trace_id"))
                        span_id.append(_hex_id(lr.span_id, 8, _Z8, "log span_id"))
                        flags.append(lr.flags)
                        sev_text.append(lr.severity_text)
                        sev_num.append(lr.severity_number)
                        v = lr.body
                        s = v.string_value
                        body.append(s if s else render_any_value(v))
                        _render_attrs(lr.attributes, l_keys, l_vals)
                        l_off.append(len(l_keys))
                        event_name.append(lr.event_name)
            rows_per_payload.append(n_rows)
        except Exception as exc:  # one bad payload must not lose the others
            for lst, n in zip(all_lists, mark, strict=True):
                del lst[n:]
            errors.append((idx, _reason(exc)))
            rows_per_payload.append(0)

    row_scope = np.repeat(np.arange(len(sc_rows), dtype=np.int64), sc_rows)
    row_res = pa.array(np.asarray(sc_res, dtype=np.int64)[row_scope])
    row_scope_a = pa.array(row_scope)
    flags_a = np.array(flags, dtype=np.uint32) & 0xFF
    sev = np.clip(np.array(sev_num, dtype=np.int64), 0, 255)
    arrays = [
        _ts_array(ts),
        pa.array(trace_id, _STR),
        pa.array(span_id, _STR),
        pa.array(flags_a.astype(np.uint8), pa.uint8()),
        pa.array(sev_text, _STR),
        pa.array(sev.astype(np.uint8), pa.uint8()),
        pa.array(r_service, _STR).take(row_res),
        pa.array(body, _STR),
        pa.array(r_schema, _STR).take(row_res),
        _map(r_off, r_keys, r_vals).take(row_res),
        pa.array(sc_schema, _STR).take(row_scope_a),
        pa.array(sc_name, _STR).take(row_scope_a),
        pa.array(sc_version, _STR).take(row_scope_a),
        _map(sc_off, sc_keys, sc_vals).take(row_scope_a),
        _map(l_off, l_keys, l_vals),
        pa.array(event_name, _STR),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=LOGS_SCHEMA)
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows_per_payload)
