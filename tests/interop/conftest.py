"""Fixtures for the Collector interop tests: a real OpenTelemetry Collector (built by
scripts/collector.sh from bench/collector/builder.yaml) as a subprocess on free ports, an OTLP
gRPC sender and an OTLP/HTTP receiver that records what the Collector exports."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port, port_open

COLLECTOR = ROOT / ".cache" / "bin" / "otelcol-bench"


@pytest.fixture(scope="session")
def otelcol() -> str:
    """Path of the Collector binary; scripts/collector.sh builds it when missing or stale
    (scripts/test.sh does so up front: the first build takes minutes)."""
    res = subprocess.run(
        [str(ROOT / "scripts" / "collector.sh")], capture_output=True, text=True, timeout=1800
    )
    assert res.returncode == 0 and COLLECTOR.exists(), res.stdout[-2000:] + res.stderr[-3000:]
    return str(COLLECTOR)


@dataclass
class Collector:
    """A running Collector subprocess and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (the Collector drains and shuts down its pipelines), SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_collector(
    binary: str, config: dict[str, Any], tmp: Path, ready_port: int | None = None
) -> Collector:
    """Run ``binary --config`` with ``config`` (its own telemetry off, so no fixed port is
    taken); waits until ``ready_port`` accepts connections, when given."""
    config = dict(config)
    config["service"] = {
        **config["service"],
        "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
    }
    name = uuid.uuid4().hex[:6]
    cfg = tmp / f"otelcol-{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log_path = tmp / f"otelcol-{name}.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            [binary, "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT, cwd=tmp
        )
    col = Collector(proc, log_path)
    deadline = time.monotonic() + 30
    while ready_port is not None and not port_open("127.0.0.1", ready_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            col.stop()
            raise AssertionError(f"collector did not start:\n{col.log()[-4000:]}")
        time.sleep(0.1)
    return col


def send_grpc(target: str, signal_name: str, payloads: list[bytes]) -> None:
    """Export serialized OTLP requests over gRPC; each must be accepted (no partial success)."""
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import (
        metrics_service_pb2,
        metrics_service_pb2_grpc,
    )
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    kinds = {
        "traces": (
            trace_service_pb2_grpc.TraceServiceStub,
            trace_service_pb2.ExportTraceServiceRequest,
        ),
        "logs": (logs_service_pb2_grpc.LogsServiceStub, logs_service_pb2.ExportLogsServiceRequest),
        "metrics": (
            metrics_service_pb2_grpc.MetricsServiceStub,
            metrics_service_pb2.ExportMetricsServiceRequest,
        ),
    }
    stub_cls, req_cls = kinds[signal_name]
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=15)
        stub = stub_cls(ch)
        for p in payloads:
            resp = stub.Export(req_cls.FromString(p), timeout=30)
            rejected = resp.partial_success
            assert not (rejected.rejected_spans if signal_name == "traces" else 0), resp
            assert not (rejected.rejected_log_records if signal_name == "logs" else 0), resp
            assert not (rejected.rejected_data_points if signal_name == "metrics" else 0), resp


@dataclass
class OtlpHttpSink:
    """An OTLP/HTTP endpoint (protobuf, uncompressed) that keeps every request body by path."""

    port: int
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[bytes]:
        with self.lock:
            return list(self.bodies.get(path, []))


@pytest.fixture
def otlp_http_sink() -> Iterator[OtlpHttpSink]:
    """A running :class:`OtlpHttpSink` on a free port (answers 200 with an empty response)."""
    sink = OtlpHttpSink(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with sink.lock:
                sink.bodies.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", sink.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
