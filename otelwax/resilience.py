"""Retries with exponential backoff and a circuit breaker, shared by every sink.

    policy = RetryPolicy(RetryConfig(), retry_on=is_transient)
    breaker = CircuitBreaker(BreakerConfig(), name="clickhouse")
    rows = policy.call(client.insert_arrow, table, batch, breaker=breaker)

``RetryPolicy.call`` tries a function up to ``attempts`` times, sleeping an exponentially growing,
jittered, capped delay between tries; errors that ``retry_on`` says are permanent are raised at
once. A ``CircuitBreaker`` opens after ``failure_threshold`` consecutive failures: while open,
calls fail fast with ``CircuitOpenError`` (which carries ``retry_after`` seconds) so a caller can
hold its source back instead of hammering a dead service; after ``open_seconds`` one probe call
is let through (half-open) and its outcome closes or re-opens the breaker. Neither ever drops
data: when they give up they raise, and the caller keeps its batch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from pydantic import Field

from otelwax.settings import StrictModel

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "RetryConfig",
    "RetryPolicy",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class RetryConfig(StrictModel):
    """How often and how patiently to retry one operation."""

    attempts: int = Field(3, ge=1, description="total tries, the first included")
    initial_backoff_s: float = Field(0.2, ge=0, description="delay before the second try")
    multiplier: float = Field(2.0, ge=1.0, description="delay growth per try")
    max_backoff_s: float = Field(5.0, ge=0, description="cap on any single delay")
    jitter: float = Field(0.2, ge=0, le=1, description="± fraction of random spread per delay")


class BreakerConfig(StrictModel):
    """When to stop calling a failing service, and for how long."""

    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open it")
    open_seconds: float = Field(30.0, gt=0, description="how long it stays open before a probe")


class CircuitOpenError(RuntimeError):
    """The breaker is open: the call was not made. Try again after ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_after:.1f} s")
        self.name = name
        self.retry_after = retry_after


class CircuitBreaker:
    """Thread-safe closed → open → half-open breaker over consecutive failures."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        cfg: BreakerConfig | None = None,
        *,
        name: str = "breaker",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg or BreakerConfig()
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """ "closed", "open" or "half_open" (open turns half-open once its time is up)."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.cfg.open_seconds:
            self._state = self.HALF_OPEN
            self._probing = False
        return self._state

    def retry_after(self) -> float:
        """Seconds until a call may be attempted (0 when it may be now)."""
        with self._lock:
            if self._state_locked() != self.OPEN:
                return 0.0
            return max(0.0, self.cfg.open_seconds - (self._clock() - self._opened_at))

    def before_call(self) -> None:
        """Raise ``CircuitOpenError`` unless a call may go now (one probe when half-open)."""
        with self._lock:
            st = self._state_locked()
            if st == self.CLOSED:
                return
            if st == self.HALF_OPEN and not self._probing:
                self._probing = True
                log.info("circuit %s: half-open, letting one probe call through", self.name)
                return
            remaining = self.cfg.open_seconds - (self._clock() - self._opened_at)
            raise CircuitOpenError(self.name, max(remaining, 0.0))

    def record_success(self) -> None:
        with self._lock:
            if self._state != self.CLOSED:
                log.info("circuit %s: closed again after a successful call", self.name)
            self._state = self.CLOSED
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            st = self._state_locked()
            if st == self.HALF_OPEN or (
                st == self.CLOSED and self._failures >= self.cfg.failure_threshold
            ):
                self._state = self.OPEN
                self._opened_at = self._clock()
                self._probing = False
                log.warning(
                    "circuit %s: open for %.0f s after %d consecutive failures",
                    self.name,
                    self.cfg.open_seconds,
                    self._failures,
                )

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` through the breaker (any exception counts as a failure)."""
        self.before_call()
        try:
            out = fn(*args, **kwargs)
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return out


class RetryPolicy:
    """Retry an operation with capped exponential backoff and jitter."""

    def __init__(
        self,
        cfg: RetryConfig | None = None,
        *,
        retry_on: Callable[[BaseException], bool] | tuple[type[BaseException], ...] = (Exception,),
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg or RetryConfig()
        self._retry_on = retry_on
        self._sleep = sleep
        self._rng = rng

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, CircuitOpenError):
            return False
        if isinstance(self._retry_on, tuple):
            return isinstance(exc, self._retry_on)
        return bool(self._retry_on(exc))

    def delays(self) -> Iterator[float]:
        """The delays slept between tries (``attempts - 1`` of them)."""
        c = self.cfg
        d = c.initial_backoff_s
        for _ in range(c.attempts - 1):
            spread = 1.0 + c.jitter * (2.0 * self._rng() - 1.0)
            yield min(c.max_backoff_s, max(0.0, d * spread))
            d *= c.multiplier

    def call(
        self,
        fn: Callable[..., T],
        *args: object,
        breaker: CircuitBreaker | None = None,
        **kwargs: object,
    ) -> T:
        """Call ``fn(*args, **kwargs)``; retry retryable errors; raise the last one.

        With a ``breaker`` every try goes through it; an open breaker raises
        ``CircuitOpenError`` at once (not retried here: the caller decides how long to wait).
        """
        delays = self.delays()
        attempt = 0
        while True:
            attempt += 1
            if breaker is not None:
                breaker.before_call()
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                retryable = self.is_retryable(exc)
                if breaker is not None and retryable:
                    breaker.record_failure()
                delay = next(delays, None) if retryable else None
                if delay is None:
                    raise
                log.warning(
                    "attempt %d/%d failed (%s: %s); retrying in %.2f s",
                    attempt,
                    self.cfg.attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._sleep(delay)
                continue
            if breaker is not None:
                breaker.record_success()
            return out
