"""Jaeger sink: spans (``TRACES_SCHEMA`` Arrow batches) exported over OTLP/gRPC.

Jaeger v2 ingests OTLP natively, so the sink is an OTLP trace exporter: each batch is rebuilt
into ``ExportTraceServiceRequest``s (``otelwax.codec.native`` when built, else
``otelwax.codec.pyencode``; see there for what the table can and cannot give back: attribute
values go back as strings) and sent to ``TraceService/Export``. Any OTLP/gRPC receiver works
(an OTel Collector, Tempo, ...). The channel is TLS (``tls``: CA, client certificate) unless
the endpoint is loopback or ``insecure: true`` is set explicitly, so spans and header
credentials never cross a network in clear by default.

    cfg = JaegerExporterConfig(enabled=True, endpoint="127.0.0.1:14317")  # loopback: plaintext
    exporter = JaegerExporter(cfg)       # no I/O
    exporter.open()                      # channel (connects lazily), encoder, TLS files
    exporter.export(batch)               # blocks until delivered (see below)
    exporter.close()                     # idempotent

    op.output("jaeger", stream_of_batches, JaegerSink(cfg))   # bytewax sink

Delivery (never silent loss — every span ends up counted as sent, dropped{reason} or failed on
``ComponentMetrics("sink.jaeger", "spans")``):

- A batch is cut into requests of at most ``max_spans_per_request`` spans, halved further while
  an encoded request exceeds ``max_request_bytes``; requests go out in row order.
- Transient gRPC errors (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED,
  OUT_OF_RANGE, DATA_LOSS — the OTLP spec's retryable set) are retried with ``retry`` (capped
  exponential backoff with jitter) through a circuit breaker (``breaker``) that opens after
  ``failure_threshold`` consecutive failed attempts and lets one probe through after
  ``open_seconds``.
- ``when_unavailable = "block"`` (default): ``export`` keeps retrying — waiting out an open
  breaker — until the request is accepted, so a bytewax worker holds its Kafka partitions back
  instead of dropping spans. ``max_block_s`` bounds that wait, after which
  ``JaegerUnavailableError`` is raised.
- ``when_unavailable = "raise"``: ``export`` raises ``JaegerUnavailableError`` as soon as a
  round of retries failed or the breaker is open. The error carries ``retry_after`` (seconds)
  and ``done_rows``: rows ``[0, done_rows)`` of the batch were handled, so the caller retries
  with ``batch.slice(done_rows)`` and nothing is sent twice.
- Rejected data (INVALID_ARGUMENT from the server, or rows the encoder refuses: malformed ids;
  a request that fails to encode is bisected so only the bad rows are affected) is never
  retried: with ``on_rejected = "drop"`` (default) it is logged and counted as
  ``dropped{reason="rejected"}`` (``"unencodable"`` for encoder errors), with ``"raise"`` a
  ``JaegerExportError`` is raised. Spans the server reports in ``partial_success`` are counted
  as ``dropped{reason="partial_success"}``. A rejection is an answer from a reachable server:
  it closes the circuit breaker (``otelwax.resilience``), also when it answers the half-open
  probe, so the next requests go out at once.
- Any other gRPC error (UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED — a wrong endpoint —,
  INTERNAL, ...) raises ``JaegerExportError`` at once (the OTLP spec says not to retry them;
  they need an operator), counting the unsent rows as failed.

Delivery is at least once: a flow replaying Kafka after a crash sends those spans again, and
Jaeger keeps duplicates (there is no deduplication token in OTLP).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import grpc
import pyarrow as pa
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field, ValidationInfo, field_validator

from otelwax.resilience import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    RetryConfig,
    RetryPolicy,
)
from otelwax.schemas import TRACES_SCHEMA
from otelwax.settings import SecretStr, StrictModel, ValidationError, format_errors
from otelwax.telemetry import ComponentMetrics

__all__ = [
    "JaegerExportError",
    "JaegerExporter",
    "JaegerExporterConfig",
    "JaegerSink",
    "JaegerUnavailableError",
    "OtlpTlsConfig",
    "jaeger_tee",
]

log = logging.getLogger(__name__)

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

# OTLP/gRPC spec: these codes are transient and may be retried; all others must not be.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
REJECTED_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})

_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


class OtlpTlsConfig(StrictModel):
    """TLS for the gRPC channel (used when ``insecure`` is false)."""

    ca_file: str | None = Field(None, description="PEM roots (None: the system roots)")
    cert_file: str | None = Field(None, description="client certificate (mTLS), PEM")
    key_file: str | None = Field(None, description="client private key (mTLS), PEM")
    server_name_override: str | None = Field(None, description="TLS server name to verify")


class JaegerExporterConfig(StrictModel):
    """Where and how to export spans to Jaeger (any OTLP/gRPC trace receiver)."""

    enabled: bool = Field(False, description="export spans to Jaeger at all")
    endpoint: str = Field(
        "127.0.0.1:4317",
        description="host:port of Jaeger's OTLP gRPC receiver (note: otelwax's own ingest shim "
        "also defaults to 4317; run them on different ports on one host)",
    )
    insecure: bool | None = Field(
        None,
        description="plaintext gRPC (true) or TLS (false, see tls); unset: plaintext only to a "
        "loopback endpoint (127.0.0.0/8, ::1, localhost), TLS to anything else",
    )
    tls: OtlpTlsConfig = Field(default_factory=OtlpTlsConfig)
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="gRPC metadata sent with every request (e.g. authorization); values never "
        "print — take them from the environment with ${env:VAR}",
    )
    compression: Literal["none", "gzip"] = "none"
    timeout_s: float = Field(10.0, gt=0, le=600, description="deadline of one Export call")
    max_spans_per_request: int = Field(1000, gt=0, le=1_000_000)
    max_request_bytes: int = Field(
        4_000_000,
        ge=1024,
        description="halve a request until it fits (gRPC servers refuse > 4 MiB by default)",
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(
        default_factory=lambda: BreakerConfig(failure_threshold=5, open_seconds=10.0)
    )
    when_unavailable: Literal["block", "raise"] = Field(
        "block",
        description="block: export() waits and retries until Jaeger takes the spans; raise: "
        "export() raises JaegerUnavailableError (with retry_after and done_rows)",
    )
    max_block_s: float | None = Field(
        None, gt=0, description="with block: give up (raise) after this long; None: never"
    )
    on_rejected: Literal["drop", "raise"] = Field(
        "drop",
        description="spans the server rejects as invalid, or rows that cannot be encoded: "
        "drop (logged, counted as dropped) or raise JaegerExportError",
    )
    encoder: Literal["auto", "native", "python"] = Field(
        "auto", description="Arrow → OTLP encoder: native (Rust) when built, else Python"
    )

    @field_validator("insecure")
    @classmethod
    def _tls_unless_loopback(cls, v: bool | None, info: ValidationInfo) -> bool:
        if v is not None:
            return v
        endpoint = info.data.get("endpoint")
        return isinstance(endpoint, str) and _is_loopback(endpoint.rsplit(":", 1)[0])

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("use host:port without a scheme (TLS is set by insecure/tls)")
        if not _ENDPOINT.match(v) or not 0 < int(v.rsplit(":", 1)[1]) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:4317")
        return v


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JaegerExportError(RuntimeError):
    """Spans could not be exported and retrying will not help (rejected, misconfigured)."""

    def __init__(self, msg: str, done_rows: int = 0) -> None:
        super().__init__(msg)
        self.done_rows = done_rows


class JaegerUnavailableError(JaegerExportError):
    """Jaeger is unreachable (retries exhausted or breaker open). Nothing of rows
    ``[done_rows, n)`` was sent: retry ``batch.slice(done_rows)`` after ``retry_after`` s."""

    def __init__(self, msg: str, retry_after: float, done_rows: int = 0) -> None:
        super().__init__(msg, done_rows)
        self.retry_after = retry_after


class _Transient(Exception):
    """A retryable gRPC failure (wrapped so the retry policy can tell it apart)."""

    def __init__(self, err: grpc.RpcError) -> None:
        super().__init__(f"{err.code().name}: {err.details()}")
        self.err = err


class _Closed(Exception):
    """The exporter was closed (from another thread) while a request was pending."""


class JaegerExporter:
    """Exports ``TRACES_SCHEMA`` batches to Jaeger over OTLP/gRPC.

    ``export`` may be called from several threads (the gRPC channel, breaker and counters are
    thread-safe); the bytewax sink still builds one exporter per worker.
    """

    def __init__(
        self,
        cfg: JaegerExporterConfig,
        *,
        component: str = "sink.jaeger",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.metrics = ComponentMetrics(component, "spans")
        self.breaker = CircuitBreaker(cfg.breaker, name=component, clock=clock)
        self._clock = clock
        self._closed = threading.Event()
        self._open_lock = threading.Lock()
        self._retry = RetryPolicy(cfg.retry, retry_on=(_Transient,), sleep=self._sleep)
        self._channel: grpc.Channel | None = None
        self._call: grpc.UnaryUnaryMultiCallable | None = None
        self._encode: Callable[[pa.RecordBatch], bytes] | None = None
        self.encoder_name = ""
        self._metadata = tuple((k.lower(), v.get_secret_value()) for k, v in cfg.headers.items())
        self._latency = self.metrics.latency("export")

    # --- lifecycle --------------------------------------------------------------------------

    def open(self) -> JaegerExporter:
        """Create the gRPC channel (it connects lazily) and pick the encoder. Idempotent."""
        with self._open_lock:
            if self._call is None:
                self._open()
        return self

    def _open(self) -> None:
        from otelwax.codec.pyencode import traces_encoder

        cfg = self.cfg
        self.encoder_name, self._encode = traces_encoder(cfg.encoder)
        reconnect_ms = max(100, int(min(cfg.retry.max_backoff_s, 5.0) * 1000))
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", cfg.max_request_bytes + 65536),
            ("grpc.enable_retries", 0),  # retries are ours (backoff + breaker + counters)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", reconnect_ms),
        ]
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else None
        if cfg.insecure:
            channel = grpc.insecure_channel(cfg.endpoint, options, compression)
        else:
            t = cfg.tls

            def read(path: str | None) -> bytes | None:
                return Path(path).read_bytes() if path else None

            creds = grpc.ssl_channel_credentials(
                root_certificates=read(t.ca_file),
                private_key=read(t.key_file),
                certificate_chain=read(t.cert_file),
            )
            if t.server_name_override:
                options.append(("grpc.ssl_target_name_override", t.server_name_override))
            channel = grpc.secure_channel(cfg.endpoint, creds, options, compression)
        self._channel = channel
        self._call = channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,  # requests are already serialized bytes
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self._closed.clear()
        log.info(
            "jaeger sink: exporting to %s (%s, %s encoder)",
            cfg.endpoint,
            "plaintext" if cfg.insecure else "TLS",
            self.encoder_name,
        )

    def close(self) -> None:
        """Close the channel; wakes an ``export`` blocked on an outage. Safe to call twice."""
        self._closed.set()
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._call = None

    def __enter__(self) -> JaegerExporter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health_check(self, timeout_s: float = 5.0) -> None:
        """Send an empty Export request; raise ``JaegerUnavailableError`` (or
        ``JaegerExportError`` for a non-OTLP endpoint) with a clear message when it fails."""
        call = self._require_open()
        try:
            call(b"", timeout=timeout_s, metadata=self._metadata, wait_for_ready=True)
        except grpc.RpcError as exc:
            msg = f"jaeger sink: {self.cfg.endpoint} failed a health check: {_describe(exc)}"
            if exc.code() in RETRYABLE_CODES:
                raise JaegerUnavailableError(msg, retry_after=self.breaker.retry_after()) from exc
            raise JaegerExportError(msg) from exc

    # --- export -----------------------------------------------------------------------------

    def export(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Export every span of ``batch``; returns once all were delivered (or counted as
        dropped by policy). See the module docstring for blocking and errors."""
        n = batch.num_rows
        self.metrics.received(n)
        if not self.cfg.enabled:
            self.metrics.dropped(n, "disabled")
            return
        if n == 0:
            return
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0]
        self._require_open()
        missing = [c for c in TRACES_SCHEMA.names if c not in batch.schema.names]
        if missing:  # a flow/operator bug, not bad data: never drop row by row for it
            self.metrics.failed(n)
            raise JaegerExportError(f"jaeger sink: batch lacks traces columns: {missing}")
        step = self.cfg.max_spans_per_request
        done = 0
        try:
            for offset in range(0, n, step):
                done = self._export_rows(batch.slice(offset, min(step, n - offset)), done)
        except JaegerExportError as exc:
            self.metrics.failed(n - exc.done_rows)
            raise

    def _export_rows(self, rows: pa.RecordBatch, done: int) -> int:
        """Encode and send ``rows`` (halving while too big); returns ``done`` + rows handled."""
        assert self._encode is not None
        k = rows.num_rows
        try:
            payload = self._encode(rows)
        except ValueError as exc:
            if k > 1:  # bisect down to the bad rows; the good ones still go out
                done = self._export_rows(rows.slice(0, k // 2), done)
                return self._export_rows(rows.slice(k // 2), done)
            msg = f"cannot encode the span at batch row {done}: {exc}"
            return done + self._reject(k, "unencodable", msg, done)
        except Exception as exc:  # wrong column types etc.: the batch, not a row, is bad
            raise JaegerExportError(f"jaeger sink: cannot encode spans: {exc!r}", done) from exc
        if len(payload) > self.cfg.max_request_bytes and k > 1:
            done = self._export_rows(rows.slice(0, k // 2), done)
            return self._export_rows(rows.slice(k // 2), done)
        self._deliver(payload, k, done)
        return done + k

    def _reject(self, k: int, reason: str, msg: str, done: int) -> int:
        if self.cfg.on_rejected == "raise":
            raise JaegerExportError(f"jaeger sink: {msg}", done)
        log.error("jaeger sink: dropping %d spans: %s", k, msg)
        self.metrics.dropped(k, reason)
        return k

    def _deliver(self, payload: bytes, k: int, done: int) -> None:
        cfg = self.cfg
        give_up_at = None if cfg.max_block_s is None else self._clock() + cfg.max_block_s
        warned = False
        while True:
            if self._closed.is_set():
                raise JaegerUnavailableError("jaeger sink: closed while exporting", 0.0, done)
            try:
                with self._latency.time():
                    resp = self._retry.call(self._rpc, payload, breaker=self.breaker)
            except _Closed:
                raise JaegerUnavailableError(
                    "jaeger sink: closed while exporting", 0.0, done
                ) from None
            except CircuitOpenError as exc:
                wait, why = exc.retry_after, f"circuit open ({exc})"
            except _Transient as exc:
                wait, why = self._retry.cfg.max_backoff_s, f"retries exhausted ({exc})"
            except grpc.RpcError as exc:
                if exc.code() in REJECTED_CODES:
                    self._reject(
                        k, "rejected", f"{cfg.endpoint} rejected them: {_describe(exc)}", done
                    )
                    return
                raise JaegerExportError(
                    f"jaeger sink: export to {cfg.endpoint} failed with a non-retryable error: "
                    f"{_describe(exc)}",
                    done,
                ) from exc
            else:
                rejected = min(k, max(0, resp.partial_success.rejected_spans))
                if rejected:
                    log.warning(
                        "jaeger sink: %s rejected %d of %d spans: %s",
                        cfg.endpoint,
                        rejected,
                        k,
                        resp.partial_success.error_message,
                    )
                    self.metrics.dropped(rejected, "partial_success")
                self.metrics.sent(k - rejected)
                if warned:
                    log.warning("jaeger sink: %s reachable again, export resumed", cfg.endpoint)
                return
            msg = f"jaeger sink: {cfg.endpoint} unavailable: {why}"
            if cfg.when_unavailable == "raise":
                raise JaegerUnavailableError(msg, wait, done)
            if give_up_at is not None and self._clock() + wait > give_up_at:
                raise JaegerUnavailableError(
                    f"{msg}; gave up after max_block_s={cfg.max_block_s}", wait, done
                )
            if not warned:
                log.warning("%s; blocking and retrying (spans are kept)", msg)
                warned = True
            self._sleep(max(wait, 0.05))

    def _rpc(self, payload: bytes) -> ExportTraceServiceResponse:
        call = self._call
        if call is None or self._closed.is_set():
            raise _Closed
        try:
            return call(payload, timeout=self.cfg.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() in RETRYABLE_CODES:
                raise _Transient(exc) from exc
            raise
        except ValueError as exc:  # "Cannot invoke RPC on closed channel!"
            if self._closed.is_set():
                raise _Closed from exc
            raise

    def _sleep(self, seconds: float) -> None:
        self._closed.wait(seconds)

    def _require_open(self) -> grpc.UnaryUnaryMultiCallable:
        if self._call is None:
            raise RuntimeError("JaegerExporter is not open (call open() first)")
        return self._call


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'UNKNOWN'}: {details}"


def jaeger_tee(params: dict[str, Any]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """Factory of a pass-through batch operator that exports every batch to Jaeger.

    Lets a flow whose sinks are fixed send spans to Jaeger through its operator list (the
    user-module hook of ``operators.registry``), after the operators listed before it::

        operators:
          - {type: filter, drop: "SpanAttributes['http.route'] in ['/healthz']"}
          - module: "connectors.otlp_export:jaeger_tee"
            factory: true
            config: {endpoint: "jaeger:4317"}        # JaegerExporterConfig keys

    ``enabled`` defaults to true here. The exporter opens on the first batch (in the worker),
    so building the flow does no I/O. A dedicated sink step (``JaegerSink``) is preferable when
    the flow offers one: it is not counted as an operator.
    """
    try:
        cfg = JaegerExporterConfig.model_validate({"enabled": True, **params})
    except ValidationError as exc:
        lines = format_errors(exc, "config", JaegerExporterConfig)
        raise ValueError("invalid jaeger_tee config: " + "; ".join(lines)) from None
    exporter = JaegerExporter(cfg)

    def jaeger_tee_op(batch: pa.RecordBatch) -> pa.RecordBatch:
        exporter.open()
        exporter.export(batch)
        return batch

    return jaeger_tee_op


# --- bytewax sink ------------------------------------------------------------------------------


def _batch_of(item: Any) -> pa.RecordBatch | pa.Table:
    """Items may be Arrow batches/tables or objects holding one in ``.batch`` (the trace
    flow's ``StoredRange``)."""
    if isinstance(item, pa.RecordBatch | pa.Table):
        return item
    batch = getattr(item, "batch", None)
    if isinstance(batch, pa.RecordBatch | pa.Table):
        return batch
    raise TypeError(f"jaeger sink: expected a pyarrow RecordBatch, got {type(item).__name__}")


class _JaegerPartition(StatelessSinkPartition[Any]):
    def __init__(self, cfg: JaegerExporterConfig, component: str) -> None:
        self._exporter = JaegerExporter(cfg, component=component).open()

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            self._exporter.export(_batch_of(item))

    def close(self) -> None:
        self._exporter.close()


class JaegerSink(DynamicSink[Any]):
    """bytewax sink exporting each item's spans to Jaeger (one exporter per worker).

    Items: ``pa.RecordBatch`` / ``pa.Table`` with the ``TRACES_SCHEMA`` columns, or any object
    with such a ``.batch`` attribute. ``write_batch`` blocks while Jaeger is down (with the
    default ``when_unavailable="block"``), which holds the worker's Kafka partitions back.
    """

    def __init__(self, cfg: JaegerExporterConfig, component: str = "sink.jaeger") -> None:
        self.cfg = cfg
        self.component = component

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JaegerPartition:
        return _JaegerPartition(self.cfg, self.component)
