"""ClickHouse 18.16 (Debian's package) tables: the ``legacy`` layout of
``connectors.clickhouse_schema`` (see its docstring for how columns map), and the trace-ordered
copy that stands in for the projection 18.16 does not have."""

from __future__ import annotations

import logging

# clickhouse_schema imports this module only inside traces_ddl/logs_ddl (no import cycle).
from connectors.clickhouse_schema import (
    PARTITIONS,
    TRACE_COPY_GRANULARITY,
    TableOptions,
    qualified,
    trace_copy_table,
)

__all__ = [
    "SPAN_COLUMNS",
    "legacy_logs",
    "legacy_traces",
    "trace_copy_backfill",
    "trace_copy_ddl",
]

log = logging.getLogger(__name__)


def _legacy_settings(opts: TableOptions, granularity: int = 0) -> str:
    """18.16 has no insert tokens, but Replicated tables deduplicate replayed insert blocks."""
    s = f"SETTINGS index_granularity = {int(granularity or opts.index_granularity)}"
    if opts.table_engine.replicated and opts.dedup_window:
        s += f", replicated_deduplication_window = {int(opts.dedup_window)}"
    return s


def _legacy_part(opts: TableOptions, ts: str) -> str:
    return PARTITIONS[opts.partition_by].format(ts=ts)


SPAN_COLUMNS = (
    ("Timestamp", "DateTime"),
    ("TimestampNs", "Int64"),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("ParentSpanId", "String"),
    ("TraceState", "String"),
    ("SpanName", "String"),
    ("SpanKind", "String"),
    ("ServiceName", "String"),
    ("ResourceAttributes.keys", "Array(String)"),
    ("ResourceAttributes.values", "Array(String)"),
    ("ScopeName", "String"),
    ("ScopeVersion", "String"),
    ("SpanAttributes.keys", "Array(String)"),
    ("SpanAttributes.values", "Array(String)"),
    ("Duration", "UInt64"),
    ("StatusCode", "String"),
    ("StatusMessage", "String"),
    ("Events.Timestamp", "Array(Int64)"),
    ("Events.Name", "Array(String)"),
    ("Events.Attributes.keys", "Array(Array(String))"),
    ("Events.Attributes.values", "Array(Array(String))"),
    ("Links.TraceId", "Array(String)"),
    ("Links.SpanId", "Array(String)"),
    ("Links.TraceState", "Array(String)"),
    ("Links.Attributes.keys", "Array(Array(String))"),
    ("Links.Attributes.values", "Array(Array(String))"),
    ("InsertToken", "String"),
)
"""The 18.16 spans table's columns, in table order."""

_NAMES = ", ".join(f"`{name}`" for name, _ in SPAN_COLUMNS)


def legacy_traces(database: str, table: str, opts: TableOptions) -> list[str]:
    """The spans table, and with ``trace_copy`` its copy ordered by TraceId plus the
    materialized view that writes it (``trace_copy_ddl``)."""
    if opts.ttl_days:
        log.warning("legacy ClickHouse has no TTL: ttl_days=%d ignored", opts.ttl_days)
    main = _legacy_spans(database, table, opts, "ServiceName, SpanName, Timestamp")
    return [main, *trace_copy_ddl(database, table, opts)] if opts.copy_traces else [main]


def trace_copy_ddl(database: str, table: str, opts: TableOptions) -> list[str]:
    """CREATE of ``table``'s copy ordered by (TraceId, Timestamp) and of the materialized view
    that writes it. The view runs inside each INSERT into ``table``: a replay the sink skips
    reaches neither table, and a partly stored insert is deleted from both
    (``connectors.clickhouse_server``), so the copy holds each span once. The view names its
    columns, so a column that migrate appends to ``table`` later does not break it."""
    copy = trace_copy_table(table)
    return [
        _legacy_spans(database, copy, opts, "TraceId, Timestamp"),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {qualified(database, f'{copy}_mv')}"
        f"{opts.on_cluster} TO {qualified(database, copy)} "
        f"AS SELECT {_NAMES} FROM {qualified(database, table)}",
    ]


def trace_copy_backfill(database: str, table: str) -> str:
    """Copy the spans ``table`` holds into its trace-ordered copy (once, when migrate adds it)."""
    copy = qualified(database, trace_copy_table(table))
    return f"INSERT INTO {copy} ({_NAMES}) SELECT {_NAMES} FROM {qualified(database, table)}"


def _legacy_spans(database: str, table: str, opts: TableOptions, order: str) -> str:
    copy = order.startswith("TraceId")
    cols = ",\n".join(f"    `{name}` {typ}" for name, typ in SPAN_COLUMNS)
    return f"""CREATE TABLE IF NOT EXISTS {qualified(database, table)}{opts.on_cluster} (
{cols}
) ENGINE = {opts.engine(database, table)}
PARTITION BY {_legacy_part(opts, "Timestamp")}
ORDER BY ({order})
{_legacy_settings(opts, TRACE_COPY_GRANULARITY if copy else 0)}"""


def legacy_logs(database: str, table: str, opts: TableOptions) -> str:
    if opts.ttl_days:
        log.warning("legacy ClickHouse has no TTL: ttl_days=%d ignored", opts.ttl_days)
    return f"""CREATE TABLE IF NOT EXISTS {qualified(database, table)}{opts.on_cluster} (
    Timestamp DateTime,
    TimestampNs Int64,
    TraceId String,
    SpanId String,
    TraceFlags UInt8,
    SeverityText String,
    SeverityNumber UInt8,
    ServiceName String,
    Body String,
    ResourceSchemaUrl String,
    `ResourceAttributes.keys` Array(String),
    `ResourceAttributes.values` Array(String),
    ScopeSchemaUrl String,
    ScopeName String,
    ScopeVersion String,
    `ScopeAttributes.keys` Array(String),
    `ScopeAttributes.values` Array(String),
    `LogAttributes.keys` Array(String),
    `LogAttributes.values` Array(String),
    EventName String,
    InsertToken String
) ENGINE = {opts.engine(database, table)}
PARTITION BY {_legacy_part(opts, "Timestamp")}
ORDER BY (ServiceName, Timestamp)
{_legacy_settings(opts)}"""
