"""ClickHouse DDL for the metrics tables, column for column the clickhouseexporter's
``otel_metrics_gauge/sum/histogram/exponential_histogram/summary`` (modern ClickHouse / chdb).

The columns come from ``otelwax.metric_schemas`` (the single definition of the columns), so
DDL and Arrow batches cannot drift apart: ``Nested`` groups (``Exemplars.*``,
``ValueAtQuantiles.*``) are written as ``Nested(...)`` and read back as the flattened
``Array`` columns the Arrow schemas use. Timestamps are ``DateTime64(9)``.

Tables are MergeTree with ``non_replicated_deduplication_window`` so an insert carrying
``insert_deduplication_token`` is skipped when replayed. Identifiers are validated and
back-quoted; there are no values in DDL.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from otelwax.metric_schemas import METRIC_SCHEMAS

if TYPE_CHECKING:
    from connectors.clickhouse_config import ClickHouseConfig

__all__ = ["MIN_SERVER_MAJOR", "metrics_ddl", "prepare_metrics_tables", "quote_ident"]

MIN_SERVER_MAJOR = 20

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

_LOW_CARD = {"ServiceName"}
_DELTA = {"StartTimeUnix", "TimeUnix", "Count"}


def quote_ident(name: str) -> str:
    """Back-quote an identifier after checking it against ``IDENT_RE``."""
    if not isinstance(name, str) or not IDENT_RE.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}: want {IDENT_RE.pattern}")
    return f"`{name}`"


def _ch_type(t: pa.DataType, name: str) -> str:
    if pa.types.is_map(t):
        return "Map(LowCardinality(String), String)"
    if pa.types.is_list(t):
        return f"Array({_ch_type(t.value_type, name)})"
    if pa.types.is_timestamp(t):
        return "DateTime64(9)"
    if pa.types.is_string(t):
        return "LowCardinality(String)" if name in _LOW_CARD else "String"
    return {
        pa.float64(): "Float64",
        pa.uint64(): "UInt64",
        pa.uint32(): "UInt32",
        pa.int32(): "Int32",
        pa.bool_(): "Bool",
    }[t]


def _columns(schema: pa.Schema) -> list[str]:
    out: list[str] = []
    nested: dict[str, list[str]] = {}
    for f in schema:
        if "." in f.name:
            group, sub = f.name.split(".", 1)
            if group not in nested:
                nested[group] = []
                out.append(group)  # placeholder, keeps column order
            nested[group].append(f"{sub} {_ch_type(f.type.value_type, sub)}")
            continue
        codec = "CODEC(Delta, ZSTD(1))" if f.name in _DELTA else "CODEC(ZSTD(1))"
        out.append(f"{f.name} {_ch_type(f.type, f.name)} {codec}")
    return [f"{c} Nested({', '.join(nested[c])}) CODEC(ZSTD(1))" if c in nested else c for c in out]


def metrics_ddl(
    database: str,
    tables: dict[str, str] | None = None,
    ttl_days: int = 0,
    dedup_window: int | None = None,
    skip_indexes: bool = True,
    opts: Any = None,
) -> list[str]:
    """``CREATE DATABASE`` + ``CREATE TABLE IF NOT EXISTS`` for every metrics table.

    ``tables`` maps the canonical names (``otel_metrics_gauge``, ...) to the names to create;
    ``opts`` (``TableOptions``), when given, places them: ``ON CLUSTER`` and the table engine,
    and gives the dedup window unless ``dedup_window`` does (default 1000).
    """
    if dedup_window is None:
        dedup_window = opts.dedup_window if opts is not None else 1000
    db = quote_ident(database)
    on = opts.on_cluster if opts is not None else ""
    window = opts.table_engine.window_setting() if opts is not None else ""
    stmts = [f"CREATE DATABASE IF NOT EXISTS {db}{on}"]
    for canonical, schema in METRIC_SCHEMAS.items():
        raw = (tables or {}).get(canonical, canonical)
        name = quote_ident(raw)
        engine = opts.engine(database, raw) if opts is not None else "MergeTree"
        cols = _columns(schema)
        if skip_indexes:
            for col in ("ResourceAttributes", "ScopeAttributes", "Attributes"):
                short = {"ResourceAttributes": "res", "ScopeAttributes": "scope"}.get(col, "")
                prefix = f"idx_{short}_attr" if short else "idx_attr"
                cols.append(
                    f"INDEX {prefix}_key mapKeys({col}) TYPE bloom_filter(0.01) GRANULARITY 1"
                )
                cols.append(
                    f"INDEX {prefix}_value mapValues({col}) TYPE bloom_filter(0.01) GRANULARITY 1"
                )
        body = ",\n    ".join(cols)
        ttl = f"TTL toDateTime(TimeUnix) + toIntervalDay({int(ttl_days)})\n" if ttl_days else ""
        stmts.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{name}{on} (\n    {body}\n) ENGINE = {engine}\n"
            "PARTITION BY toDate(TimeUnix)\n"
            "ORDER BY (ServiceName, MetricName, Attributes, toUnixTimestamp64Nano(TimeUnix))\n"
            f"{ttl}"
            f"SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, "
            f"{window or 'non_replicated_deduplication_window'} = {int(dedup_window)}"
        )
    return stmts


def prepare_metrics_tables(client: Any, cfg: ClickHouseConfig) -> None:
    """Refuse a server older than ClickHouse 20 (the tables need Map and DateTime64), then,
    with ``cfg.create_schema``, create the database and the metrics tables (I/O)."""
    from connectors.clickhouse import ClickHouseError

    if getattr(client, "legacy", False):
        version = getattr(client, "version", "") or "< 20"
        raise ClickHouseError(
            f"ClickHouse server {version} at {cfg.host}:{cfg.port} is too old for the metrics "
            f"tables (otel_metrics_* need Map and DateTime64: ClickHouse {MIN_SERVER_MAJOR}.x "
            "or newer); point flows.metrics.clickhouse at a newer server, use embedded chdb "
            "(mode: embedded), or set clickhouse: null to write to Prometheus only",
            transient=False,
        )
    if cfg.create_schema:
        for stmt in metrics_ddl(cfg.database, ttl_days=cfg.tables.ttl_days, opts=cfg.tables):
            client.execute(stmt)
