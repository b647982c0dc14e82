"""Operating the shim: configuration errors, /metrics and /healthz, graceful shutdown."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from connectors.ingest import IngestConfig
from connectors.ingest.cli import add_arguments, build_config
from otelwax.settings import ValidationError, format_errors
from tests.conftest import ROOT
from tests.otlpgen import trace_request

from .conftest import Shim, consume, start_shim

PROTO = {"content-type": "application/x-protobuf"}


def _errors(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as ei:
        IngestConfig.model_validate(data)
    return format_errors(ei.value, "ingest", IngestConfig)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"grpc": {"prot": 1}}, 'ingest.grpc.prot: unknown key (did you mean "port"?)'),
        ({"http": {"port": 70000}}, "ingest.http.port: Input should be less than or equal"),
        ({"max_body_bytes": 0}, "ingest.max_body_bytes: Input should be greater than 0"),
        ({"tls": {"cert_file": "c.pem"}}, "cert_file and key_file must be set together"),
        ({"producer": {"compression": "brotli"}}, "ingest.producer.compression: Input should be"),
        ({"producer": {"max_message_bytes": 10}}, "ingest.producer.max_message_bytes"),
        # The broker keeps 5 batches per producer for de-duplication: no more in flight.
        ({"producer": {"max_in_flight": 6}}, "ingest.producer.max_in_flight: Input should be less"),
    ],
)
def test_invalid_config_names_the_key(data: dict, expected: str) -> None:
    assert any(expected in line for line in _errors(data)), _errors(data)


def test_defaults_and_yaml_with_flag_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = IngestConfig()
    assert (cfg.grpc.port, cfg.http.port, cfg.max_body_bytes) == (4317, 4318, 16 * 2**20)
    assert (cfg.topics.traces, cfg.topics.metrics, cfg.topics.logs) == (
        "otlp_spans",
        "otlp_metrics",
        "otlp_logs",
    )
    assert cfg.producer.compression in ("lz4", "zstd")
    monkeypatch.setenv("TEST_INGEST_TOKEN", "hunter2")
    f = tmp_path / "otelwax.yaml"
    f.write_text(
        "kafka: {bootstrap_servers: 'shared:9092'}\n"
        "flows: {traces: {whatever: 1}}\n"  # other sections are not the shim's business
        "ingest:\n"
        "  http: {port: 9999}\n"
        "  auth_token: ${env:TEST_INGEST_TOKEN}\n"
        "  producer: {linger_ms: 20}\n"
    )
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = build_config(p.parse_args(["--config", str(f), "--grpc-port", "5555", "--host", "::1"]))
    assert (cfg.http.port, cfg.grpc.port, cfg.producer.linger_ms) == (9999, 5555, 20)
    assert cfg.http.host == cfg.grpc.host == "::1"
    assert cfg.kafka.bootstrap_servers == "shared:9092", "top-level kafka is shared"
    assert cfg.resolved_token() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    # A bare IngestConfig mapping works too; flags win over the file.
    bare = tmp_path / "ingest.yaml"
    bare.write_text("kafka: {bootstrap_servers: 'own:9092'}\ntopics: {traces: t1}\n")
    cfg = build_config(p.parse_args(["--config", str(bare), "--topic-traces", "t2"]))
    assert (cfg.kafka.bootstrap_servers, cfg.topics.traces) == ("own:9092", "t2")
    # The project's shipped configs load.
    for shipped in ("configs/otelwax.yaml", "docker/config/otelwax.yaml"):
        if (ROOT / shipped).exists():
            build_config(p.parse_args(["--config", str(ROOT / shipped)]))


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("grpc: {prot: 1}\nproducer: {linger_ms: -1}\n")
    r = subprocess.run(
        [sys.executable, "-m", "otelwax", "ingest", "--config", str(f)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert 'ingest.grpc.prot: unknown key (did you mean "port"?)' in r.stderr
    assert "ingest.producer.linger_ms" in r.stderr


def test_config_defaults_to_otelwax_config_variable(tmp_path: Path) -> None:
    """Without --config the shim reads the deployment file named by $OTELWAX_CONFIG."""
    f = tmp_path / "otelwax.yaml"
    f.write_text("kafka: {bootstrap_servers: 'shared:9092'}\ningest: {http: {port: 9998}}\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = build_config(p.parse_args([]), env={"OTELWAX_CONFIG": str(f)})
    assert (cfg.http.port, cfg.kafka.bootstrap_servers) == (9998, "shared:9092")
    assert build_config(p.parse_args([]), env={}).http.port == 4318
    other = tmp_path / "other.yaml"
    other.write_text("http: {port: 9997}\n")
    cfg = build_config(p.parse_args(["--config", str(other)]), env={"OTELWAX_CONFIG": str(f)})
    assert cfg.http.port == 9997, "--config wins over $OTELWAX_CONFIG"
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {grpc: {prot: 1}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "otelwax", "ingest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTELWAX_CONFIG": str(bad)},
    )
    assert r.returncode == 2
    assert 'ingest.grpc.prot: unknown key (did you mean "port"?)' in r.stderr


def test_metrics_and_healthz_on_metrics_port(shim: Shim) -> None:
    h = httpx.get(f"http://127.0.0.1:{shim.metrics_port}/healthz")
    assert h.status_code == 200 and h.json() == {"status": "ok", "kafka": "up"}
    before = shim.metrics()
    req = trace_request(2, 10, seed=31)
    for _ in range(3):
        r = httpx.post(shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO)
        assert r.status_code == 200
    bad = httpx.post(shim.http_url + "/v1/traces", content=b"\xff\xff", headers=PROTO)
    assert bad.status_code == 400
    after = shim.metrics()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    spans = {"component": "ingest_traces", "unit": "spans"}
    assert delta("otelwax_received_total", **spans) == 60
    assert delta("otelwax_sent_total", **spans) == 60
    assert (
        delta("otelwax_dropped_total", component="ingest", unit="requests", reason="malformed") == 1
    )
    assert delta("otelwax_received_total", component="ingest", unit="bytes") >= 3 * len(
        req.SerializeToString()
    )
    assert (
        delta("otelwax_latency_seconds_count", component="ingest_kafka", operation="kafka_delivery")
        == 3
    )


def test_sigterm_finishes_in_flight_requests_and_flushes(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path
) -> None:
    # A long linger keeps records in the producer when SIGTERM arrives.
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--linger-ms", "400"])
    reqs = [trace_request(1, 20, seed=100 + i) for i in range(16)]

    def post(req: ExportTraceServiceRequest) -> int:
        try:
            r = httpx.post(
                shim.http_url + "/v1/traces",
                content=req.SerializeToString(),
                headers=PROTO,
                timeout=30,
            )
            return r.status_code
        except httpx.HTTPError:
            return 0

    with cf.ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(post, r) for r in reqs]
        # SIGTERM once the shim holds several requests waiting for their Kafka acks.
        deadline = time.monotonic() + 10
        key = ("otelwax_received_total", (("component", "ingest"), ("unit", "requests")))
        while time.monotonic() < deadline and shim.metrics().get(key, 0) < 8:
            time.sleep(0.02)
        shim.proc.send_signal(signal.SIGTERM)
        codes = [f.result() for f in futs]
    assert shim.proc.wait(timeout=40) == 0, shim.log()
    acked = {
        sp.span_id
        for req, code in zip(reqs, codes, strict=True)
        if code == 200
        for sp in req.resource_spans[0].scope_spans[0].spans
    }
    assert codes.count(200) >= 8, f"in-flight requests were not finished: {codes}"
    assert "0 records unflushed" in shim.log()

    def ids(recs):
        return {
            sp.span_id
            for rec in recs
            for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans
            for ss in rs.scope_spans
            for sp in ss.spans
        }

    recs = consume(kafka_bootstrap, fresh_topics["traces"], until=lambda rs: acked <= ids(rs))
    assert acked <= ids(recs)


def test_queue_full_is_429_and_resource_exhausted_with_retry_info(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path
) -> None:
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("producer:\n  queue_max_messages: 5\n  retry_after_s: 3\n")
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--config", str(cfg)])
    try:
        big = trace_request(2, 10, seed=41, spans_per_trace=1).SerializeToString()  # 20 records
        r = httpx.post(shim.http_url + "/v1/traces", content=big, headers=PROTO)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        st = status_pb2.Status.FromString(r.content)
        assert "queue is full" in st.message
        with grpc.insecure_channel(shim.grpc_target) as ch:
            call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            with pytest.raises(grpc.RpcError) as ei:
                call(big, timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = dict(ei.value.trailing_metadata())["grpc-status-details-bin"]
        info = error_details_pb2.RetryInfo()
        assert status_pb2.Status.FromString(details).details[0].Unpack(info)
        assert info.retry_delay.seconds == 3
        # A request that fits is accepted.
        small = trace_request(1, 3, seed=42, spans_per_trace=3).SerializeToString()
        assert (
            httpx.post(shim.http_url + "/v1/traces", content=small, headers=PROTO).status_code
            == 200
        )
    finally:
        assert shim.stop() == 0


def test_grpc_aio_mode(kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--grpc-threads", "0"])
    try:
        req = trace_request(1, 4, seed=51, spans_per_trace=2)
        with grpc.insecure_channel(shim.grpc_target) as ch:
            call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            out = call(req.SerializeToString(), timeout=10)
            assert ExportTraceServiceResponse.FromString(out) == ExportTraceServiceResponse()
            with pytest.raises(grpc.RpcError) as ei:
                call(b"\xff\xff", timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        want = {sp.span_id for sp in req.resource_spans[0].scope_spans[0].spans}

        def got(recs):
            return {
                sp.span_id
                for rec in recs
                for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans
                for ss in rs.scope_spans
                for sp in ss.spans
            }

        recs = consume(kafka_bootstrap, fresh_topics["traces"], until=lambda rs: want <= got(rs))
        assert got(recs) == want
    finally:
        assert shim.stop() == 0


def _event_engine_cpu_s(pid: int) -> float:
    """CPU seconds of the process's grpc EventEngine threads (named ``event_engine``)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        if stat.split("(", 1)[1].rsplit(")", 1)[0] == "event_engine":
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.mark.parametrize("listener", [False, True])
def test_grpc_sockets_served_by_the_server_thread_unless_event_engine_listener(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path, listener: bool
) -> None:
    """By default the gRPC server's own polling thread reads the sockets (grpc's EventEngine
    listener off: one thread hand-off less per read, less CPU per span); with
    ``grpc.event_engine_listener: true`` grpc's EventEngine threads do, as grpc's default."""
    import grpc

    extra: list[str] = []
    if listener:
        cfg = tmp_path / "ingest.yaml"
        cfg.write_text("grpc:\n  event_engine_listener: true\n")
        extra = ["--config", str(cfg)]
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, extra)
    try:
        payloads = [
            trace_request(40, 10, seed=i, spans_per_trace=5).SerializeToString() for i in range(4)
        ]

        def send(n: int) -> None:
            with grpc.insecure_channel(shim.grpc_target) as ch:
                call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                for i in range(n):
                    call(payloads[i % len(payloads)], timeout=10)

        with cf.ThreadPoolExecutor(4) as pool:
            list(pool.map(send, [150] * 4))
        ee = _event_engine_cpu_s(shim.proc.pid)
        if listener:
            assert ee >= 0.02, ee  # 0.06 s on a quiet machine
        else:
            assert ee <= 0.02, ee  # a clock tick or two (0.04-0.06 s with the listener)
    finally:
        assert shim.stop() == 0


@pytest.mark.parametrize(
    ("listener", "env", "expected"),
    [
        (False, None, "-event_engine_listener"),
        (False, "-event_engine_client", "-event_engine_client,-event_engine_listener"),
        (False, "event_engine_listener", "event_engine_listener"),  # the user's choice wins
        (True, None, None),
        (True, "-work_stealing", "-work_stealing"),
    ],
)
def test_grpc_experiments_keep_the_users_setting(
    listener: bool, env: str | None, expected: str | None
) -> None:
    cfg = IngestConfig.model_validate({"grpc": {"event_engine_listener": listener}})
    assert cfg.grpc.grpc_experiments(env) == expected
