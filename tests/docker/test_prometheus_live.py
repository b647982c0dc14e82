"""A real Prometheus with docker/prometheus's config and rules, fed the way the stack feeds it.

Span metrics come from otelwax's own pipeline (operators.red_metrics span-metrics aggregator →
connectors.prom_translate → connectors.remote_write into the remote-write receiver), and
otelwax's self-metrics are remote-written with the labels the code uses. Then every Prometheus
query of the dashboards runs against it, and every alert rule evaluates without error, with the
error-rate alert pending for the failing service only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from tests.conftest import free_port

from .conftest import GRAFANA, PROM


@pytest.fixture(scope="module")
def prometheus(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus (Debian package, installed with promtool) on a free port, our config."""
    binary = shutil.which("prometheus") or str(Path(promtool).with_name("prometheus"))
    if not Path(binary).exists():
        pytest.skip("the prometheus binary is not installed (Debian package prometheus)")
    d = tmp_path_factory.mktemp("prometheus")
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"]["evaluation_interval"] = "1s"  # evaluate the rules at once
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    shutil.copy(PROM / "alerts.yml", d / "alerts.yml")
    port = free_port()
    log = (d / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-remote-write-receiver",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("prometheus did not start:\n" + (d / "prometheus.log").read_text())
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _spans(start_s: float, minutes: int) -> list[pa.Table]:
    """One table per minute: checkout fails 20% of server spans and is slow, payments is fine."""
    from otelwax.schemas import TRACES_SCHEMA

    tables = []
    for m in range(minutes):
        rows = []
        for i in range(300):
            t = start_s + m * 60 + i * 0.2
            service = "checkout" if i % 2 else "payments"
            error = service == "checkout" and i % 10 == 1
            dur_ms = 1500 if service == "checkout" else 20
            rows.append(
                {
                    "Timestamp": int(t * 1e9),
                    "TraceId": f"{i:032x}",
                    "SpanId": f"{i:016x}",
                    "ParentSpanId": "",
                    "TraceState": "",
                    "SpanName": "POST /cart" if service == "checkout" else "charge",
                    "SpanKind": "SPAN_KIND_SERVER",
                    "ServiceName": service,
                    "ResourceAttributes": [("service.name", service)],
                    "ScopeName": "",
                    "ScopeVersion": "",
                    "SpanAttributes": [],
                    "Duration": dur_ms * 1_000_000,
                    "StatusCode": "STATUS_CODE_ERROR" if error else "STATUS_CODE_UNSET",
                    "StatusMessage": "",
                    "Events.Timestamp": [],
                    "Events.Name": [],
                    "Events.Attributes": [],
                    "Links.TraceId": [],
                    "Links.SpanId": [],
                    "Links.TraceState": [],
                    "Links.Attributes": [],
                }
            )
        tables.append(pa.Table.from_pylist(rows, schema=TRACES_SCHEMA))
    return tables


def _self_metrics(start_s: float, minutes: int) -> Any:
    """otelwax's standard counters, with the components and labels the code uses."""
    from connectors.prom_translate import SeriesBatch

    batch = SeriesBatch()
    series = [
        ("otelwax_received_total", {"component": "ingest_traces", "unit": "spans"}, 1000),
        ("otelwax_sent_total", {"component": "ingest_traces", "unit": "spans"}, 990),
        ("otelwax_received_total", {"component": "ingest", "unit": "requests"}, 10),
        (
            "otelwax_dropped_total",
            {"component": "ingest_traces", "unit": "spans", "reason": "kafka_unavailable"},
            10,
        ),
        ("otelwax_received_total", {"component": "kafka_source", "unit": "records"}, 100),
        ("otelwax_sent_total", {"component": "clickhouse_sink", "unit": "rows"}, 900),
        ("otelwax_failed_total", {"component": "clickhouse_sink", "unit": "rows"}, 5),
        ("otelwax_sent_total", {"component": "dlq", "unit": "records"}, 1),
        # flows.logmetrics' counter (its own series, not a self-metric; the same shape)
        ("otelwax_log_records_total", {"service_name": "checkout", "severity": "ERROR"}, 120),
        (
            "otelwax_dropped_total",
            {"component": "operator:pii", "unit": "spans", "reason": "filtered"},
            3,
        ),
    ]
    for op, le_counts in (
        ("insert", {"0.1": 50, "1": 90, "+Inf": 100}),
        ("kafka_delivery", {"0.01": 80, "0.1": 100, "+Inf": 100}),
        ("event_to_stored", {"1": 20, "10": 100, "+Inf": 100}),
    ):
        comp = "kafka_producer" if op == "kafka_delivery" else "clickhouse_sink"
        for le, per_min in le_counts.items():
            labels = {"component": comp, "operation": op, "le": le}
            series.append(("otelwax_latency_seconds_bucket", labels, per_min))
    for le, per_min in (("10000", 5), ("25000", 20), ("50000", 30), ("+Inf", 30)):
        labels = {"component": "clickhouse_sink", "unit": "rows", "le": le}
        series.append(("otelwax_batch_size_bucket", labels, per_min))
    for name, labels, per_min in series:
        key = tuple(sorted({"__name__": name, "job": "otelwax-flows", **labels}.items()))
        for m in range(minutes * 4):
            batch.add(key, int((start_s + m * 15) * 1000), per_min * m / 4)
    for p in range(2):
        key = tuple(
            sorted(
                {
                    "__name__": "otelwax_kafka_consumer_lag",
                    "job": "otelwax-flows",
                    "topic": "otlp_spans",
                    "partition": str(p),
                }.items()
            )
        )
        for m in range(minutes * 4):
            batch.add(key, int((start_s + m * 15) * 1000), 100.0 * m)
    return batch


@pytest.fixture(scope="module")
def fed(prometheus: str) -> str:
    """Prometheus holding 15 minutes of span metrics and self-metrics, ending now."""
    from connectors.prom_translate import SeriesBatch, tables_to_series
    from connectors.remote_write import RemoteWriteClient, RemoteWriteConfig
    from operators.red_metrics import SpanMetricsAggregator, SpanMetricsConfig

    minutes = 15
    start = time.time() - minutes * 60 - 30
    agg = SpanMetricsAggregator(SpanMetricsConfig(window_s=15, allowed_lateness_s=0))
    out = SeriesBatch()
    for table in _spans(start, minutes):
        closed, _late = agg.add(table)
        for tables in closed:
            tables_to_series(tables, out)
    for tables in agg.close_all():
        tables_to_series(tables, out)
    names = {dict(k)["__name__"] for k in out.series}
    assert {
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds_bucket",
    } <= names, names
    client = RemoteWriteClient(RemoteWriteConfig(url=f"{prometheus}/api/v1/write"))
    try:
        assert client.send(out) == out.num_samples
        own = _self_metrics(start, minutes)
        assert client.send(own) == own.num_samples
    finally:
        client.close()
    return prometheus


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _query(base: str, expr: str) -> dict[str, Any]:
    q = urllib.parse.urlencode({"query": expr, "time": f"{time.time():.3f}"})
    try:
        return _get(f"{base}/api/v1/query?{q}")
    except urllib.error.HTTPError as exc:
        return {"status": "error", "error": exc.read().decode()}


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for p in dash["panels"]:
            for t in p.get("targets", []):
                if t["datasource"]["type"] == "prometheus":
                    expr = t["expr"].replace("$__rate_interval", "2m")
                    expr = re.sub(r'=~"\$service"', '=~".*"', expr)
                    out.append((f"{path.name} '{p['title']}' {t['refId']}", expr))
    return out


def test_dashboard_queries_run_and_show_data(fed: str) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    errors, empty = {}, []
    for name, expr in exprs:
        res = _query(fed, expr)
        if res["status"] != "success":
            errors[name] = res.get("error")
        elif not res["data"]["result"]:
            empty.append(name)
    assert errors == {}
    # Only panels about things the sample data does not contain may be empty.
    allowed_empty = {"Client calls by status", "Top operations by error rate"}
    unexpected = [n for n in empty if not any(a in n for a in allowed_empty)]
    unexpected = [n for n in unexpected if "Scrape targets up" not in n]
    assert unexpected == []


def test_red_numbers_match_the_spans(fed: str) -> None:
    res = _query(
        fed,
        "sum by (service_name) (rate(traces_span_metrics_calls_total"
        '{status_code="STATUS_CODE_ERROR"}[5m]))'
        " / sum by (service_name) (rate(traces_span_metrics_calls_total[5m]))",
    )
    ratio = {r["metric"]["service_name"]: float(r["value"][1]) for r in res["data"]["result"]}
    assert ratio["checkout"] == pytest.approx(0.2, abs=0.02)
    assert ratio.get("payments", 0.0) == 0.0
    res = _query(
        fed,
        "histogram_quantile(0.99, sum by (service_name, le)"
        " (rate(traces_span_metrics_duration_milliseconds_bucket[5m])))",
    )
    p99 = {r["metric"]["service_name"]: float(r["value"][1]) for r in res["data"]["result"]}
    assert 1000 < p99["checkout"] <= 2000 and p99["payments"] <= 50


def test_rules_evaluate_and_the_error_alert_picks_the_failing_service(fed: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        groups = _get(f"{fed}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        alerts = _get(f"{fed}/api/v1/alerts")["data"]["alerts"]
        error_alerts = [a for a in alerts if a["labels"]["alertname"] == "ServiceHighErrorRate"]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if (evaluated and error_alerts) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    assert len(rules) == sum(
        1 for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for _ in g["rules"]
    )
    assert {a["labels"]["service_name"] for a in error_alerts} == {"checkout"}
    assert {a["state"] for a in error_alerts} <= {"pending", "firing"}
    latency = [a for a in alerts if a["labels"]["alertname"] == "ServiceHighLatencyP99"]
    assert {a["labels"]["service_name"] for a in latency} == {"checkout"}
