"""ClickHouse storage for Arrow batches: embedded chdb or a ClickHouse server.

    cfg = ClickHouseConfig(mode="server", host="127.0.0.1", port=19000, http_port=18123)
    client = open_client(cfg)                 # I/O starts here, never in the config
    problems = check_table(client, cfg.traces_table, TRACES_SCHEMA)
    rows = client.insert_arrow(cfg.traces_table, batch, dedup_token="otlp_spans:3:100-199")

Embedded (``mode: embedded``, the default): chdb in-process, data under ``path``. chdb allows one
engine (one data path) per process, so every ``EmbeddedClient`` of a process shares one session
behind a lock (bytewax worker threads may insert concurrently). Arrow goes in through chdb's
``Python()`` table function, which reads the Arrow buffers (no per-row Python).

Server (``mode: server``): queries go over the native protocol (clickhouse-driver, port 9000);
inserts are encoded from the Arrow buffers straight into ClickHouse's ``Native`` format with
numpy (no Python objects per row) and POSTed to the HTTP interface (``insert_format:
native_http``), or handed to clickhouse-driver as Python column lists (``insert_format: driver``,
the slower baseline). Either way the sink writes exactly the columns the table has, by name,
converted to the table's types — including the legacy layout for ClickHouse 18.16 (see
``connectors.clickhouse_schema``: ``M.keys``/``M.values`` for maps, ``Timestamp DateTime`` +
``TimestampNs``, ``InsertToken`` for emulated token deduplication).

``execute(sql, params)`` takes ClickHouse's ``{name:Type}`` placeholders in both modes (the
server client substitutes escaped literals because 18.16 has no server-side parameters).

One module per job, their public names re-exported here: ``clickhouse_config`` (the settings),
``clickhouse_client`` (the client protocol, errors, parameters), ``clickhouse_embedded`` (chdb),
``clickhouse_server`` (a server), ``clickhouse_native`` (the Native encoder) and
``clickhouse_types`` (the type parser). This module opens a client and checks tables.
"""

from __future__ import annotations

import pyarrow as pa

from connectors.clickhouse_client import ClickHouseClient, ClickHouseError, is_transient
from connectors.clickhouse_config import BatchSettings, ClickHouseConfig, ClickHouseTlsConfig
from connectors.clickhouse_embedded import EmbeddedClient
from connectors.clickhouse_native import encode_native, plan_columns
from connectors.clickhouse_schema import create_schema
from connectors.clickhouse_server import ServerClient
from connectors.clickhouse_types import parse_type

__all__ = [
    "BatchSettings",
    "ClickHouseClient",
    "ClickHouseConfig",
    "ClickHouseError",
    "ClickHouseTlsConfig",
    "EmbeddedClient",
    "ServerClient",
    "check_table",
    "encode_native",
    "init_schema",
    "is_transient",
    "open_client",
    "parse_type",
    "plan_columns",
]


def open_client(cfg: ClickHouseConfig) -> EmbeddedClient | ServerClient:
    """Open the configured client (I/O starts here). Runs the DDL if ``cfg.create_schema``."""
    client: EmbeddedClient | ServerClient
    if cfg.mode == "embedded":
        client = EmbeddedClient(cfg)
    else:
        client = ServerClient(cfg)
        try:
            client.connect()
        except Exception:
            client.close()
            raise
    if cfg.create_schema:
        init_schema(client, cfg)
    return client


def init_schema(client: ClickHouseClient, cfg: ClickHouseConfig) -> list[str]:
    """Create the database and tables of ``cfg`` (idempotent). Returns the statements run."""
    return create_schema(client, cfg.database, cfg.traces_table, cfg.logs_table, cfg.schema_options)


def check_table(client: ClickHouseClient, table: str, schema: pa.Schema) -> list[str]:
    """Problems that keep ``schema``'s batches from being stored in ``table`` (empty: all fine)."""
    cols = client.table_columns(table)
    if not cols:
        return [f"table {table} does not exist (create it with `otelwax clickhouse init`)"]
    plan = plan_columns(schema, cols)
    return [f"{table}: {p}" for p in plan.problems]
