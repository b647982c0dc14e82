"""Liveness and readiness of one flow process, served next to ``/metrics``.

    GET /livez (and /healthz)  200 while the process works: every source partition was polled,
                               or a sink made a call through its circuit breaker, within
                               ``live_stall_s``; 503 when the worker loop is wedged (restart it).
    GET /readyz                200 when what it depends on is there: every circuit breaker is
                               closed (sinks reachable) and no source partition has been
                               stalled (paused on its in-flight budget, or not polled because a
                               step blocks) longer than ``stall_s``; else 503.

An outage (ClickHouse or Jaeger down) makes a flow unready, not dead: its sinks keep retrying
through their breakers, which counts as alive, so Kubernetes does not restart a process that is
correctly holding its Kafka partitions back. Both answers are JSON:
``{"status": "unready", "problems": ["circuit 'sink.jaeger' is open", ...]}``.

Components report here without knowing about HTTP: ``CircuitBreaker`` registers itself
(``watch``) and marks the process alive on every call; a source partition takes a
``Progress`` and ticks it on every poll.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

import orjson
from pydantic import Field

from otelwax.settings import StrictModel

__all__ = ["HEALTH", "Health", "HealthConfig", "Progress", "Watched"]

LIVE_PATHS = ("/livez", "/healthz")
READY_PATH = "/readyz"


class HealthConfig(StrictModel):
    """When a flow process stops being ready, or alive."""

    stall_s: float = Field(
        60.0,
        gt=0,
        description="/readyz fails when a source partition made no progress for this long "
        "(paused on its in-flight budget, or not polled because a step blocks)",
    )
    live_stall_s: float = Field(
        300.0,
        gt=0,
        description="/livez fails when neither a source poll nor a sink call happened for this "
        "long (the worker loop is wedged: restarting helps)",
    )


class Watched(Protocol):
    """Anything whose readiness can be asked (e.g. a circuit breaker)."""

    def health_problem(self) -> str | None:
        """None when fine, else why this process is not ready."""


class Progress:
    """Progress marks of one source partition (written by its worker thread only)."""

    __slots__ = ("_clock", "moved", "name", "polled")

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self._clock = clock
        self.polled = self.moved = clock()

    def tick(self, waiting: bool = False) -> None:
        """The partition was polled; ``waiting``: it could not read (paused by backpressure)."""
        now = self._clock()
        self.polled = now
        if not waiting:
            self.moved = now


class Health:
    """The checks of one process; ``HEALTH`` is the one the metrics server answers from."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = HealthConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._progress: dict[str, Progress] = {}
        self._watched: weakref.WeakSet[Watched] = weakref.WeakSet()
        self._called_at = clock()

    def configure(self, cfg: HealthConfig) -> None:
        self.cfg = cfg

    def progress(self, name: str) -> Progress:
        """Register (or replace) the progress marks of source partition ``name``."""
        p = Progress(name, self._clock)
        with self._lock:
            self._progress[name] = p
        return p

    def forget(self, name: str) -> None:
        with self._lock:
            self._progress.pop(name, None)

    def watch(self, obj: Watched) -> None:
        """Ask ``obj.health_problem()`` on every readiness check while ``obj`` lives."""
        with self._lock:
            self._watched.add(obj)

    def called(self) -> None:
        """A sink made (or was refused) a call: its worker is alive, if waiting on an outage."""
        self._called_at = self._clock()

    def liveness(self) -> list[str]:
        """Why this process should be restarted (empty: it is alive)."""
        now = self._clock()
        limit = self.cfg.live_stall_s
        with self._lock:
            parts = list(self._progress.values())
        return [
            f"source {p.name} not polled for {now - p.polled:.0f} s and no sink call either"
            for p in parts
            if now - max(p.polled, self._called_at) > limit
        ]

    def readiness(self) -> list[str]:
        """Why this process is not ready (empty: it is)."""
        now = self._clock()
        limit = self.cfg.stall_s
        with self._lock:
            parts = list(self._progress.values())
            watched = list(self._watched)
        problems = [w for w in (o.health_problem() for o in watched) if w]
        problems += [
            f"source {p.name} stalled for {now - p.moved:.0f} s (> stall_s={limit:g})"
            for p in parts
            if now - p.moved > limit
        ]
        return problems

    def answer(self, path: str) -> tuple[int, bytes] | None:
        """(HTTP status, JSON body) for a health path, None for any other path."""
        if path in LIVE_PATHS:
            problems, bad = self.liveness(), "unhealthy"
        elif path == READY_PATH:
            problems, bad = self.readiness(), "unready"
        else:
            return None
        status = "ok" if not problems else bad
        return (200 if not problems else 503), orjson.dumps(
            {"status": status, "problems": problems}
        )


HEALTH = Health()
