"""Writes the Grafana dashboards of docker/grafana/dashboards/*.json.

The JSON files are committed (Grafana provisions them as they are); this script is their
source. After editing it run ``python docker/grafana/build_dashboards.py``;
tests/docker/test_grafana.py fails when the committed JSON differs from what it builds.

Datasource uids (``prometheus``, ``clickhouse``) are the ones of
provisioning/datasources/datasources.yaml. Prometheus queries use the span-metrics names of the
Collector's spanmetrics connector and otelwax's own counters (otelwax/telemetry.py); ClickHouse
queries use the clickhouseexporter tables (otelwax/schemas.py) in the ``otel`` database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
DB = "otel"

# Formats of the ClickHouse plugin's queries.
CH_TIME_SERIES, CH_TABLE, CH_LOGS, CH_TRACE = 0, 1, 2, 3

# Server-side spans: what a service answers (RED is measured on these).
ENTRY_KINDS = 'span_kind=~"SPAN_KIND_SERVER|SPAN_KIND_CONSUMER"'
SVC = 'service_name=~"$service"'
# Error log records by event time (flows.logmetrics; severity is the SeverityNumber range).
ERROR_LOGS = f'otelwax_log_records_total{{severity=~"ERROR|FATAL",{SVC}}}'


class Layout:
    """Places panels left to right on a 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, panel: dict[str, Any], w: int, h: int) -> dict[str, Any]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"type": "row", "title": title, "collapsed": False, "panels": []}
        panel = self.place(panel, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0
        return panel


def prom_target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": PROM, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}


def ch_target(sql: str, fmt: int, ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": CH,
        "refId": ref,
        "editorType": "sql",
        "format": fmt,
        "queryType": {CH_TIME_SERIES: "timeseries", CH_TABLE: "table", CH_LOGS: "logs"}.get(
            fmt, "traces"
        ),
        "rawSql": " ".join(sql.split()),
    }


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    description: str = "",
    **options: Any,
) -> dict[str, Any]:
    ds = targets[0]["datasource"]
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": ds,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options,
    }
    # Every option the panel schema requires is written out (as Grafana exports it), so the
    # JSON passes the Grafana Foundation SDK's strict decoding (tests/docker/grafanacheck).
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 10, "lineWidth": 1}
        p["options"].setdefault("legend", legend)
        p["options"].setdefault("tooltip", {"mode": "multi", "sort": "desc"})
    elif kind == "table":
        p["options"].setdefault("frameIndex", 0)
    elif kind == "bargauge":
        defaults = {
            "valueMode": "color",
            "namePlacement": "auto",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizWidth": 8,
            "minVizHeight": 16,
            "maxVizHeight": 300,
            "legend": {**legend, "showLegend": False},
        }
        p["options"] = {**defaults, **p["options"]}
    elif kind == "logs":
        defaults = {
            "showLabels": False,
            "showCommonLabels": False,
            "showLogContextToggle": False,
            "prettifyLogMessage": False,
            "dedupStrategy": "none",
        }
        p["options"] = {**defaults, **p["options"]}
    elif kind == "stat":
        defaults = {
            "justifyMode": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
            "orientation": "auto",
        }
        p["options"] = {**defaults, **p["options"]}
    return p


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]], tags
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["otelwax", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["otelwax"],
                "asDropdown": True,
                "title": "otelwax",
                "icon": "external link",
                "tooltip": "",
                "targetBlank": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def prom_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def ch_var(name: str, label: str, sql: str) -> dict[str, Any]:
    sql = " ".join(sql.split())
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": CH,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def textbox(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "textbox",
        "query": "",
        "current": {"text": "", "value": ""},
    }


# --- service overview: RED from span metrics (Prometheus) --------------------------------


def service_overview() -> dict[str, Any]:
    lay = Layout()
    calls = f"traces_span_metrics_calls_total{{{ENTRY_KINDS},{SVC}}}"
    err = 'status_code="STATUS_CODE_ERROR"'
    errors = f"traces_span_metrics_calls_total{{{ENTRY_KINDS},{SVC},{err}}}"
    buckets = f"traces_span_metrics_duration_milliseconds_bucket{{{ENTRY_KINDS},{SVC}}}"
    rate = "[$__rate_interval]"
    panels = [
        lay.row("Rate, errors, duration per service (server and consumer spans)"),
        lay.place(
            panel(
                "timeseries",
                "Request rate",
                [prom_target(f"sum by (service_name) (rate({calls}{rate}))", "{{service_name}}")],
                unit="reqps",
            ),
            8,
            8,
        ),
        lay.place(
            panel(
                "timeseries",
                "Error ratio",
                [
                    prom_target(
                        f"sum by (service_name) (rate({errors}{rate}))"
                        f" / sum by (service_name) (rate({calls}{rate}))",
                        "{{service_name}}",
                    )
                ],
                unit="percentunit",
                description="Share of spans with STATUS_CODE_ERROR.",
            ),
            8,
            8,
        ),
        lay.place(
            panel(
                "timeseries",
                "Duration p50 / p99",
                [
                    prom_target(
                        "histogram_quantile(0.99, sum by (service_name, le)"
                        f" (rate({buckets}{rate})))",
                        "p99 {{service_name}}",
                    ),
                    prom_target(
                        "histogram_quantile(0.50, sum by (service_name, le)"
                        f" (rate({buckets}{rate})))",
                        "p50 {{service_name}}",
                        "B",
                    ),
                ],
                unit="ms",
            ),
            8,
            8,
        ),
        lay.row("Operations"),
        lay.place(
            panel(
                "table",
                "Top operations by rate",
                [
                    {
                        **prom_target(
                            f"topk(20, sum by (service_name, span_name) (rate({calls}{rate})))"
                        ),
                        "format": "table",
                        "instant": True,
                    }
                ],
                unit="reqps",
                showHeader=True,
            ),
            12,
            10,
        ),
        lay.place(
            panel(
                "table",
                "Top operations by error rate",
                [
                    {
                        **prom_target(
                            f"topk(20, sum by (service_name, span_name) (rate({errors}{rate})))"
                        ),
                        "format": "table",
                        "instant": True,
                    }
                ],
                unit="reqps",
                showHeader=True,
            ),
            12,
            10,
        ),
        lay.place(
            panel(
                "timeseries",
                "Client calls by status (outgoing spans)",
                [
                    prom_target(
                        "sum by (service_name, status_code) (rate(traces_span_metrics_calls_total"
                        f'{{span_kind=~"SPAN_KIND_CLIENT|SPAN_KIND_PRODUCER",{SVC}}}{rate}))',
                        "{{service_name}} {{status_code}}",
                    )
                ],
                unit="reqps",
            ),
            24,
            8,
        ),
        lay.row("Logs by event time (flows.logmetrics)"),
        lay.place(
            panel(
                "timeseries",
                "Error logs per second",
                [
                    prom_target(
                        f"sum by (service_name) (rate({ERROR_LOGS}{rate}))", "{{service_name}}"
                    )
                ],
                unit="cps",
                description="Log records with severity ERROR or FATAL, counted in the window of "
                "their own timestamp (a backlog lands where it belongs). Alert: ServiceErrorLogs.",
            ),
            24,
            8,
        ),
    ]
    variables = [
        prom_var(
            "service", "Service", "label_values(traces_span_metrics_calls_total, service_name)"
        )
    ]
    return dashboard(
        "otelwax-services", "Services overview (RED)", panels, variables, ["red", "spanmetrics"]
    )


# --- traces from ClickHouse --------------------------------------------------------------


def traces() -> dict[str, Any]:
    lay = Layout()
    t = f"{DB}.otel_traces"
    where = "$__timeFilter(Timestamp) AND ServiceName IN (${service:singlequote})"
    panels = [
        lay.row("Latency"),
        lay.place(
            panel(
                "timeseries",
                "Span duration p99 by service",
                [
                    ch_target(
                        f"""SELECT $__timeInterval(Timestamp) AS time, ServiceName,
                        quantile(0.99)(Duration) / 1e6 AS p99_ms
                        FROM {t} WHERE {where} AND SpanKind IN ('SPAN_KIND_SERVER',
                        'SPAN_KIND_CONSUMER') GROUP BY time, ServiceName ORDER BY time""",
                        CH_TIME_SERIES,
                    )
                ],
                unit="ms",
            ),
            12,
            8,
        ),
        lay.place(
            panel(
                "timeseries",
                "Spans stored per second by service",
                [
                    ch_target(
                        f"""SELECT $__timeInterval(Timestamp) AS time, ServiceName,
                        count() / $__interval_s AS spans_per_s FROM {t} WHERE {where}
                        GROUP BY time, ServiceName ORDER BY time""",
                        CH_TIME_SERIES,
                    )
                ],
                unit="short",
            ),
            12,
            8,
        ),
        lay.place(
            panel(
                "table",
                "Latency by service and operation",
                [
                    ch_target(
                        f"""SELECT ServiceName, SpanName, count() AS spans,
                        countIf(StatusCode = 'STATUS_CODE_ERROR') / count() AS error_ratio,
                        quantile(0.5)(Duration) / 1e6 AS p50_ms,
                        quantile(0.99)(Duration) / 1e6 AS p99_ms
                        FROM {t} WHERE {where} GROUP BY ServiceName, SpanName
                        ORDER BY p99_ms DESC LIMIT 50""",
                        CH_TABLE,
                    )
                ],
                showHeader=True,
            ),
            24,
            9,
        ),
        lay.row("Trace search"),
        lay.place(
            panel(
                "table",
                "Slowest root spans (click a trace id, then look it up below)",
                [
                    ch_target(
                        f"""SELECT Timestamp, TraceId, ServiceName, SpanName,
                        Duration / 1e6 AS duration_ms, StatusCode FROM {t}
                        WHERE {where} AND ParentSpanId = ''
                        AND SpanName ILIKE concat('%', ${{span_filter:sqlstring}}, '%')
                        ORDER BY Duration DESC LIMIT 100""",
                        CH_TABLE,
                    )
                ],
                showHeader=True,
            ),
            24,
            10,
        ),
        lay.place(
            panel(
                "traces",
                "Trace ${trace_id}",
                [
                    ch_target(
                        f"""SELECT TraceId AS traceID, SpanId AS spanID,
                        ParentSpanId AS parentSpanID, ServiceName AS serviceName,
                        SpanName AS operationName, Timestamp AS startTime,
                        Duration / 1e6 AS duration,
                        arrayMap(k -> map('key', k, 'value', SpanAttributes[k]),
                        mapKeys(SpanAttributes)) AS tags,
                        arrayMap(k -> map('key', k, 'value', ResourceAttributes[k]),
                        mapKeys(ResourceAttributes)) AS serviceTags,
                        StatusCode AS statusCode
                        FROM {t} WHERE TraceId = ${{trace_id:sqlstring}}
                        ORDER BY startTime ASC""",
                        CH_TRACE,
                    )
                ],
            ),
            24,
            14,
        ),
    ]
    variables = [
        ch_var(
            "service",
            "Service",
            f"SELECT DISTINCT ServiceName FROM {t} WHERE Timestamp > now() - INTERVAL 1 DAY",
        ),
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
            panel(
                "timeseries",
                "Log records per second by severity",
                [
                    ch_target(
                        f"""SELECT $__timeInterval(Timestamp) AS time, SeverityText,
                        count() / $__interval_s AS logs_per_s FROM {t} WHERE {where}
                        GROUP BY time, SeverityText ORDER BY time""",
                        CH_TIME_SERIES,
                    )
                ],
                unit="short",
            ),
            16,
            8,
        ),
        lay.place(
            panel(
                "bargauge",
                "Records by severity",
                [
                    ch_target(
                        f"""SELECT SeverityText, count() AS records FROM {t} WHERE {where}
                        GROUP BY SeverityText ORDER BY min(SeverityNumber)""",
                        CH_TABLE,
                    )
                ],
                displayMode="gradient",
                orientation="horizontal",
                reduceOptions={"calcs": ["lastNotNull"], "values": True},
            ),
            8,
            8,
        ),
        lay.place(
            panel(
                "table",
                "Errors by service (SeverityNumber >= 17)",
                [
                    ch_target(
                        f"""SELECT ServiceName, countIf(SeverityNumber >= 17) AS errors,
                        count() AS records, errors / records AS error_ratio FROM {t}
                        WHERE {where} GROUP BY ServiceName ORDER BY errors DESC LIMIT 50""",
                        CH_TABLE,
                    )
                ],
                showHeader=True,
            ),
            24,
            8,
        ),
        lay.row("Records"),
        lay.place(
            panel(
                "logs",
                "Latest records",
                [
                    ch_target(
                        f"""SELECT Timestamp AS timestamp, Body AS body, SeverityText AS level,
                        ServiceName, TraceId, SpanId FROM {t} WHERE {where}
                        AND Body ILIKE concat('%', ${{text:sqlstring}}, '%')
                        ORDER BY Timestamp DESC LIMIT 1000""",
                        CH_LOGS,
                    )
                ],
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
        ch_var(
            "service",
            "Service",
            f"SELECT DISTINCT ServiceName FROM {t} WHERE Timestamp > now() - INTERVAL 1 DAY",
        ),
        ch_var(
            "severity",
            "Severity",
            f"SELECT DISTINCT SeverityText FROM {t} WHERE Timestamp > now() - INTERVAL 1 DAY",
        ),
        textbox("text", "Body contains"),
    ]
    return dashboard("otelwax-logs", "Logs (ClickHouse)", panels, variables, ["logs"])


# --- otelwax's own health (Prometheus) ---------------------------------------------------


def health() -> dict[str, Any]:
    lay = Layout()
    rate = "[$__rate_interval]"

    def ts(title: str, exprs: list[tuple[str, str]], unit: str, desc: str = "", w: int = 12):
        targets = [prom_target(e, legend, chr(65 + i)) for i, (e, legend) in enumerate(exprs)]
        return lay.place(panel("timeseries", title, targets, unit=unit, description=desc), w, 8)

    panels = [
        lay.row("Ingest shim"),
        ts(
            "Ingest rate (items accepted into Kafka)",
            [
                (
                    "sum by (component, unit)"
                    f' (rate(otelwax_sent_total{{component=~"ingest_.+"}}{rate}))',
                    "{{component}} {{unit}}",
                ),
                (
                    f'sum(rate(otelwax_received_total{{component="ingest",unit="requests"}}{rate}))',
                    "requests",
                ),
            ],
            "short",
            w=8,
        ),
        ts(
            "Ingest refusals by reason",
            [
                (
                    "sum by (component, unit, reason)"
                    f' (rate(otelwax_dropped_total{{component=~"ingest.*"}}{rate}))',
                    "{{component}} {{unit}} {{reason}}",
                )
            ],
            "short",
            "kafka_unavailable / queue_full: the shim answered 503/429 (UNAVAILABLE / "
            "RESOURCE_EXHAUSTED); malformed and too_large: 400/413 or partial success.",
            w=8,
        ),
        ts(
            "Kafka delivery latency (shim → broker ack)",
            [
                (
                    "histogram_quantile(0.99, sum by (le) (rate(otelwax_latency_seconds_bucket"
                    f'{{operation="kafka_delivery"}}{rate})))',
                    "p99",
                ),
                (
                    "histogram_quantile(0.5, sum by (le) (rate(otelwax_latency_seconds_bucket"
                    f'{{operation="kafka_delivery"}}{rate})))',
                    "p50",
                ),
            ],
            "s",
            w=8,
        ),
        lay.row("Flows"),
        ts(
            "Kafka consumer lag by topic",
            [("sum by (flow, topic) (otelwax_kafka_consumer_lag)", "{{flow}} {{topic}}")],
            "short",
            "Records between each partition's high watermark and the next offset a flow reads.",
        ),
        ts(
            "Consumer lag by partition",
            [("max by (topic, partition) (otelwax_kafka_consumer_lag)", "{{topic}}/{{partition}}")],
            "short",
        ),
        ts(
            "Records received by component",
            [
                (
                    "sum by (component, unit) (rate(otelwax_received_total"
                    f'{{component!~"ingest.*"}}{rate}))',
                    "{{component}} {{unit}}",
                )
            ],
            "short",
        ),
        ts(
            "Items sent (stored / passed on) by component",
            [
                (
                    "sum by (component, unit) (rate(otelwax_sent_total"
                    f'{{component!~"ingest.*"}}{rate}))',
                    "{{component}} {{unit}}",
                )
            ],
            "short",
        ),
        lay.row("Sinks"),
        ts(
            "Sink latency p99 by component and operation",
            [
                (
                    "histogram_quantile(0.99, sum by (component, operation, le)"
                    " (rate(otelwax_latency_seconds_bucket"
                    f'{{operation=~"insert|write|export"}}{rate})))',
                    "{{component}} {{operation}}",
                )
            ],
            "s",
        ),
        ts(
            "Batch size (median) by component",
            [
                (
                    "histogram_quantile(0.5, sum by (component, unit, le)"
                    f" (rate(otelwax_batch_size_bucket{rate})))",
                    "{{component}} {{unit}}",
                )
            ],
            "short",
            "Rows per decoded range and per ClickHouse insert: small inserts cost ClickHouse "
            "more per row (raise source.batch.max_bytes / max_delay_s).",
        ),
        ts(
            "Event → stored latency (span end to row in ClickHouse)",
            [
                (
                    "histogram_quantile(0.99, sum by (le) (rate(otelwax_latency_seconds_bucket"
                    f'{{operation="event_to_stored"}}{rate})))',
                    "p99",
                ),
                (
                    "histogram_quantile(0.5, sum by (le) (rate(otelwax_latency_seconds_bucket"
                    f'{{operation="event_to_stored"}}{rate})))',
                    "p50",
                ),
            ],
            "s",
        ),
        ts(
            "Failed items by component",
            [
                (
                    f"sum by (component, unit) (rate(otelwax_failed_total{rate}))",
                    "{{component}} {{unit}}",
                )
            ],
            "short",
        ),
        ts(
            "Dead-letter queue rate",
            [
                (
                    f'sum by (component) (rate(otelwax_sent_total{{component="dlq"}}{rate}))',
                    "{{component}}",
                )
            ],
            "short",
            "Records written to otlp_dlq: anything above zero needs a look.",
        ),
        ts(
            "Dropped rows by component and reason",
            [
                (
                    "sum by (component, unit, reason) (rate(otelwax_dropped_total"
                    f'{{component!~"ingest.*"}}{rate}))',
                    "{{component}} {{unit}} {{reason}}",
                )
            ],
            "short",
            "Dropped on purpose (filter, sampling, too old) or because the data cannot be stored.",
        ),
        lay.row("Targets"),
        lay.place(
            panel(
                "stat",
                "Scrape targets up",
                [prom_target('up{job=~"otelwax.*"}', "{{instance}}")],
                colorMode="background",
                graphMode="none",
                reduceOptions={"calcs": ["lastNotNull"], "values": False},
            ),
            24,
            4,
        ),
    ]
    return dashboard("otelwax-health", "otelwax health", panels, [], ["self"])


DASHBOARDS = {
    "service-overview.json": service_overview,
    "traces.json": traces,
    "logs.json": logs,
    "otelwax-health.json": health,
}


def render(name: str) -> str:
    """The JSON text of one dashboard file."""
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=False) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name))


if __name__ == "__main__":
    main()
