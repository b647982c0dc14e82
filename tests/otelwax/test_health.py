"""/livez, /healthz and /readyz on the metrics port tell the truth, by HTTP status."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import make_server

import httpx
import pytest
from prometheus_client.exposition import ThreadingWSGIServer

from otelwax.health import Health, HealthConfig
from otelwax.resilience import BreakerConfig, CircuitBreaker
from otelwax.telemetry import ComponentMetrics, metrics_app
from tests.connectors.test_clickhouse_resilience import FakeClock


@pytest.fixture
def served() -> Iterator[tuple[Health, FakeClock, str]]:
    clock = FakeClock()
    health = Health(clock)
    health.configure(HealthConfig(stall_s=60, live_stall_s=300))
    server = make_server("127.0.0.1", 0, metrics_app(health=health), ThreadingWSGIServer)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        yield health, clock, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def status(url: str) -> tuple[int, dict]:
    r = httpx.get(url, timeout=5)
    return r.status_code, r.json()


def test_an_open_breaker_makes_the_process_unready_not_dead(served) -> None:
    health, clock, base = served
    br = CircuitBreaker(
        BreakerConfig(failure_threshold=1, open_seconds=30), name="sink.x", clock=clock,
        health=health,
    )
    assert status(base + "/readyz") == (200, {"status": "ok", "problems": []})
    br.record_failure()
    code, body = status(base + "/readyz")
    assert code == 503 and body["problems"] == ["circuit 'sink.x' is open"]
    for live in ("/livez", "/healthz"):
        assert status(base + live)[0] == 200
    clock.t += 30
    assert status(base + "/readyz")[1]["problems"] == ["circuit 'sink.x' is half_open"]
    br.before_call()
    br.record_success()
    assert status(base + "/readyz")[0] == 200


def test_a_stalled_source_is_unready_then_dead_unless_a_sink_is_retrying(served) -> None:
    health, clock, base = served
    part = health.progress("spans[3]")
    clock.t += 59
    assert status(base + "/readyz")[0] == 200
    part.tick(waiting=True)  # polled, but paused on its in-flight budget
    clock.t += 2
    code, body = status(base + "/readyz")
    assert code == 503 and body["problems"] == ["source spans[3] stalled for 61 s (> stall_s=60)"]
    assert status(base + "/livez")[0] == 200  # polled 2 s ago
    part.tick()
    assert status(base + "/readyz")[0] == 200
    clock.t += 301  # the worker loop is stuck: neither polled nor calling out
    assert status(base + "/livez")[0] == 503
    assert status(base + "/healthz")[1]["status"] == "unhealthy"
    health.called()  # ...unless a sink is retrying through its breaker (an outage)
    assert status(base + "/livez")[0] == 200
    health.forget("spans[3]")
    assert status(base + "/readyz")[0] == 200


def test_metrics_are_still_served(served) -> None:
    _, _, base = served
    ComponentMetrics("health.test", "items").received(3)
    r = httpx.get(base + "/metrics", timeout=5)
    assert r.status_code == 200
    assert 'otelwax_received_total{component="health.test",unit="items"} 3.0' in r.text
