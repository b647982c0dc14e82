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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otelwax.codec._common import (
    STR,
    Z8,
    Z16,
    Envelope,
    hex_id,
    list_array,
    map_array,
    mark,
    record_batch,
    render_attrs,
    rollback,
    run_without_gc,
    ts_array,
)
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

_F64 = pa.float64()
_U64 = pa.uint64()


@dataclass(slots=True)
class MetricsDecodeResult:
    """Decoded rows per table name, errors per payload, and data points per payload."""

    tables: dict[str, pa.RecordBatch]
    errors: list[tuple[int, str]] = field(default_factory=list)
    rows_per_payload: list[int] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(b.num_rows for b in self.tables.values())


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
        render_attrs(dp.attributes, self.a_keys, self.a_vals)
        self.a_off.append(len(self.a_keys))
        self.start.append(dp.start_time_unix_nano)
        self.time.append(dp.time_unix_nano)
        for ex in dp.exemplars if exemplars else ():
            render_attrs(ex.filtered_attributes, self.ex_a_keys, self.ex_a_vals)
            self.ex_a_off.append(len(self.ex_a_keys))
            self.ex_time.append(ex.time_unix_nano)
            self.ex_value.append(
                ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int)
            )
            self.ex_span.append(hex_id(ex.span_id, 8, Z8, "exemplar span id"))
            self.ex_trace.append(hex_id(ex.trace_id, 16, Z16, "exemplar trace id"))
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
    return run_without_gc(_decode, payloads)


def _decode(payloads: Sequence[bytes]) -> MetricsDecodeResult:
    parse = ExportMetricsServiceRequest.FromString
    errors: list[tuple[int, str]] = []
    rows_per_payload: list[int] = []
    t = {name: _Table(_EXTRA[name]) for name in METRIC_TABLES}
    for tb in t.values():
        for c in _OFFSET_COLS & set(tb.cols):
            tb.cols[c].append(0)
    env = Envelope()  # per resource and per scope
    walk = env.walk
    # per metric
    m_name: list[str] = []
    m_desc: list[str] = []
    m_unit: list[str] = []
    shared_lists = (*env.lists, m_name, m_desc, m_unit)

    g, su, h, eh, sm = t[GAUGE], t[SUM], t[HISTOGRAM], t[EXP_HISTOGRAM], t[SUMMARY]
    for pi, payload in enumerate(payloads):
        marks = {name: len(tb) for name, tb in t.items()}
        shared_marks = mark(shared_lists)
        try:
            for ri, si, metrics in walk(
                parse(payload).resource_metrics, "scope_metrics", "metrics"
            ):
                for metric in metrics:
                    mi = len(m_name)
                    m_name.append(metric.name)
                    m_desc.append(metric.description)
                    m_unit.append(metric.unit)
                    kind = metric.WhichOneof("data")
                    if kind == "gauge" or kind == "sum":
                        data = getattr(metric, kind)
                        is_sum = kind == "sum"
                        tb = su if is_sum else g
                        c = tb.cols
                        if is_sum:
                            temp = data.aggregation_temporality
                            mono = data.is_monotonic
                        for dp in data.data_points:
                            tb.point(ri, si, mi, dp)
                            c["Value"].append(
                                dp.as_double
                                if dp.WhichOneof("value") != "as_int"
                                else float(dp.as_int)
                            )
                            c["Flags"].append(dp.flags)
                            if is_sum:
                                c["AggregationTemporality"].append(temp)
                                c["IsMonotonic"].append(mono)
                    elif kind == "histogram" or kind == "exponential_histogram":
                        data = getattr(metric, kind)
                        expo = kind == "exponential_histogram"
                        tb = eh if expo else h
                        c = tb.cols
                        temp = data.aggregation_temporality
                        for dp in data.data_points:
                            tb.point(ri, si, mi, dp)
                            c["Count"].append(dp.count)
                            c["Sum"].append(dp.sum)
                            if expo:
                                c["Scale"].append(dp.scale)
                                c["ZeroCount"].append(dp.zero_count)
                                c["PositiveOffset"].append(dp.positive.offset)
                                c["pb"].extend(dp.positive.bucket_counts)
                                c["pb_off"].append(len(c["pb"]))
                                c["NegativeOffset"].append(dp.negative.offset)
                                c["nb"].extend(dp.negative.bucket_counts)
                                c["nb_off"].append(len(c["nb"]))
                            else:
                                c["bc"].extend(dp.bucket_counts)
                                c["bc_off"].append(len(c["bc"]))
                                c["eb"].extend(dp.explicit_bounds)
                                c["eb_off"].append(len(c["eb"]))
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
        except (DecodeError, ValueError) as exc:  # ValueError: _Invalid, UnicodeDecodeError
            reason = (
                f"invalid protobuf: {exc}"
                if isinstance(exc, DecodeError)
                else f"{type(exc).__name__}: {exc}"
            )
            errors.append((pi, reason))
            rows_per_payload.append(0)
            for name, tb in t.items():
                tb.truncate(marks[name])
                _trim_values(tb)
            rollback(shared_lists, shared_marks)

    met = {
        "MetricName": pa.array(m_name, STR),
        "MetricDescription": pa.array(m_desc, STR),
        "MetricUnit": pa.array(m_unit, STR),
    }
    res = env.resource_columns()
    scope = env.scope_columns()
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
    c = tb.cols
    cols: dict[str, pa.Array] = {
        "Attributes": map_array(tb.a_off, tb.a_keys, tb.a_vals),
        "StartTimeUnix": ts_array(tb.start),
        "TimeUnix": ts_array(tb.time),
        "Exemplars.FilteredAttributes": list_array(
            tb.ex_off, map_array(tb.ex_a_off, tb.ex_a_keys, tb.ex_a_vals)
        ),
        "Exemplars.TimeUnix": list_array(tb.ex_off, ts_array(tb.ex_time)),
        "Exemplars.Value": list_array(tb.ex_off, pa.array(tb.ex_value, _F64)),
        "Exemplars.SpanId": list_array(tb.ex_off, pa.array(tb.ex_span, STR)),
        "Exemplars.TraceId": list_array(tb.ex_off, pa.array(tb.ex_trace, STR)),
    }
    if name == HISTOGRAM:
        cols["BucketCounts"] = list_array(c["bc_off"], pa.array(c["bc"], _U64))
        cols["ExplicitBounds"] = list_array(c["eb_off"], pa.array(c["eb"], _F64))
    elif name == EXP_HISTOGRAM:
        cols["PositiveBucketCounts"] = list_array(c["pb_off"], pa.array(c["pb"], _U64))
        cols["NegativeBucketCounts"] = list_array(c["nb_off"], pa.array(c["nb"], _U64))
    elif name == SUMMARY:
        cols["ValueAtQuantiles.Quantile"] = list_array(c["q_off"], pa.array(c["q"], _F64))
        cols["ValueAtQuantiles.Value"] = list_array(c["q_off"], pa.array(c["qv"], _F64))
    for f in schema:
        if f.name in c:
            cols[f.name] = pa.array(c[f.name], f.type)
    return record_batch(
        schema,
        cols,
        (res, pa.array(tb.res_idx, pa.int32())),
        (scope, pa.array(tb.scope_idx, pa.int32())),
        (met, pa.array(tb.metric_idx, pa.int32())),
    )
