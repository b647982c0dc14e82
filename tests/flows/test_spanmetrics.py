"""flows.spanmetrics end to end: spans in Kafka → event-time windows → real Prometheus."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pyarrow as pa
import pytest
from bytewax.testing import run_main
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from prometheus_client import REGISTRY

from flows.spanmetrics import build_from_settings, load_settings
from tests.conftest import free_port
from tests.flows.conftest import consume_all
from tests.promfixtures import (  # noqa: F401
    PrometheusService,
    own_prometheus_fixture,
    prom_values,
    prometheus_url_fixture,
    unique_job,
    wait_for,
)

S = 10**9


def _request(service: str, spans: list[tuple[float, float, str, int]]) -> bytes:
    """spans: (end_s, duration_ms, name, status_code)."""
    out = []
    for end_s, dur_ms, name, status in spans:
        end = int(end_s * S)
        out.append(
            Span(
                trace_id=os.urandom(16),
                span_id=os.urandom(8),
                name=name,
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=end - int(dur_ms * 1e6),
                end_time_unix_nano=end,
                status=Status(code=status),
            )
        )
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
                ),
                scope_spans=[ScopeSpans(spans=out)],
            )
        ]
    )
    return req.SerializeToString()


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, value=v, key=uuid.uuid4().hex.encode(), partition=0)
    assert p.flush(30) == 0


def test_span_metrics_reach_prometheus_with_out_of_order_and_late_spans(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    topic = make_topic("spans", partitions=1)
    svc = unique_job("sm")
    base = (int(time.time()) - 120) // 10 * 10
    ok, err = 1, 2
    records = [
        _request(svc, [(base + 1, 5, "GET", ok), (base + 2, 50, "GET", ok)]),
        _request(svc, [(base + 3, 500, "GET", err)]),
        _request(svc, [(base + 12, 1, "GET", ok)]),
        _request(svc, [(base + 4, 3, "GET", ok)]),  # out of order, within lateness
        _request(svc, [(base + 30, 7, "GET", ok)]),  # watermark base+25: closes 2 windows
        _request(svc, [(base + 5, 9, "GET", ok), (base + 8, 9, "GET", err)]),  # late: dropped
    ]
    _produce(kafka_bootstrap, topic, records)
    late_before = (
        REGISTRY.get_sample_value(
            "otelwax_dropped_total",
            {"component": "span_metrics", "unit": "spans", "reason": "late"},
        )
        or 0
    )
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": kafka_bootstrap},
        # one record per batch: arrival order = produce order
        source={"topic": topic, "stop_at_end": True, "batch": {"max_records": 1}},
        spanmetrics={"window_s": 10, "allowed_lateness_s": 5},
        remote_write={"url": f"{prometheus_url}/api/v1/write"},
        metrics_port=None,
    )
    run_main(build_from_settings(settings))
    late_after = REGISTRY.get_sample_value(
        "otelwax_dropped_total", {"component": "span_metrics", "unit": "spans", "reason": "late"}
    )
    assert late_after - late_before == 2

    sel = f'service_name="{svc}",span_name="GET",span_kind="SPAN_KIND_SERVER"'
    wait_for(prometheus_url, f"traces_span_metrics_calls_total{{{sel}}}", 2)

    def by_status(metric: str, extra: str = "") -> dict[str, float]:
        vals = prom_values(prometheus_url, f"{metric}{{{sel}{extra}}}")
        return {dict(k)["status_code"]: v for k, v in vals.items()}

    assert by_status("traces_span_metrics_calls_total") == {
        "STATUS_CODE_OK": 5.0,  # base+1, +2, +4 (late but in bound), +12, +30
        "STATUS_CODE_ERROR": 1.0,
    }
    assert by_status("traces_span_metrics_duration_milliseconds_count") == {
        "STATUS_CODE_OK": 5.0,
        "STATUS_CODE_ERROR": 1.0,
    }
    assert by_status("traces_span_metrics_duration_milliseconds_sum")["STATUS_CODE_OK"] == (
        5 + 50 + 1 + 3 + 7
    )
    le = by_status("traces_span_metrics_duration_milliseconds_bucket", ',le="6"')
    assert le == {"STATUS_CODE_OK": 3.0, "STATUS_CODE_ERROR": 0.0}  # 5, 1, 3 ms
    inf = by_status("traces_span_metrics_duration_milliseconds_bucket", ',le="+Inf"')
    assert inf == {"STATUS_CODE_OK": 5.0, "STATUS_CODE_ERROR": 1.0}
    # history: one cumulative sample per closed window, each at the window end
    hist = prom_values(
        prometheus_url,
        f'count_over_time(traces_span_metrics_calls_total{{{sel},status_code="STATUS_CODE_OK"}}[10m])',
    )
    assert list(hist.values()) == [3.0]  # windows base, base+10, base+30
    job = prom_values(prometheus_url, f'traces_span_metrics_calls_total{{job="{svc}"}}')
    assert len(job) == 2  # job label from the resource's service.name


def _routing_settings(bootstrap: str, topic: str, late_topic: str, **overrides: Any):
    """One-shot settings, one record per batch, 10 s windows, rejected spans to ``late_topic``."""
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap},
        # one record per batch: arrival order = produce order
        source={"topic": topic, "stop_at_end": True, "batch": {"max_records": 1}},
        spanmetrics={"window_s": 10, "allowed_lateness_s": 5, "late_policy": "route"},
        late_topic=late_topic,
        metrics_port=None,
        **overrides,
    )


def _routed(bootstrap: str, late_topic: str) -> list[tuple[bytes, pa.Table]]:
    """(``otelwax.reason`` header, span rows) of every record in ``late_topic``."""
    return [
        (dict(m.headers() or [])["otelwax.reason"], pa.ipc.open_stream(m.value()).read_all())
        for m in consume_all(bootstrap, late_topic)
    ]


def test_late_spans_routed_to_a_topic(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    topic = make_topic("spans", partitions=1)
    late_topic = make_topic("late", partitions=1)
    svc = unique_job("smlate")
    base = (int(time.time()) - 120) // 10 * 10
    _produce(
        kafka_bootstrap,
        topic,
        [
            _request(svc, [(base + 30, 1, "GET", 1)]),
            _request(svc, [(base + 2, 1, "early", 1), (base + 3, 1, "early2", 1)]),  # late
        ],
    )
    rw = {"url": f"{prometheus_url}/api/v1/write"}
    settings = _routing_settings(kafka_bootstrap, topic, late_topic, remote_write=rw)
    run_main(build_from_settings(settings))
    routed = _routed(kafka_bootstrap, late_topic)
    assert [reason for reason, _ in routed] == [b"late"]
    assert sorted(routed[0][1].column("SpanName").to_pylist()) == ["early", "early2"]


def test_settings_report_every_problem_with_its_key_path() -> None:
    import pytest

    with pytest.raises(ValueError) as err:
        load_settings(None, spanmetrics={"window_s": 0, "lateness": 3}, topik="x")
    msg = str(err.value)
    assert "spanmetrics.window_s" in msg
    assert "spanmetrics.lateness: unknown key" in msg
    assert 'topik: unknown key (did you mean "topic"? it moved to source.topic)' in msg


def test_serves_metrics_on_its_metrics_port(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    """/metrics with the standard counters, on ``metrics_port`` (9467 unless configured)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    assert load_settings(None, env={}).metrics_port == 9467
    topic = make_topic("spans", partitions=1)
    svc = unique_job("smport")
    base = (int(time.time()) - 120) // 10 * 10
    _produce(kafka_bootstrap, topic, [_request(svc, [(base + 1, 1, "GET", 1)])] * 3)
    port = free_port()
    settings = load_settings(
        None,
        env={"OTELWAX_METRICS_PORT": str(port)},
        kafka={"bootstrap_servers": kafka_bootstrap},
        source={"topic": topic, "stop_at_end": True},
        remote_write={"url": f"{prometheus_url}/api/v1/write"},
    )
    assert settings.metrics_port == port
    run_main(build_from_settings(settings))
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    received = {
        s.labels["component"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "otelwax_received_total"
    }
    assert received.get("spanmetrics_decode", 0) >= 3


def test_running_flow_serves_healthz_and_consumer_lag_and_logs_json(
    kafka_bootstrap: str, make_topic, prometheus_url: str, tmp_path
) -> None:
    """``python -m bytewax.run flows.spanmetrics`` (the module's ``flow``, config from
    $OTELWAX_CONFIG): /healthz answers, /metrics has the Kafka source's lag per partition, and
    a poison record is logged as a JSON line naming the decode step."""
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import requests
    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    root = Path(__file__).resolve().parents[2]
    topic = make_topic("spans", partitions=2)
    svc = unique_job("smlag")
    base = (int(time.time()) - 120) // 10 * 10
    _produce(kafka_bootstrap, topic, [_request(svc, [(base + 1, 1, "GET", 1)])] * 3)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topic, value=b"\xff\xfe not protobuf", partition=1)
    assert p.flush(30) == 0
    port = free_port()
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {"topic": topic},
                "remote_write": {"url": f"{prometheus_url}/api/v1/write"},
                "metrics_port": port,
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(root), OTELWAX_CONFIG=str(cfg))
    env["OTELWAX_LOG_FORMAT"] = "json"
    env.pop("OTELWAX_METRICS_PORT", None)
    log_path = tmp_path / "flow.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.spanmetrics"],
            cwd=root,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    lag: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                time.sleep(0.3)
                continue
            assert health.status_code == 200
            lag = {
                s.labels["partition"]: s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "otelwax_kafka_consumer_lag" and s.labels.get("topic") == topic
            }
            # lag 0 means read, not yet decoded: wait for the decode step's line too
            if lag == {"0": 0.0, "1": 0.0} and b"undecodable" in log_path.read_bytes():
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log = log_path.read_text(errors="replace")
    assert lag == {"0": 0.0, "1": 0.0}, log[-3000:]  # both partitions read to the end
    recs = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    bad = [r for r in recs if "undecodable" in r["msg"]]
    assert len(bad) == 1, log[-3000:]
    assert bad[0]["step_id"] == "otelwax_spanmetrics.decode"
    assert (bad[0]["topic"], bad[0]["partition"], bad[0]["offset"]) == (topic, 1, 0)


def test_one_span_a_day_ahead_leaves_the_next_thousand_counted(
    kafka_bootstrap: str, make_topic, own_prometheus: PrometheusService
) -> None:
    """A producer with a clock a day ahead must not freeze span metrics: its span is dropped
    (counted, routed with reason ``future``), the 1,000 on-time spans after it reach
    Prometheus, and nothing is written with a future timestamp. (A private Prometheus: one
    sample a day ahead moves its head, after which it rejects every current sample as out of
    bounds for a day.)"""
    prometheus_url = own_prometheus.url
    topic = make_topic("spans", partitions=1)
    late_topic = make_topic("late", partitions=1)
    svc = unique_job("smfuture")
    base = (int(time.time()) - 120) // 10 * 10
    on_time = [
        _request(svc, [(base + 1 + i * 3 + j * 0.02, 2, "GET", 1) for j in range(100)])
        for i in range(10)
    ]
    _produce(
        kafka_bootstrap,
        topic,
        [_request(svc, [(time.time() + 86_400, 2, "GET", 1)]), *on_time],
    )

    def dropped(reason: str) -> float:
        labels = {"component": "span_metrics", "unit": "spans", "reason": reason}
        return REGISTRY.get_sample_value("otelwax_dropped_total", labels) or 0

    before = {r: dropped(r) for r in ("future", "late")}
    settings = _routing_settings(
        kafka_bootstrap, topic, late_topic, remote_write={"url": own_prometheus.write_url}
    )
    run_main(build_from_settings(settings))
    assert dropped("late") - before["late"] == 0
    assert dropped("future") - before["future"] == 1

    sel = f'service_name="{svc}",span_name="GET"'
    wait_for(prometheus_url, f"traces_span_metrics_calls_total{{{sel}}}")
    got = prom_values(prometheus_url, f"traces_span_metrics_calls_total{{{sel}}}")
    assert list(got.values()) == [1000.0]
    newest = prom_values(prometheus_url, f"timestamp(traces_span_metrics_calls_total{{{sel}}})")
    assert max(newest.values()) <= time.time()
    routed = _routed(kafka_bootstrap, late_topic)
    assert [(reason, t.num_rows) for reason, t in routed] == [(b"future", 1)]


@pytest.mark.extended  # make test-all; the soak smoke SIGKILLs flows.spanmetrics and counts
def test_restart_after_sigkill_continues_the_counters(
    kafka_bootstrap: str, make_topic, own_prometheus: PrometheusService, tmp_path
) -> None:
    """SIGKILL flows.spanmetrics while it writes; restarted from its snapshot, calls and the
    duration histogram continue: no counter reset, totals equal to the spans sent, one sample
    per window, and each window's rows once in ClickHouse."""
    from tests.flows.conftest import WindowFlowRun, chdb_query
    from tests.promfixtures import prom_history

    topic = make_topic("spans_kill", partitions=1)
    svc = unique_job("smkill")
    base = (int(time.time()) - 240) // 10 * 10  # within Prometheus' 5 min lookback
    n, per_window = 4000, 20  # 200 windows of 1 s
    _produce(
        kafka_bootstrap,
        topic,
        [_request(svc, [(base + i / per_window, 3, "GET", 1 + i % 2)]) for i in range(n)],
    )
    chdb = tmp_path / "chdb"
    run = WindowFlowRun.one_second_windows(
        tmp_path, "spanmetrics", kafka_bootstrap, topic, own_prometheus.write_url
    )
    calls = f'traces_span_metrics_calls_total{{service_name="{svc}"}}'
    count = f'traces_span_metrics_duration_milliseconds_count{{service_name="{svc}"}}'
    run.kill_when(
        lambda: 0 < max(prom_values(own_prometheus.url, calls).values(), default=0) < n / 2
    )
    run.run_to_end()

    for sel in (calls, count):
        final = prom_values(own_prometheus.url, sel)
        assert sorted(final.values()) == [n / 2, n / 2], sel
        assert set(prom_values(own_prometheus.url, f"resets({sel}[1h])").values()) == {0.0}
        for samples in prom_history(own_prometheus.url, sel).values():
            assert samples == sorted(samples) and len(samples) == n // per_window
    rows = chdb_query(
        chdb,
        "SELECT count(), uniqExact(Attributes, TimeUnix), max(Count) "
        "FROM otel.otel_metrics_histogram",
    )
    assert rows == [[str(2 * n // per_window), str(2 * n // per_window), str(n // 2)]]


def test_a_partition_with_a_backlog_is_counted_not_late(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    """Partition 1 holds a minute-old backlog (12,000 records, more than one poll reads),
    partition 0 current spans. Whichever the flow reads first, the backlog's spans are counted
    in Prometheus, none is late: a caught-up partition does not close the windows another
    one is still reading."""
    from confluent_kafka import Producer

    topic = make_topic("spans", partitions=2)
    svc = unique_job("smbacklog")
    now = time.time()
    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    old = 12_000
    for i in range(old):
        t = now - 70 + 40 * i / old
        p.produce(topic, _request(svc, [(t, 1, "old", 1)]), partition=1, timestamp=int(t * 1000))
    for i in range(50):
        p.produce(topic, _request(svc, [(now - 2 + i * 0.01, 1, "new", 1)]), partition=0)
    assert p.flush(30) == 0

    late = {"component": "span_metrics", "unit": "spans", "reason": "late"}
    before = REGISTRY.get_sample_value("otelwax_dropped_total", late) or 0
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": kafka_bootstrap},
        # 50 records per poll: the backlog takes hundreds of polls, and partition 0's range is
        # cut after 50 ms, so it is read long before the backlog is done
        source={
            "topic": topic,
            "stop_at_end": True,
            "batch": {"max_records": 500, "max_delay_s": 0.05},
            "poll_max_messages": 50,
        },
        spanmetrics={"window_s": 10, "allowed_lateness_s": 5},
        remote_write={"url": f"{prometheus_url}/api/v1/write"},
        metrics_port=None,
    )
    run_main(build_from_settings(settings))
    assert (REGISTRY.get_sample_value("otelwax_dropped_total", late) or 0) - before == 0

    query = f'sum by (span_name) (traces_span_metrics_calls_total{{service_name="{svc}"}})'
    wait_for(prometheus_url, query)
    # At the end of the input the open windows close with their end as timestamp: "new"
    # spans end ~2 s ago, so their sample can be up to one window ahead of now.
    got = prom_values(prometheus_url, query, at=time.time() + 60)
    assert got == {(("span_name", "old"),): float(old), (("span_name", "new"),): 50.0}
