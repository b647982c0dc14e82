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

Every probe reaches a decision. Through ``RetryPolicy.call``:

- success, or an error ``retry_on`` calls permanent (gRPC INVALID_ARGUMENT, a ClickHouse syntax
  error): the peer is reachable and answered, so the breaker **closes** (and the consecutive
  failure count restarts). The error still goes to the caller, which decides what happens to
  the data (dropped and counted with its reason, dead-lettered, or raised);
- a retryable error, or no answer at all (``KeyboardInterrupt``, a killed caller): it
  **re-opens** for another ``open_seconds``. A probe whose outcome is never reported stops
  holding the breaker after ``open_seconds``: the next caller becomes the probe.

A breaker reports to ``otelwax.health``: the process is not ready while it is not closed, and
every call through it (refused ones too) shows the calling worker is alive.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from pydantic import Field

from otelwax.health import HEALTH, Health
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
        health: Health = HEALTH,
    ) -> None:
        self.cfg = cfg or BreakerConfig()
        self.name = name
        self._clock = clock
        self._health = health
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        health.watch(self)

    @property
    def state(self) -> str:
        """ "closed", "open" or "half_open" (open turns half-open once its time is up)."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        now = self._clock()
        if self._state == self.OPEN and now - self._opened_at >= self.cfg.open_seconds:
            self._state = self.HALF_OPEN
            self._probing = False
        elif self._probing and now - self._probe_at >= self.cfg.open_seconds:
            log.warning("circuit %s: the probe call never reported; letting another", self.name)
            self._probing = False
        return self._state

    def retry_after(self) -> float:
        """Seconds until a call may be attempted (0 when it may be now)."""
        with self._lock:
            if self._state_locked() != self.OPEN:
                return 0.0
            return max(0.0, self.cfg.open_seconds - (self._clock() - self._opened_at))

    def health_problem(self) -> str | None:
        """Why the process is not ready because of this breaker (None when closed)."""
        st = self.state
        return None if st == self.CLOSED else f"circuit {self.name!r} is {st}"

    def before_call(self) -> bool:
        """Raise ``CircuitOpenError`` unless a call may go now (one probe when half-open).

        Returns True when this call is the half-open probe: its caller must report the
        outcome (``record_success``, ``record_answer`` or ``record_failure``)."""
        self._health.called()
        with self._lock:
            st = self._state_locked()
            if st == self.CLOSED:
                return False
            if st == self.HALF_OPEN and not self._probing:
                self._probing = True
                self._probe_at = self._clock()
                log.info("circuit %s: half-open, letting one probe call through", self.name)
                return True
            since = self._probe_at if self._probing else self._opened_at
            remaining = self.cfg.open_seconds - (self._clock() - since)
            raise CircuitOpenError(self.name, max(remaining, 0.0))

    def record_success(self) -> None:
        """The call succeeded: close."""
        self._close("a successful call")

    def record_answer(self) -> None:
        """The call failed with an error that is the peer's definitive answer (not retryable):
        the peer is reachable, so close; what to do with the data is the caller's decision."""
        self._close("a definitive (non-retryable) answer")

    def _close(self, why: str) -> None:
        with self._lock:
            if self._state != self.CLOSED:
                log.info("circuit %s: closed again after %s", self.name, why)
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
                    "circuit %s: open for %.3g s after %d consecutive failures",
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
        Every try reports to the breaker: success and permanent errors close it, retryable
        errors count as failures (see the module docstring).
        """
        delays = self.delays()
        attempt = 0
        while True:
            attempt += 1
            probe = breaker.before_call() if breaker is not None else False
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                retryable = self.is_retryable(exc)
                if breaker is not None:
                    if retryable:
                        breaker.record_failure()
                    else:
                        breaker.record_answer()
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
            except BaseException:
                if probe and breaker is not None:  # no answer (interrupted): open again
                    breaker.record_failure()
                raise
            if breaker is not None:
                breaker.record_success()
            return out
