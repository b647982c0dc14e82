"""The circuit breaker always reaches a decision: every probe outcome closes or re-opens it."""

from __future__ import annotations

import pytest

from otelwax.resilience import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    RetryConfig,
    RetryPolicy,
)
from tests.connectors.test_clickhouse_resilience import FakeClock


class Down(Exception):
    """A transient failure (the peer is unreachable)."""


class Rejected(Exception):
    """A definitive answer from a reachable peer (e.g. gRPC INVALID_ARGUMENT)."""


def _opened(clock: FakeClock) -> tuple[CircuitBreaker, RetryPolicy]:
    br = CircuitBreaker(BreakerConfig(failure_threshold=2, open_seconds=10), clock=clock)
    policy = RetryPolicy(RetryConfig(attempts=1), retry_on=(Down,), sleep=lambda s: None)

    def down() -> None:
        raise Down

    for _ in range(2):
        with pytest.raises(Down):
            policy.call(down, breaker=br)
    assert br.state == "open"
    return br, policy


def test_a_probe_rejected_non_retryably_closes_the_breaker() -> None:
    """The probe reached the peer, which answered "your data is bad": the peer is up, so the
    breaker closes and the next call goes through (it used to stay half-open forever)."""
    clock = FakeClock()
    br, policy = _opened(clock)
    clock.t = 10

    def rejects() -> None:
        raise Rejected("INVALID_ARGUMENT")

    with pytest.raises(Rejected):
        policy.call(rejects, breaker=br)
    assert br.state == "closed"
    assert policy.call(lambda: "stored", breaker=br) == "stored"


def test_a_non_retryable_answer_resets_the_failure_count() -> None:
    clock = FakeClock()
    br = CircuitBreaker(BreakerConfig(failure_threshold=2, open_seconds=10), clock=clock)
    policy = RetryPolicy(RetryConfig(attempts=1), retry_on=(Down,), sleep=lambda s: None)
    for fn_exc in (Down, Rejected, Down):
        with pytest.raises(fn_exc):
            policy.call(lambda e=fn_exc: (_ for _ in ()).throw(e()), breaker=br)
    assert br.state == "closed"  # Down, answer, Down: never two consecutive failures


def test_a_probe_that_never_reports_is_replaced_after_open_seconds() -> None:
    """A probe whose caller dies (thread killed, BaseException) must not hold the breaker
    half-open forever: after another ``open_seconds`` a new probe is let through."""
    clock = FakeClock()
    br, _ = _opened(clock)
    clock.t = 10
    br.before_call()  # the probe goes, and nothing ever reports its outcome
    with pytest.raises(CircuitOpenError) as ei:
        br.before_call()
    assert ei.value.retry_after == pytest.approx(10)  # not "retry in 0 s" forever
    clock.t = 19
    with pytest.raises(CircuitOpenError):
        br.before_call()
    clock.t = 20
    br.before_call()  # a new probe
    br.record_success()
    assert br.state == "closed"


def test_interrupted_probe_reopens_the_breaker() -> None:
    clock = FakeClock()
    br, policy = _opened(clock)
    clock.t = 10

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        policy.call(interrupted, breaker=br)
    assert br.state == "open"  # no answer from the peer: open again, probe later
    clock.t = 20
    assert policy.call(lambda: 1, breaker=br) == 1
    assert br.state == "closed"
