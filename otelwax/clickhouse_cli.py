"""``otelwax clickhouse init|check``: create the ClickHouse tables, or check what they accept.

    otelwax clickhouse init  [-c FILE] [--dry-run] [connection overrides]
    otelwax clickhouse check [-c FILE] [connection overrides]

The connection comes from the ``clickhouse`` section of the deployment config (``-c``,
else ``$OTELWAX_CONFIG``, else the defaults: embedded chdb in ``.data/chdb``); flags override
it. ``init`` runs the DDL (idempotent, ``IF NOT EXISTS``); ``--dry-run`` only prints it.
``check`` prints every problem (missing table, missing or incompatible column) and exits 1 if
there is one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# flag -> (type, help); each overrides that key of the config's clickhouse section.
_OVERRIDES: dict[str, tuple[type, str]] = {
    "mode": (str, "embedded (chdb in --path) or server"),
    "path": (str, "embedded: chdb data folder"),
    "host": (str, "server: host name"),
    "port": (int, "server: native protocol port (9000)"),
    "http_port": (int, "server: HTTP port (8123)"),
    "user": (str, "server: user (the password comes from $OTELWAX_CLICKHOUSE_PASSWORD)"),
    "database": (str, "database of the tables (otel)"),
    "traces_table": (str, "spans table (otel_traces)"),
    "logs_table": (str, "logs table (otel_logs)"),
}
ENV_VARS = {"OTELWAX_CLICKHOUSE_PASSWORD": "server password (default of clickhouse.password)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["init", "check"], help="create tables / check them")
    parser.add_argument("-c", "--config", help="deployment YAML (default: $OTELWAX_CONFIG)")
    parser.add_argument("--dry-run", action="store_true", help="init: print the DDL, run nothing")
    parser.add_argument(
        "--variant",
        choices=["auto", "modern", "legacy"],
        help="table layout (auto: legacy for ClickHouse < 20)",
    )
    parser.add_argument("--ttl-days", type=int, help="drop rows after N days (0 = keep)")
    for name, (typ, text) in _OVERRIDES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=typ, dest=f"ch_{name}", help=text)


def _config(args: argparse.Namespace) -> Any:
    from connectors.clickhouse import ClickHouseConfig
    from otelwax.config import ConfigError, load_config
    from otelwax.settings import ValidationError, format_errors

    try:
        base = load_config(args.config).clickhouse
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from exc
    data = base.model_dump()
    data["password"] = base.password  # keep the secret as a secret
    for name in _OVERRIDES:
        v = getattr(args, f"ch_{name}", None)
        if v is not None:
            data[name] = v
    tables = dict(data.get("tables") or {})
    if args.variant:
        tables["variant"] = args.variant
    if args.ttl_days is not None:
        tables["ttl_days"] = args.ttl_days
    data["tables"] = tables
    try:
        return ClickHouseConfig.model_validate(data)
    except ValidationError as exc:
        for line in format_errors(exc, "clickhouse", ClickHouseConfig):
            print(line, file=sys.stderr)
        raise SystemExit(1) from exc


def run(args: argparse.Namespace) -> int:
    from connectors.clickhouse import check_table, init_schema, open_client
    from connectors.clickhouse_schema import schema_ddl
    from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA

    cfg = _config(args)
    where = cfg.path if cfg.mode == "embedded" else f"{cfg.host}:{cfg.port}"
    if args.action == "init" and args.dry_run:
        legacy = cfg.tables.variant == "legacy"
        for sql in schema_ddl(
            cfg.database, cfg.traces_table, cfg.logs_table, cfg.tables, legacy=legacy
        ):
            print(sql.rstrip() + ";\n")
        return 0
    client = open_client(cfg)
    try:
        if args.action == "init":
            stmts = init_schema(client, cfg)
            print(f"clickhouse ({cfg.mode} {where}): {len(stmts)} statements run; tables ready:")
            for t in (cfg.traces_table, cfg.logs_table):
                print(f"  {cfg.database}.{t}")
            return 0
        problems: list[str] = []
        for table, schema in ((cfg.traces_table, TRACES_SCHEMA), (cfg.logs_table, LOGS_SCHEMA)):
            problems += check_table(client, f"{cfg.database}.{table}", schema)
        for p in problems:
            print(f"problem: {p}")
        if problems:
            return 1
        dedup = client.supports_dedup_token(f"{cfg.database}.{cfg.traces_table}")
        print(
            f"clickhouse ({cfg.mode} {where}): {cfg.database}.{cfg.traces_table} and "
            f"{cfg.database}.{cfg.logs_table} accept every column; "
            f"insert deduplication tokens {'supported' if dedup else 'NOT supported'}"
        )
        return 0
    finally:
        client.close()
