"""flows.metrics end to end: real Kafka → flow → real Prometheus (query API) and chdb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from bytewax.testing import run_main

from flows.metrics import build_from_settings, load_settings
from tests.conftest import free_port
from tests.flows.conftest import chdb_query
from tests.promfixtures import (  # noqa: F401
    counter,
    gauge,
    histogram,
    metrics_request,
    own_prometheus_fixture,
    prom_values,
    prometheus_url_fixture,
    summary,
    unique_job,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def _produce(bootstrap: str, topic: str, values: list[bytes], partition: int | None = None):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for v in values:
        kw = {"partition": partition} if partition is not None else {}
        p.produce(topic, value=v, key=uuid.uuid4().hex.encode(), **kw)
    assert p.flush(30) == 0


def _settings(bootstrap: str, topic: str, prom: str | None, **kw):
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap},
        source={"topic": topic, "stop_at_end": True, **kw.pop("source", {})},
        clickhouse=None,
        remote_write={"url": f"{prom}/api/v1/write"} if prom else None,
        **{"delta_to_cumulative": {"shards": 8}, **kw},
    )


def _chdb_flow_env(tmp_path: Path, bootstrap: str, topic: str, **extra: Any) -> dict[str, str]:
    """The environment of a ``flows.metrics`` process reading ``topic`` to its end into chdb
    at ``tmp_path/chdb`` (database ``otel``), without remote-write; ``extra`` settings."""
    cfg = tmp_path / "metrics.yaml"
    settings = {
        "kafka": {"bootstrap_servers": bootstrap},
        "source": {"topic": topic, "stop_at_end": True},
        "remote_write": None,
        "clickhouse": {"path": str(tmp_path / "chdb"), "database": "otel", "create_schema": True},
        **extra,
    }
    cfg.write_text(yaml.safe_dump(settings))
    return dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))


def _v(url: str, q: str) -> dict:
    return {dict(k).get("__name__", "") + str(dict(k)): v for k, v in prom_values(url, q).items()}


def test_counters_gauges_histograms_reach_prometheus(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    topic = make_topic("mflow", partitions=2)
    job = unique_job("mflow")
    now = time.time_ns()
    res = {"service.name": job, "service.instance.id": "i-1", "deployment.environment": "test"}
    reqs = []
    for i in range(3):  # three scrapes, 1 s apart
        t = now - (3 - i) * 10**9
        reqs.append(
            metrics_request(
                res,
                [
                    gauge("queue.depth", [(t, 10.0 + i, {"queue": "q1"})]),
                    counter("http.requests", [(t, 100.0 * (i + 1), {"code": "200"})]),
                    counter("bytes.sent", [(t, 5.0, {})], unit="By", delta=True),
                    histogram(
                        "http.duration",
                        [(t, [1 + i, 2, 0], 1.5 + i, {})],
                        [0.1, 1.0],
                        unit="s",
                        delta=True,
                    ),
                    summary("rpc.time", [(t, 4 * (i + 1), 2.0 * (i + 1), {0.5: 0.2})], unit="s"),
                ],
            )
        )
    _produce(kafka_bootstrap, topic, reqs, partition=0)
    port = free_port()
    run_main(
        build_from_settings(_settings(kafka_bootstrap, topic, prometheus_url, metrics_port=port))
    )
    own = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'otelwax_received_total{component="metrics_decode",unit="datapoints"}' in own
    assert 'otelwax_sent_total{component="remote_write",unit="samples"}' in own

    sel = f'{{job="{job}"}}'
    wait_for(prometheus_url, sel, 5)
    base = {"job": job, "instance": "i-1"}

    def one(name: str, **labels: str) -> float:
        want = {"__name__": name, **base, **labels}
        q = "{" + ",".join(f'{k}="{v}"' for k, v in want.items()) + "}"
        vals = prom_values(prometheus_url, q)
        assert len(vals) == 1, (q, vals)
        return next(iter(vals.values()))

    assert one("queue_depth", queue="q1") == 12.0
    assert one("http_requests_total", code="200") == 300.0
    assert one("bytes_sent_total") == 15.0  # delta 5 x 3 → cumulative; "bytes" not repeated
    assert one("http_duration_seconds_count") == 1 + 2 + 3 + 3 * 2
    assert one("http_duration_seconds_sum") == 1.5 + 2.5 + 3.5
    assert one("http_duration_seconds_bucket", le="0.1") == 1 + 2 + 3
    assert one("http_duration_seconds_bucket", le="1") == 6 + 6
    assert one("http_duration_seconds_bucket", le="+Inf") == 12
    assert one("rpc_time_seconds", quantile="0.5") == 0.2
    assert one("rpc_time_seconds_count") == 12
    assert one("target_info", deployment_environment="test") == 1.0
    # every scrape landed, in order (counter history is monotonic)
    hist = prom_values(prometheus_url, f'count_over_time(bytes_sent_total{{job="{job}"}}[5m])')
    assert list(hist.values()) == [3.0]


def test_exponential_histograms_become_native_histograms(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        ExponentialHistogram,
        ExponentialHistogramDataPoint,
        Metric,
    )

    topic = make_topic("mexp", partitions=1)
    job = unique_job("mexp")
    now = time.time_ns()
    buckets = ExponentialHistogramDataPoint.Buckets

    def point(t: int, scale: int, pos: list[int], offset: int) -> ExponentialHistogramDataPoint:
        return ExponentialHistogramDataPoint(
            start_time_unix_nano=t - 10**9,
            time_unix_nano=t,
            count=sum(pos) + 1,
            sum=42.5,
            scale=scale,
            zero_count=1,
            positive=buckets(offset=offset, bucket_counts=pos),
            attributes=[],
        )

    metrics = [
        Metric(
            name="rpc.latency",
            unit="s",
            exponential_histogram=ExponentialHistogram(
                aggregation_temporality=2, data_points=[point(now, 0, [2, 3, 4], 0)]
            ),
        ),
        Metric(  # scale 10 > 8: downscaled by merging buckets, counts kept
            name="rpc.size",
            unit="By",
            exponential_histogram=ExponentialHistogram(
                aggregation_temporality=2, data_points=[point(now, 10, [1, 1, 1, 1, 1], 1020)]
            ),
        ),
    ]
    _produce(kafka_bootstrap, topic, [metrics_request({"service.name": job}, metrics)])
    run_main(build_from_settings(_settings(kafka_bootstrap, topic, prometheus_url)))
    wait_for(prometheus_url, f'rpc_latency_seconds{{job="{job}"}}', 1)

    def scalar(q: str) -> float:
        vals = prom_values(prometheus_url, q)
        assert len(vals) == 1, (q, vals)
        return next(iter(vals.values()))

    assert scalar(f'histogram_count(rpc_latency_seconds{{job="{job}"}})') == 10
    assert scalar(f'histogram_sum(rpc_latency_seconds{{job="{job}"}})') == 42.5
    # scale 0: OTel buckets (1,2], (2,4], (4,8] with 2, 3, 4; +1 in the zero bucket
    assert scalar(f'histogram_fraction(0, 2, rpc_latency_seconds{{job="{job}"}})') == 0.3
    assert scalar(f'histogram_fraction(0, 4, rpc_latency_seconds{{job="{job}"}})') == 0.6
    assert scalar(f'histogram_count(rpc_size_bytes{{job="{job}"}})') == 6


def _delta_requests(job: str, n: int) -> list[bytes]:
    t0 = time.time_ns() - 120 * 10**9
    out = []
    for i in range(n):
        t = t0 + i * 10**7  # 10 ms apart: every sample is in the past when queried
        out.append(
            metrics_request(
                {"service.name": job},
                [
                    counter(
                        "jobs.done",
                        [(t, float(i % 7 + 1), {"k": str(k)}) for k in range(3)],
                        delta=True,
                    )
                ],
            )
        )
    return out


def test_delta_to_cumulative_restart_with_recovery_equals_uninterrupted(
    kafka_bootstrap: str, make_topic, prometheus_url: str, tmp_path: Path
) -> None:
    from bytewax.recovery import RecoveryConfig, init_db_dir

    n = 40
    expected = float(sum(i % 7 + 1 for i in range(n)))
    # uninterrupted run
    job_a = unique_job("uninterrupted")
    topic_a = make_topic("dtc_a", partitions=2)
    _produce(kafka_bootstrap, topic_a, _delta_requests(job_a, n))
    run_main(build_from_settings(_settings(kafka_bootstrap, topic_a, prometheus_url)))
    # the same data, read in two runs with recovery in between
    job_b = unique_job("restarted")
    topic_b = make_topic("dtc_b", partitions=2)
    reqs = _delta_requests(job_b, n)
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    settings = _settings(kafka_bootstrap, topic_b, prometheus_url)
    _produce(kafka_bootstrap, topic_b, reqs[: n // 2])
    run_main(
        build_from_settings(settings),
        epoch_interval=timedelta(milliseconds=200),
        recovery_config=RecoveryConfig(str(rec)),
    )
    mid = prom_values(prometheus_url, f'jobs_done_total{{job="{job_b}"}}')
    assert sorted(mid.values()) == [float(sum(i % 7 + 1 for i in range(n // 2)))] * 3
    _produce(kafka_bootstrap, topic_b, reqs[n // 2 :])
    run_main(
        build_from_settings(settings),
        epoch_interval=timedelta(milliseconds=200),
        recovery_config=RecoveryConfig(str(rec)),
    )
    a = prom_values(prometheus_url, f'jobs_done_total{{job="{job_a}"}}')
    b = prom_values(prometheus_url, f'jobs_done_total{{job="{job_b}"}}')
    assert sorted(a.values()) == [expected] * 3
    assert sorted(b.values()) == sorted(a.values())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_tables_in_chdb_hold_every_point_once(
    kafka_bootstrap: str, make_topic, tmp_path: Path, workers: int
) -> None:
    """Every point stored once, also with two worker threads sharing the one chdb client."""
    topic = make_topic("mch", partitions=2)
    now = time.time_ns()
    reqs = []
    for i in range(20):
        t = now + i * 1000
        reqs.append(
            metrics_request(
                {"service.name": "svc"},
                [
                    gauge("g", [(t, float(i), {"p": str(p)}) for p in range(5)]),
                    counter("c", [(t, float(i), {"p": "x"})], delta=bool(i % 2)),
                    histogram("h", [(t, [1, 2], 3.0, {})], [1.0]),
                    summary("s", [(t, 2, 1.0, {0.9: 0.5})]),
                ],
            )
        )
    _produce(kafka_bootstrap, topic, reqs)
    chdb_path = tmp_path / "chdb"
    env = _chdb_flow_env(tmp_path, kafka_bootstrap, topic)
    # Twice, without recovery: the second run starts past the ranges already stored (and
    # re-cuts the last recorded group with the same tokens), so nothing is stored twice.
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "bytewax.run", "flows.metrics", "-w", str(workers)],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=120,
        )
    script = (
        "import chdb.session, json, sys\n"
        "s = chdb.session.Session(sys.argv[1])\n"
        "out = {}\n"
        "for t in ('gauge', 'sum', 'histogram', 'summary', 'exponential_histogram'):\n"
        "    q = ('SELECT count(), uniqExact(MetricName, Attributes, TimeUnix) '\n"
        "         f'FROM otel.otel_metrics_{t}')\n"
        "    out[t] = [int(x) for x in s.query(q, 'CSV').data().strip().split(',')]\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", script, str(chdb_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    assert got == {
        "gauge": [100, 100],
        "sum": [20, 20],
        "histogram": [20, 20],
        "summary": [20, 20],
        "exponential_histogram": [0, 0],
    }


@pytest.mark.slow
def test_delta_to_cumulative_after_sigkill_with_recovery(
    kafka_bootstrap: str, make_topic, prometheus_url: str, tmp_path: Path
) -> None:
    """SIGKILL the flow mid-way; after restarting from its recovery snapshot the Prometheus
    totals equal the sum of every delta (replayed samples Prometheus already has are refused
    by it and dropped by the sink; no total is lost or counted twice)."""
    import signal

    n = 4000
    job = unique_job("sigkill")
    topic = make_topic("dtc_kill", partitions=1)
    _produce(kafka_bootstrap, topic, _delta_requests(job, n))
    expected = float(sum(i % 7 + 1 for i in range(n)))
    rec = tmp_path / "recovery"
    rec.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True, cwd=ROOT)
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {
                    "topic": topic,
                    "stop_at_end": True,
                    "batch": {"max_records": 3, "max_delay_s": 0.05},
                },
                "clickhouse": None,
                # tiny requests keep the flow busy long enough to be killed mid-way
                "remote_write": {
                    "url": f"{prometheus_url}/api/v1/write",
                    "max_samples_per_request": 2,
                },
                "delta_to_cumulative": {"shards": 4},
            }
        )
    )
    env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "bytewax.run",
        "flows.metrics",
        "-r",
        str(rec),
        "-s",
        "1",
        "-b",
        "10",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    q = f'jobs_done_total{{job="{job}"}}'
    deadline = time.monotonic() + 60
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        vals = prom_values(prometheus_url, q)
        if vals and 0 < max(vals.values()) < expected:
            proc.send_signal(signal.SIGKILL)
            killed_at = max(vals.values())
            break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_at is not None, "flow finished before it could be killed; raise n"
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=120)
    final = prom_values(prometheus_url, q)
    assert sorted(final.values()) == [expected] * 3


def _chdb_counts(path: Path, table: str) -> tuple[int, int]:
    """(rows, distinct data points) of otel.<table>, read in a separate process."""
    sql = f"SELECT count(), uniqExact(MetricName, Attributes, TimeUnix) FROM otel.{table}"
    ((rows, distinct),) = chdb_query(path, sql)
    return int(rows), int(distinct)


@pytest.mark.slow
def test_chdb_exactly_once_after_sigkill(kafka_bootstrap: str, make_topic, tmp_path: Path) -> None:
    """SIGKILL mid-way and restart from recovery: intents re-cut the replayed ranges, so their
    inserts carry the same tokens and every data point is stored once."""
    import random
    import signal

    topic = make_topic("mch_kill", partitions=2)
    now = time.time_ns()
    n = 2000
    reqs = [
        metrics_request(
            {"service.name": "svc"},
            [gauge("g", [(now + i * 1000, float(i), {"p": str(p)}) for p in range(5)])],
        )
        for i in range(n)
    ]
    _produce(kafka_bootstrap, topic, reqs)
    chdb_path = tmp_path / "chdb"
    rec = tmp_path / "recovery"
    rec.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True, cwd=ROOT)
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {
                    "topic": topic,
                    "stop_at_end": True,
                    "batch": {"max_records": 5, "max_delay_s": 0.05},
                },
                "remote_write": None,
                "clickhouse": {"path": str(chdb_path), "create_schema": True},
            }
        )
    )
    env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "bytewax.run",
        "flows.metrics",
        "-r",
        str(rec),
        "-s",
        "1",
        "-b",
        "10",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    time.sleep(random.uniform(2.5, 4.0))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=180)
    rows, distinct = _chdb_counts(chdb_path, "otel_metrics_gauge")
    assert (rows, distinct) == (n * 5, n * 5), f"killed while running: {alive}"


def test_settings_from_the_shared_deployment_config(tmp_path: Path) -> None:
    """One file per deployment: $OTELWAX_CONFIG, flows.metrics plus top-level kafka/clickhouse."""
    from flows.spanmetrics import load_settings as load_spanmetrics

    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": "kafka-1:9092"},
                "clickhouse": {"mode": "server", "host": "ch", "database": "otel"},
                "flows": {
                    "metrics": {"source": {"topic": "m1"}, "delta_to_cumulative": {"shards": 4}},
                    "spanmetrics": {"source": {"topic": "s1"}, "metrics_port": 9500},
                },
            }
        )
    )
    env = {"OTELWAX_CONFIG": str(cfg), "OTELWAX_METRICS_PORT": "9999"}
    m = load_settings(None, env=env)
    assert (m.source.topic, m.delta_to_cumulative.shards, m.metrics_port) == ("m1", 4, 9999)
    assert m.kafka.bootstrap_servers == "kafka-1:9092"
    assert m.clickhouse is not None
    assert (m.clickhouse.mode, m.clickhouse.host, m.clickhouse.database) == ("server", "ch", "otel")
    assert m.clickhouse.create_schema  # the flow's own default under the shared section
    env = {"OTELWAX_CONFIG": str(cfg), "OTELWAX_SPANMETRICS__source__stop_at_end": "1"}
    s = load_spanmetrics(None, env=env)
    assert (s.source.topic, s.metrics_port, s.source.stop_at_end) == ("s1", 9500, True)
    assert s.kafka.bootstrap_servers == "kafka-1:9092"
    assert s.clickhouse is None  # off by default: not turned on by the shared section
    assert load_spanmetrics(None, env={}).metrics_port == 9467


def test_old_per_flow_config_variables_are_deprecated_fallbacks(tmp_path: Path) -> None:
    own = tmp_path / "metrics.yaml"
    rw = {"url": "http://127.0.0.1:9/api/v1/write"}  # an output: clickhouse is off
    own.write_text(
        yaml.safe_dump({"source": {"topic": "old"}, "clickhouse": None, "remote_write": rw})
    )
    shared = tmp_path / "otelwax.yaml"
    shared.write_text(yaml.safe_dump({"flows": {"metrics": {"source": {"topic": "new"}}}}))
    assert load_settings(None, env={"OTELWAX_METRICS_CONFIG": str(own)}).source.topic == "old"
    both = {"OTELWAX_METRICS_CONFIG": str(own), "OTELWAX_CONFIG": str(shared)}
    assert load_settings(None, env=both).source.topic == "new"


def test_invalid_shared_config_names_the_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "otelwax.yaml"
    flow = {"delta_to_cumulative": {"shards": 0}, "topik": "x"}
    cfg.write_text(yaml.safe_dump({"flows": {"metrics": flow}}))
    with pytest.raises(ValueError) as err:
        load_settings(None, env={"OTELWAX_CONFIG": str(cfg)})
    msg = str(err.value)
    assert "delta_to_cumulative.shards" in msg and "topik" in msg


def test_clickhouse_server_older_than_20_is_refused_at_start(
    kafka_bootstrap: str, make_topic, tmp_path: Path, clickhouse_server
) -> None:
    """The metrics tables need Map/DateTime64: a ClickHouse 18.16 server fails the flow at start
    with a message saying why, before any table is created."""
    topic = make_topic("mold", partitions=1)
    _produce(kafka_bootstrap, topic, [metrics_request({"service.name": "s"}, [gauge("g", [])])])
    db = f"m_{uuid.uuid4().hex[:8]}"
    srv = clickhouse_server
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "clickhouse": {
                    "mode": "server",
                    "host": srv.host,
                    "port": srv.port,
                    "http_port": srv.http_port,
                    "database": db,
                },
                "flows": {
                    "metrics": {
                        "source": {"topic": topic, "stop_at_end": True},
                        "remote_write": None,
                    }
                },
            }
        )
    )
    env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.metrics"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "too old for the metrics tables" in r.stderr, r.stderr[-3000:]
    assert "18.16" in r.stderr
    from connectors.clickhouse import open_client
    from tests.connectors.conftest import server_config

    client = open_client(server_config(srv, "default"))
    try:
        assert client.execute(
            "SELECT count() FROM system.databases WHERE name = {d:String}", {"d": db}
        ) == [(0,)]
    finally:
        client.close()


def test_service_name_is_the_first_service_name_attribute_in_every_codec() -> None:
    """Contract of otelwax.codec: the first service.name wins even when empty (pymetrics,
    native and the dispatching otelwax.codec.decode_metrics the flow uses agree)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    from otelwax.codec import decode_metrics, native, pymetrics

    req = ExportMetricsServiceRequest.FromString(
        metrics_request({}, [gauge("g", [(1_000, 1.0, {})])])
    )
    attrs = req.resource_metrics[0].resource.attributes
    del attrs[:]
    attrs.extend(
        [
            KeyValue(key="service.name", value=AnyValue(string_value="")),
            KeyValue(key="service.name", value=AnyValue(string_value="x")),
        ]
    )
    payloads = [req.SerializeToString()]
    decoders = [pymetrics.decode_metrics, decode_metrics]
    if native.AVAILABLE:
        decoders.append(native.decode_metrics)
    for dec in decoders:
        res = dec(payloads)
        assert res.errors == []
        assert res.tables["otel_metrics_gauge"].column("ServiceName").to_pylist() == [""], dec


def _dropped(component: str, reason: str, unit: str = "samples") -> float:
    from prometheus_client import REGISTRY

    labels = {"component": component, "unit": unit, "reason": reason}
    return REGISTRY.get_sample_value("otelwax_dropped_total", labels) or 0.0


def _cumulative_requests(job: str, first: int, last: int, t0: int) -> list[bytes]:
    """One record per point of the counter ``reqs`` (value i + 1 at t0 + i * 10 ms)."""
    return [
        metrics_request(
            {"service.name": job},
            [counter("reqs", [(t0 + i * 10**7, float(i + 1), {})], start_ns=t0 - 10**9)],
        )
        for i in range(first, last)
    ]


def _round_robin(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    """What the Collector's kafkaexporter does by default: records spread over partitions,
    not keyed by resource (here strictly round-robin, the worst case for one series)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions)
    assert p.flush(30) == 0


def test_one_series_spread_over_partitions_reaches_prometheus_in_full(
    kafka_bootstrap: str, make_topic, own_prometheus, tmp_path: Path
) -> None:
    """500 cumulative points of one series produced round-robin over 4 partitions while the
    flow tails the topic: every sample lands (the remote-write step orders each series across
    partitions) and none is dropped as out of order."""
    prometheus_url = own_prometheus.url  # private: its head accepts samples near now
    topic = make_topic("mspread", partitions=4)
    job = unique_job("mspread")
    n = 500
    port = free_port()
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {"topic": topic, "batch": {"max_records": 10, "max_delay_s": 0.05}},
                "clickhouse": None,
                "remote_write": {"url": f"{prometheus_url}/api/v1/write"},
                "metrics_port": port,
            }
        )
    )
    env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "bytewax.run", "flows.metrics"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        reqs = _cumulative_requests(job, 0, n, time.time_ns() - 120 * 10**9)
        for wave in range(0, n, 20):  # as a live Collector would: a few records at a time
            _round_robin(kafka_bootstrap, topic, reqs[wave : wave + 20], 4)
            time.sleep(0.1)
        q = f'count_over_time(reqs_total{{job="{job}"}}[10m])'
        deadline = time.monotonic() + 40
        got: list[float] = []
        while time.monotonic() < deadline and got != [float(n)]:
            time.sleep(0.5)
            got = list(prom_values(prometheus_url, q).values())
        own = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(30)
    assert got == [float(n)]
    assert list(prom_values(prometheus_url, f'reqs_total{{job="{job}"}}').values()) == [float(n)]
    assert 'reason="out_of_order"' not in own


def test_restart_with_recovery_resends_nothing_prometheus_already_has(
    kafka_bootstrap: str, make_topic, own_prometheus, tmp_path: Path
) -> None:
    """Two runs over one recovery directory, the second also reading a producer retry of a
    point the first run already sent: the last-sent timestamps come back from the snapshot, so
    the retry is dropped here (counted) instead of being sent and refused by Prometheus; every
    other sample lands once."""
    prometheus_url = own_prometheus.url  # private: its head accepts samples near now
    from bytewax.recovery import RecoveryConfig, init_db_dir

    topic = make_topic("mrestart", partitions=4)
    job = unique_job("mrestart")
    t0 = time.time_ns() - 120 * 10**9
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    settings = _settings(
        kafka_bootstrap,
        topic,
        prometheus_url,
        source={"batch": {"max_records": 10, "max_delay_s": 0.05}},
    )
    ooo, rejected = _dropped("remote_write", "out_of_order"), _dropped("remote_write", "http_400")

    def run() -> None:
        run_main(
            build_from_settings(settings),
            epoch_interval=timedelta(milliseconds=200),
            recovery_config=RecoveryConfig(str(rec)),
        )

    _round_robin(kafka_bootstrap, topic, _cumulative_requests(job, 0, 100, t0), 4)
    run()
    _round_robin(
        kafka_bootstrap,
        topic,
        _cumulative_requests(job, 100, 200, t0) + _cumulative_requests(job, 50, 51, t0),
        4,
    )
    run()
    got = prom_values(prometheus_url, f'count_over_time(reqs_total{{job="{job}"}}[10m])')
    assert list(got.values()) == [200.0]
    assert _dropped("remote_write", "http_400") == rejected  # Prometheus refused nothing
    assert _dropped("remote_write", "out_of_order") == ooo + 1  # the retried point


def test_idle_delta_series_are_evicted_after_their_ttl(
    kafka_bootstrap: str, make_topic, own_prometheus, tmp_path: Path
) -> None:
    """A delta series not updated for ``delta_to_cumulative.ttl_s`` is forgotten (counted): its
    next point starts a new cumulative series (a counter reset) instead of adding to a total
    kept forever."""
    prometheus_url = own_prometheus.url  # private: its head accepts samples near now
    from bytewax.recovery import RecoveryConfig, init_db_dir

    topic = make_topic("mttl", partitions=1)
    job = unique_job("mttl")
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    dtc = {"shards": 1, "ttl_s": 1}
    settings = _settings(kafka_bootstrap, topic, prometheus_url, delta_to_cumulative=dtc)
    expired = _dropped("delta_to_cumulative", "expired", unit="series")

    def point(t: int, v: float) -> bytes:
        delta = counter("jobs.done", [(t, v, {})], delta=True)
        return metrics_request({"service.name": job}, [delta])

    def run() -> None:
        run_main(build_from_settings(settings), recovery_config=RecoveryConfig(str(rec)))

    t0 = time.time_ns() - 60 * 10**9
    _produce(kafka_bootstrap, topic, [point(t0, 5.0), point(t0 + 10**9, 5.0)])
    run()
    assert list(prom_values(prometheus_url, f'jobs_done_total{{job="{job}"}}').values()) == [10.0]
    time.sleep(1.5)
    _produce(kafka_bootstrap, topic, [point(t0 + 2 * 10**9, 3.0)])
    run()
    assert list(prom_values(prometheus_url, f'jobs_done_total{{job="{job}"}}').values()) == [3.0]
    assert _dropped("delta_to_cumulative", "expired", unit="series") == expired + 1


def test_poison_records_go_to_the_dlq_and_good_points_are_stored(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    """An undecodable record in otlp_metrics is written to the dead-letter topic with where it
    came from and why (as in the traces and logs flows); the points around it are stored."""
    from connectors.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_TOPIC
    from tests.flows.conftest import consume_all

    topic, dlq = make_topic("mpoison", partitions=1), make_topic("mdlq", partitions=1)
    now = time.time_ns()
    good = [
        metrics_request({"service.name": "svc"}, [gauge("g", [(now + i, float(i), {})])])
        for i in range(6)
    ]
    garbage, truncated = b"\xff\xfe not protobuf \x00\x01", good[0][: len(good[0]) // 2]
    _produce(kafka_bootstrap, topic, [*good[:2], garbage, *good[2:4], truncated, *good[4:]], 0)
    chdb_path = tmp_path / "chdb"
    env = _chdb_flow_env(tmp_path, kafka_bootstrap, topic, dead_letters={"topic": dlq})
    subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.metrics"],
        cwd=ROOT, env=env, check=True, timeout=120,
    )  # fmt: skip
    dead = {int(dict(m.headers())[H_OFFSET]): m for m in consume_all(kafka_bootstrap, dlq)}
    assert sorted(dead) == [2, 5]
    assert dead[2].value() == garbage and dead[5].value() == truncated
    for m in dead.values():
        h = dict(m.headers())
        assert (h[H_TOPIC].decode(), h[H_PARTITION], bool(h[H_ERROR])) == (topic, b"0", True)
    got = chdb_query(chdb_path, "SELECT count() FROM otel.otel_metrics_gauge")
    assert got == [["6"]], got


_REMOTE_WRITE_IN_FRESH_PROCESS = """
import json, sys
from bytewax.testing import run_main
from flows.metrics import build_from_settings, load_settings

topic, kafka, prom = sys.argv[1:4]
settings = load_settings(None, env={}, kafka={"bootstrap_servers": kafka},
                         source={"topic": topic, "stop_at_end": True}, clickhouse=None,
                         remote_write={"url": prom + "/api/v1/write"}, metrics_port=None)
run_main(build_from_settings(settings))
print(json.dumps({"pandas": "pandas" in sys.modules}))
"""


def test_remote_write_flow_does_not_load_pandas(
    kafka_bootstrap: str, make_topic, prometheus_url: str
) -> None:
    """The remote-write branch has no use for pandas (~0.3 s of CPU and ~50 MiB of RSS that
    pyarrow spends importing it on a first scalar comparison, ``pa.array`` or ``to_numpy``):
    a fresh flow process sends gauges, cumulative and delta sums and histograms to Prometheus
    without loading it."""
    topic = make_topic("mnopd", partitions=1)
    job = unique_job("mnopd")
    now = time.time_ns()
    reqs = [
        metrics_request(
            {"service.name": job, "service.instance.id": "i-1"},
            [
                gauge("queue.depth", [(t, 1.0 + i, {"q": "a"})]),
                counter("reqs", [(t, 10.0 * (i + 1), {})]),
                counter("jobs.done", [(t, 2.0, {})], delta=True),
                histogram("lat", [(t, [1, 1, 0], 0.5, {})], [0.1, 1.0], unit="s", delta=True),
                histogram("size", [(t, [i, 1, 1], 9.0, {})], [10.0, 100.0], unit="By"),
            ],
        )
        for i, t in enumerate(now - (4 - i) * 10**9 for i in range(4))
    ]
    _produce(kafka_bootstrap, topic, reqs, partition=0)
    out = subprocess.run(
        [sys.executable, "-c", _REMOTE_WRITE_IN_FRESH_PROCESS, topic, kafka_bootstrap,
         prometheus_url],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    wait_for(prometheus_url, f'{{job="{job}"}}', 5)
    got = {
        dict(k)["__name__"]: v
        for k, v in prom_values(prometheus_url, f'{{job="{job}",le=""}}').items()
    }
    assert got == {
        "queue_depth": 4.0,
        "reqs_total": 40.0,
        "jobs_done_total": 8.0,
        "lat_seconds_count": 8.0,
        "lat_seconds_sum": 2.0,
        "size_bytes_count": 5.0,
        "size_bytes_sum": 9.0,
    }, got
    buckets = prom_values(prometheus_url, f'lat_seconds_bucket{{job="{job}"}}')
    assert sorted(buckets.values()) == [4.0, 8.0, 8.0]
    assert loaded == {"pandas": False}
