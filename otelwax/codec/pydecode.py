"""Pure-Python OTLP protobuf → Arrow decoder: the reference implementation of the codec contract.

See ``otelwax.codec`` for the contract and the rendering rules; the native core must produce
equal batches. Speed notes (see PERF_FACTS): one pass over the parsed messages appends to
preallocated column lists; per-resource and per-scope values (ServiceName, ResourceAttributes,
scope fields) are rendered once (``_common.Envelope``) and spread to rows with one ``take`` per
batch; enums, durations and timestamps are computed with numpy; every Arrow array is built once
per batch. Rendering, the resource/scope walk, Arrow assembly and error handling are shared
with ``pymetrics`` through ``otelwax.codec._common``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelwax.codec import DecodeResult
from otelwax.codec._common import (
    STR,
    TS,
    Z8,
    Z16,
    Envelope,
    error_reason,
    hex_id,
    list_array,
    map_array,
    mark,
    record_batch,
    render_any_value,
    render_attrs,
    render_double,
    render_json,
    rollback,
    run_without_gc,
    ts_array,
    ts_ns,
)
from otelwax.schemas import LOGS_SCHEMA, SPAN_KIND_NAMES, TRACES_SCHEMA

__all__ = ["decode_logs", "decode_traces", "render_any_value", "render_double", "render_json"]

_SPAN_KINDS = pa.array(
    [*SPAN_KIND_NAMES, ""],
    STR,
)
_STATUS_CODES = pa.array(["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR", ""], STR)


def _enum_take(names: pa.Array, codes: list[int]) -> pa.Array:
    a = np.array(codes, dtype=np.int64)
    unknown = len(names) - 1
    a = np.where((a >= 0) & (a < unknown), a, unknown)
    return names.take(pa.array(a))


# --- traces ------------------------------------------------------------------------------------


def decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportTraceServiceRequest`` payloads into one ``TRACES_SCHEMA`` batch."""
    return run_without_gc(_decode_traces, payloads)


def _decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    parse = ExportTraceServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []
    env = Envelope()  # per resource and per scope
    walk = env.walk
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
        *env.lists,
        start, end, trace_id, span_id, parent_id, trace_state, name, kind, s_off, s_keys,
        s_vals, st_code, st_msg, ev_off, ev_ts, ev_name, ev_a_off, ev_keys, ev_vals,
        lk_off, lk_tid, lk_sid, lk_state, lk_a_off, lk_keys, lk_vals,
    )  # fmt: skip

    for idx, payload in enumerate(payloads):
        marks = mark(all_lists)
        try:
            n_rows = 0
            for _, _, spans in walk(parse(payload).resource_spans, "scope_spans", "spans"):
                n_rows += len(spans)
                for sp in spans:
                    b = sp.trace_id
                    trace_id.append(
                        ("" if b == Z16 else b.hex())
                        if len(b) == 16
                        else hex_id(b, 16, Z16, "span trace_id")
                    )
                    b = sp.span_id
                    span_id.append(
                        ("" if b == Z8 else b.hex())
                        if len(b) == 8
                        else hex_id(b, 8, Z8, "span span_id")
                    )
                    b = sp.parent_span_id
                    parent_id.append(
                        ("" if b == Z8 else b.hex())
                        if len(b) == 8
                        else hex_id(b, 8, Z8, "span parent_span_id")
                    )
                    trace_state.append(sp.trace_state)
                    name.append(sp.name)
                    kind.append(sp.kind)
                    start.append(sp.start_time_unix_nano)
                    end.append(sp.end_time_unix_nano)
                    st = sp.status
                    st_code.append(st.code)
                    st_msg.append(st.message)
                    render_attrs(sp.attributes, s_keys, s_vals)
                    s_off.append(len(s_keys))
                    evs = sp.events
                    if evs:
                        for e in evs:
                            ev_ts.append(e.time_unix_nano)
                            ev_name.append(e.name)
                            render_attrs(e.attributes, ev_keys, ev_vals)
                            ev_a_off.append(len(ev_keys))
                    ev_off.append(len(ev_name))
                    lks = sp.links
                    if lks:
                        for lk in lks:
                            lk_tid.append(hex_id(lk.trace_id, 16, Z16, "link trace_id"))
                            lk_sid.append(hex_id(lk.span_id, 8, Z8, "link span_id"))
                            lk_state.append(lk.trace_state)
                            render_attrs(lk.attributes, lk_keys, lk_vals)
                            lk_a_off.append(len(lk_keys))
                    lk_off.append(len(lk_tid))
            rows_per_payload.append(n_rows)
        except Exception as exc:  # one bad payload must not lose the others
            rollback(all_lists, marks)
            errors.append((idx, error_reason(exc)))
            rows_per_payload.append(0)

    starts = ts_ns(start)
    ustart = starts.view(np.uint64)
    uend = ts_ns(end).view(np.uint64)
    duration = np.where(uend >= ustart, uend - ustart, np.uint64(0))
    columns = {
        "Timestamp": pa.array(starts, TS),
        "TraceId": pa.array(trace_id, STR),
        "SpanId": pa.array(span_id, STR),
        "ParentSpanId": pa.array(parent_id, STR),
        "TraceState": pa.array(trace_state, STR),
        "SpanName": pa.array(name, STR),
        "SpanKind": _enum_take(_SPAN_KINDS, kind),
        "SpanAttributes": map_array(s_off, s_keys, s_vals),
        "Duration": pa.array(duration, pa.uint64()),
        "StatusCode": _enum_take(_STATUS_CODES, st_code),
        "StatusMessage": pa.array(st_msg, STR),
        "Events.Timestamp": list_array(ev_off, ts_array(ev_ts)),
        "Events.Name": list_array(ev_off, pa.array(ev_name, STR)),
        "Events.Attributes": list_array(ev_off, map_array(ev_a_off, ev_keys, ev_vals)),
        "Links.TraceId": list_array(lk_off, pa.array(lk_tid, STR)),
        "Links.SpanId": list_array(lk_off, pa.array(lk_sid, STR)),
        "Links.TraceState": list_array(lk_off, pa.array(lk_state, STR)),
        "Links.Attributes": list_array(lk_off, map_array(lk_a_off, lk_keys, lk_vals)),
    }
    batch = _spread_batch(TRACES_SCHEMA, env, columns)
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows_per_payload)


# --- logs --------------------------------------------------------------------------------------


def decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportLogsServiceRequest`` payloads into one ``LOGS_SCHEMA`` batch."""
    return run_without_gc(_decode_logs, payloads)


def _decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    parse = ExportLogsServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []
    env = Envelope()  # per resource and per scope
    walk = env.walk
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
        *env.lists,
        ts, trace_id, span_id, flags, sev_text, sev_num, body, l_off, l_keys, l_vals, event_name,
    )  # fmt: skip

    for idx, payload in enumerate(payloads):
        marks = mark(all_lists)
        try:
            n_rows = 0
            for _, _, recs in walk(parse(payload).resource_logs, "scope_logs", "log_records"):
                n_rows += len(recs)
                for lr in recs:
                    t = lr.time_unix_nano
                    ts.append(t if t else lr.observed_time_unix_nano)
                    trace_id.append(hex_id(lr.trace_id, 16, Z16, "log trace_id"))
                    span_id.append(hex_id(lr.span_id, 8, Z8, "log span_id"))
                    flags.append(lr.flags)
                    sev_text.append(lr.severity_text)
                    sev_num.append(lr.severity_number)
                    v = lr.body
                    s = v.string_value
                    body.append(s if s else render_any_value(v))
                    render_attrs(lr.attributes, l_keys, l_vals)
                    l_off.append(len(l_keys))
                    event_name.append(lr.event_name)
            rows_per_payload.append(n_rows)
        except Exception as exc:  # one bad payload must not lose the others
            rollback(all_lists, marks)
            errors.append((idx, error_reason(exc)))
            rows_per_payload.append(0)

    flags_a = np.array(flags, dtype=np.uint32) & 0xFF
    sev = np.clip(np.array(sev_num, dtype=np.int64), 0, 255)
    columns = {
        "Timestamp": ts_array(ts),
        "TraceId": pa.array(trace_id, STR),
        "SpanId": pa.array(span_id, STR),
        "TraceFlags": pa.array(flags_a.astype(np.uint8), pa.uint8()),
        "SeverityText": pa.array(sev_text, STR),
        "SeverityNumber": pa.array(sev.astype(np.uint8), pa.uint8()),
        "Body": pa.array(body, STR),
        "LogAttributes": map_array(l_off, l_keys, l_vals),
        "EventName": pa.array(event_name, STR),
    }
    batch = _spread_batch(LOGS_SCHEMA, env, columns)
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows_per_payload)


def _spread_batch(schema: pa.Schema, env: Envelope, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """``columns`` (one value per row) plus the resource and scope columns spread to rows."""
    row_res, row_scope = env.row_index()
    return record_batch(
        schema,
        columns,
        (env.resource_columns(), row_res),
        (env.scope_columns(), row_scope),
    )
