"""What differs between a live otelwax table and what this version creates, and the additive
part of closing the gap (``otelwax clickhouse migrate``).

The expected table is not parsed from DDL text: the DDL this version would run (for the
*live* table's layout — an older logs layout stays that layout) is created under a scratch
name next to it, read back from ``system.columns`` / ``system.data_skipping_indices`` /
``system.tables``, and dropped. What is missing is added (ADD COLUMN, ADD INDEX, MODIFY
SETTING, MODIFY TTL, the trace-id lookup table, the trace-ordered copy); what cannot be
changed in place (sorting key, column types, extra columns) is only reported. Nothing is ever
dropped but the scratch table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from connectors.clickhouse_cluster import TableEngine
from connectors.clickhouse_legacy_schema import trace_copy_backfill, trace_copy_ddl
from connectors.clickhouse_metrics_schema import metrics_ddl
from connectors.clickhouse_schema import (
    TRACE_COPY_GRANULARITY,
    TRACE_PROJECTION,
    TableOptions,
    logs_ddl,
    projections_for_version,
    qualified,
    quote_ident,
    text_indexes_for_version,
    trace_copy_table,
    traces_ddl,
)

__all__ = ["MIGRATE_HINT", "Change", "apply_changes", "plan_migration", "table_layout"]

MIGRATE_HINT = (
    "`otelwax clickhouse migrate` shows what differs from this version's tables, --apply adds it"
)

Layout = Literal["legacy", "json", "timestamp_time", "five_minutes", "modern"]

# Settings a migration raises to what this version creates (never lowers).
_SETTINGS = ("non_replicated_deduplication_window", "ttl_only_drop_parts")
SCRATCH_SUFFIX = "__otelwax_expected"


@dataclass(frozen=True)
class Change:
    """One difference: ``sql`` is the additive statement closing it (None: report only)."""

    what: str
    sql: str | None = None


def _columns(client: Any, database: str, table: str) -> dict[str, tuple[str, ...]]:
    """``name -> (type, default_kind, default_expression[, codec])`` in table order."""
    legacy = getattr(client, "legacy", False)
    codec = "" if legacy else ", compression_codec"
    rows = client.execute(
        f"SELECT name, type, default_kind, default_expression{codec} FROM system.columns "
        "WHERE database = {db:String} AND table = {t:String}",
        {"db": database, "t": table},
    )
    return {str(r[0]): tuple(str(v) for v in r[1:]) for r in rows}


def table_layout(client: Any, database: str, table: str) -> Layout | None:
    """The live table's layout (None: no such table), read from its columns.

    ``legacy``: 18.16 layout (``TimestampNs``); ``json``: JSON-typed attributes (the
    clickhouseexporter's ``json: true``); logs: ``timestamp_time`` (the exporter's layout
    before 2026, ``TimestampTime`` in the key) or ``five_minutes`` (2026); traces: ``modern``.
    """
    cols = _columns(client, database, table)
    if not cols:
        return None
    if "TimestampNs" in cols:
        return "legacy"
    if any(c[0].startswith("JSON") for n, c in cols.items() if n.endswith("Attributes")):
        return "json"
    if "TimestampTime" in cols:
        return "timestamp_time"
    if "SpanName" in cols:
        return "modern"
    return "five_minutes"


def _indexes(client: Any, database: str, table: str) -> dict[str, tuple[str, str, int]]:
    rows = client.execute(
        "SELECT name, type_full, expr, granularity FROM system.data_skipping_indices "
        "WHERE database = {db:String} AND table = {t:String}",
        {"db": database, "t": table},
    )
    return {str(n): (str(t), str(e), int(g)) for n, t, e, g in rows}


def _engine_full(client: Any, database: str, table: str) -> str:
    rows = client.execute(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    return str(rows[0][0]) if rows else ""


def _ttl(engine_full: str) -> str:
    m = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", engine_full)
    return m.group(1).strip() if m else ""


def _setting(engine_full: str, name: str) -> int | None:
    m = re.search(rf"\b{name}\s*=\s*(\d+)", engine_full)
    return int(m.group(1)) if m else None


def _column_sql(name: str, spec: tuple[str, ...]) -> str:
    typ, kind, expr = spec[0], spec[1], spec[2]
    out = f"`{name}` {typ}"
    if kind and expr:
        out += f" {kind} {expr}"
    if len(spec) > 3 and spec[3]:
        out += f" {spec[3]}"
    return out


Kind = Literal["traces", "logs", "metrics"]


def _expected_ddl(
    kind: Kind, database: str, table: str, scratch: str, opts: TableOptions, layout: Layout,
    version: str,
) -> str:
    """The CREATE of ``scratch`` as this version would create ``table`` (for the metrics
    tables ``table`` is the canonical ``otel_metrics_*`` name)."""
    legacy = layout == "legacy"
    # The live table's attribute type is kept: JSON tables are compared with JSON DDL.
    opts = opts.model_copy(update={"json_attributes": layout == "json"})
    if kind == "metrics":
        stmts = metrics_ddl(database, {table: scratch}, ttl_days=opts.ttl_days, opts=opts)
        return next(s for s in stmts[1:] if f".{quote_ident(scratch)}" in s)
    if kind == "traces":
        return traces_ddl(database, scratch, opts, legacy=legacy)[0]
    if layout in ("timestamp_time", "five_minutes"):
        opts = opts.model_copy(update={"logs_layout": layout})
    text = text_indexes_for_version(version)
    return logs_ddl(database, scratch, opts, legacy=legacy, text_index=text)[0]


def plan_migration(
    client: Any, database: str, table: str, kind: Kind, opts: TableOptions
) -> list[Change]:
    """The differences between ``database.table`` and what this version expects of it
    (``kind`` metrics: ``table`` is one of the ``otel_metrics_*`` tables).

    Creates and drops a scratch table ``<table>__otelwax_expected`` (empty) in ``database``.
    """
    layout = table_layout(client, database, table)
    t = qualified(database, table)
    if layout is None:
        return [Change(f"{t} does not exist (create it with `otelwax clickhouse init`)")]
    legacy = layout == "legacy"
    version = str(client.execute("SELECT version()")[0][0])
    scratch = f"{table}{SCRATCH_SUFFIX}"
    quote_ident(scratch)
    s = qualified(database, scratch)
    # The scratch table lives on this server only, unreplicated: no ZooKeeper path to clean up.
    local = opts.model_copy(update={"cluster_name": None, "table_engine": TableEngine()})
    client.execute(f"DROP TABLE IF EXISTS {s}")
    client.execute(_expected_ddl(kind, database, table, scratch, local, layout, version))
    try:
        want_cols = _columns(client, database, scratch)
        want_idx = {} if legacy else _indexes(client, database, scratch)
        want_engine = "" if legacy else _engine_full(client, database, scratch)
    finally:
        client.execute(f"DROP TABLE IF EXISTS {s}")
    have_cols = _columns(client, database, table)
    alter = f"ALTER TABLE {t}{opts.on_cluster}"
    changes: list[Change] = []
    for name, spec in want_cols.items():
        if name not in have_cols:
            changes.append(
                Change(
                    f"{t}: column {name} ({spec[0]}) is missing",
                    f"{alter} ADD COLUMN {_column_sql(name, spec)}",
                )
            )
        elif have_cols[name][0] != spec[0]:
            have = have_cols[name][0]
            changes.append(Change(f"{t}: column {name} is {have}, this version creates {spec[0]}"))
    for name in have_cols.keys() - want_cols.keys():
        changes.append(Change(f"{t}: column {name} is not one this version creates (kept)"))
    if kind == "traces" and opts.copy_traces and (legacy or projections_for_version(version)):
        changes += _trace_copy(client, database, table, opts, legacy)
    if legacy:
        return changes
    have_idx = _indexes(client, database, table)
    for name, (typ, expr, gran) in want_idx.items():
        if name not in have_idx:
            changes.append(
                Change(
                    f"{t}: index {name} ({typ} on {expr}) is missing (covers parts written "
                    f"after it is added; MATERIALIZE INDEX {name} builds it for older ones)",
                    f"{alter} ADD INDEX {quote_ident(name)} {expr} TYPE {typ} "
                    f"GRANULARITY {gran}",
                )
            )
        elif have_idx[name][0] != typ:
            changes.append(Change(f"{t}: index {name} is {have_idx[name][0]}, not {typ}"))
    changes += _engine_changes(t, alter, _engine_full(client, database, table), want_engine)
    if kind == "traces" and opts.trace_lookup:
        lookup = f"{table}_trace_id_ts"
        if not _columns(client, database, lookup):
            lk_table, lk_view = traces_ddl(database, table, opts)[1:]
            changes.append(Change(f"{t}: trace-id lookup table {lookup} is missing", lk_table))
            changes.append(Change(f"{t}: its materialized view {lookup}_mv is missing", lk_view))
    return changes


def _trace_copy(
    client: Any, database: str, table: str, opts: TableOptions, legacy: bool
) -> list[Change]:
    """The trace-ordered copy of the spans if it is missing: on 18.16 the table + view and a
    copy of the spans stored so far, else the ``by_trace`` projection, built for the stored
    parts by a background mutation."""
    t = qualified(database, table)
    if legacy:
        copy = trace_copy_table(table)
        if _columns(client, database, copy):
            return _copy_granularity(client, database, table, copy)
        create, view = trace_copy_ddl(database, table, opts)
        return [
            Change(f"{t}: {copy}, its copy ordered by TraceId, is missing", create),
            Change(f"{t}: the materialized view {copy}_mv that fills {copy} is missing", view),
            Change(
                f"{t}: {copy} starts with the spans stored so far (stop the traces flow until "
                "this ran: spans it stores meanwhile would be copied twice)",
                trace_copy_backfill(database, table),
            ),
        ]
    rows = client.execute(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} "
        "AND name = {t:String}",
        {"db": database, "t": table},
    )
    if rows and re.search(r"\bPROJECTION by_trace\b", str(rows[0][0])):
        return []
    alter = f"ALTER TABLE {t}{opts.on_cluster}"
    return [
        Change(
            f"{t}: projection by_trace (the spans ordered by TraceId) is missing",
            f"{alter} ADD {TRACE_PROJECTION}",
        ),
        Change(
            f"{t}: by_trace is built for the parts stored so far (a background mutation)",
            f"{alter} MATERIALIZE PROJECTION by_trace",
        ),
    ]


def _copy_granularity(client: Any, database: str, table: str, copy: str) -> list[Change]:
    """Report an 18.16 copy whose granules are bigger than this version's: its lookups read
    more rows, but 18.16 cannot change ``index_granularity`` in place, and rebuilding means
    rewriting every stored span while the flow is stopped (a view writes the copy)."""
    m = re.search(r"\bindex_granularity = (\d+)", _engine_full(client, database, copy))
    have = int(m.group(1)) if m else 8192
    if have <= TRACE_COPY_GRANULARITY:
        return []
    return [
        Change(
            f"{qualified(database, table)}: {copy} has {have}-row granules, this version creates "
            f"{TRACE_COPY_GRANULARITY} (lookups read {have // TRACE_COPY_GRANULARITY}x the rows; "
            "kept: 18.16 cannot change it in place; to rebuild, stop the traces flow, rename the "
            "copy, run migrate --apply, and drop the renamed table)"
        )
    ]


def _engine_changes(t: str, alter: str, have: str, want: str) -> list[Change]:
    out = []
    replicated = have.startswith("Replicated")
    for name in _SETTINGS:
        w = _setting(want, name)
        if replicated and name == "non_replicated_deduplication_window":
            name = "replicated_deduplication_window"  # the scratch table is unreplicated
        h = _setting(have, name)
        if w is not None and (h is None or h < w):
            out.append(
                Change(
                    f"{t}: {name} is {h if h is not None else 'unset'}, this version sets {w}",
                    f"{alter} MODIFY SETTING {name} = {w}",
                )
            )
    wt, ht = _ttl(want), _ttl(have)
    if wt and wt != ht:
        sql = f"{alter} MODIFY TTL {wt}"
        out.append(Change(f"{t}: TTL is {ht or 'none'}, wanted {wt}", sql))
    elif ht and not wt:
        out.append(Change(f"{t}: TTL {ht} kept (ttl_days is 0; REMOVE TTL by hand to keep rows)"))
    return out


def apply_changes(client: Any, changes: list[Change]) -> int:
    """Run the additive statements of ``changes``; returns how many ran."""
    n = 0
    for c in changes:
        if c.sql:
            client.execute(c.sql)
            n += 1
    return n
