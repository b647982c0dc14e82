"""The clickhouseexporter's ``json: true`` tables (``tables.json``): attributes as ``JSON``
columns, each top-level one with a ``<name>Keys Array(LowCardinality(String))`` column beside
it and a bloom filter on the keys — column for column the exporter's
``internal/sqltemplates/traces_json_table.sql`` / ``logs_json_table.sql``.

Writing needs no conversion in the flows: the Arrow batches keep ``map<string, string>``
attributes and ClickHouse turns a map into a JSON object on insert (chdb reads the Arrow map
directly; a server gets a ``Map(String, String)`` Native column, see
``connectors.clickhouse_native``). :func:`with_attribute_keys` adds the ``*Keys`` arrays the
table has, sharing the maps' key buffers. A dotted key (``http.method``) is a path in the JSON
column: ``SpanAttributes.http.method`` or ``SpanAttributes.`http.method``` read it. Values
stay strings, as in the maps (the exporter stores typed values).

The JSON type needs ClickHouse >= 25.3 (chdb is 26.x); an older server is refused with
:func:`json_refused` before any DDL runs.
"""

from __future__ import annotations

import re

import pyarrow as pa

# clickhouse_schema imports this module only inside traces_ddl/logs_ddl (no import cycle).
from connectors.clickhouse_schema import (
    PARTITIONS,
    TRACE_PROJECTION,
    TableOptions,
    _c,
    _log_columns,
    _settings,
    _ttl,
    qualified,
)

__all__ = [
    "JSON_INSERT_SETTINGS",
    "JSON_MIN_VERSION",
    "has_json_columns",
    "json_refused",
    "json_supported",
    "logs_json_table",
    "traces_json_table",
    "with_attribute_keys",
]

JSON_MIN_VERSION = (25, 3)  # the release where the JSON type left experimental
KEYS_SUFFIX = "Keys"
# An OTLP attribute list may repeat a key; a JSON column refuses a repeated path (the whole
# insert fails), so inserts into JSON tables keep the first and skip the rest.
JSON_INSERT_SETTINGS = {"type_json_skip_duplicated_paths": "1"}
_JSON_RE = re.compile(r"\bJSON\b")


def has_json_columns(table_cols: dict[str, str]) -> bool:
    """Whether a table (``name -> type``) has a JSON-typed column."""
    return any(_JSON_RE.search(t) for t in table_cols.values())


def json_supported(version: str) -> bool:
    """Whether ClickHouse ``version`` has the (non-experimental) JSON type."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= JSON_MIN_VERSION


def json_refused(version: str) -> str:
    """The one-line error for ``tables.json: true`` on a server without the JSON type."""
    need = ".".join(map(str, JSON_MIN_VERSION))
    return (
        f"tables.json: true needs ClickHouse >= {need} (the JSON type); this server is "
        f"{version or 'older'}: set tables.json: false (Map attributes) or use a newer server "
        "or embedded chdb"
    )


def _attr(name: str, z: str) -> list[str]:
    return [f"{name} JSON{z}", f"{name}{KEYS_SUFFIX} Array(LowCardinality(String)){z}"]


def _keys_index(short: str, name: str) -> str:
    return f"INDEX idx_{short}_attr_keys {name}{KEYS_SUFFIX} TYPE bloom_filter(0.01) GRANULARITY 1"


def _table(database: str, table: str, opts: TableOptions, cols: list[str], tail: str) -> str:
    body = ",\n".join(f"    {c}" for c in cols)
    return f"""CREATE TABLE IF NOT EXISTS {qualified(database, table)}{opts.on_cluster} (
{body}
) ENGINE = {opts.engine(database, table)}
PARTITION BY {PARTITIONS[opts.partition_by].format(ts="Timestamp")}
{tail}
{_ttl(opts, "toDateTime(Timestamp)")}{_settings(opts)}"""


def traces_json_table(database: str, table: str, opts: TableOptions) -> str:
    """CREATE of the exporter's JSON traces table (the trace-id lookup is the Map layout's)."""
    z = _c(opts, "ZSTD(1)")
    cols = [
        f"Timestamp DateTime64(9){_c(opts, 'Delta(8), ZSTD(1)')}",
        f"TraceId String{z}",
        f"SpanId String{z}",
        f"ParentSpanId String{z}",
        f"TraceState String{z}",
        f"SpanName LowCardinality(String){z}",
        f"SpanKind LowCardinality(String){z}",
        f"ServiceName LowCardinality(String){z}",
        *_attr("ResourceAttributes", z),
        f"ScopeName String{z}",
        f"ScopeVersion String{z}",
        *_attr("SpanAttributes", z),
        f"Duration UInt64{z}",
        f"StatusCode LowCardinality(String){z}",
        f"StatusMessage String{z}",
        "Events Nested (\n        Timestamp DateTime64(9),\n        Name LowCardinality(String),"
        f"\n        Attributes JSON\n    ){z}",
        "Links Nested (\n        TraceId String,\n        SpanId String,\n        TraceState "
        f"String,\n        Attributes JSON\n    ){z}",
    ]
    if opts.skip_indexes:
        cols += [
            _keys_index("res", "ResourceAttributes"),
            _keys_index("span", "SpanAttributes"),
            "INDEX idx_duration Duration TYPE minmax GRANULARITY 1",
        ]
    if opts.copy_traces:
        cols.append(TRACE_PROJECTION)
    tail = "ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)"
    return _table(database, table, opts, cols, tail)


def logs_json_table(database: str, table: str, opts: TableOptions) -> str:
    """CREATE of the exporter's JSON logs table (its own key: ServiceName, then time)."""
    z = _c(opts, "ZSTD(1)")
    cols = [
        f"Timestamp DateTime64(9){_c(opts, 'Delta(8), ZSTD(1)')}",
        *_log_columns(opts, lambda name: _attr(name, z)),
    ]
    if opts.skip_indexes:
        cols += [
            _keys_index("res", "ResourceAttributes"),
            _keys_index("scope", "ScopeAttributes"),
            _keys_index("log", "LogAttributes"),
            "INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
        ]
    tail = (
        "PRIMARY KEY (ServiceName, toDateTime(Timestamp))\n"
        "ORDER BY (ServiceName, toDateTime(Timestamp), Timestamp)"
    )
    return _table(database, table, opts, cols, tail)


def with_attribute_keys(batch: pa.RecordBatch, table_cols: dict[str, str]) -> pa.RecordBatch:
    """``batch`` plus a ``<map>Keys`` list column for every map column whose table has one.

    The lists reuse the maps' offsets and key buffers (no copy): a sliced map's offsets still
    point into its whole key array.
    """
    names = batch.schema.names
    add = [
        f.name
        for f in batch.schema
        if pa.types.is_map(f.type)
        and f.name + KEYS_SUFFIX in table_cols
        and f.name + KEYS_SUFFIX not in names
    ]
    if not add:
        return batch
    arrays, fields = list(batch.columns), list(batch.schema)
    for name in add:
        m = batch.column(name)
        arrays.append(pa.ListArray.from_arrays(m.offsets, m.keys))
        fields.append(pa.field(name + KEYS_SUFFIX, pa.list_(pa.string()), nullable=False))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, batch.schema.metadata))
