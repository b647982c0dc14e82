"""Prometheus dashboards: RED per service from span metrics (the Collector's spanmetrics
connector names) and otelwax's own health (its counters, otelwax/telemetry.py)."""

from __future__ import annotations

from typing import Any

from grafana_kit import Layout, dashboard, panel, prom_target, prom_var

# Server-side spans: what a service answers (RED is measured on these).
ENTRY_KINDS = 'span_kind=~"SPAN_KIND_SERVER|SPAN_KIND_CONSUMER"'
SVC = 'service_name=~"$service"'
# Error log records by event time (flows.logmetrics; severity is the SeverityNumber range).
ERROR_LOGS = f'otelwax_log_records_total{{severity=~"ERROR|FATAL",{SVC}}}'


# --- service overview: RED from span metrics (Prometheus) --------------------------------


def top_operations(title: str, calls: str, rate: str) -> dict[str, Any]:
    """A table of the 20 operations with the highest rate of ``calls`` (an instant query)."""
    expr = f"topk(20, sum by (service_name, span_name) (rate({calls}{rate})))"
    target = {**prom_target(expr), "format": "table", "instant": True}
    return panel("table", title, [target], unit="reqps", showHeader=True)


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
        lay.place(top_operations("Top operations by rate", calls, rate), 12, 10),
        lay.place(top_operations("Top operations by error rate", errors, rate), 12, 10),
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
