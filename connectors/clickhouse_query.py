"""Named read-only queries over the otel tables: what landed, recent traces, one trace, services.

Used by ``otelwax query`` (against a server, or an embedded folder no flow holds) and by a
running flow's metrics port (``/query/NAME``), which answers for its embedded chdb: chdb allows
one process per folder, so the process that writes is the one that can read while it runs.

Every query works on both table layouts (modern ``DateTime64(9)`` timestamps, and the legacy
``DateTime`` + ``TimestampNs`` of ClickHouse < 20). Identifiers are validated and quoted;
values go as ``{name:Type}`` parameters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.clickhouse import ClickHouseClient
from connectors.clickhouse_client import table_engine
from connectors.clickhouse_schema import qualified, trace_copy_table

log = logging.getLogger(__name__)

__all__ = ["QUERIES", "QueryError", "QueryResult", "Tables", "run_query", "serve_queries"]


class QueryError(ValueError):
    """A query cannot run: unknown name, bad parameter, missing table."""


@dataclass(frozen=True)
class Tables:
    """Where the spans and logs are."""

    database: str = "otel"
    traces: str = "otel_traces"
    logs: str = "otel_logs"

    @classmethod
    def of(cls, cfg: Any) -> Tables:
        """From a ``ClickHouseConfig``-shaped object."""
        return cls(cfg.database, cfg.traces_table, cfg.logs_table)


@dataclass
class QueryResult:
    """Rows with their column names (JSON-friendly)."""

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, int | float | str) or v is None:
        return v
    return str(v)


def _result(columns: list[str], rows: list[tuple]) -> QueryResult:
    return QueryResult(columns, [[_plain(v) for v in r] for r in rows])


def _columns(client: ClickHouseClient, db: str, table: str) -> set[str]:
    rows = client.execute(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        {"db": db, "t": table},
    )
    if not rows:
        raise QueryError(f"table {db}.{table} does not exist (otelwax clickhouse init creates it)")
    return {r[0] for r in rows}


def _span_table(client: ClickHouseClient, t: Tables) -> tuple[str, str]:
    """The qualified spans table and the expression of a span's start in nanoseconds."""
    cols = _columns(client, t.database, t.traces)
    start_ns = "TimestampNs" if "TimestampNs" in cols else "toUnixTimestamp64Nano(Timestamp)"
    return qualified(t.database, t.traces), start_ns


def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise QueryError(f"{name}: want an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise QueryError(f"{name}: want {lo}..{hi}, got {value}")
    return value


_ERROR = "StatusCode = 'STATUS_CODE_ERROR'"


def counts(client: ClickHouseClient, t: Tables, params: dict[str, Any]) -> QueryResult:
    """Rows in every table of the database (views excluded)."""
    names = client.execute(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND engine NOT IN ('View', 'MaterializedView') ORDER BY name",
        {"db": t.database},
    )
    rows = [
        (name, client.execute(f"SELECT count() FROM {qualified(t.database, name)}")[0][0])
        for (name,) in names
        if not name.startswith(".")
    ]
    return _result(["table", "rows"], rows)


def services(client: ClickHouseClient, t: Tables, params: dict[str, Any]) -> QueryResult:
    """Spans, error rate and latency per service over the last ``since_s`` seconds, worst p99
    first."""
    table, _ = _span_table(client, t)
    since = _int(params, "since_s", 3600, 1, 90 * 86400)
    limit = _int(params, "limit", 20, 1, 1000)
    sql = (
        f"SELECT ServiceName, count() AS spans, countIf({_ERROR}) AS errors, "
        "round(errors / spans, 4) AS error_rate, "
        "round(quantile(0.5)(Duration) / 1e6, 3) AS p50_ms, "
        "round(quantile(0.99)(Duration) / 1e6, 3) AS p99_ms "
        f"FROM {table} WHERE Timestamp >= now() - {{since:UInt32}} "
        "GROUP BY ServiceName ORDER BY p99_ms DESC, ServiceName LIMIT {limit:UInt32}"
    )
    rows = client.execute(sql, {"since": since, "limit": limit})
    return _result(["service", "spans", "errors", "error_rate", "p50_ms", "p99_ms"], rows)


def traces(client: ClickHouseClient, t: Tables, params: dict[str, Any]) -> QueryResult:
    """The most recent traces (``limit``), slowest first when ``slowest=1``."""
    table, start_ns = _span_table(client, t)
    since = _int(params, "since_s", 3600, 1, 90 * 86400)
    limit = _int(params, "limit", 20, 1, 1000)
    order = "duration_ms DESC" if _int(params, "slowest", 0, 0, 1) else "start_ns DESC"
    sql = (
        f"SELECT TraceId, min({start_ns}) AS start_ns, "
        f"round((max({start_ns} + Duration) - start_ns) / 1e6, 3) AS duration_ms, "
        "count() AS spans, "
        f"countIf({_ERROR}) AS errors, "
        "argMin(ServiceName, ParentSpanId != '') AS root_service, "
        "argMin(SpanName, ParentSpanId != '') AS root_span "
        f"FROM {table} WHERE Timestamp >= now() - {{since:UInt32}} "
        f"GROUP BY TraceId ORDER BY {order} LIMIT {{limit:UInt32}}"
    )
    rows = client.execute(sql, {"since": since, "limit": limit})
    cols = ["trace_id", "start_ns", "duration_ms", "spans", "errors", "root_service", "root_span"]
    return _result(cols, rows)


def _trace_table(client: ClickHouseClient, t: Tables) -> tuple[str, str]:
    """``_span_table`` for reading one trace: the trace-ordered copy when the store has one
    as a table (18.16; a modern server's ``by_trace`` projection is read through the spans
    table itself), where a trace is one granule instead of a scan."""
    table, start_ns = _span_table(client, t)
    copy = trace_copy_table(t.traces)
    found = table_engine(client, t.database, copy)
    return (qualified(t.database, copy) if found else table), start_ns


def trace(client: ClickHouseClient, t: Tables, params: dict[str, Any]) -> QueryResult:
    """Every span of trace ``id`` in start order."""
    table, start_ns = _trace_table(client, t)
    tid = str(params.get("id", "")).lower()
    if len(tid) != 32 or any(c not in "0123456789abcdef" for c in tid):
        raise QueryError(f"id: want 32 hex digits, got {tid!r}")
    sql = (
        f"SELECT SpanId, ParentSpanId, ServiceName, SpanName, {start_ns} AS start_ns, "
        f"round(Duration / 1e6, 3) AS duration_ms, StatusCode FROM {table} "
        "WHERE TraceId = {id:String} ORDER BY start_ns, SpanId"
        # A trace viewed again skips reading and decompressing its blocks; a miss costs what
        # it costs without the cache (18.16, bench/README.md).
        " SETTINGS use_uncompressed_cache = 1"
    )
    rows = client.execute(sql, {"id": tid})
    cols = ["span_id", "parent_span_id", "service", "span", "start_ns", "duration_ms", "status"]
    return _result(cols, rows)


def timeline(client: ClickHouseClient, t: Tables, params: dict[str, Any]) -> QueryResult:
    """Spans, errors and p99 per service and minute over the last ``since_s`` seconds."""
    table, _ = _span_table(client, t)
    since = _int(params, "since_s", 3600, 60, 7 * 86400)
    sql = (
        "SELECT toUnixTimestamp(toStartOfMinute(Timestamp)) AS minute, ServiceName, "
        f"count() AS spans, countIf({_ERROR}) AS errors, "
        "round(quantile(0.99)(Duration) / 1e6, 3) AS p99_ms "
        f"FROM {table} WHERE Timestamp >= now() - {{since:UInt32}} "
        "GROUP BY minute, ServiceName ORDER BY minute, ServiceName"
    )
    rows = client.execute(sql, {"since": since})
    return _result(["minute", "service", "spans", "errors", "p99_ms"], rows)


QUERIES: dict[str, Callable[[ClickHouseClient, Tables, dict[str, Any]], QueryResult]] = {
    "counts": counts,
    "services": services,
    "traces": traces,
    "trace": trace,
    "timeline": timeline,
}


def run_query(
    client: ClickHouseClient, tables: Tables, name: str, params: dict[str, Any] | None = None
) -> QueryResult:
    """Run the named query; raises :class:`QueryError` for a bad name or parameter."""
    fn = QUERIES.get(name)
    if fn is None:
        raise QueryError(f"unknown query {name!r}: one of {', '.join(QUERIES)}")
    return fn(client, tables, dict(params or {}))


def serve_queries(client: ClickHouseClient, tables: Tables) -> None:
    """Answer ``/query/NAME?param=value`` on this process's metrics port with ``client``
    (a flow's embedded chdb, which no other process can open while the flow runs)."""
    from otelwax.telemetry import add_route

    def answer(name: str, params: dict[str, str]) -> tuple[int, bytes]:
        try:
            result = run_query(client, tables, name.strip("/"), params)
        except QueryError as exc:
            return 400, json.dumps({"error": str(exc)}).encode()
        except Exception as exc:  # the flow goes on; the caller sees why
            log.warning("query %s failed: %s", name, exc)
            return 500, json.dumps({"error": str(exc)}).encode()
        return 200, json.dumps(result.to_json()).encode()

    add_route("/query/", answer)
