"""otelwax's own metrics: the standard counters every component exports on ``/metrics``.

Every component (shim front door, Kafka source, decoder, operator, sink) counts the same four
things, so one dashboard works for all of them:

    otelwax_received_total{component, unit}
    otelwax_sent_total{component, unit}
    otelwax_dropped_total{component, unit, reason}
    otelwax_failed_total{component, unit}

``unit`` says what was counted (spans, datapoints, logs, records, requests, rows, bytes).
Components that work in batches also observe each batch's size in
``otelwax_batch_size{component, unit}`` (a histogram).

``serve_metrics`` serves them on ``/metrics`` next to ``/livez`` (``/healthz``) and ``/readyz``
(``otelwax.health``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from otelwax.health import HEALTH, Health, HealthConfig

RECEIVED = Counter("otelwax_received", "Items received by a component", ["component", "unit"])
SENT = Counter("otelwax_sent", "Items a component passed on or stored", ["component", "unit"])
DROPPED = Counter(
    "otelwax_dropped", "Items dropped on purpose, by reason", ["component", "unit", "reason"]
)
FAILED = Counter("otelwax_failed", "Items a component failed to handle", ["component", "unit"])
LATENCY = Histogram(
    "otelwax_latency_seconds",
    "Time spent in an operation (sink write, Kafka delivery, ...)",
    ["component", "operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "otelwax_batch_size",
    "Items per batch a component handled (e.g. rows per ClickHouse insert)",
    ["component", "unit"],
    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000),
)


class ComponentMetrics:
    """The standard counters bound to one component name and unit."""

    __slots__ = ("_dropped", "_failed", "_received", "_sent", "component", "unit")

    def __init__(self, component: str, unit: str = "items") -> None:
        self.component = component
        self.unit = unit
        self._received = RECEIVED.labels(component, unit)
        self._sent = SENT.labels(component, unit)
        self._failed = FAILED.labels(component, unit)
        self._dropped: dict[str, Counter] = {}

    def received(self, n: int = 1) -> None:
        if n:
            self._received.inc(n)

    def sent(self, n: int = 1) -> None:
        if n:
            self._sent.inc(n)

    def failed(self, n: int = 1) -> None:
        if n:
            self._failed.inc(n)

    def dropped(self, n: int = 1, reason: str = "unspecified") -> None:
        if not n:
            return
        c = self._dropped.get(reason)
        if c is None:
            c = self._dropped[reason] = DROPPED.labels(self.component, self.unit, reason)
        c.inc(n)

    def batch(self, n: int) -> None:
        """Observe one batch of ``n`` items."""
        BATCH_SIZE.labels(self.component, self.unit).observe(n)

    def latency(self, operation: str) -> Histogram:
        """A latency histogram child for ``operation`` (use ``.time()`` or ``.observe(s)``)."""
        return LATENCY.labels(self.component, operation)


_served: dict[int, object] = {}
_lock = threading.Lock()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
        pass


Route = Callable[[str, dict[str, str]], tuple[int, bytes]]
"""A handler of a path prefix: (rest of the path, query parameters) → (status, JSON body)."""

_routes: dict[str, Route] = {}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


def add_route(prefix: str, handler: Route) -> None:
    """Answer ``prefix...`` paths on every metrics port of this process with ``handler``
    (e.g. ``/query/`` of an embedded ClickHouse sink); the last handler of a prefix wins."""
    with _lock:
        _routes[prefix] = handler


def metrics_app(registry: CollectorRegistry = REGISTRY, health: Health = HEALTH) -> Any:
    """WSGI app: the health paths answered by ``health``, routes added with
    :func:`add_route`, anything else by Prometheus."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        answer = health.answer(path)
        if answer is None:
            prefix = next((p for p in list(_routes) if path.startswith(p)), None)
            if prefix is None:
                return metrics(environ, start_response)
            query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
            answer = _routes[prefix](path[len(prefix) :], query)
        status, body = answer
        reason = _REASONS.get(status, "Service Unavailable")
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(f"{status} {reason}", headers)
        return [body]

    return app


def serve_metrics(
    port: int,
    addr: str = "0.0.0.0",
    health: HealthConfig | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """Serve ``/metrics``, ``/livez`` (``/healthz``) and ``/readyz`` on ``addr:port`` from a
    daemon thread (idempotent per port); ``health`` sets the process's stall limits."""
    if health is not None:
        HEALTH.configure(health)
    with _lock:
        if port in _served:
            return
        server = make_server(
            addr, port, metrics_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler
        )
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        _served[port] = server


def serve_flow_metrics(
    port: int, addr: str = "0.0.0.0", health: HealthConfig | None = None
) -> None:
    """:func:`serve_metrics` for a flow starting up: a port already in use ends the process
    with one line naming the port and the setting to change (``otelwax.startup``)."""
    try:
        serve_metrics(port, addr, health)
    except OSError as exc:
        from otelwax.startup import exit_at_start

        exit_at_start(
            f"metrics port {addr}:{port} is not available ({exc.strerror or exc}): another "
            "flow or process serves there; set this flow's metrics_port (or "
            "$OTELWAX_METRICS_PORT) to a free port, or to null to serve none",
            exc,
        )


# --- progress lines ----------------------------------------------------------------------------

_progress_started = False


def _totals(registry: CollectorRegistry) -> dict[str, Any]:
    """What a flow did so far, from its own counters: records read, rows stored, samples sent,
    consumer lag per topic and partition."""
    out: dict[str, Any] = {"read": 0.0, "rows": 0.0, "samples": 0.0, "lag": {}}
    for fam in registry.collect():
        for s in fam.samples:
            lab = s.labels
            if s.name == "otelwax_received_total" and lab.get("component") == "kafka_source":
                out["read"] += s.value if lab.get("unit") == "records" else 0
            elif s.name == "otelwax_sent_total" and lab.get("unit") == "rows":
                out["rows"] += s.value if lab.get("component", "").startswith("clickhouse") else 0
            elif s.name == "otelwax_sent_total" and lab.get("unit") == "samples":
                out["samples"] += s.value
            elif s.name == "otelwax_kafka_consumer_lag":
                out["lag"][(lab.get("topic", ""), lab.get("partition", ""))] = s.value
    return out


def _lag_text(lag: dict[tuple[str, str], float]) -> str:
    topics: dict[str, list[tuple[int, float]]] = {}
    for (topic, part), v in lag.items():
        topics.setdefault(topic, []).append((int(part) if part.isdigit() else -1, v))
    parts = []
    for topic, vals in sorted(topics.items()):
        total = sum(v for _, v in vals)
        worst = max(vals, key=lambda pv: pv[1])
        parts.append(f"{topic} {total:,.0f} (max p{worst[0]}: {worst[1]:,.0f})")
    return "; lag " + ", ".join(parts) if parts else ""


def progress_line(now: dict[str, Any], before: dict[str, Any], seconds: float) -> str:
    """One progress line from two :func:`_totals` ``seconds`` apart."""
    rate = (now["read"] - before["read"]) / seconds if seconds > 0 else 0.0
    text = f"progress: {rate:,.0f} records/s, {now['read']:,.0f} read"
    if now["rows"]:
        text += f", {now['rows']:,.0f} rows stored (+{now['rows'] - before['rows']:,.0f})"
    if now["samples"]:
        text += f", {now['samples']:,.0f} samples sent"
    return text + _lag_text(now["lag"])


def start_progress_log(
    interval_s: float | None, registry: CollectorRegistry = REGISTRY
) -> None:
    """Log a progress line every ``interval_s`` (None/0: none) from a daemon thread, and a
    "stopped" line with the totals when the process exits (once per process)."""
    global _progress_started
    import atexit
    import logging
    import time

    with _lock:
        if _progress_started:
            return
        _progress_started = True
    log = logging.getLogger("otelwax.progress")
    start = time.monotonic()

    def stopped() -> None:
        t = _totals(registry)
        log.info(
            "stopped after %.0f s: %s records read, %s rows stored, %s samples sent; ranges "
            "not yet stored are read again on the next start",
            time.monotonic() - start,
            f"{t['read']:,.0f}",
            f"{t['rows']:,.0f}",
            f"{t['samples']:,.0f}",
        )

    atexit.register(stopped)
    if not interval_s:
        return

    def loop() -> None:
        before, t0 = _totals(registry), time.monotonic()
        while True:
            time.sleep(interval_s)
            now, t1 = _totals(registry), time.monotonic()
            log.info("%s", progress_line(now, before, t1 - t0))
            before, t0 = now, t1

    threading.Thread(target=loop, name="progress", daemon=True).start()


def stop_on_sigterm() -> None:
    """SIGTERM (Kubernetes, compose, systemd) stops the flow like Ctrl-C: bytewax ends the
    run, the exit handlers log what was done. Python's default is to die at once. Both stop
    quietly: the "stopped" line, exit code 0 (:func:`_quiet_stop`). Only the main thread can
    set it; elsewhere (``-w N`` worker threads) nothing changes."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        _quiet_stop()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


_PANIC_START = re.compile(r"^thread '.*' panicked at ")
_PANIC_MORE = re.compile(r"^(Box<dyn Any>|stack backtrace:|note: |\s+\d+: |\s+at )")
_stopping = False


def _interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is (or was raised from) the interrupt of :func:`stop_on_sigterm`."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KeyboardInterrupt) or "signal received" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _quiet_stop() -> None:
    """Make the SIGTERM stop one line and exit code 0 (once per process).

    bytewax stops on the interrupt by panicking in Rust (the panic report goes to fd 2) and
    re-raising it as "signal received" at the top (a traceback, exit code 1). From the signal
    on, fd 2 passes through a thread that drops the panic report's lines, and an uncaught
    interrupt runs the exit handlers (the "stopped" line, chdb closed by then) and exits 0.
    """
    global _stopping
    import atexit
    import os
    import sys

    if _stopping:
        return
    _stopping = True
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def forward() -> None:
        skipping = False
        with os.fdopen(r, "rb") as src:
            for line in src:
                text = line.decode(errors="replace")
                if not text.strip():
                    continue  # the interrupted run's reports end in blank lines
                if _PANIC_START.match(text) or (skipping and _PANIC_MORE.match(text)):
                    skipping = True
                    continue
                skipping = False
                try:
                    os.write(saved, line)
                except OSError:
                    pass  # stderr's reader went away: keep draining, or writers would block

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    previous = sys.excepthook

    def unfilter() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the forwarder drains and ends
        forwarder.join(5)

    def hook(typ: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not _interrupted(exc):  # another error while stopping: shown as usual
            previous(typ, exc, tb)
            unfilter()
            return
        atexit._run_exitfuncs()
        unfilter()
        os._exit(0)

    sys.excepthook = hook
