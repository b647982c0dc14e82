"""Pure-Python OTLP metrics → Arrow decoder (one batch per ``otel_metrics_*`` table).

    decode_metrics(payloads: Sequence[bytes]) -> MetricsDecodeResult

``payloads`` are serialized ``ExportMetricsServiceRequest`` messages. Every data point becomes
one row of the table of its metric type, with the columns of ``otelwax.metric_schemas`` (the
clickhouseexporter's tables). Rendering follows ``otelwax.codec`` (attribute values as pdata's
``AsString``, ids as lowercase hex). Per-resource, per-scope and per-metric values are rendered
once and spread to rows with one ``take`` per batch.

Column details (like the Collector's exporter):
- ``ServiceName`` = the first resource attribute ``service.name``, rendered like any value
  (also when that renders as ""), "" when absent;
- ``ScopeDroppedAttrCount`` = ``InstrumentationScope.dropped_attributes_count``;
- number data points: ``Value`` = ``as_double`` or ``as_int`` as float;
- exemplars: ``Value`` from ``as_double``/``as_int``, ``FilteredAttributes`` rendered, ids hex;
- histograms/exponential histograms: ``Min``/``Max`` are 0 when unset;
- summaries: ``ValueAtQuantiles.*`` in input order.
A payload that does not parse (or has a bad id length / invalid UTF-8) is reported in
``errors`` and contributes no rows.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otelwax.codec.pydecode import render_any_value
from otelwax.metric_schemas import (
    EXP_HISTOGRAM,
    GAUGE,
    HISTOGRAM,
    METRIC_SCHEMAS,
    METRIC_TABLES,
    SUM,
    SUMMARY,
)

__all__ = ["MetricsDecodeResult", "decode_metrics"]

_STR = pa.string()
_TS = pa.timestamp("ns")
_F64 = pa.float64()
_U64 = pa.uint64()
_Z16 = bytes(16)
_Z8 = bytes(8)


@dataclass(slots=True)
class MetricsDecodeResult:
    """Decoded rows per table name, errors per payload, and data points per payload."""

    tables: dict[str, pa.RecordBatch]
    errors: list[tuple[int, str]] = field(default_factory=list)
    rows_per_payload: list[int] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(b.num_rows for b in self.tables.values())


class _Invalid(ValueError):
    pass


def _hex(b: bytes, size: int, zero: bytes, what: str) -> str:
    n = len(b)
    if n == size:
        return "" if b == zero else b.hex()
    if n == 0:
        return ""
    raise _Invalid(f"{what} has {n} bytes, want 0 or {size}")


def _render_attrs(attrs: Any, keys: list[str], vals: list[str]) -> None:
    for a in attrs:
        keys.append(a.key)
        v = a.value
        s = v.string_value
        vals.append(s if s else render_any_value(v))


def _map(off: list[int], keys: list[str], vals: list[str]) -> pa.Array:
    return pa.MapArray.from_arrays(
        pa.array(off, pa.int32()), pa.array(keys, _STR), pa.array(vals, _STR)
    )


def _list(off: list[int], values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(off, pa.int32()), values)


def _ts(values: list[int]) -> pa.Array:
    return pa.array(np.array(values, dtype=np.uint64).view(np.int64), _TS)


class _Table:
    """Column lists for one table; common columns are indexes into resource/scope/metric."""

    __slots__ = (
        "a_keys",
        "a_off",
        "a_vals",
        "cols",
        "ex_a_keys",
        "ex_a_off",
        "ex_a_vals",
        "ex_off",
        "ex_span",
        "ex_time",
        "ex_trace",
        "ex_value",
        "metric_idx",
        "res_idx",
        "scope_idx",
        "start",
        "time",
    )

    def __init__(self, extra: Sequence[str]) -> None:
        self.res_idx: list[int] = []
        self.scope_idx: list[int] = []
        self.metric_idx: list[int] = []
        self.a_off: list[int] = [0]
        self.a_keys: list[str] = []
        self.a_vals: list[str] = []
        self.start: list[int] = []
        self.time: list[int] = []
        self.ex_off: list[int] = [0]
        self.ex_a_off: list[int] = [0]
        self.ex_a_keys: list[str] = []
        self.ex_a_vals: list[str] = []
        self.ex_time: list[int] = []
        self.ex_value: list[float] = []
        self.ex_span: list[str] = []
        self.ex_trace: list[str] = []
        self.cols: dict[str, list[Any]] = {name: [] for name in extra}

    def __len__(self) -> int:
        return len(self.time)

    def truncate(self, n: int) -> None:
        """Forget rows from index ``n`` on (a payload that failed half-way)."""
        if len(self.time) == n:
            return
        del self.res_idx[n:], self.scope_idx[n:], self.metric_idx[n:]
        del self.start[n:], self.time[n:]
        del self.a_off[n + 1 :]
        del self.a_keys[self.a_off[-1] :], self.a_vals[self.a_off[-1] :]
        del self.ex_off[n + 1 :]
        ne = self.ex_off[-1]
        del self.ex_time[ne:], self.ex_value[ne:], self.ex_span[ne:], self.ex_trace[ne:]
        del self.ex_a_off[ne + 1 :]
        del self.ex_a_keys[self.ex_a_off[-1] :], self.ex_a_vals[self.ex_a_off[-1] :]
        for name, col in self.cols.items():
            if name in _OFFSET_COLS:
                del col[n + 1 :]
            elif name not in _VALUE_COLS:
                del col[n:]

    def point(self, r: int, s: int, m: int, dp: Any, exemplars: bool = True) -> None:
        self.res_idx.append(r)
        self.scope_idx.append(s)
        self.metric_idx.append(m)
        _render_attrs(dp.attributes, self.a_keys, self.a_vals)
        self.a_off.append(len(self.a_keys))
        self.start.append(dp.start_time_unix_nano)
        self.time.append(dp.time_unix_nano)
        for ex in dp.exemplars if exemplars else ():
            _render_attrs(ex.filtered_attributes, self.ex_a_keys, self.ex_a_vals)
            self.ex_a_off.append(len(self.ex_a_keys))
            self.ex_time.append(ex.time_unix_nano)
            self.ex_value.append(
                ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int)
            )
            self.ex_span.append(_hex(ex.span_id, 8, _Z8, "exemplar span id"))
            self.ex_trace.append(_hex(ex.trace_id, 16, _Z16, "exemplar trace id"))
        self.ex_off.append(len(self.ex_time))


_EXTRA = {
    GAUGE: ("Value", "Flags"),
    SUM: ("Value", "Flags", "AggregationTemporality", "IsMonotonic"),
    HISTOGRAM: (
        "Count",
        "Sum",
        "bc_off",
        "bc",
        "eb_off",
        "eb",
        "Flags",
        "Min",
        "Max",
        "AggregationTemporality",
    ),
    EXP_HISTOGRAM: (
        "Count",
        "Sum",
        "Scale",
        "ZeroCount",
        "PositiveOffset",
        "pb_off",
        "pb",
        "NegativeOffset",
        "nb_off",
        "nb",
        "Flags",
        "Min",
        "Max",
        "AggregationTemporality",
    ),
    SUMMARY: ("Count", "Sum", "q_off", "q", "qv", "Flags"),
}
_OFFSET_COLS = {"bc_off", "eb_off", "pb_off", "nb_off", "q_off"}
_VALUE_COLS = {"bc", "eb", "pb", "nb", "q", "qv"}


def decode_metrics(payloads: Sequence[bytes]) -> MetricsDecodeResult:
    """Decode ``ExportMetricsServiceRequest`` payloads into one batch per metrics table."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _decode(payloads)
    finally:
        if enabled:
            gc.enable()


def _decode(payloads: Sequence[bytes]) -> MetricsDecodeResult:
    parse = ExportMetricsServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []
    t = {name: _Table(_EXTRA[name]) for name in METRIC_TABLES}
    for tb in t.values():
        for c in _OFFSET_COLS & set(tb.cols):
            tb.cols[c].append(0)
    # per resource
    r_off: list[int] = [0]
    r_keys: list[str] = []
    r_vals: list[str] = []
    r_schema: list[str] = []
    r_service: list[str] = []
    # per scope
    sc_off: list[int] = [0]
    sc_keys: list[str] = []
    sc_vals: list[str] = []
    sc_name: list[str] = []
    sc_version: list[str] = []
    sc_dropped: list[int] = []
    sc_schema: list[str] = []
    # per metric
    m_name: list[str] = []
    m_desc: list[str] = []
    m_unit: list[str] = []

    g, su, h, eh, sm = t[GAUGE], t[SUM], t[HISTOGRAM], t[EXP_HISTOGRAM], t[SUMMARY]
    for pi, payload in enumerate(payloads):
        marks = {name: len(tb) for name, tb in t.items()}
        lens = (len(r_schema), len(sc_name), len(m_name), len(r_keys), len(sc_keys))
        try:
            req = parse(payload)
            for rm in req.resource_metrics:
                ri = len(r_schema)
                svc: str | None = None
                for a in rm.resource.attributes:
                    r_keys.append(a.key)
                    v = a.value
                    sv = v.string_value
                    rv = sv if sv else render_any_value(v)
                    r_vals.append(rv)
                    # The first service.name wins, even when it renders as "" (the contract).
                    if svc is None and a.key == "service.name":
                        svc = rv
                r_off.append(len(r_keys))
                r_schema.append(rm.schema_url)
                r_service.append(svc or "")
                for sms in rm.scope_metrics:
                    si = len(sc_name)
                    scope = sms.scope
                    _render_attrs(scope.attributes, sc_keys, sc_vals)
                    sc_off.append(len(sc_keys))
                    sc_name.append(scope.name)
                    sc_version.append(scope.version)
                    sc_dropped.append(scope.dropped_attributes_count)
                    sc_schema.append(sms.schema_url)
                    for metric in sms.metrics:
                        mi = len(m_name)
                        m_name.append(metric.name)
                        m_desc.append(metric.description)
                        m_unit.append(metric.unit)
                        kind = metric.WhichOneof("data")
                        if kind == "gauge":
                            c = g.cols
                            for dp in metric.gauge.data_points:
                                g.point(ri, si, mi, dp)
                                c["Value"].append(
                                    dp.as_double
                                    if dp.WhichOneof("value") != "as_int"
                                    else float(dp.as_int)
                                )
                                c["Flags"].append(dp.flags)
                        elif kind == "sum":
                            c = su.cols
                            temp = metric.sum.aggregation_temporality
                            mono = metric.sum.is_monotonic
                            for dp in metric.sum.data_points:
                                su.point(ri, si, mi, dp)
                                c["Value"].append(
                                    dp.as_double
                                    if dp.WhichOneof("value") != "as_int"
                                    else float(dp.as_int)
                                )
                                c["Flags"].append(dp.flags)
                                c["AggregationTemporality"].append(temp)
                                c["IsMonotonic"].append(mono)
                        elif kind == "histogram":
                            c = h.cols
                            temp = metric.histogram.aggregation_temporality
                            for dp in metric.histogram.data_points:
                                h.point(ri, si, mi, dp)
                                c["Count"].append(dp.count)
                                c["Sum"].append(dp.sum)
                                c["bc"].extend(dp.bucket_counts)
                                c["bc_off"].append(len(c["bc"]))
                                c["eb"].extend(dp.explicit_bounds)
                                c["eb_off"].append(len(c["eb"]))
                                c["Flags"].append(dp.flags)
                                c["Min"].append(dp.min)
                                c["Max"].append(dp.max)
                                c["AggregationTemporality"].append(temp)
                        elif kind == "exponential_histogram":
                            c = eh.cols
                            temp = metric.exponential_histogram.aggregation_temporality
                            for dp in metric.exponential_histogram.data_points:
                                eh.point(ri, si, mi, dp)
                                c["Count"].append(dp.count)
                                c["Sum"].append(dp.sum)
                                c["Scale"].append(dp.scale)
                                c["ZeroCount"].append(dp.zero_count)
                                c["PositiveOffset"].append(dp.positive.offset)
                                c["pb"].extend(dp.positive.bucket_counts)
                                c["pb_off"].append(len(c["pb"]))
                                c["NegativeOffset"].append(dp.negative.offset)
                                c["nb"].extend(dp.negative.bucket_counts)
                                c["nb_off"].append(len(c["nb"]))
                                c["Flags"].append(dp.flags)
                                c["Min"].append(dp.min)
                                c["Max"].append(dp.max)
                                c["AggregationTemporality"].append(temp)
                        elif kind == "summary":
                            c = sm.cols
                            for dp in metric.summary.data_points:
                                sm.point(ri, si, mi, dp, False)
                                c["Count"].append(dp.count)
                                c["Sum"].append(dp.sum)
                                for q in dp.quantile_values:
                                    c["q"].append(q.quantile)
                                    c["qv"].append(q.value)
                                c["q_off"].append(len(c["q"]))
                                c["Flags"].append(dp.flags)
            rows_per_payload.append(sum(len(tb) - marks[n] for n, tb in t.items()))
        except (DecodeError, _Invalid, UnicodeDecodeError, ValueError) as exc:
            reason = (
                f"invalid protobuf: {exc}"
                if isinstance(exc, DecodeError)
                else f"{type(exc).__name__}: {exc}"
            )
            errors.append((pi, reason))
            rows_per_payload.append(0)
            for name, tb in t.items():
                n = marks[name]
                tb.truncate(n)
                _trim_values(tb)
            nr, ns, nm, nrk, nsk = lens
            del r_schema[nr:], r_service[nr:], r_off[nr + 1 :], r_keys[nrk:], r_vals[nrk:]
            del sc_name[ns:], sc_version[ns:], sc_dropped[ns:], sc_schema[ns:]
            del sc_off[ns + 1 :], sc_keys[nsk:], sc_vals[nsk:]
            del m_name[nm:], m_desc[nm:], m_unit[nm:]

    res = {
        "ResourceAttributes": _map(r_off, r_keys, r_vals),
        "ResourceSchemaUrl": pa.array(r_schema, _STR),
        "ServiceName": pa.array(r_service, _STR),
    }
    scope = {
        "ScopeName": pa.array(sc_name, _STR),
        "ScopeVersion": pa.array(sc_version, _STR),
        "ScopeAttributes": _map(sc_off, sc_keys, sc_vals),
        "ScopeDroppedAttrCount": pa.array(sc_dropped, pa.uint32()),
        "ScopeSchemaUrl": pa.array(sc_schema, _STR),
    }
    met = {
        "MetricName": pa.array(m_name, _STR),
        "MetricDescription": pa.array(m_desc, _STR),
        "MetricUnit": pa.array(m_unit, _STR),
    }
    tables = {name: _build(name, tb, res, scope, met) for name, tb in t.items()}
    return MetricsDecodeResult(tables=tables, errors=errors, rows_per_payload=rows_per_payload)


def _trim_values(tb: _Table) -> None:
    """After truncating offsets, drop list values past the last offset."""
    c = tb.cols
    for off, v in (("bc_off", "bc"), ("eb_off", "eb"), ("pb_off", "pb"), ("nb_off", "nb")):
        if off in c:
            del c[v][c[off][-1] :]
    if "q_off" in c:
        del c["q"][c["q_off"][-1] :], c["qv"][c["q_off"][-1] :]


def _build(
    name: str,
    tb: _Table,
    res: dict[str, pa.Array],
    scope: dict[str, pa.Array],
    met: dict[str, pa.Array],
) -> pa.RecordBatch:
    schema = METRIC_SCHEMAS[name]
    n = len(tb)
    if n == 0:
        return pa.RecordBatch.from_pylist([], schema=schema)
    ri = pa.array(tb.res_idx, pa.int32())
    si = pa.array(tb.scope_idx, pa.int32())
    mi = pa.array(tb.metric_idx, pa.int32())
    cols: dict[str, pa.Array] = {}
    for k, v in res.items():
        cols[k] = v.take(ri)
    for k, v in scope.items():
        cols[k] = v.take(si)
    for k, v in met.items():
        cols[k] = v.take(mi)
    cols["Attributes"] = _map(tb.a_off, tb.a_keys, tb.a_vals)
    cols["StartTimeUnix"] = _ts(tb.start)
    cols["TimeUnix"] = _ts(tb.time)
    ex_attrs = _map(tb.ex_a_off, tb.ex_a_keys, tb.ex_a_vals)
    cols["Exemplars.FilteredAttributes"] = _list(tb.ex_off, ex_attrs)
    cols["Exemplars.TimeUnix"] = _list(tb.ex_off, _ts(tb.ex_time))
    cols["Exemplars.Value"] = _list(tb.ex_off, pa.array(tb.ex_value, _F64))
    cols["Exemplars.SpanId"] = _list(tb.ex_off, pa.array(tb.ex_span, _STR))
    cols["Exemplars.TraceId"] = _list(tb.ex_off, pa.array(tb.ex_trace, _STR))
    c = tb.cols
    if name == HISTOGRAM:
        cols["BucketCounts"] = _list(c["bc_off"], pa.array(c["bc"], _U64))
        cols["ExplicitBounds"] = _list(c["eb_off"], pa.array(c["eb"], _F64))
    elif name == EXP_HISTOGRAM:
        cols["PositiveBucketCounts"] = _list(c["pb_off"], pa.array(c["pb"], _U64))
        cols["NegativeBucketCounts"] = _list(c["nb_off"], pa.array(c["nb"], _U64))
    elif name == SUMMARY:
        cols["ValueAtQuantiles.Quantile"] = _list(c["q_off"], pa.array(c["q"], _F64))
        cols["ValueAtQuantiles.Value"] = _list(c["q_off"], pa.array(c["qv"], _F64))
    arrays = []
    for f in schema:
        a = cols.get(f.name)
        if a is None:
            a = pa.array(c[f.name], f.type)
        arrays.append(a)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
