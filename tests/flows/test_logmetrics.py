"""flows.logmetrics end to end: logs in Kafka → event-time counts → real Prometheus and chdb."""

from __future__ import annotations

import time
from pathlib import Path

from bytewax.testing import run_main
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import REGISTRY

from flows.logmetrics import build_from_settings, load_settings
from tests.flows.conftest import WindowFlowRun, chdb_query, produce
from tests.promfixtures import (  # noqa: F401
    PrometheusService,
    own_prometheus_fixture,
    prom_history,
    prom_values,
    prometheus_url_fixture,
    unique_job,
    wait_for,
)

S = 10**9


def _kv(k: str, v: str) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(string_value=v))


def _request(service: str, logs: list[tuple]) -> bytes:
    """logs: (time_s, severity number, severity text, attributes[, observed_s]); the observed
    time is the time unless given."""
    records = []
    for t, num, text, attrs, *seen in logs:
        observed = int((seen[0] if seen else t) * S)
        records.append(
            LogRecord(
                time_unix_nano=int(t * S),
                observed_time_unix_nano=observed,
                severity_number=num,
                severity_text=text,
                body=AnyValue(string_value="hello"),
                attributes=[_kv(k, v) for k, v in attrs.items()],
            )
        )
    req = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[_kv("service.name", service)]),
                scope_logs=[ScopeLogs(log_records=records)],
            )
        ]
    )
    return req.SerializeToString()


def _late() -> float:
    labels = {"component": "log_metrics", "unit": "records", "reason": "late"}
    return REGISTRY.get_sample_value("otelwax_dropped_total", labels) or 0


def test_log_counts_by_event_time_reach_prometheus(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    """Counts per service, severity bucket and dimension, by log timestamp: out-of-order
    records within the lateness count, late ones are dropped, ``ERROR2`` counts as ``ERROR``,
    a record with only a severity text keeps it, one without a timestamp counts at its
    observed time; past the cardinality limit series fold into the overflow series."""
    topic = make_topic("logs", partitions=1)
    svc = unique_job("lm")
    base = (int(time.time()) - 120) // 10 * 10
    a, b = {"http.route": "/a"}, {}
    records = [
        _request(svc, [(base + 1, 17, "Error", a), (base + 2, 9, "INFO", a)]),
        _request(svc, [(base + 3, 0, "warning", b), (base + 12, 9, "INFO", a)]),
        _request(svc, [(base + 4, 18, "ERROR2", a)]),  # out of order, within lateness
        _request(svc, [(base + 30, 9, "INFO", a)]),  # watermark base+25: closes 2 windows
        _request(svc, [(base + 5, 17, "ERROR", a)]),  # late: dropped
        _request(svc, [(0, 9, "INFO", a, base + 31)]),  # no timestamp: observed time
    ]
    produce(kafka_bootstrap, topic, records, partition=0)
    late_before = _late()
    route = {"name": "http.route", "default": "none"}
    settings = load_settings(
        None,
        env={"OTELWAX_KAFKA_BOOTSTRAP": kafka_bootstrap, "OTELWAX_METRICS_PORT": "none"},
        # one record per batch: arrival order = produce order
        source={"topic": topic, "stop_at_end": True, "batch": {"max_records": 1}},
        logmetrics={"window_s": 10, "allowed_lateness_s": 5, "dimensions": [route]},
        remote_write={"url": f"{prometheus_url}/api/v1/write"},
    )
    run_main(build_from_settings(settings))
    assert _late() - late_before == 1

    sel = f'otelwax_log_records_total{{service_name="{svc}"}}'
    wait_for(prometheus_url, sel, 3)
    got = {
        (dict(k)["severity"], dict(k)["http_route"]): v
        for k, v in prom_values(prometheus_url, sel).items()
    }
    assert got == {("ERROR", "/a"): 2.0, ("INFO", "/a"): 4.0, ("WARNING", "none"): 1.0}
    # one cumulative sample per closed window, at the window end (not at arrival)
    hist = prom_history(prometheus_url, f'{sel[:-1]},severity="INFO"}}', "10m")
    assert list(hist.values()) == [[1.0, 2.0, 4.0]]  # windows base, base+10, base+30
    ts = prom_values(prometheus_url, f'timestamp({sel[:-1]},severity="WARNING"}})')
    assert list(ts.values()) == [base + 10.0]


def test_restart_after_sigkill_continues_the_counters(
    kafka_bootstrap: str, make_topic, own_prometheus: PrometheusService, tmp_path: Path
) -> None:
    """SIGKILL the flow while it writes; restarted from its snapshot, every series continues
    where it was: no counter reset in Prometheus, final totals equal to the records sent (not
    more), one sample per window; ClickHouse holds each window's row once."""
    topic = make_topic("logs_kill", partitions=1)
    svc = unique_job("lmkill")
    base = (int(time.time()) - 240) // 10 * 10  # the last window ends within Prometheus'
    n, per_window = 4000, 20  # 200 windows of 1 s                 5 min instant-query lookback
    produce(
        kafka_bootstrap,
        topic,
        [
            _request(svc, [(base + i / per_window, 17 if i % 2 else 9, "", {})])
            for i in range(n)
        ],
        partition=0,
    )
    chdb = tmp_path / "chdb"
    run = WindowFlowRun.one_second_windows(
        tmp_path, "logmetrics", kafka_bootstrap, topic, own_prometheus.write_url
    )
    sel = f'otelwax_log_records_total{{service_name="{svc}"}}'

    def midway() -> bool:
        vals = prom_values(own_prometheus.url, sel).values()
        return bool(vals) and 0 < max(vals) < n / 2

    run.kill_when(midway)
    run.run_to_end()

    final = prom_values(own_prometheus.url, sel)
    assert {dict(k)["severity"]: v for k, v in final.items()} == {"ERROR": n / 2, "INFO": n / 2}
    resets = prom_values(own_prometheus.url, f"resets({sel}[1h])")
    assert set(resets.values()) == {0.0}
    for samples in prom_history(own_prometheus.url, sel).values():
        assert samples == sorted(samples) and len(samples) == n // per_window
    rows = chdb_query(
        chdb,
        "SELECT Attributes['severity'], count(), uniqExact(TimeUnix), max(Value) "
        "FROM otel.otel_metrics_sum WHERE MetricName = 'otelwax.log_records' "
        "GROUP BY 1 ORDER BY 1",
    )
    windows = n // per_window
    want = [str(windows), str(windows), str(n // 2)]  # rows, distinct windows, total
    assert rows == [["ERROR", *want], ["INFO", *want]]
