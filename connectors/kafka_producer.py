"""An asyncio-facing confluent-kafka producer for the ingest shim.

The shim answers a client only after Kafka acknowledged *every* record of its request, so the
unit of work here is a batch of records with one asyncio future:

    fut = producer.produce_batch(records)      # raises Backpressure right away if it cannot
    await fut                                  # None once all records are acked, or raises

A daemon thread runs ``Producer.poll``; delivery callbacks count down the batch and resolve
its future on the event loop with ``call_soon_threadsafe`` (one hop per request, not per
record). ``acks=all`` and ``enable.idempotence=true`` are always set.

Backpressure instead of loss: the local queue full raises :class:`QueueFull` (HTTP 429 /
gRPC RESOURCE_EXHAUSTED); Kafka unreachable (all brokers down, a delivery error or timeout)
raises :class:`KafkaUnavailable` (HTTP 503 / gRPC UNAVAILABLE). While the brokers are known
to be down new batches are refused at once, and a probe re-checks every second.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from pydantic import Field

from connectors.kafka import KafkaConfig
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

# (topic, key, value, headers)
Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


class ProducerConfig(StrictModel):
    """confluent-kafka producer settings. ``acks=all`` and idempotence are always on."""

    linger_ms: float = Field(5.0, ge=0, le=60_000)
    batch_size: int = Field(1_000_000, gt=0, description="bytes per partition batch")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    max_message_bytes: int = Field(
        1_000_000,
        ge=4096,
        description="Largest record the shim writes; bigger requests are split. "
        "Must not exceed the broker's/topic's message.max.bytes.",
    )
    queue_max_messages: int = Field(100_000, gt=0)
    queue_max_kbytes: int = Field(262_144, gt=0)
    delivery_timeout_s: float = Field(
        10.0, gt=0, le=300, description="message.timeout.ms: give up on Kafka after this long"
    )
    retry_after_s: int = Field(1, ge=1, le=300, description="Retry-After sent with 429/503")
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Raw librdkafka producer properties merged last."
    )


class Backpressure(Exception):
    """The batch was not accepted; the client should retry after ``retry_after`` seconds."""

    retry_after: int = 1

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Backpressure):
    """The local producer queue has no room for the batch."""


class KafkaUnavailable(Backpressure):
    """Kafka is unreachable or did not acknowledge a record in time."""


class _Batch:
    """Counts down delivery reports of one request; resolves its future on the loop."""

    __slots__ = ("error", "fut", "loop", "n", "remaining", "t0")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.n = n
        self.remaining = n
        self.error: Any = None
        self.t0 = time.perf_counter()

    def on_delivery(self, err: Any, _msg: Any) -> None:  # poll thread
        self.remaining -= 1
        if err is not None:
            if self.error is None:
                self.error = err
                self.loop.call_soon_threadsafe(self._resolve)
        elif self.remaining == 0 and self.error is None:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:  # event loop
        if self.fut.done():
            return
        if self.error is None:
            self.fut.set_result(None)
        else:
            self.fut.set_exception(KafkaUnavailable(f"Kafka delivery failed: {self.error}"))


class AsyncProducer:
    """confluent-kafka Producer driven by a poll thread, awaited per batch from asyncio.

    Construction does no I/O; :meth:`start` creates the client, :meth:`close` flushes it.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        config: ProducerConfig,
        metrics: ComponentMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.config = config
        self.metrics = metrics or ComponentMetrics("kafka_producer", "records")
        self._latency = self.metrics.latency("kafka_delivery")
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._down = False
        self._down_since = 0.0
        self._fatal: Any = None
        self._closed = False

    # -- configuration -------------------------------------------------------------------------
    def librdkafka_conf(self) -> dict[str, Any]:
        """The producer properties (without callbacks)."""
        c = self.config
        conf: dict[str, Any] = dict(self.kafka.client_conf())
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": c.compression,
                "linger.ms": c.linger_ms,
                "batch.size": c.batch_size,
                "message.max.bytes": c.max_message_bytes + 4096,
                "queue.buffering.max.messages": c.queue_max_messages,
                "queue.buffering.max.kbytes": c.queue_max_kbytes,
                "message.timeout.ms": int(c.delivery_timeout_s * 1000),
                "socket.keepalive.enable": True,
                "reconnect.backoff.max.ms": 1000,
                "log_level": 3,
            }
        )
        conf.update(c.extra)
        return conf

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Create the client and start the poll thread (idempotent)."""
        if self._producer is not None:
            return
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        conf = self.librdkafka_conf()
        conf["error_cb"] = self._on_error
        conf["logger"] = log
        return Producer(conf)

    def close(self, timeout: float = 30.0) -> int:
        """Stop the poll thread and flush; returns the number of records left unflushed."""
        if self._closed or self._producer is None:
            self._closed = True
            return 0
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        left = self._producer.flush(timeout)
        if left:
            log.error("kafka producer: %d records not delivered at shutdown", left)
        return int(left)

    def check_topics(self, topics: Sequence[str], timeout: float = 5.0) -> list[str]:
        """Health check: the topics missing on the broker (raises when Kafka does not answer)."""
        md = self._producer.list_topics(timeout=timeout)
        return [t for t in topics if t not in md.topics or md.topics[t].error is not None]

    # -- state ---------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while every broker is known to be down."""
        return not self._down

    def queued(self) -> int:
        """Records waiting in the local queue or in flight."""
        return len(self._producer) if self._producer is not None else 0

    # -- producing -----------------------------------------------------------------------------
    def produce_batch(
        self, records: Sequence[Record], loop: asyncio.AbstractEventLoop | None = None
    ) -> asyncio.Future[None]:
        """Queue every record; the future resolves when all are acknowledged.

        Raises :class:`QueueFull` or :class:`KafkaUnavailable` when the batch is refused before
        anything is queued for it (or, rarely, when the queue filled up mid-batch: the records
        already queued are still delivered, the client's retry may duplicate them).
        """
        c = self.config
        p = self._producer
        if p is None or self._closed:
            raise KafkaUnavailable("producer is not running", c.retry_after_s)
        if self._down:
            raise KafkaUnavailable("Kafka brokers are unreachable", c.retry_after_s)
        n = len(records)
        if len(p) + n > c.queue_max_messages:
            raise QueueFull("Kafka producer queue is full", c.retry_after_s)
        batch = _Batch(loop or asyncio.get_running_loop(), n)
        cb = batch.on_delivery
        produce = p.produce
        done = 0
        try:
            for topic, key, value, headers in records:
                produce(topic, value, key, headers=headers, on_delivery=cb)
                done += 1
        except BufferError as exc:
            # The records already queued keep counting down; nobody awaits this batch.
            batch.remaining -= n - done
            batch.error = exc
            batch.fut.cancel()
            raise QueueFull(f"Kafka producer queue is full: {exc}", c.retry_after_s) from exc
        except Exception:
            batch.remaining -= n - done
            batch.error = "produce failed"
            batch.fut.cancel()
            raise
        self.metrics.received(n)
        batch.fut.add_done_callback(partial(self._on_batch_done, batch))
        return batch.fut

    def _on_batch_done(self, batch: _Batch, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.metrics.failed(batch.n)
            return
        self.metrics.sent(batch.n)
        self._latency.observe(time.perf_counter() - batch.t0)

    # -- poll thread ---------------------------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if not self._down:
                log.warning("kafka producer: all brokers down (%s); refusing new requests", err)
            self._down = True
            self._down_since = time.monotonic()
        elif err.fatal():
            log.error("kafka producer: fatal error %s; the client will be recreated", err)
            self._fatal = err
        else:
            log.debug("kafka producer: %s", err)

    def _poll_loop(self) -> None:
        last_probe = 0.0
        while not self._stop.is_set():
            p = self._producer
            try:
                p.poll(0.05)
                if self._down and time.monotonic() - last_probe > 1.0:
                    last_probe = time.monotonic()
                    md = p.list_topics(timeout=1.0)
                    if md.brokers and any(True for _ in md.brokers):
                        log.info("kafka producer: brokers reachable again")
                        self._down = False
                if self._fatal is not None:
                    self._recreate()
            except Exception as exc:  # keep polling whatever happens
                if self._down:
                    continue
                log.debug("kafka poll: %s", exc)
        # close() flushes from its own thread after this loop ends.

    def _recreate(self) -> None:
        old = self._producer
        self._fatal = None
        try:
            old.purge()
            old.poll(0)
        except Exception as exc:
            log.debug("purge after fatal error: %s", exc)
        self._producer = self._new_producer()
        try:
            old.poll(0)
        except Exception:
            pass
