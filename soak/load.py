"""Steady load on the ingest shim, and the ledger of what the shim acknowledged.

The OTel Python SDK makes spans, logs and metric points (batch processors, periodic metric
reader); its batches leave through :class:`Sender`, which sends each encoded request itself so
the ledger knows exactly which items a client was told were accepted (an OK answer without
rejected items) and how many attempts that took (a retried request may be stored twice: that is
measured, not hidden). telemetrygen adds load the ledger does not track item by item; the
reconciliation still checks it from Kafka to ClickHouse.

Identities: spans by SpanId, logs by their ``soak.id`` attribute, metric points by (metric name,
``soak.series`` attribute, time). Span names mark the special spans: ``soak.future*``,
``soak.past*`` (far from now), ``soak.poison`` (the user operator raises on it).
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
SKEW_NS = {"future": 365 * DAY_NS, "past": -365 * DAY_NS}
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
}


def span_kind(name: str) -> str:
    """normal | future | past | poison, from a span name."""
    for kind in ("future", "past", "poison"):
        if name.startswith(f"soak.{kind}"):
            return kind
    return "normal"


def _attr(attrs: Sequence[Any], key: str) -> str:
    for kv in attrs:
        if kv.key == key:
            return kv.value.string_value
    return ""


def _points(metric: Any) -> Iterator[Any]:
    for field in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
        if metric.HasField(field):
            yield from getattr(metric, field).data_points


def request_items(signal: str, req: Any) -> list[tuple[Any, str, str]]:
    """(identity, kind, trace id) of every item of an OTLP export request the ledger tracks."""
    out: list[tuple[Any, str, str]] = []
    if signal == "traces":
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                out += [(s.span_id.hex(), span_kind(s.name), s.trace_id.hex()) for s in ss.spans]
    elif signal == "logs":
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    sid = _attr(r.attributes, "soak.id")
                    if sid:
                        out.append((sid, "normal", ""))
    else:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in _points(m):
                        series = _attr(p.attributes, "soak.series")
                        if series:
                            out.append(((m.name, series, p.time_unix_nano), "normal", ""))
    return out


class Ledger:
    """What the shim acknowledged, item by item, and how each request went."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, dict[Any, tuple[str, int, float, str]]] = {
            "traces": {}, "logs": {}, "metrics": {},
        }
        """signal → identity → (kind, attempts of its request, time acknowledged, trace id)."""
        self.unacked: dict[str, set[Any]] = {"traces": set(), "logs": set(), "metrics": set()}
        """Items whose request failed or was partly rejected: not promised, not checked."""
        self.stats: Counter[str] = Counter()

    def record(self, signal: str, req: Any, attempts: int, ok: bool, outcome: str) -> None:
        items = request_items(signal, req)
        now = time.time()
        with self.lock:
            self.stats[f"{signal}.requests.{outcome}"] += 1
            if attempts > 1:
                self.stats[f"{signal}.requests.retried"] += 1
            if ok:
                acked = self.acked[signal]
                for ident, kind, trace in items:
                    acked[ident] = (kind, attempts, now, trace)
            else:
                self.unacked[signal].update(item[0] for item in items)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n


class Sender:
    """Sends encoded OTLP requests to the shim over gRPC, retrying what OTLP says to retry."""

    def __init__(self, endpoint: str, ledger: Ledger, deadline_s: float = 30.0) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lg
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mg
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tg

        self.channel = grpc.insecure_channel(endpoint)
        self.stubs = {
            "traces": tg.TraceServiceStub(self.channel),
            "logs": lg.LogsServiceStub(self.channel),
            "metrics": mg.MetricsServiceStub(self.channel),
        }
        self.ledger = ledger
        self.deadline_s = deadline_s

    def send(self, signal: str, req: Any) -> bool:
        """True when the shim answered OK with nothing rejected (the items are then acked)."""
        deadline = time.monotonic() + self.deadline_s
        backoff, attempts = 0.2, 0
        while True:
            attempts += 1
            try:
                resp = self.stubs[signal].Export(req, timeout=10)
            except grpc.RpcError as exc:
                code = exc.code()
                self.ledger.count(f"{signal}.rpc.{code.name}")
                if code in RETRYABLE and time.monotonic() + backoff < deadline:
                    time.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, 5.0)
                    continue
                self.ledger.record(signal, req, attempts, False, "failed")
                return False
            ps = resp.partial_success
            rejected = getattr(ps, f"rejected_{_REJECTED[signal]}", 0)
            if rejected:
                self.ledger.record(signal, req, attempts, False, "partial")
                return False
            self.ledger.record(signal, req, attempts, True, "ok")
            return True


_REJECTED = {"traces": "spans", "logs": "log_records", "metrics": "data_points"}


def _exporters(sender: Sender) -> tuple[Any, Any, type]:
    """SDK exporter classes whose ``export`` goes through ``sender``."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Spans(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            ok = sender.send("traces", encode_spans(spans))
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    class Logs(LogRecordExporter):
        def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
            ok = sender.send("logs", encode_logs(batch))
            return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    class Metrics(MetricExporter):
        def export(self, data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
            ok = sender.send("metrics", encode_metrics(data))
            return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
            pass

    return Spans, Logs, Metrics


@dataclass
class Rates:
    """Steady SDK load (the burst multiplies traces and logs)."""

    traces_per_s: float = 50.0
    children: int = 3
    logs_per_s: float = 50.0
    series: int = 8
    metric_interval_s: float = 2.0


class SdkLoad:
    """OTel SDK load on the shim: traces of 1 + ``children`` spans, logs, metric series."""

    SERVICES = ("soak-checkout", "soak-payments")

    def __init__(self, endpoint: str, ledger: Ledger, rates: Rates, seed: int) -> None:
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import Counter as MCounter
        from opentelemetry.sdk.metrics import Histogram, MeterProvider
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.sender = Sender(endpoint, ledger)
        self.ledger, self.rates = ledger, rates
        self.rng = random.Random(seed)
        spans_cls, logs_cls, metrics_cls = _exporters(self.sender)
        self.tracer_providers = []
        self.tracers = []
        for svc in self.SERVICES:
            tp = TracerProvider(resource=Resource.create({"service.name": svc}))
            tp.add_span_processor(
                BatchSpanProcessor(spans_cls(), max_queue_size=8192, schedule_delay_millis=200)
            )
            self.tracer_providers.append(tp)
            self.tracers.append(tp.get_tracer("soak"))
        logs_res = Resource.create({"service.name": "soak-logs"})
        self.logger_provider = LoggerProvider(resource=logs_res)
        self.logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(logs_cls(), max_queue_size=8192, schedule_delay_millis=200)
        )
        self.logger = logging.getLogger("soak.load.otel")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(LoggingHandler(logger_provider=self.logger_provider))
        self.meter_providers = []
        interval_ms = rates.metric_interval_s * 1000
        for temporality in ("cumulative", "delta"):
            pref = {}
            if temporality == "delta":
                delta = AggregationTemporality.DELTA
                pref = {MCounter: delta, Histogram: delta}
            reader = PeriodicExportingMetricReader(
                metrics_cls(preferred_temporality=pref), export_interval_millis=interval_ms
            )
            res = Resource.create({"service.name": f"soak-metrics-{temporality}"})
            self.meter_providers.append(MeterProvider(metric_readers=[reader], resource=res))
        m_cum, m_delta = (mp.get_meter("soak") for mp in self.meter_providers)
        self.counter = m_cum.create_counter("soak.requests")
        self.histogram = m_cum.create_histogram("soak.latency", unit="ms")
        self.delta_counter = m_delta.create_counter("soak.delta_requests")
        self.multiplier = 1.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._log_seq = 0

    # --- steady load ----------------------------------------------------------------------

    def start(self) -> None:
        for target in (self._traces_loop, self._logs_loop, self._metrics_loop):
            t = threading.Thread(target=target, name=target.__name__, daemon=True)
            t.start()
            self._threads.append(t)

    def _paced(self, per_s: float) -> Iterator[int]:
        """Yield how many items to make every 0.1 s, at ``per_s`` x the current multiplier."""
        owed = 0.0
        while not self._stop.wait(0.1):
            owed += per_s * self.multiplier * 0.1
            n = int(owed)
            owed -= n
            yield n

    def _traces_loop(self) -> None:
        for n in self._paced(self.rates.traces_per_s):
            for _ in range(n):
                self.trace(self.rng.choice(["GET /cart", "POST /pay", "GET /item"]))

    def trace(self, name: str, *, start_ns: int | None = None) -> None:
        """One trace: a root span and ``children`` child spans (times shifted by ``start_ns``)."""
        from opentelemetry import trace

        tracer = self.rng.choice(self.tracers)
        t0 = start_ns if start_ns is not None else time.time_ns()
        root = tracer.start_span(name, start_time=t0)
        ctx = trace.set_span_in_context(root)
        status = "error" if self.rng.random() < 0.05 else "ok"
        for i in range(self.rates.children):
            child = tracer.start_span(f"{name} step{i}", context=ctx, start_time=t0 + i * 1000)
            child.set_attribute("soak.status", status)
            child.end(end_time=t0 + (i + 1) * 1_000_000)
        root.end(end_time=t0 + (self.rates.children + 1) * 1_000_000)

    def _logs_loop(self) -> None:
        for n in self._paced(self.rates.logs_per_s):
            for _ in range(n):
                self._log_seq += 1
                seq = self._log_seq
                self.logger.info("soak log %d", seq, extra={"soak.id": f"l{seq}"})

    def _metrics_loop(self) -> None:
        series = [{"soak.series": f"s{i}"} for i in range(self.rates.series)]
        for _ in self._paced(10.0):
            attrs = self.rng.choice(series)
            self.counter.add(1, attrs)
            self.histogram.record(self.rng.uniform(1, 200), attrs)
            self.delta_counter.add(2, attrs)

    # --- injected load ----------------------------------------------------------------------

    def skewed(self, kind: str, n: int = 5) -> None:
        """``n`` traces dated a year in the future or the past (span names ``soak.<kind>``)."""
        for _ in range(n):
            self.trace(f"soak.{kind}", start_ns=time.time_ns() + SKEW_NS[kind])

    def poison_span(self) -> None:
        """One span named after the marker the soak's user operator raises on."""
        tracer = self.rng.choice(self.tracers)
        tracer.start_span("soak.poison").end()

    def stop(self) -> None:
        """Stop making items and flush what the SDK still holds (bounded)."""
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for tp in self.tracer_providers:
            tp.force_flush(30_000)
            tp.shutdown()
        self.logger_provider.force_flush(30_000)
        self.logger_provider.shutdown()
        for mp in self.meter_providers:
            mp.force_flush(30_000)
            mp.shutdown()


class Telemetrygen:
    """telemetrygen processes (steady background load and bursts); untracked item by item."""

    def __init__(self, binary: Path, endpoint: str, log_dir: Path) -> None:
        self.binary, self.endpoint, self.log_dir = binary, endpoint, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def available(self) -> bool:
        return self.binary.exists()

    def run(self, signal: str, seconds: float, rate: float, *extra: str) -> None:
        if not self.available:
            return
        args = [
            str(self.binary), signal, "--otlp-endpoint", self.endpoint, "--otlp-insecure",
            "--duration", f"{int(seconds)}s", "--rate", str(rate), *extra,
        ]
        path = self.log_dir / f"telemetrygen-{signal}-{len(self.procs)}.log"
        with open(path, "wb") as fh:
            self.procs.append(subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT))

    def steady(self, seconds: float) -> None:
        self.run("traces", seconds, 25, "--service", "tgen-frontend", "--child-spans", "3")
        self.run("logs", seconds, 30, "--service", "tgen-logs", "--body", "tgen log line")
        self.run("metrics", seconds, 5, "--service", "tgen-metrics", "--metric-type", "Sum",
                 "--otlp-metric-name", "tgen_orders")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
