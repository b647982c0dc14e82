"""A real Jaeger v2 (memory storage) for tests, run by ``scripts/services/jaeger.sh``.

    from tests.jaegerfixtures import jaeger_fixture  # noqa: F401  (registers fixture "jaeger")

    def test_x(jaeger):               # JaegerService: .otlp_endpoint, .trace(id), .wait_spans(...)
        ...

The session instance listens on OTLP gRPC 14317 and query HTTP 16686 unless
``$OTELWAX_TEST_JAEGER_OTLP`` / ``$OTELWAX_TEST_JAEGER_QUERY`` name a running one; it is reused
when already running and stopped at the end only if this session started it. Fault tests start
their own instance on free ports with ``JaegerService.start_new`` and stop it themselves.
The first start builds the binary from the Go module proxy (minutes).

``ScriptedOtlpServer`` is a tiny in-process OTLP/gRPC trace receiver answering a scripted
sequence of status codes (INVALID_ARGUMENT, UNAVAILABLE...), which a real Jaeger never does
on demand.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import ROOT, free_port, port_open

SCRIPT = ROOT / "scripts" / "services" / "jaeger.sh"


@dataclass
class JaegerService:
    otlp_port: int
    query_port: int
    grpc_port: int = 16685
    health_port: int = 13133
    data: Path | None = None
    tls: tuple[Path, Path] | None = None  # (cert, key): the OTLP receiver requires TLS

    @property
    def otlp_endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_port}"

    @property
    def query_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            JAEGER_OTLP_PORT=str(self.otlp_port),
            JAEGER_QUERY_PORT=str(self.query_port),
            JAEGER_QUERY_GRPC_PORT=str(self.grpc_port),
            JAEGER_HEALTH_PORT=str(self.health_port),
        )
        if self.data is not None:
            env["JAEGER_DATA"] = str(self.data)
        if self.tls is not None:
            env["JAEGER_TLS_CERT"], env["JAEGER_TLS_KEY"] = map(str, self.tls)
        return env

    def start(self) -> None:
        # The first call may build Jaeger from source: allow it the time.
        subprocess.run([str(SCRIPT), "start"], env=self._env(), check=True, timeout=3600)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop"], env=self._env(), check=True, timeout=120)

    @classmethod
    def start_new(
        cls, data: Path, otlp_port: int | None = None, tls: tuple[Path, Path] | None = None
    ) -> JaegerService:
        """Another instance on free ports (its own data dir), started."""
        svc = cls(
            otlp_port=otlp_port or free_port(),
            query_port=free_port(),
            grpc_port=free_port(),
            health_port=free_port(),
            data=data,
            tls=tls,
        )
        svc.start()
        return svc

    # --- query API ------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """GET a query API path; JSON body, or None on 404."""
        url = f"http://127.0.0.1:{self.query_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """``/api/traces/{id}`` (Jaeger's JSON model): the trace, or None when unknown."""
        body = self.get(f"/api/traces/{trace_id}")
        if not body or not body.get("data"):
            return None
        return body["data"][0]

    def wait_spans(
        self, trace_ids: set[str], n_spans: int, timeout: float = 30.0
    ) -> dict[str, dict[str, Any]]:
        """Poll until the traces hold ``n_spans`` spans in total; {trace id: trace}."""
        deadline = time.monotonic() + timeout
        got: dict[str, dict[str, Any]] = {}
        while True:
            for tid in trace_ids:
                t = self.trace(tid)
                if t is not None:
                    got[tid] = t
            total = sum(len(t["spans"]) for t in got.values())
            if total >= n_spans or time.monotonic() > deadline:
                return got
            time.sleep(0.2)


# fmt: off
def make_tls_files(d: Path, server_name: str) -> dict[str, Path]:
    """A throwaway CA and a server certificate for ``server_name`` (openssl): PEM paths
    ``ca``, ``cert``, ``key``."""
    d.mkdir(parents=True, exist_ok=True)
    p = {k: d / f"{k}.pem" for k in ("ca", "ca_key", "cert", "key", "csr")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    key_opts = "-newkey rsa:2048 -nodes".split()
    ssl("req", "-x509", *key_opts, "-days", "2", "-subj", "/CN=otelwax test CA",
        "-keyout", str(p["ca_key"]), "-out", str(p["ca"]))
    ssl("req", *key_opts, "-subj", f"/CN={server_name}",
        "-keyout", str(p["key"]), "-out", str(p["csr"]))
    ext = d / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{server_name}\n")
    ssl("x509", "-req", "-in", str(p["csr"]), "-CA", str(p["ca"]), "-CAkey", str(p["ca_key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(p["cert"]))
    return {"ca": p["ca"], "cert": p["cert"], "key": p["key"]}
# fmt: on


@pytest.fixture(scope="session", name="jaeger")
def jaeger_fixture() -> Iterator[JaegerService]:
    """The session's Jaeger (started if not running; stopped only if started here)."""
    otlp = int(os.environ.get("OTELWAX_TEST_JAEGER_OTLP", "14317"))
    query = int(os.environ.get("OTELWAX_TEST_JAEGER_QUERY", "16686"))
    svc = JaegerService(otlp_port=otlp, query_port=query)
    if port_open("127.0.0.1", otlp) and port_open("127.0.0.1", query):
        yield svc
        return
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class ScriptedOtlpServer(grpc.GenericRpcHandler):
    """OTLP/gRPC trace receiver on a free loopback port: the i-th Export call answers
    ``script[i]`` (OK once the script is used up); ``calls`` records (code, spans) per call.
    It listens on ``host`` (loopback unless told)."""

    def __init__(self, script: list[grpc.StatusCode], host: str = "127.0.0.1") -> None:
        self.script = list(script)
        self.calls: list[tuple[grpc.StatusCode, int]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(ThreadPoolExecutor(2))
        self._server.add_generic_rpc_handlers((self,))
        self.port = self._server.add_insecure_port(f"{host}:0")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spans(self, code: grpc.StatusCode = grpc.StatusCode.OK) -> int:
        with self._lock:
            return sum(n for c, n in self.calls if c == code)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != EXPORT_METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )

    def _export(self, req: ExportTraceServiceRequest, ctx: grpc.ServicerContext) -> Any:
        n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        with self._lock:
            code = self.script.pop(0) if self.script else grpc.StatusCode.OK
            self.calls.append((code, n))
        if code != grpc.StatusCode.OK:
            ctx.abort(code, f"scripted {code.name}")
        return ExportTraceServiceResponse()

    def __enter__(self) -> ScriptedOtlpServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)
