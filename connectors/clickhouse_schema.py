"""ClickHouse DDL for the otelwax tables, compatible with the Collector's clickhouseexporter.

Two variants:

``modern`` (ClickHouse ≥ 23, chdb): the clickhouseexporter tables column for column —
``otel_traces`` (+ ``otel_traces_trace_id_ts`` lookup table and ``otel_traces_trace_id_ts_mv``
materialized view) and ``otel_logs`` — with configurable codecs, bloom-filter/skip indexes,
partitioning and TTL, plus ``non_replicated_deduplication_window`` on the MergeTree so
``insert_deduplication_token`` makes a replayed insert a no-op (the exactly-once basis).

``legacy`` (ClickHouse 18.16, Debian's package): no DateTime64, Map, LowCardinality, codecs,
skip indexes, TTL or insert tokens. The table keeps the same column names where it can:

- ``Timestamp DateTime`` (seconds, UTC) plus ``TimestampNs Int64`` (exact nanoseconds);
- a map column ``M`` becomes two parallel columns ``M.keys Array(String)`` and
  ``M.values Array(String)`` (the names of a modern Map's own subcolumns, so ``M.keys`` /
  ``M.values`` queries work on both; ClickHouse checks they have equal sizes per row);
- nested ``Events.*`` / ``Links.*`` stay flattened ``Array`` columns; their timestamps are
  ``Array(Int64)`` nanoseconds; their attribute maps become ``Events.Attributes.keys`` /
  ``Events.Attributes.values`` of type ``Array(Array(String))``;
- ``InsertToken String``: the sink stores the insert's deduplication token there and, before
  inserting a token that may be stored already (a replayed range, a retried insert; not a new
  range: that count reads the whole column), counts the rows stored with it — token
  deduplication emulated on a server that has none: all rows there → skip; none → insert;
  some (a crash between the per-partition parts of one insert) → ``ALTER TABLE ... DELETE``
  them (on a Replicated table: insert again, its block hashes skip the stored parts).
- no trace-id lookup table (its SimpleAggregateFunction columns need ClickHouse ≥ 19.8);
- no projections: ``trace_copy`` makes a table ``<table>_by_trace`` ordered by (TraceId,
  Timestamp), written by a materialized view (``connectors.clickhouse_legacy_schema``).

``json: true`` (``TableOptions.json_attributes``): the exporter's JSON-attribute tables, see
``connectors.clickhouse_json_schema``.

Identifiers (database, table names) are validated against ``IDENT_RE`` and back-quoted. DDL
runs only through ``create_schema()`` (``otelwax clickhouse init`` or ``create_schema: true``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import ConfigDict, Field, field_validator, model_validator

from connectors.clickhouse_cluster import TableEngine, distributed_ddl, distributed_name, on_cluster
from otelwax.settings import StrictModel

__all__ = [
    "IDENT_RE",
    "TableOptions",
    "create_schema",
    "logs_ddl",
    "quote_ident",
    "schema_ddl",
    "traces_ddl",
    "variant_for_version",
]

log = logging.getLogger(__name__)

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CLUSTER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")

# Arrow columns whose order equals each table's ORDER BY (toDateTime(Timestamp) then Timestamp
# orders as Timestamp alone), modern and legacy layouts alike. A block that arrives sorted is
# not permuted by ClickHouse: sorting it on the worker thread moves that cost off the insert
# (measured: 40K-span inserts into chdb ~1.5x faster). Keep in step with the DDL below.
TRACES_SORT_KEY = ("ServiceName", "SpanName", "Timestamp")
LOGS_SORT_KEY = ("ServiceName", "Timestamp")

# The trace-ordered copy: a projection on modern servers, a table + MV on 18.16 (no projections),
# whose 256-row granules make a lookup read and decode 256 rows of each column, not 1024 (18.16:
# -15 % server CPU per lookup, +3 % disk; 8192 rows: +40 %; bench/README.md).
TRACE_PROJECTION = "PROJECTION by_trace (SELECT * ORDER BY TraceId)"
TRACE_COPY_GRANULARITY = 256


def trace_copy_table(table: str) -> str:
    """The table that holds the legacy trace-ordered copy of ``table``."""
    return f"{table}_by_trace"


PARTITIONS = {
    "day": "toDate({ts})",
    "week": "toMonday({ts})",
    "month": "toYYYYMM({ts})",
    "none": "tuple()",
}


def quote_ident(name: str) -> str:
    """Back-quote a database/table identifier after checking it against ``IDENT_RE``."""
    if not isinstance(name, str) or not IDENT_RE.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}: want {IDENT_RE.pattern}")
    return f"`{name}`"


def qualified(database: str, table: str) -> str:
    """```db`.`table``` with both parts validated."""
    return f"{quote_ident(database)}.{quote_ident(table)}"


class TableOptions(StrictModel):
    """How the tables are created (no I/O: a pure description)."""

    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True)

    variant: Literal["auto", "modern", "legacy"] = Field(
        "auto", description="auto = legacy for servers older than 20.1, else modern"
    )
    ttl_days: int = Field(0, ge=0, description="delete rows after N days; 0 keeps them forever")
    partition_by: Literal["day", "week", "month", "none"] = "day"
    skip_indexes: bool = Field(True, description="bloom-filter/minmax/tokenbf indexes (modern)")
    codecs: bool = Field(True, description="column CODECs as in clickhouseexporter (modern)")
    dedup_window: int = Field(
        1000,
        ge=0,
        description="non_replicated_deduplication_window: how many recent insert tokens "
        "a MergeTree remembers (0 disables token deduplication)",
    )
    trace_lookup: bool = Field(True, description="create the trace-id/timestamp lookup + MV")
    trace_copy: Literal["auto", "on", "off"] = Field(
        "auto",
        description="a copy of the spans ordered by TraceId, which trace lookups read (one "
        "small granule instead of the ~5 a trace spans in the traces table): the by_trace "
        "projection (modern ClickHouse >= 22), or the table <traces_table>_by_trace written by "
        "a materialized view (18.16); ~2.3x the disk, insert CPU +20-25 % (projection) to "
        "+70 % (table). auto: on for mode server, off for embedded chdb (bench/README.md)",
    )
    index_granularity: int = Field(8192, gt=0)
    logs_layout: Literal["five_minutes", "timestamp_time"] = Field(
        "five_minutes",
        description="(modern) new logs tables: five_minutes = the clickhouseexporter's 2026 "
        "layout (ORDER BY toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp; no "
        "TimestampTime; materialized __otel_materialized_* resource columns); timestamp_time = "
        "the earlier layout. Existing tables keep theirs (their layout is read, not assumed)",
    )
    text_indexes: Literal["auto", "on", "off"] = Field(
        "auto",
        description="(modern, five_minutes logs) text(tokenizer) indexes instead of bloom "
        "filters; auto = on for ClickHouse >= 26.2, as the clickhouseexporter does",
    )
    json_attributes: bool = Field(
        False,
        alias="json",
        description="the clickhouseexporter's `json: true` tables: JSON-typed attributes plus "
        "*AttributesKeys columns (new traces/logs tables; ClickHouse >= 25.3 or chdb; "
        "connectors/clickhouse_json_schema.py). Existing tables keep their layout",
    )

    cluster_name: str | None = Field(
        None,
        description="the clickhouseexporter's cluster_name: DDL runs ON CLUSTER this cluster "
        "(the server needs remote_servers and distributed_ddl config)",
    )
    table_engine: TableEngine = Field(
        default_factory=TableEngine,
        description="the clickhouseexporter's table_engine {name, params}: MergeTree or "
        "ReplicatedMergeTree (connectors/clickhouse_cluster.py)",
    )
    distributed: bool = Field(
        False,
        description="also create <table>_dist Distributed tables over the cluster's shards "
        "(for queries; flows write the local tables); needs cluster_name",
    )

    @field_validator("cluster_name")
    @classmethod
    def _cluster(cls, v: str | None) -> str | None:
        if v is not None and not CLUSTER_RE.match(v):
            raise ValueError(f"must match {CLUSTER_RE.pattern}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _projection_key(cls, data: Any) -> Any:
        """``trace_projection: true|false`` (earlier versions) is ``trace_copy: on|off``."""
        if not isinstance(data, dict) or "trace_projection" not in data:
            return data
        data = dict(data)
        old = data.pop("trace_projection")
        if "trace_copy" in data:
            raise ValueError("trace_projection is the older name of trace_copy: give one")
        data["trace_copy"] = "on" if old is True else "off" if old is False else old
        return data

    @model_validator(mode="after")
    def _placement(self) -> TableOptions:
        if self.json_attributes and self.variant == "legacy":
            raise ValueError(JSON_NOT_LEGACY)
        self.table_engine.check_params()
        if self.distributed and not self.cluster_name:
            raise ValueError("distributed: true needs cluster_name (the cluster to read from)")
        return self

    def for_mode(self, mode: Literal["embedded", "server"]) -> TableOptions:
        """These options with ``trace_copy: auto`` decided for ``mode``: a server answers a
        UI's lookups (on), embedded chdb keeps its inserts cheap (off)."""
        if self.trace_copy != "auto":
            return self
        return self.model_copy(update={"trace_copy": "on" if mode == "server" else "off"})

    @property
    def copy_traces(self) -> bool:
        """Whether the trace-ordered copy is created (``auto`` here means off: the
        connection's ``ClickHouseConfig.schema_options`` decides it by mode)."""
        return self.trace_copy == "on"

    @property
    def on_cluster(self) -> str:
        """`` ON CLUSTER `name``` when ``cluster_name`` is set, else empty."""
        return on_cluster(self.cluster_name)

    def engine(self, database: str, table: str, family: Literal["", "Aggregating"] = "") -> str:
        """The ``ENGINE`` of ``database.table`` (``table_engine``)."""
        return self.table_engine.clause(database, table, family)

    @field_validator("ttl_days")
    @classmethod
    def _ttl_reasonable(cls, v: int) -> int:
        if v > 36500:
            raise ValueError("must be <= 36500 (100 years)")
        return v


JSON_NOT_LEGACY = (
    "json: true cannot be combined with variant: legacy (ClickHouse 18.16 has no JSON type; "
    "it needs >= 25.3)"
)

# The clickhouseexporter's (2026) materialized resource columns of the logs table.
MATERIALIZED_RESOURCE_KEYS = (
    "k8s.cluster.name",
    "k8s.container.name",
    "k8s.deployment.name",
    "k8s.namespace.name",
    "k8s.node.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "deployment.environment.name",
)


def text_indexes_for_version(version: str) -> bool:
    """Whether ClickHouse ``version`` has ``text`` indexes (26.2 and later)."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (26, 2)


def projections_for_version(version: str) -> bool:
    """Whether ClickHouse ``version`` has table projections (22.x and later; chdb has)."""
    try:
        return int(version.split(".", 1)[0]) >= 22
    except ValueError:
        return True


def variant_for_version(version: str) -> Literal["modern", "legacy"]:
    """ "legacy" for ClickHouse versions before 20.1 (no Map/DateTime64), else "modern"."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        return "modern"
    return "legacy" if major < 20 else "modern"


def _c(opts: TableOptions, codec: str) -> str:
    return f" CODEC({codec})" if opts.codecs else ""


def _ttl(opts: TableOptions, expr: str) -> str:
    return f"TTL {expr} + toIntervalDay({int(opts.ttl_days)})\n" if opts.ttl_days else ""


def _settings(opts: TableOptions, *, dedup: bool = True, ttl: bool = True) -> str:
    s = [f"index_granularity = {int(opts.index_granularity)}"]
    if ttl and opts.ttl_days:
        s.append("ttl_only_drop_parts = 1")
    if dedup and opts.dedup_window:
        s.append(f"{opts.table_engine.window_setting()} = {int(opts.dedup_window)}")
    return "SETTINGS " + ", ".join(s)


def traces_ddl(database: str, table: str, opts: TableOptions, *, legacy: bool = False) -> list[str]:
    """CREATE statements for the traces table, its trace-id lookup + MV (modern) and its
    trace-ordered copy (``trace_copy``: a projection, or on 18.16 a table + MV)."""
    if legacy:
        from connectors.clickhouse_legacy_schema import legacy_traces

        _no_legacy_json(opts)
        return legacy_traces(database, table, opts)
    t = qualified(database, table)
    z = _c(opts, "ZSTD(1)")
    idx = ""
    # The map bloom filters are half of the bytes an insert writes before compression yet <10 %
    # of the flow's CPU, and make a rare attribute value's search ~5x cheaper: kept
    # (bench/mergetree_bench.py, bench/README.md 2026-12-06 afternoon).
    if opts.skip_indexes:
        idx = """
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8,"""
    part = PARTITIONS[opts.partition_by].format(ts="Timestamp")
    attrs = "Map(LowCardinality(String), String)"
    proj = f",\n    {TRACE_PROJECTION}" if opts.copy_traces else ""
    main = f"""CREATE TABLE IF NOT EXISTS {t}{opts.on_cluster} (
    Timestamp DateTime64(9){_c(opts, "Delta(8), ZSTD(1)")},
    TraceId String{z},
    SpanId String{z},
    ParentSpanId String{z},
    TraceState String{z},
    SpanName LowCardinality(String){z},
    SpanKind LowCardinality(String){z},
    ServiceName LowCardinality(String){z},
    ResourceAttributes {attrs}{z},
    ScopeName String{z},
    ScopeVersion String{z},
    SpanAttributes {attrs}{z},
    Duration UInt64{_c(opts, "T64, ZSTD(1)")},
    StatusCode LowCardinality(String){z},
    StatusMessage String{z},
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes {attrs}
    ){z},
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes {attrs}
    ){z},{idx}
    ResourceAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2),
        CAST(ResourceAttributes, 'Array(Tuple(String, String))')),
    SpanAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2),
        CAST(SpanAttributes, 'Array(Tuple(String, String))')){proj}
) ENGINE = {opts.engine(database, table)}
PARTITION BY {part}
PRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)
{_ttl(opts, "toDateTime(Timestamp)")}{_settings(opts)}"""
    if opts.json_attributes:
        from connectors.clickhouse_json_schema import traces_json_table

        main = traces_json_table(database, table, opts)
    out = [main]
    if opts.trace_lookup:
        lk = qualified(database, f"{table}_trace_id_ts")
        mv = qualified(database, f"{table}_trace_id_ts_mv")
        lpart = "toStartOfWeek(Start)" if opts.partition_by != "none" else "tuple()"
        out.append(f"""CREATE TABLE IF NOT EXISTS {lk}{opts.on_cluster} (
    TraceId String{z},
    Start SimpleAggregateFunction(min, DateTime){z},
    End SimpleAggregateFunction(max, DateTime){z}
) ENGINE = {opts.engine(database, f"{table}_trace_id_ts", "Aggregating")}
PARTITION BY {lpart}
ORDER BY (TraceId)
{_ttl(opts, "toDateTime(Start)")}{_settings(opts, dedup=False)}""")
        out.append(f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {mv}{opts.on_cluster}
TO {lk}
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM {t}
WHERE TraceId != ''
GROUP BY TraceId""")
    return out


def logs_ddl(
    database: str,
    table: str,
    opts: TableOptions,
    *,
    legacy: bool = False,
    text_index: bool = False,
) -> list[str]:
    """CREATE statement for the logs table (``text_index``: the server has text indexes)."""
    if legacy:
        from connectors.clickhouse_legacy_schema import legacy_logs

        _no_legacy_json(opts)
        return [legacy_logs(database, table, opts)]
    if opts.json_attributes:
        from connectors.clickhouse_json_schema import logs_json_table

        return [logs_json_table(database, table, opts)]
    if opts.logs_layout == "timestamp_time":
        return [_logs_timestamp_time(database, table, opts)]
    t = qualified(database, table)
    z = _c(opts, "ZSTD(1)")
    cols = [
        f"Timestamp DateTime64(9){_c(opts, 'Delta(8), ZSTD(1)')}",
        *_log_columns(opts),
        *(
            f"`__otel_materialized_{k}` LowCardinality(String) MATERIALIZED "
            f"ResourceAttributes['{k}']{z}"
            for k in MATERIALIZED_RESOURCE_KEYS
        ),
    ]
    use_text = opts.text_indexes == "on" or (opts.text_indexes == "auto" and text_index)
    if opts.skip_indexes and use_text:
        cols += _log_indexes("TYPE text(tokenizer = 'array')", "TYPE text(tokenizer = 'array')")
        cols.append("INDEX idx_lower_body lower(Body) TYPE text(tokenizer = 'splitByNonAlpha')")
    elif opts.skip_indexes:
        cols += _log_indexes(_BLOOM.format(p="0.001"), _BLOOM.format(p="0.01"))
        cols.append("INDEX idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8")
    body = ",\n".join(f"    {c}" for c in cols)
    return [
        f"""CREATE TABLE IF NOT EXISTS {t}{opts.on_cluster} (
{body}
) ENGINE = {opts.engine(database, table)}
PARTITION BY {PARTITIONS[opts.partition_by].format(ts="Timestamp")}
ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)
{_ttl(opts, "toDateTime(Timestamp)")}{_settings(opts)}"""
    ]


_BLOOM = "TYPE bloom_filter({p}) GRANULARITY 1"


def _no_legacy_json(opts: TableOptions) -> None:
    if opts.json_attributes:
        raise ValueError(JSON_NOT_LEGACY)


def _log_indexes(trace_id: str, maps: str) -> list[str]:
    """The logs table's TraceId and attribute-map indexes (``TYPE ...`` clauses given)."""
    out = [f"INDEX idx_trace_id TraceId {trace_id}"]
    for short, m in (("res", "Resource"), ("scope", "Scope"), ("log", "Log")):
        out.append(f"INDEX idx_{short}_attr_key mapKeys({m}Attributes) {maps}")
        out.append(f"INDEX idx_{short}_attr_value mapValues({m}Attributes) {maps}")
    return out


def _log_columns(opts: TableOptions, attr: Callable[[str], list[str]] | None = None) -> list[str]:
    """The logs columns after ``Timestamp`` (``attr``: an attribute column's definitions; by
    default one ``Map(LowCardinality(String), String)`` column)."""
    z = _c(opts, "ZSTD(1)")
    if attr is None:

        def attr(name: str) -> list[str]:
            return [f"{name} Map(LowCardinality(String), String){z}"]

    return [
        f"TraceId String{z}",
        f"SpanId String{z}",
        "TraceFlags UInt8",
        f"SeverityText LowCardinality(String){z}",
        "SeverityNumber UInt8",
        f"ServiceName LowCardinality(String){z}",
        f"Body String{z}",
        f"ResourceSchemaUrl LowCardinality(String){z}",
        *attr("ResourceAttributes"),
        f"ScopeSchemaUrl LowCardinality(String){z}",
        f"ScopeName String{z}",
        f"ScopeVersion LowCardinality(String){z}",
        *attr("ScopeAttributes"),
        *attr("LogAttributes"),
        f"EventName String{z}",
    ]


def _logs_timestamp_time(database: str, table: str, opts: TableOptions) -> str:
    """The clickhouseexporter's logs layout before 2026 (``TimestampTime`` in the key)."""
    cols = [
        f"Timestamp DateTime64(9){_c(opts, 'Delta(8), ZSTD(1)')}",
        "TimestampTime DateTime DEFAULT toDateTime(Timestamp)",
        *_log_columns(opts),
    ]
    if opts.skip_indexes:
        cols += _log_indexes(_BLOOM.format(p="0.001"), _BLOOM.format(p="0.01"))
        cols.append("INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8")
    body = ",\n".join(f"    {c}" for c in cols)
    return f"""CREATE TABLE IF NOT EXISTS {qualified(database, table)}{opts.on_cluster} (
{body}
) ENGINE = {opts.engine(database, table)}
PARTITION BY {PARTITIONS[opts.partition_by].format(ts="TimestampTime")}
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)
{_ttl(opts, "TimestampTime")}{_settings(opts)}"""


def schema_ddl(
    database: str,
    traces_table: str | None,
    logs_table: str | None,
    opts: TableOptions,
    *,
    legacy: bool = False,
    text_index: bool = False,
) -> list[str]:
    """Every statement to create the database and the tables (None skips a table)."""
    out = [f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}{opts.on_cluster}"]
    if traces_table:
        out += traces_ddl(database, traces_table, opts, legacy=legacy)
    if logs_table:
        out += logs_ddl(database, logs_table, opts, legacy=legacy, text_index=text_index)
    if opts.distributed and opts.cluster_name:
        for table in (t for t in (traces_table, logs_table) if t):
            out.append(
                distributed_ddl(
                    qualified(database, distributed_name(table)),
                    qualified(database, table),
                    opts.cluster_name,
                    database,
                    table,
                )
            )
    return out


class ClickHouseSchemaError(RuntimeError):
    """The tables asked for cannot be created on this server (not worth retrying)."""


class _Executes(Protocol):
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...


def _table_exists(client: _Executes, database: str, table: str) -> bool:
    rows = client.execute(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    return bool(rows and rows[0][0])


def create_schema(
    client: _Executes,
    database: str,
    traces_table: str | None,
    logs_table: str | None,
    opts: TableOptions,
) -> list[str]:
    """Create the database and tables (idempotent: IF NOT EXISTS). Returns the statements run.

    With ``variant="auto"`` the server version decides between modern and legacy DDL, with
    ``text_indexes="auto"`` whether the logs table gets text indexes (ClickHouse >= 26.2).
    """
    variant = opts.variant
    version = ""
    if variant == "auto" or opts.text_indexes == "auto" or opts.json_attributes or opts.copy_traces:
        version = str(client.execute("SELECT version()")[0][0])
    if opts.json_attributes:
        from connectors.clickhouse_json_schema import json_refused, json_supported

        if not json_supported(version):
            raise ClickHouseSchemaError(json_refused(version))
    if variant == "auto":
        variant = variant_for_version(version)
        log.info("ClickHouse %s: using the %s table layout", version, variant)
    if opts.copy_traces and variant == "modern" and not projections_for_version(version):
        log.warning("ClickHouse %s has no projections: no trace-ordered copy", version)
        opts = opts.model_copy(update={"trace_copy": "off"})
    if opts.copy_traces and variant == "legacy" and traces_table and _table_exists(
        client, database, traces_table
    ) and not _table_exists(client, database, trace_copy_table(traces_table)):
        # An empty copy would answer lookups of the spans stored so far with nothing.
        log.warning(
            "%s.%s has no trace-ordered copy yet: `otelwax clickhouse migrate --apply` adds it "
            "with the spans stored so far",
            database,
            traces_table,
        )
        opts = opts.model_copy(update={"trace_copy": "off"})
    stmts = schema_ddl(
        database,
        traces_table,
        logs_table,
        opts,
        legacy=variant == "legacy",
        text_index=text_indexes_for_version(version),
    )
    for sql in stmts:
        client.execute(sql)
    return stmts
