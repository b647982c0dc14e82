"""``otelwax clickhouse init|check|migrate``: create each flow's ClickHouse tables, check
them, or bring older ones up to this version.

    otelwax clickhouse init    [-c FILE] [--flow traces ...] [--dry-run] [connection overrides]
    otelwax clickhouse check   [-c FILE] [--flow traces ...] [connection overrides]
    otelwax clickhouse migrate [-c FILE] [--flow traces ...] [--apply] [connection overrides]

Each flow writes to its own store (``flows.<flow>.clickhouse``, else the top-level
``clickhouse`` section, else the defaults: embedded chdb in ``.data/chdb/<flow>``), so both
actions go flow by flow: traces → ``otel_traces``, logs → ``otel_logs``, metrics and
spanmetrics → the ``otel_metrics_*`` tables. Without ``--flow``: every flow that has a
ClickHouse output. Flags override the connection of every flow handled.

``init`` runs the DDL (idempotent, ``IF NOT EXISTS``); ``--dry-run`` only prints it. ``check``
reads only (an embedded folder that does not exist yet is reported, not created) and prints
every problem — missing table, missing or incompatible column, no deduplication window — with
the command that fixes it; it exits 1 if there is one. ``migrate`` (traces, logs and metrics)
prints how each live table differs from what this version creates for its layout (missing
columns and indexes, TTL, settings such as the deduplication window) and, with ``--apply``,
runs the additive statements (ADD COLUMN, ADD INDEX, MODIFY SETTING, MODIFY TTL); it never
drops or rewrites data, and reports what only a new table can change.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FLOWS = ("traces", "logs", "metrics", "spanmetrics", "logmetrics")

# flag -> (type, help); each overrides that key of the flows' clickhouse settings.
_OVERRIDES: dict[str, tuple[type, str]] = {
    "mode": (str, "embedded (chdb in --path) or server"),
    "path": (str, "embedded: chdb data folder ({flow} becomes the flow's name)"),
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
    parser.add_argument(
        "action",
        choices=["init", "check", "migrate"],
        help="create tables / check them / show (and --apply) what this version adds",
    )
    parser.add_argument("-c", "--config", help="deployment YAML (default: $OTELWAX_CONFIG)")
    parser.add_argument(
        "--flow",
        action="append",
        choices=FLOWS,
        help="only this flow's tables (repeatable; default: every flow with ClickHouse)",
    )
    parser.add_argument("--dry-run", action="store_true", help="init: print the DDL, run nothing")
    parser.add_argument(
        "--apply", action="store_true", help="migrate: run the additive statements shown"
    )
    parser.add_argument(
        "--variant",
        choices=["auto", "modern", "legacy"],
        help="table layout (auto: legacy for ClickHouse < 20)",
    )
    parser.add_argument("--ttl-days", type=int, help="drop rows after N days (0 = keep)")
    for name, (typ, text) in _OVERRIDES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=typ, dest=f"ch_{name}", help=text)


def _with_overrides(base: Any, args: argparse.Namespace, flow: str) -> Any:
    from connectors.clickhouse import ClickHouseConfig
    from otelwax.settings import ValidationError, format_errors

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
        return ClickHouseConfig.model_validate(data).for_flow(flow)
    except ValidationError as exc:
        for line in format_errors(exc, f"flows.{flow}.clickhouse", ClickHouseConfig):
            print(line, file=sys.stderr)
        raise SystemExit(1) from exc


def flow_stores(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(flow, its ClickHouseConfig) for the flows handled, overrides applied."""
    from otelwax.cli.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from exc
    out = []
    for flow in args.flow or FLOWS:
        ch = getattr(cfg.flow_settings(flow), "clickhouse", None)
        if ch is None:
            if args.flow:
                print(f"flows.{flow}: has no ClickHouse output (clickhouse: null)", file=sys.stderr)
                raise SystemExit(1)
            continue
        out.append((flow, _with_overrides(ch, args, flow)))
    return out


def _where(cfg: Any) -> str:
    return f"embedded {cfg.path}" if cfg.mode == "embedded" else f"server {cfg.host}:{cfg.port}"


def _tables(flow: str, cfg: Any) -> list[tuple[str, Any]]:
    """(table, Arrow schema) the flow writes."""
    from otelwax.metric_schemas import METRIC_SCHEMAS
    from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA

    if flow == "traces":
        return [(cfg.traces_table, TRACES_SCHEMA)]
    if flow == "logs":
        return [(cfg.logs_table, LOGS_SCHEMA)]
    return list(METRIC_SCHEMAS.items())


def _ddl(flow: str, cfg: Any, legacy: bool) -> list[str]:
    from connectors.clickhouse_metrics_schema import metrics_ddl
    from connectors.clickhouse_schema import schema_ddl

    if flow in ("traces", "logs"):
        traces = cfg.traces_table if flow == "traces" else None
        logs = cfg.logs_table if flow == "logs" else None
        return schema_ddl(cfg.database, traces, logs, cfg.schema_options, legacy=legacy)
    return metrics_ddl(cfg.database, ttl_days=cfg.tables.ttl_days, opts=cfg.tables)


def _too_old(flow: str, client: Any, explicit: bool) -> str | None:
    """Why ``flow``'s tables cannot live on this server (None: they can)."""
    if flow not in ("traces", "logs") and getattr(client, "legacy", False):
        version = getattr(client, "version", "") or "< 20"
        return (
            f"{flow}: ClickHouse {version} is too old for the otel_metrics_* tables (Map, "
            f"DateTime64); point flows.{flow}.clickhouse at ClickHouse 20+ or chdb, or set it "
            "to null" + ("" if explicit else " (skipped)")
        )
    return None


@contextlib.contextmanager
def _store(flow: str, cfg: Any, explicit: bool) -> Iterator[tuple[Any, str | None]]:
    """``flow``'s ClickHouse client (closed on exit) and why its server is too old for the
    flow's tables (None: it is not)."""
    from connectors.clickhouse import open_client

    client = open_client(cfg.model_copy(update={"create_schema": False}))
    try:
        yield client, _too_old(flow, client, explicit)
    finally:
        client.close()


def _init(flow: str, cfg: Any, dry_run: bool, explicit: bool) -> bool:
    from connectors.clickhouse_schema import create_schema

    if dry_run:
        for sql in _ddl(flow, cfg, legacy=cfg.tables.variant == "legacy"):
            print(sql.rstrip() + ";\n")
        return True
    with _store(flow, cfg, explicit) as (client, too_old):
        if too_old:
            print(too_old, file=sys.stderr)
            return not explicit
        if flow in ("traces", "logs"):
            traces = cfg.traces_table if flow == "traces" else None
            logs = cfg.logs_table if flow == "logs" else None
            stmts = create_schema(client, cfg.database, traces, logs, cfg.schema_options)
        else:
            stmts = _ddl(flow, cfg, legacy=False)
            for sql in stmts:
                client.execute(sql)
        names = ", ".join(f"{cfg.database}.{t}" for t, _ in _tables(flow, cfg))
        print(f"{flow} ({_where(cfg)}): {len(stmts)} statements run; ready: {names}")
        return True


def _check(flow: str, cfg: Any, config: str | None, explicit: bool) -> list[str]:
    from connectors.clickhouse import check_table
    from connectors.clickhouse_intents import check_dedup_window

    fix = f"otelwax clickhouse init{f' -c {config}' if config else ''} --flow {flow}"
    if cfg.mode == "embedded" and not Path(cfg.path).is_dir():
        return [f"{flow}: {cfg.path} does not exist yet (the flow creates it, or run: {fix})"]
    problems: list[str] = []
    with _store(flow, cfg, explicit) as (client, too_old):
        if too_old:
            if explicit:
                return [too_old]
            print(f"note: {too_old}")
            return []
        for table, schema in _tables(flow, cfg):
            found = check_table(client, f"{cfg.database}.{table}", schema)
            problems += [f"{flow}: {p} (fix: {fix})" for p in found]
            if not found:
                try:  # a small window is logged as a warning
                    check_dedup_window(client, cfg.database, table, min_window=100)
                except RuntimeError as exc:
                    problems.append(f"{flow}: {exc}")
        if not problems:
            tables = [t for t, _ in _tables(flow, cfg)]
            dedup = client.supports_dedup_token(f"{cfg.database}.{tables[0]}")
            print(
                f"{flow} ({_where(cfg)}): {cfg.database}: {', '.join(tables)} accept every "
                f"column; insert deduplication tokens {'supported' if dedup else 'NOT supported'}"
            )
    return problems


def _migrate(flow: str, cfg: Any, apply: bool, explicit: bool) -> bool:
    """Print (and with ``apply`` run) ``flow``'s migration; False when something is left."""
    from connectors.clickhouse_migrate import Change, apply_changes, plan_migration

    if cfg.mode == "embedded" and not Path(cfg.path).is_dir():
        print(f"{flow}: {cfg.path} does not exist yet (nothing to migrate)")
        return True
    with _store(flow, cfg, explicit) as (client, too_old):
        if too_old:
            print(too_old, file=sys.stderr)
            return not explicit
        kind = flow if flow in ("traces", "logs") else "metrics"
        changes: list[Change] = []
        for table, _ in _tables(flow, cfg):
            found = plan_migration(client, cfg.database, table, kind, cfg.schema_options)
            if not found:
                print(f"{flow} ({_where(cfg)}): {cfg.database}.{table} is up to date")
            changes += found
        for c in changes:
            print(f"{flow}: {c.what}")
            if c.sql:
                print(f"  {'running' if apply else 'would run'}: {c.sql}")
        todo = [c for c in changes if c.sql]
        if apply and todo:
            from otelwax.cli.progress import Progress

            n = 0
            with Progress(f"{flow}: migrate", "statements") as bar:
                for c in todo:  # an ALTER on a big table can take a while
                    n += apply_changes(client, [c])
                    bar.update(n, len(todo))
            print(f"{flow} ({_where(cfg)}): {n} statements run")
        return not todo or apply


def run(args: argparse.Namespace) -> int:
    stores = flow_stores(args)
    if not stores:
        print("no flow writes to ClickHouse in this config", file=sys.stderr)
        return 1
    explicit = bool(args.flow)
    if args.action == "init":
        from otelwax.cli.progress import Progress

        ok = []
        with Progress("clickhouse init", "flows", quiet=args.dry_run or len(stores) < 2) as bar:
            for flow, cfg in stores:
                ok.append(_init(flow, cfg, args.dry_run, explicit))
                bar.update(len(ok), len(stores))
        return 0 if all(ok) else 1
    if args.action == "migrate":
        ok = [_migrate(flow, cfg, args.apply, explicit) for flow, cfg in stores]
        return 0 if all(ok) else 1
    problems: list[str] = []
    for flow, cfg in stores:
        problems += _check(flow, cfg, args.config, explicit)
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0
