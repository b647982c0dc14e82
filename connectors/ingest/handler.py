"""The request handler shared by the gRPC and HTTP front doors.

``RequestHandler.export(signal, payload)`` validates an OTLP export request, splits it into
Kafka records (see :mod:`connectors.ingest.wire`), produces them and returns only after Kafka
acknowledged every one. Failures are :class:`IngestError` subclasses that carry both the HTTP
status and the gRPC status code, so each front door only renders them.

Counters (``otelwax.telemetry``), per signal ``component=ingest_{traces,metrics,logs}`` with
unit spans / datapoints / logs: ``received`` = items in well-formed requests = ``sent``
(acknowledged by Kafka) + ``dropped{reason}`` where reason is ``queue_full`` or
``kafka_unavailable`` (refused with 429/503, the client retries) or ``too_large`` (rejected in
a partial success). The Kafka producer counts records on ``component=ingest_kafka``
(received = queued, sent = acknowledged, failed = not delivered). Per request (``component=ingest``,
unit requests): received, sent, dropped{reason=malformed|queue_full|kafka_unavailable}; bytes
received (unit bytes, after decompression); Kafka delivery latency per request
(``otelwax_latency_seconds{component=ingest_kafka, operation=kafka_delivery}``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from connectors.ingest.config import IngestConfig
from connectors.ingest.otlp_json import JsonError, parse_json
from connectors.ingest.wire import WireError, split_request
from connectors.kafka import CONTENT_TYPE_PROTO, HEADER_CONTENT_TYPE, HEADER_INGEST_TIME
from connectors.kafka_producer import AsyncProducer, Backpressure, QueueFull
from otelwax.telemetry import ComponentMetrics

# Headroom for the record key, headers and Kafka's per-record overhead.
RECORD_OVERHEAD = 512


@dataclass(frozen=True, slots=True)
class Signal:
    """One OTLP signal: its paths, protobuf types and counting unit."""

    name: str  # traces | metrics | logs
    http_path: str
    grpc_service: str
    request_cls: type[Message]
    response_cls: type[Message]
    partial_field: str  # rejected_spans | rejected_data_points | rejected_log_records
    unit: str  # spans | datapoints | logs


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal(
            "traces",
            "/v1/traces",
            "opentelemetry.proto.collector.trace.v1.TraceService",
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
            "rejected_spans",
            "spans",
        ),
        Signal(
            "metrics",
            "/v1/metrics",
            "opentelemetry.proto.collector.metrics.v1.MetricsService",
            metrics_service_pb2.ExportMetricsServiceRequest,
            metrics_service_pb2.ExportMetricsServiceResponse,
            "rejected_data_points",
            "datapoints",
        ),
        Signal(
            "logs",
            "/v1/logs",
            "opentelemetry.proto.collector.logs.v1.LogsService",
            logs_service_pb2.ExportLogsServiceRequest,
            logs_service_pb2.ExportLogsServiceResponse,
            "rejected_log_records",
            "logs",
        ),
    )
}


class IngestError(Exception):
    """A request the shim did not accept; rendered by each front door."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    retry_after: int | None = None

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidArgument(IngestError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(IngestError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PayloadTooLarge(IngestError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(IngestError):
    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(IngestError):
    """The producer queue is full: HTTP 429 / RESOURCE_EXHAUSTED with RetryInfo."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(IngestError):
    """Kafka is unreachable or did not acknowledge: HTTP 503 / UNAVAILABLE."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


@dataclass(slots=True)
class ExportResult:
    """Outcome of an accepted request (possibly a partial success)."""

    items: int
    rejected: int = 0
    error_message: str = ""


class RequestHandler:
    """Validate → split → produce → await every acknowledgement."""

    def __init__(self, config: IngestConfig, producer: AsyncProducer) -> None:
        self.config = config
        self.producer = producer
        self.limit = config.producer.max_message_bytes - RECORD_OVERHEAD
        self.topics = {
            "traces": config.topics.traces,
            "metrics": config.topics.metrics,
            "logs": config.topics.logs,
        }
        self.metrics = {
            name: ComponentMetrics(f"ingest_{name}", sig.unit) for name, sig in SIGNALS.items()
        }
        self.bytes_in = ComponentMetrics("ingest", "bytes")
        self.requests = ComponentMetrics("ingest", "requests")

    def decode_json(self, signal: Signal, body: bytes) -> bytes:
        """OTLP/JSON body → serialized protobuf request; raises InvalidArgument."""
        try:
            msg = parse_json(body, signal.request_cls)
        except JsonError as exc:
            raise InvalidArgument(f"malformed OTLP/JSON {signal.name} request: {exc}") from exc
        return msg.SerializeToString()

    async def export(self, signal: Signal, payload: bytes, validated: bool = False) -> ExportResult:
        """Accept ``payload`` (a serialized Export*ServiceRequest) once Kafka has it all."""
        m = self.metrics[signal.name]
        self.requests.received()
        self.bytes_in.received(len(payload))
        if self.config.validate_payload and not validated:
            try:
                signal.request_cls.FromString(payload)
            except DecodeError as exc:
                self.requests.dropped(reason="malformed")
                raise InvalidArgument(
                    f"malformed protobuf {signal.name} request: {exc or 'cannot parse'}"
                ) from exc
        try:
            split = split_request(payload, signal.name, self.limit)
        except WireError as exc:
            self.requests.dropped(reason="malformed")
            raise InvalidArgument(f"malformed protobuf {signal.name} request: {exc}") from exc
        m.received(split.items)
        if split.rejected:
            m.dropped(split.rejected, reason="too_large")
        accepted = split.items - split.rejected
        if split.records:
            topic = self.topics[signal.name]
            headers: Any = [
                (HEADER_CONTENT_TYPE, CONTENT_TYPE_PROTO),
                (HEADER_INGEST_TIME, str(time.time_ns()).encode()),
            ]
            records = [(topic, key, value, headers) for key, value in split.records]
            try:
                await self.producer.produce_batch(records)
            except Backpressure as exc:
                reason = "queue_full" if isinstance(exc, QueueFull) else "kafka_unavailable"
                m.dropped(accepted, reason=reason)
                self.requests.dropped(reason=reason)
                cls = Overloaded if isinstance(exc, QueueFull) else Unavailable
                raise cls(str(exc), exc.retry_after) from exc
        m.sent(accepted)
        self.requests.sent()
        return ExportResult(split.items, split.rejected, split.error or "")

    def response_message(self, signal: Signal, result: ExportResult) -> Message:
        """The Export*ServiceResponse, with partial_success when items were rejected."""
        resp = signal.response_cls()
        if result.rejected or result.error_message:
            ps = resp.partial_success
            setattr(ps, signal.partial_field, result.rejected)
            ps.error_message = result.error_message
        return resp


def rpc_status(code: int, message: str, retry_after: int | None = None) -> bytes:
    """A serialized ``google.rpc.Status`` (with RetryInfo when ``retry_after`` is set)."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    st = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        a = any_pb2.Any()
        a.Pack(info)
        st.details.append(a)
    return st.SerializeToString()
