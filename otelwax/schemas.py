"""Arrow schemas of the rows otelwax stores: one per table, defined once.

Column names and order equal the OpenTelemetry Collector clickhouseexporter tables
(``otel_traces``, ``otel_logs``; metrics tables are added beside them), so a batch can be
inserted positionally. Nested columns (``Events``, ``Links``) are flattened the way ClickHouse
stores ``Nested``: one ``Array`` column per field, named ``Events.Timestamp`` and so on.

Value conventions (what the Collector's exporter writes):
- ids are lowercase hex strings (empty string when absent or all-zero);
- ``SpanKind`` is ``SPAN_KIND_*`` / ``StatusCode`` is ``STATUS_CODE_*`` (proto enum names);
- attribute maps are ``map<string, string>``, AnyValue rendered as pdata's ``AsString``;
- ``ServiceName`` is the resource attribute ``service.name`` ("" when absent);
- timestamps are nanoseconds since the epoch, UTC.
"""

from __future__ import annotations

import pyarrow as pa

SPAN_KIND_NAMES = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)
"""``SpanKind`` column values, indexed by the OTLP enum number."""

TS = pa.timestamp("ns")
STR = pa.string()
ATTRS = pa.map_(pa.string(), pa.string())

TRACES_SCHEMA = pa.schema(
    [
        pa.field("Timestamp", TS, nullable=False),
        pa.field("TraceId", STR, nullable=False),
        pa.field("SpanId", STR, nullable=False),
        pa.field("ParentSpanId", STR, nullable=False),
        pa.field("TraceState", STR, nullable=False),
        pa.field("SpanName", STR, nullable=False),
        pa.field("SpanKind", STR, nullable=False),
        pa.field("ServiceName", STR, nullable=False),
        pa.field("ResourceAttributes", ATTRS, nullable=False),
        pa.field("ScopeName", STR, nullable=False),
        pa.field("ScopeVersion", STR, nullable=False),
        pa.field("SpanAttributes", ATTRS, nullable=False),
        pa.field("Duration", pa.uint64(), nullable=False),
        pa.field("StatusCode", STR, nullable=False),
        pa.field("StatusMessage", STR, nullable=False),
        pa.field("Events.Timestamp", pa.list_(TS), nullable=False),
        pa.field("Events.Name", pa.list_(STR), nullable=False),
        pa.field("Events.Attributes", pa.list_(ATTRS), nullable=False),
        pa.field("Links.TraceId", pa.list_(STR), nullable=False),
        pa.field("Links.SpanId", pa.list_(STR), nullable=False),
        pa.field("Links.TraceState", pa.list_(STR), nullable=False),
        pa.field("Links.Attributes", pa.list_(ATTRS), nullable=False),
    ],
    metadata={"otelwax.table": "otel_traces"},
)

LOGS_SCHEMA = pa.schema(
    [
        pa.field("Timestamp", TS, nullable=False),
        pa.field("TraceId", STR, nullable=False),
        pa.field("SpanId", STR, nullable=False),
        pa.field("TraceFlags", pa.uint8(), nullable=False),
        pa.field("SeverityText", STR, nullable=False),
        pa.field("SeverityNumber", pa.uint8(), nullable=False),
        pa.field("ServiceName", STR, nullable=False),
        pa.field("Body", STR, nullable=False),
        pa.field("ResourceSchemaUrl", STR, nullable=False),
        pa.field("ResourceAttributes", ATTRS, nullable=False),
        pa.field("ScopeSchemaUrl", STR, nullable=False),
        pa.field("ScopeName", STR, nullable=False),
        pa.field("ScopeVersion", STR, nullable=False),
        pa.field("ScopeAttributes", ATTRS, nullable=False),
        pa.field("LogAttributes", ATTRS, nullable=False),
        pa.field("EventName", STR, nullable=False),
    ],
    metadata={"otelwax.table": "otel_logs"},
)

SCHEMAS: dict[str, pa.Schema] = {
    "otel_traces": TRACES_SCHEMA,
    "otel_logs": LOGS_SCHEMA,
}
