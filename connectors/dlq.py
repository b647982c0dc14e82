"""Dead-letter producer: records or rows a flow cannot handle go to a Kafka topic.

Two kinds of dead letters, each saying why and where it came from in headers:

- an undecodable Kafka record (step ``decode``): the original value, untouched;
- rows an operator failed on (step ``…op_<i>_<name>``): an Arrow IPC stream of those rows
  (``content-type: application/vnd.apache.arrow.stream``, zstd-compressed buffers), split
  into several records when one would exceed ``max_message_bytes``.

Headers::

    otelwax-error                 the decoder's or the operator's error (UTF-8, <= 1 KiB)
    otelwax-source-topic          topic of the original record(s)
    otelwax-source-partition      partition (decimal)
    otelwax-source-offset         offset (decimal); for rows, the first offset of their range
    otelwax-source-last-offset    for rows: the last offset of their range
    otelwax-step                  the flow step that rejected it

The key is ``topic:partition:offset`` (rows: ``topic:partition:first-last:step:seq``) so a
reader can drop the duplicates a replay after a crash may produce (dead letters are
at-least-once). ``send_and_wait`` returns only when Kafka acknowledged every record, retrying
while Kafka is unavailable: a range is not done (and its rows not inserted) before its dead
letters are safe. Errors retrying cannot fix (the topic does not exist, a record too large for
the topic, not authorized) raise :class:`DeadLetterError` at once: the flow stops loudly
instead of waiting forever, and restarts at the same range once the DLQ is fixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
from pydantic import Field

from connectors.kafka import HEADER_CONTENT_TYPE, TOPIC_DLQ, KafkaConfig, quiet
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE_ARROW",
    "DeadLetter",
    "DeadLetterConfig",
    "DeadLetterError",
    "DeadLetterProducer",
    "row_letters",
]

H_ERROR = "otelwax-error"
H_TOPIC = "otelwax-source-topic"
H_PARTITION = "otelwax-source-partition"
H_OFFSET = "otelwax-source-offset"
H_LAST_OFFSET = "otelwax-source-last-offset"
H_STEP = "otelwax-step"
CONTENT_TYPE_ARROW = b"application/vnd.apache.arrow.stream"

MAX_ERROR_BYTES = 1024
HEADROOM = 4096
"""Bytes allowed on top of a value for key and headers (the shim's producer keeps the same)."""


class DeadLetterConfig(StrictModel):
    """Where undecodable records and rows that failed an operator go."""

    enabled: bool = Field(True, description="False drops them (counted as dropped)")
    topic: str = Field(TOPIC_DLQ, min_length=1, description="must exist (checked on first use)")
    retry_backoff_s: float = Field(1.0, gt=0, le=60, description="wait between delivery tries")
    max_message_bytes: int = Field(
        1_000_000,
        ge=4096,
        description="largest value written (librdkafka message.max.bytes is this + 4096 for "
        "key and headers): at least the shim's producer.max_message_bytes, and within the DLQ "
        "topic's max.message.bytes",
    )
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Raw librdkafka producer properties merged last."
    )


class DeadLetterError(RuntimeError):
    """The DLQ refused a record and retrying will not help."""


@dataclass(slots=True)
class DeadLetter:
    """One rejected record, or rows of one range rejected by a step."""

    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str
    step: str = "decode"
    last_offset: int | None = None
    """Set for rows: the range ``offset..last_offset`` they came from."""
    content_type: bytes | None = None
    seq: int = 0
    """Index of this letter among the letters of one range and step (rows only)."""

    def key(self) -> bytes:
        if self.last_offset is None:
            return f"{self.topic}:{self.partition}:{self.offset}".encode()
        where = f"{self.topic}:{self.partition}:{self.offset}-{self.last_offset}"
        return f"{where}:{self.step}:{self.seq}".encode()

    def headers(self) -> list[tuple[str, bytes]]:
        error = self.reason.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
        out = [
            (H_ERROR, error),
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(self.partition).encode()),
            (H_OFFSET, str(self.offset).encode()),
            (H_STEP, self.step.encode()),
        ]
        if self.last_offset is not None:
            out.append((H_LAST_OFFSET, str(self.last_offset).encode()))
        if self.content_type is not None:
            out.append((HEADER_CONTENT_TYPE, self.content_type))
        return out


_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


def _ipc_stream(rows: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema, options=_IPC) as w:
        w.write_batch(rows)
    return sink.getvalue().to_pybytes()


def row_letters(
    topic: str,
    partition: int,
    first: int,
    last: int,
    rows: pa.RecordBatch,
    reason: str,
    step: str,
    max_bytes: int,
) -> list[DeadLetter]:
    """``rows`` of range ``topic[partition]@first..last`` as Arrow IPC letters, halved until
    each fits ``max_bytes`` (a single row that does not fit is sent anyway: the DLQ then
    refuses it with :class:`DeadLetterError`)."""
    parts, todo = [], [rows]
    while todo:
        b = todo.pop()
        value = _ipc_stream(b)
        if len(value) > max_bytes and b.num_rows > 1:
            half = b.num_rows // 2
            todo += [b.slice(half), b.slice(0, half)]
        else:
            parts.append(value)
    return [
        DeadLetter(topic, partition, first, v, reason, step, last, CONTENT_TYPE_ARROW, seq)
        for seq, v in enumerate(parts)
    ]


def _not_retryable() -> frozenset[int]:
    from confluent_kafka import KafkaError as E

    return frozenset(
        {
            E.MSG_SIZE_TOO_LARGE,
            E.RECORD_LIST_TOO_LARGE,
            E.INVALID_RECORD,
            E.UNKNOWN_TOPIC_OR_PART,
            E._UNKNOWN_TOPIC,
            E.TOPIC_EXCEPTION,
            E.POLICY_VIOLATION,
            E.TOPIC_AUTHORIZATION_FAILED,
            E.CLUSTER_AUTHORIZATION_FAILED,
            E.SASL_AUTHENTICATION_FAILED,
            E._AUTHENTICATION,
            E._INVALID_ARG,
        }
    )


class DeadLetterProducer:
    """Writes :class:`DeadLetter` records; created in a flow step's build, not at import."""

    def __init__(self, kafka: KafkaConfig, cfg: DeadLetterConfig) -> None:
        from confluent_kafka import Producer

        self._cfg = cfg
        conf = kafka.client_conf()
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                # one request in flight: with idempotence librdkafka otherwise busy-polls while
                # a batch is unacknowledged (the shim's producer.max_in_flight, bench/README)
                "max.in.flight.requests.per.connection": 1,
                "linger.ms": 5,
                "message.timeout.ms": 30_000,
                "message.max.bytes": cfg.max_message_bytes + HEADROOM,
                "compression.type": "lz4",
            }
        )
        conf.update(cfg.extra)
        self._producer = Producer(quiet(conf))
        self._fatal = _not_retryable()
        self._topic_seen = False
        self.metrics = ComponentMetrics("dlq", "records")

    def _check_topic(self) -> None:
        """Raise if the topic does not exist (librdkafka would hold the records for
        ``message.timeout.ms`` and then time out, again and again); Kafka unreachable is
        not an answer, the caller retries."""
        try:
            md = self._producer.list_topics(timeout=10)
        except Exception as exc:
            log.warning("dlq: cannot read topic metadata (%s), retrying", exc)
            return
        t = md.topics.get(self._cfg.topic)
        if t is None or t.error is not None:
            why = "does not exist" if t is None else str(t.error)
            raise DeadLetterError(f"DLQ topic {self._cfg.topic!r} {why}")
        self._topic_seen = True

    def _produce(self, letter: DeadLetter, on_delivery: Any) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(
                    self._cfg.topic,
                    value=letter.value,
                    key=letter.key(),
                    headers=letter.headers(),
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in self._fatal or not err.retriable():
                    raise DeadLetterError(self._refused(letter, err)) from exc
                self._producer.poll(self._cfg.retry_backoff_s)

    def _refused(self, letter: DeadLetter, err: Any) -> str:
        return (
            f"DLQ topic {self._cfg.topic!r} refused the letter of {letter.topic}"
            f"[{letter.partition}]@{letter.offset} ({len(letter.value)} bytes): {err.str()}"
        )

    def _on_delivery(
        self, failed: list[DeadLetter], fatal: list[str], letter: DeadLetter, err: Any, _msg: Any
    ) -> None:
        if err is None:
            return
        failed.append(letter)
        if err.code() in self._fatal or err.fatal():
            fatal.append(self._refused(letter, err))

    def send_and_wait(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and block until all are acknowledged (retrying failures);
        raises :class:`DeadLetterError` when the DLQ refuses one for good."""
        todo = list(letters)
        if not todo:
            return
        if not self._topic_seen:
            self._check_topic()
        self.metrics.received(len(todo))
        while todo:
            failed: list[DeadLetter] = []
            fatal: list[str] = []
            for letter in todo:
                self._produce(letter, partial(self._on_delivery, failed, fatal, letter))
            remaining = self._producer.flush(60)
            if remaining:
                log.warning("dlq: %d record(s) still queued after 60 s, waiting", remaining)
                while self._producer.flush(60):
                    pass
            if fatal:
                self.metrics.failed(len(failed))
                raise DeadLetterError(fatal[0])
            if failed:
                self.metrics.failed(len(failed))
                self._check_topic()  # deleted meanwhile: records time out instead of failing
                log.warning(
                    "dlq: %d record(s) not delivered to %s, retrying in %.1f s",
                    len(failed),
                    self._cfg.topic,
                    self._cfg.retry_backoff_s,
                )
                time.sleep(self._cfg.retry_backoff_s)
            self.metrics.sent(len(todo) - len(failed))
            todo = failed

    def close(self) -> None:
        """Flush what is queued (safe to call twice)."""
        self._producer.flush(10)
