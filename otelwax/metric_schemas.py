"""Arrow schemas of the metrics tables, equal to the clickhouseexporter's ``otel_metrics_*``.

One schema per table, columns in the exporter's order (``Nested`` flattened into one ``Array``
column per field, like ``otelwax.schemas``): ``otel_metrics_gauge``, ``otel_metrics_sum``,
``otel_metrics_histogram``, ``otel_metrics_exponential_histogram``, ``otel_metrics_summary``.

Value conventions: as ``otelwax.schemas`` (attribute maps rendered as pdata ``AsString``,
ids lowercase hex, timestamps ns UTC). ``AggregationTemporality`` is the OTLP enum number
(1 = delta, 2 = cumulative); ``Flags`` the data point flags.
"""

from __future__ import annotations

import pyarrow as pa

from otelwax.schemas import ATTRS, STR, TS

GAUGE = "otel_metrics_gauge"
SUM = "otel_metrics_sum"
HISTOGRAM = "otel_metrics_histogram"
EXP_HISTOGRAM = "otel_metrics_exponential_histogram"
SUMMARY = "otel_metrics_summary"
METRIC_TABLES = (GAUGE, SUM, HISTOGRAM, EXP_HISTOGRAM, SUMMARY)


def _f(name: str, typ: pa.DataType) -> pa.Field:
    return pa.field(name, typ, nullable=False)


_COMMON = [
    _f("ResourceAttributes", ATTRS),
    _f("ResourceSchemaUrl", STR),
    _f("ScopeName", STR),
    _f("ScopeVersion", STR),
    _f("ScopeAttributes", ATTRS),
    _f("ScopeDroppedAttrCount", pa.uint32()),
    _f("ScopeSchemaUrl", STR),
    _f("ServiceName", STR),
    _f("MetricName", STR),
    _f("MetricDescription", STR),
    _f("MetricUnit", STR),
    _f("Attributes", ATTRS),
    _f("StartTimeUnix", TS),
    _f("TimeUnix", TS),
]

_EXEMPLARS = [
    _f("Exemplars.FilteredAttributes", pa.list_(ATTRS)),
    _f("Exemplars.TimeUnix", pa.list_(TS)),
    _f("Exemplars.Value", pa.list_(pa.float64())),
    _f("Exemplars.SpanId", pa.list_(STR)),
    _f("Exemplars.TraceId", pa.list_(STR)),
]

GAUGE_SCHEMA = pa.schema(
    [*_COMMON, _f("Value", pa.float64()), _f("Flags", pa.uint32()), *_EXEMPLARS],
    metadata={"otelwax.table": GAUGE},
)

SUM_SCHEMA = pa.schema(
    [
        *_COMMON,
        _f("Value", pa.float64()),
        _f("Flags", pa.uint32()),
        *_EXEMPLARS,
        _f("AggregationTemporality", pa.int32()),
        _f("IsMonotonic", pa.bool_()),
    ],
    metadata={"otelwax.table": SUM},
)

HISTOGRAM_SCHEMA = pa.schema(
    [
        *_COMMON,
        _f("Count", pa.uint64()),
        _f("Sum", pa.float64()),
        _f("BucketCounts", pa.list_(pa.uint64())),
        _f("ExplicitBounds", pa.list_(pa.float64())),
        *_EXEMPLARS,
        _f("Flags", pa.uint32()),
        _f("Min", pa.float64()),
        _f("Max", pa.float64()),
        _f("AggregationTemporality", pa.int32()),
    ],
    metadata={"otelwax.table": HISTOGRAM},
)

EXP_HISTOGRAM_SCHEMA = pa.schema(
    [
        *_COMMON,
        _f("Count", pa.uint64()),
        _f("Sum", pa.float64()),
        _f("Scale", pa.int32()),
        _f("ZeroCount", pa.uint64()),
        _f("PositiveOffset", pa.int32()),
        _f("PositiveBucketCounts", pa.list_(pa.uint64())),
        _f("NegativeOffset", pa.int32()),
        _f("NegativeBucketCounts", pa.list_(pa.uint64())),
        *_EXEMPLARS,
        _f("Flags", pa.uint32()),
        _f("Min", pa.float64()),
        _f("Max", pa.float64()),
        _f("AggregationTemporality", pa.int32()),
    ],
    metadata={"otelwax.table": EXP_HISTOGRAM},
)

SUMMARY_SCHEMA = pa.schema(
    [
        *_COMMON,
        _f("Count", pa.uint64()),
        _f("Sum", pa.float64()),
        _f("ValueAtQuantiles.Quantile", pa.list_(pa.float64())),
        _f("ValueAtQuantiles.Value", pa.list_(pa.float64())),
        _f("Flags", pa.uint32()),
    ],
    metadata={"otelwax.table": SUMMARY},
)

METRIC_SCHEMAS: dict[str, pa.Schema] = {
    GAUGE: GAUGE_SCHEMA,
    SUM: SUM_SCHEMA,
    HISTOGRAM: HISTOGRAM_SCHEMA,
    EXP_HISTOGRAM: EXP_HISTOGRAM_SCHEMA,
    SUMMARY: SUMMARY_SCHEMA,
}
