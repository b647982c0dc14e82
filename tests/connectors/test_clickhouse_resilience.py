"""Retry/backoff and the circuit breaker, against a real ClickHouse server that is stopped."""

from __future__ import annotations

import threading
import time

import pytest

from connectors.clickhouse import ClickHouseError, init_schema, is_transient, open_client
from otelwax.codec.pydecode import decode_traces
from otelwax.resilience import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    RetryConfig,
    RetryPolicy,
)
from tests.connectors.conftest import server_config
from tests.otlpgen import trace_payloads


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_backoff_delays_grow_cap_and_jitter() -> None:
    cfg = RetryConfig(attempts=6, initial_backoff_s=1, multiplier=3, max_backoff_s=5, jitter=0)
    assert list(RetryPolicy(cfg).delays()) == [1, 3, 5, 5, 5]
    jittered = list(RetryPolicy(cfg.model_copy(update={"jitter": 0.5})).delays())
    assert all(0.5 <= d <= 5 for d in jittered) and len(jittered) == 5
    assert list(RetryPolicy().delays())[:1] and len(list(RetryPolicy().delays())) == 2


def test_breaker_opens_after_threshold_then_half_open_probe() -> None:
    clock = FakeClock()
    br = CircuitBreaker(BreakerConfig(failure_threshold=3, open_seconds=30), clock=clock)
    for _ in range(2):
        br.record_failure()
    assert br.state == "closed"
    br.record_failure()
    assert br.state == "open"
    with pytest.raises(CircuitOpenError) as ei:
        br.before_call()
    assert ei.value.retry_after == pytest.approx(30)
    clock.t = 29
    assert br.retry_after() == pytest.approx(1)
    clock.t = 30
    assert br.state == "half_open"
    br.before_call()  # the probe goes through
    with pytest.raises(CircuitOpenError):
        br.before_call()  # a second caller while the probe runs is refused
    br.record_failure()  # probe failed: open again for another 30 s
    assert br.state == "open"
    clock.t = 60
    br.before_call()
    br.record_success()
    assert br.state == "closed"


def test_permanent_errors_are_not_retried() -> None:
    calls = []
    policy = RetryPolicy(RetryConfig(attempts=5), retry_on=is_transient, sleep=calls.append)

    def bad() -> None:
        raise ClickHouseError("syntax error", 62)

    with pytest.raises(ClickHouseError):
        policy.call(bad)
    assert calls == []


def test_stopped_server_retries_opens_breaker_and_recovers(fault_server) -> None:
    """Stop ClickHouse mid-stream: retries, breaker opens, source holds; restart: nothing lost."""
    cfg = server_config(fault_server, "otel", create_schema=True)
    client = open_client(cfg)
    table = cfg.traces_table
    batches = [decode_traces(trace_payloads(1, seed=500 + i)).batch for i in range(10)]
    slept: list[float] = []
    policy = RetryPolicy(
        RetryConfig(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2),
        retry_on=is_transient,
        sleep=lambda s: (slept.append(s), time.sleep(s)),
    )
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, open_seconds=1.0), name="ch")

    def write(i: int) -> None:
        client.insert_arrow(table, batches[i], dedup_token=f"otlp_spans:0:{i}")

    for i in range(3):
        policy.call(write, i, breaker=breaker)

    fault_server.run("stop")
    # 3 tries per call, 5 consecutive failures open the breaker during the second call.
    with pytest.raises(Exception) as first:
        policy.call(write, 3, breaker=breaker)
    assert is_transient(first.value)
    assert len(slept) == 2 and breaker.state == "closed"
    with pytest.raises(CircuitOpenError) as opened:
        policy.call(write, 3, breaker=breaker)
    assert breaker.state == "open" and opened.value.retry_after > 0
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # fails fast while open: no connection attempt

    # The source holds batch 3 and later ones; ClickHouse comes back after a while.
    restart = threading.Timer(1.5, fault_server.run, args=("start",))
    restart.start()
    pending = list(range(3, 10))
    deadline = time.monotonic() + 60
    states = set()
    while pending and time.monotonic() < deadline:
        i = pending[0]
        try:
            policy.call(write, i, breaker=breaker)
            pending.pop(0)
        except CircuitOpenError as exc:
            states.add("open")
            time.sleep(min(exc.retry_after, 0.5) + 0.01)
        except Exception as exc:
            assert is_transient(exc), exc
            states.add("failed")
            time.sleep(0.1)
    restart.join()
    assert not pending, "batches still pending after the server came back"
    assert breaker.state == "closed"
    # The replay of an already stored range is skipped by its token: nothing duplicated.
    assert client.insert_arrow(table, batches[0], dedup_token="otlp_spans:0:0") == 0
    rows = client.execute(f"SELECT count(), uniqExact(SpanId) FROM otel.{table}")
    assert rows == [(1000, 1000)]
    client.close()


def test_open_client_fails_clearly_when_server_down(fault_server) -> None:
    fault_server.run("stop")
    cfg = server_config(fault_server, "otel", connect_timeout_s=1)
    with pytest.raises(Exception) as ei:
        open_client(cfg)
    assert is_transient(ei.value)
    fault_server.run("start")
    client = open_client(cfg)
    init_schema(client, cfg)
    assert client.table_columns(cfg.traces_table)
    client.close()
