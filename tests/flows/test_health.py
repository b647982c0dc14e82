"""A running traces flow answers /readyz and /livez on its metrics port truthfully: unready
(503) while its Jaeger sink's breaker is open, alive all along, ready again once Jaeger is."""

from __future__ import annotations

import time

import grpc
import httpx

from tests.conftest import free_port
from tests.flows.conftest import produce
from tests.jaegerfixtures import ScriptedOtlpServer
from tests.otlpgen import trace_payloads


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return r.status_code, r.json()


def test_readiness_follows_the_jaeger_breaker(flow_run) -> None:
    port = free_port()
    with ScriptedOtlpServer([grpc.StatusCode.UNAVAILABLE] * 8) as jaeger:
        jcfg = {
            "enabled": True,
            "endpoint": jaeger.endpoint,
            "retry": {"attempts": 1, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            "breaker": {"failure_threshold": 2, "open_seconds": 1.0},
        }
        run = flow_run(partitions=1, jaeger=jcfg, metrics_port=port)
        payloads = trace_payloads(3, seed=950, n_resources=1, spans_per_resource=10)
        produce(run.bootstrap, run.topic, payloads)
        proc = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
        seen: list[tuple[int, int]] = []  # (readyz, livez) statuses over time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            ready, body = _get(port, "/readyz")
            live, _ = _get(port, "/livez")
            if ready == 503:
                assert any("sink.jaeger" in p for p in body["problems"]), body
            if ready:
                seen.append((ready, live))
            if (503, 200) in seen and ready == 200 and jaeger.spans() == 30:
                break
            time.sleep(0.2)
        assert proc.poll() is None, run.log_text()
        run.kill_all()
    assert (503, 200) in seen, (seen, run.log_text())  # unready, but alive, during the outage
    assert seen[-1] == (200, 200), (seen, run.log_text())  # ready once Jaeger took the spans
    assert jaeger.spans() == 30
