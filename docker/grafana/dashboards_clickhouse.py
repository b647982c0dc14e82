"""ClickHouse dashboards over the clickhouseexporter tables (otelwax/schemas.py) in the
``otel`` database: traces (latency, trace search, one trace) and logs (volume, errors, records)."""

from __future__ import annotations

from typing import Any

from grafana_kit import Layout, ch_panel, ch_var, dashboard, textbox

DB = "otel"


def per_second_by(title: str, column: str, value: str, t: str, where: str) -> dict[str, Any]:
    """Rows of table ``t`` per second over time, one line per value of ``column``."""
    sql = f"""SELECT $__timeInterval(Timestamp) AS time, {column},
    count() / $__interval_s AS {value} FROM {t} WHERE {where}
    GROUP BY time, {column} ORDER BY time"""
    return ch_panel("timeseries", title, sql, unit="short")


def recent_values(name: str, label: str, column: str, t: str) -> dict[str, Any]:
    """A variable over the values of ``column`` seen in table ``t`` during the last day."""
    sql = f"SELECT DISTINCT {column} FROM {t} WHERE Timestamp > now() - INTERVAL 1 DAY"
    return ch_var(name, label, sql)


def key_values(column: str) -> str:
    """``[{'key': k, 'value': v}, ...]`` of an attribute column, Map or JSON (tables.json) alike:
    both serialize to a JSON object, which parsed as JSON lists every dotted path with its
    value (needs the JSON type: ClickHouse >= 25.3, chdb)."""
    j = f"toJSONString({column})::JSON"
    return f"arrayMap((k, v) -> map('key', k, 'value', v), JSONAllPaths({j}), JSONAllValues({j}))"


# --- traces from ClickHouse --------------------------------------------------------------


def traces() -> dict[str, Any]:
    lay = Layout()
    t = f"{DB}.otel_traces"
    where = "$__timeFilter(Timestamp) AND ServiceName IN (${service:singlequote})"
    panels = [
        lay.row("Latency"),
        lay.place(
            ch_panel(
                "timeseries",
                "Span duration p99 by service",
                f"""SELECT $__timeInterval(Timestamp) AS time, ServiceName,
                quantile(0.99)(Duration) / 1e6 AS p99_ms
                FROM {t} WHERE {where} AND SpanKind IN ('SPAN_KIND_SERVER',
                'SPAN_KIND_CONSUMER') GROUP BY time, ServiceName ORDER BY time""",
                unit="ms",
            ),
            12,
            8,
        ),
        lay.place(
            per_second_by(
                "Spans stored per second by service", "ServiceName", "spans_per_s", t, where
            ),
            12,
            8,
        ),
        lay.place(
            ch_panel(
                "table",
                "Latency by service and operation",
                f"""SELECT ServiceName, SpanName, count() AS spans,
                countIf(StatusCode = 'STATUS_CODE_ERROR') / count() AS error_ratio,
                quantile(0.5)(Duration) / 1e6 AS p50_ms,
                quantile(0.99)(Duration) / 1e6 AS p99_ms
                FROM {t} WHERE {where} GROUP BY ServiceName, SpanName
                ORDER BY p99_ms DESC LIMIT 50""",
                showHeader=True,
            ),
            24,
            9,
        ),
        lay.row("Trace search"),
        lay.place(
            ch_panel(
                "table",
                "Slowest root spans (click a trace id, then look it up below)",
                f"""SELECT Timestamp, TraceId, ServiceName, SpanName,
                Duration / 1e6 AS duration_ms, StatusCode FROM {t}
                WHERE {where} AND ParentSpanId = ''
                AND SpanName ILIKE concat('%', ${{span_filter:sqlstring}}, '%')
                ORDER BY Duration DESC LIMIT 100""",
                showHeader=True,
            ),
            24,
            10,
        ),
        lay.place(
            ch_panel(
                "traces",
                "Trace ${trace_id}",
                f"""SELECT TraceId AS traceID, SpanId AS spanID,
                ParentSpanId AS parentSpanID, ServiceName AS serviceName,
                SpanName AS operationName, Timestamp AS startTime,
                Duration / 1e6 AS duration,
                {key_values("SpanAttributes")} AS tags,
                {key_values("ResourceAttributes")} AS serviceTags,
                StatusCode AS statusCode
                FROM {t} WHERE TraceId = ${{trace_id:sqlstring}}
                ORDER BY startTime ASC""",
            ),
            24,
            14,
        ),
    ]
    variables = [
        recent_values("service", "Service", "ServiceName", t),
        textbox("span_filter", "Span name contains"),
        textbox("trace_id", "Trace id"),
    ]
    return dashboard("otelwax-traces", "Traces (ClickHouse)", panels, variables, ["traces"])


# --- logs from ClickHouse ----------------------------------------------------------------


def logs() -> dict[str, Any]:
    lay = Layout()
    t = f"{DB}.otel_logs"
    where = (
        "$__timeFilter(Timestamp) AND ServiceName IN (${service:singlequote})"
        " AND SeverityText IN (${severity:singlequote})"
    )
    panels = [
        lay.row("Volume by severity"),
        lay.place(
            per_second_by(
                "Log records per second by severity", "SeverityText", "logs_per_s", t, where
            ),
            16,
            8,
        ),
        lay.place(
            ch_panel(
                "bargauge",
                "Records by severity",
                f"""SELECT SeverityText, count() AS records FROM {t} WHERE {where}
                GROUP BY SeverityText ORDER BY min(SeverityNumber)""",
                displayMode="gradient",
                orientation="horizontal",
                reduceOptions={"calcs": ["lastNotNull"], "values": True},
            ),
            8,
            8,
        ),
        lay.place(
            ch_panel(
                "table",
                "Errors by service (SeverityNumber >= 17)",
                f"""SELECT ServiceName, countIf(SeverityNumber >= 17) AS errors,
                count() AS records, errors / records AS error_ratio FROM {t}
                WHERE {where} GROUP BY ServiceName ORDER BY errors DESC LIMIT 50""",
                showHeader=True,
            ),
            24,
            8,
        ),
        lay.row("Records"),
        lay.place(
            ch_panel(
                "logs",
                "Latest records",
                f"""SELECT Timestamp AS timestamp, Body AS body, SeverityText AS level,
                ServiceName, TraceId, SpanId FROM {t} WHERE {where}
                AND Body ILIKE concat('%', ${{text:sqlstring}}, '%')
                ORDER BY Timestamp DESC LIMIT 1000""",
                showTime=True,
                wrapLogMessage=True,
                sortOrder="Descending",
                enableLogDetails=True,
            ),
            24,
            14,
        ),
    ]
    variables = [
        recent_values("service", "Service", "ServiceName", t),
        recent_values("severity", "Severity", "SeverityText", t),
        textbox("text", "Body contains"),
    ]
    return dashboard("otelwax-logs", "Logs (ClickHouse)", panels, variables, ["logs"])
