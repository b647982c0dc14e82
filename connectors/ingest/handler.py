"""The request handler shared by the gRPC and HTTP front doors.

``RequestHandler.export(signal, payload)`` validates an OTLP export request, splits it into
Kafka records (see :mod:`connectors.ingest.wire`), produces them and returns only after Kafka
acknowledged every one. Failures are :class:`IngestError` subclasses that carry both the HTTP
status and the gRPC status code, so each front door only renders them.

Counters (``otelwax.telemetry``), per signal ``component=ingest_{traces,metrics,logs}`` with
unit spans / datapoints / logs: ``received`` = items in well-formed requests = ``sent``
(acknowledged by Kafka) + ``dropped{reason}`` where reason is ``queue_full`` or
``kafka_unavailable`` (refused with 429/503, the client retries), ``too_large`` (bigger than a
record may be) or ``refused_by_kafka`` (refused by the broker for good), both rejected in a
partial success. The Kafka producer counts records on ``component=ingest_kafka``
(received = queued, sent = acknowledged, failed = not delivered) and the records acknowledged
for a request answered with a failure on ``otelwax_ingest_retry_duplicate_records_total``.
Per request (``component=ingest``, unit requests): received, sent,
dropped{reason=malformed|queue_full|kafka_unavailable|topic_missing}; bytes received (unit
bytes, after decompression); Kafka delivery latency per request
(``otelwax_latency_seconds{component=ingest_kafka, operation=kafka_delivery}``).

A topic that does not exist is answered 503 / UNAVAILABLE at once (it is known from metadata)
instead of after the delivery timeout; a topic whose ``max.message.bytes`` is below
``producer.max_message_bytes`` lowers the record size requests are split to.
"""

from __future__ import annotations

import threading
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
from connectors.ingest.wire import SplitResult, WireError, count_items, split_request, validates
from connectors.kafka import CONTENT_TYPE_PROTO, HEADER_CONTENT_TYPE, HEADER_INGEST_TIME
from connectors.kafka_producer import (
    AsyncProducer,
    Backpressure,
    Delivery,
    QueueFull,
    TopicInfo,
)
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


class RequestTimeout(IngestError):
    """The client did not send its request in time (slow or stalled body)."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(IngestError):
    """Kafka is unreachable or did not acknowledge: HTTP 503 / UNAVAILABLE."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Admission:
    """Bounds the requests and request bytes in flight in this process (the event loop and
    the threaded gRPC server's threads alike: changes are made under ``lock``).

    Bytes are held from the moment they are known (Content-Length, a body chunk, the growth by
    decompression or JSON decoding) until the answer; past a limit the request is refused with
    :class:`Overloaded`. A request is always admitted when no other holds bytes, so a single
    one never starves.
    """

    def __init__(self, max_bytes: int, max_requests: int, retry_after: int) -> None:
        self.max_bytes = max_bytes
        self.max_requests = max_requests
        self.retry_after = retry_after
        self.bytes = 0
        self.requests = 0
        self.lock = threading.Lock()

    def hold(self) -> Hold:
        """A context manager holding one request slot; raises Overloaded when none is free."""
        with self.lock:
            if self.requests >= self.max_requests:
                raise Overloaded(
                    f"too many requests in flight ({self.requests}); retry later",
                    self.retry_after,
                )
            return Hold(self)


class Hold:
    """The bytes and the slot one request holds in an :class:`Admission`."""

    __slots__ = ("adm", "n")

    def __init__(self, adm: Admission) -> None:  # under adm.lock
        self.adm = adm
        self.n = 0
        adm.requests += 1

    def grow(self, n: int) -> None:
        """Hold ``n`` more bytes; raises Overloaded when that passes the limit."""
        adm = self.adm
        with adm.lock:
            if adm.bytes + n > adm.max_bytes and adm.bytes > self.n:
                raise Overloaded(
                    f"too many request bytes in flight ({adm.bytes} of {adm.max_bytes}); "
                    "retry later",
                    adm.retry_after,
                )
            adm.bytes += n
            self.n += n

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        with self.adm.lock:
            self.adm.bytes -= self.n
            self.adm.requests -= 1
            self.n = 0


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
        self.admission = Admission(
            config.max_inflight_bytes,
            config.max_concurrent_requests,
            config.producer.retry_after_s,
        )

    def refuse(self, exc: IngestError) -> IngestError:
        """Count a request refused before :meth:`export` (overloaded, too slow); returns it."""
        self.requests.received()
        reason = "overloaded" if isinstance(exc, Overloaded) else "slow_client"
        self.requests.dropped(reason=reason)
        return exc

    def admit(self, nbytes: int = 0) -> Hold:
        """A request slot holding ``nbytes``; raises (and counts) Overloaded."""
        try:
            hold = self.admission.hold()
        except Overloaded as exc:
            raise self.refuse(exc) from None
        try:
            hold.grow(nbytes)
        except Overloaded as exc:
            hold.__exit__()
            raise self.refuse(exc) from None
        return hold

    def grow(self, hold: Hold, nbytes: int) -> None:
        """``hold.grow`` that counts a refusal."""
        try:
            hold.grow(nbytes)
        except Overloaded as exc:
            raise self.refuse(exc) from None

    async def export_bounded(self, signal: Signal, payload: bytes) -> ExportResult:
        """:meth:`export` holding ``payload``'s bytes in the admission (gRPC on grpc.aio)."""
        with self.admit(len(payload)):
            return await self.export(signal, payload)

    def export_blocking(self, signal: Signal, payload: bytes) -> ExportResult:
        """:meth:`export_bounded` for a thread off the event loop (the threaded gRPC server):
        it splits, produces and waits for Kafka itself, without a hop through the loop (that
        hop cost as much CPU as the gRPC call). Blocks until every record is acknowledged."""
        with self.admit(len(payload)):
            topic = self.topics[signal.name]
            info = self.producer.topic_info(topic)
            if info is None:
                info = self.producer.lookup_topic_blocking(topic)
            split = self._split(signal, payload, False, topic, info)
            delivery = None
            if split.records:
                try:
                    delivery = self._produce(topic, split, threaded=True).result()
                except Backpressure as exc:
                    raise self._refused(signal, split, exc) from exc
            return self._done(signal, topic, split, delivery)

    def decode_json(self, signal: Signal, body: bytes) -> bytes:
        """OTLP/JSON body → serialized protobuf request; raises InvalidArgument."""
        try:
            msg = parse_json(body, signal.request_cls)
        except JsonError as exc:
            raise InvalidArgument(f"malformed OTLP/JSON {signal.name} request: {exc}") from exc
        return msg.SerializeToString()

    async def export(self, signal: Signal, payload: bytes, validated: bool = False) -> ExportResult:
        """Accept ``payload`` (a serialized Export*ServiceRequest) once Kafka has it all."""
        topic = self.topics[signal.name]
        info = self.producer.topic_info(topic)
        if info is None:
            info = await self.producer.lookup_topic(topic)
        split = self._split(signal, payload, validated, topic, info)
        delivery = None
        if split.records:
            try:
                delivery = await self._produce(topic, split)
            except Backpressure as exc:
                raise self._refused(signal, split, exc) from exc
        return self._done(signal, topic, split, delivery)

    def _split(
        self,
        signal: Signal,
        payload: bytes,
        validated: bool,
        topic: str,
        info: TopicInfo | None,
    ) -> SplitResult:
        """Count, validate and split one request; raises InvalidArgument or Unavailable."""
        m = self.metrics[signal.name]
        self.requests.received()
        self.bytes_in.received(len(payload))
        validate = self.config.validate_payload and not validated
        if validate and not validates(signal.name):  # else the split checks it, same pass
            try:
                signal.request_cls.FromString(payload)
            except DecodeError as exc:
                self.requests.dropped(reason="malformed")
                raise InvalidArgument(
                    f"malformed protobuf {signal.name} request: {exc or 'cannot parse'}"
                ) from exc
        limit = self._limit(signal, topic, info)
        try:
            split = split_request(payload, signal.name, limit, validate)
        except WireError as exc:
            self.requests.dropped(reason="malformed")
            raise InvalidArgument(f"malformed protobuf {signal.name} request: {exc}") from exc
        m.received(split.items)
        if split.rejected:
            m.dropped(split.rejected, reason="too_large")
        return split

    def _produce(self, topic: str, split: SplitResult, threaded: bool = False) -> Any:
        """Queue the records; the future of their :class:`Delivery` (raises Backpressure)."""
        headers: Any = [
            (HEADER_CONTENT_TYPE, CONTENT_TYPE_PROTO),
            (HEADER_INGEST_TIME, str(time.time_ns()).encode()),
        ]
        return self.producer.produce_batch(topic, split.records, headers, threaded=threaded)

    def _refused(self, signal: Signal, split: SplitResult, exc: Backpressure) -> IngestError:
        """Count a request Kafka could not take (now or after queueing); the error to answer."""
        reason = "queue_full" if isinstance(exc, QueueFull) else "kafka_unavailable"
        self.metrics[signal.name].dropped(split.items - split.rejected, reason=reason)
        self.requests.dropped(reason=reason)
        cls = Overloaded if isinstance(exc, QueueFull) else Unavailable
        return cls(str(exc), exc.retry_after)

    def _done(
        self, signal: Signal, topic: str, split: SplitResult, delivery: Delivery | None
    ) -> ExportResult:
        """Count an answered request; its result (a partial success when Kafka refused some)."""
        m = self.metrics[signal.name]
        accepted = split.items - split.rejected
        rejected, error = split.rejected, split.error or ""
        if delivery is not None and delivery.refused:
            # Kafka will never take these records: a partial success, so the client does
            # not retry (and duplicate) the rest.
            lost = sum(count_items(v, signal.name) for v in delivery.refused)
            m.dropped(lost, reason="refused_by_kafka")
            accepted -= lost
            rejected += lost
            msg = (
                f"{len(delivery.refused)} Kafka record(s) holding {lost} {signal.unit} "
                f"refused by topic {topic}: {delivery.error}"
            )
            error = f"{error}; {msg}" if error else msg
        m.sent(accepted)
        self.requests.sent()
        return ExportResult(split.items, rejected, error)

    def _limit(self, signal: Signal, topic: str, info: TopicInfo | None) -> int:
        """The record limit for ``topic``; raises Unavailable when it does not exist."""
        if info is None:
            return self.limit  # Kafka does not answer: the producer will say so
        if not info.exists:
            self.requests.dropped(reason="topic_missing")
            raise Unavailable(
                f"Kafka topic {topic!r} (ingest.topics.{signal.name}) does not exist on "
                f"{self.config.kafka.bootstrap_servers}; create it",
                self.config.producer.retry_after_s,
            )
        if info.max_message_bytes is None:
            return self.limit
        return min(self.limit, info.max_message_bytes - RECORD_OVERHEAD)

    def response_bytes(self, signal: Signal, result: ExportResult) -> bytes:
        """The serialized response; b"" (an empty message) when everything was accepted."""
        if not (result.rejected or result.error_message):
            return b""
        return self.response_message(signal, result).SerializeToString()

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
