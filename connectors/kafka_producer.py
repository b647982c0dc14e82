"""An asyncio-facing confluent-kafka producer for the ingest shim.

The shim answers a client only after Kafka reported on *every* record of its request, so the
unit of work here is a batch of records with one asyncio future:

    info = producer.topic_info(topic) or await producer.lookup_topic(topic)  # exists? limit?
    fut = producer.produce_batch(topic, records, headers)   # raises Backpressure right away
    delivery = await fut        # Delivery(refused=[...]) once every record reported, or raises

A daemon thread runs ``Producer.poll``; delivery callbacks count the batch's reports and
resolve its future on the event loop with ``call_soon_threadsafe`` (one hop per request, not
per record). ``acks=all`` and ``enable.idempotence=true`` are always set.

Duplicates. A client retries every request it was not answered with success, so each record
written for such a request is written again. The producer keeps that rare: it fails what it
can before producing (topic missing, queue full, brokers down), waits for the report of every
record of a batch instead of failing it on the first error (the answer then says what really
happened), answers records Kafka refuses for good (too large, invalid) as *refused* — the
request is a partial success, not a retry — and never purges records already sent. What
still lands for a failed request is counted on
``otelwax_ingest_retry_duplicate_records_total{topic}``.

Backpressure instead of loss: the local queue full raises :class:`QueueFull` (HTTP 429 /
gRPC RESOURCE_EXHAUSTED); Kafka unreachable (all brokers down, a delivery error or timeout)
raises :class:`KafkaUnavailable` (HTTP 503 / gRPC UNAVAILABLE). While the brokers are known
to be down new batches are refused at once, and a probe re-checks every second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import Field

from connectors.kafka import KafkaConfig, quiet
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

RETRY_DUPLICATES = Counter(
    "otelwax_ingest_retry_duplicate_records",
    "Records Kafka acknowledged for a request that was answered with a failure (or not at "
    "all): the client's retry writes them again",
    ["topic"],
)

# Kafka refuses these records whatever the retry: reported as rejected (partial success).
_MSG_SIZE_TOO_LARGE = 10
_RECORD_LIST_TOO_LARGE = 18
_INVALID_TIMESTAMP = 32
_INVALID_RECORD = 87
REFUSED_CODES = frozenset(
    (_MSG_SIZE_TOO_LARGE, _RECORD_LIST_TOO_LARGE, _INVALID_TIMESTAMP, _INVALID_RECORD)
)
_UNKNOWN_TOPIC_OR_PART = 3
_UNKNOWN_TOPIC = -188


class ProducerConfig(StrictModel):
    """confluent-kafka producer settings. ``acks=all`` and idempotence are always on."""

    linger_ms: float = Field(5.0, ge=0, le=60_000)
    max_in_flight: int = Field(
        1,
        ge=1,
        le=5,
        description="Produce requests in flight per broker connection "
        "(max.in.flight.requests.per.connection). More lowers latency under load (each "
        "librdkafka request carries one partition) but makes the broker thread busy-poll "
        "while it waits for acks: see librdkafka_conf.",
    )
    batch_size: int = Field(
        1_000_000,
        gt=0,
        description="bytes per partition batch; keep it <= every topic's max.message.bytes "
        "(a bigger batch is refused whole)",
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    max_message_bytes: int = Field(
        1_000_000,
        ge=4096,
        description="Largest record the shim writes; bigger requests are split. A topic's "
        "smaller max.message.bytes (read from Kafka) lowers it for that topic.",
    )
    queue_max_messages: int = Field(100_000, gt=0)
    queue_max_kbytes: int = Field(262_144, gt=0)
    delivery_timeout_s: float = Field(
        3.0,
        gt=0,
        le=300,
        description="message.timeout.ms: give up on Kafka after this long. Keep it well under "
        "the clients' export timeout (OTel SDKs 10 s, Collector exporters 5 s): a client that "
        "gives up first retries while the records of its first attempt still land.",
    )
    metadata_refresh_s: float = Field(
        30.0, gt=0, le=3600, description="How often topic existence and limits are re-read"
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


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the broker says about a topic."""

    exists: bool
    max_message_bytes: int | None = None  # the topic's max.message.bytes, when readable


@dataclass(slots=True)
class Delivery:
    """Outcome of a batch whose records were all acknowledged or refused for good."""

    refused: list[bytes] = field(default_factory=list)  # values Kafka will never take
    error: str = ""  # why they were refused


class _Batch:
    """Counts the delivery reports of one request; finishes on the loop after the last."""

    __slots__ = (
        "error",
        "expected",
        "finished",
        "fut",
        "loop",
        "n",
        "ok",
        "on_finish",
        "refused",
        "reported",
        "t0",
        "topic",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, topic: str, n: int, on_finish: Any
    ) -> None:
        self.loop = loop  # None: a thread waits on ``fut``, finished by the poll thread
        self.fut: Any = loop.create_future() if loop is not None else concurrent.futures.Future()
        self.topic = topic
        self.n = n
        self.expected = n  # written by the loop thread only
        self.reported = 0  # written by the poll thread only
        self.ok = 0
        self.refused: list[tuple[bytes, Any]] = []
        self.error: Any = None  # the first retryable delivery error
        self.finished = False
        self.on_finish = on_finish
        self.t0 = time.perf_counter()

    def on_delivery(self, err: Any, msg: Any) -> None:  # poll thread
        if err is None:
            self.ok += 1
        elif err.code() in REFUSED_CODES:
            self.refused.append((msg.value(), err))
        elif self.error is None:
            self.error = err
        self.reported += 1
        if self.reported == self.expected:
            if self.loop is None:
                self.on_finish(self)
            else:
                self.loop.call_soon_threadsafe(self.on_finish, self)

    def abandon(self, queued: int) -> None:  # producing thread: only ``queued`` will report
        self.expected = queued
        if self.reported == queued:
            self.on_finish(self)


class AsyncProducer:
    """confluent-kafka Producer driven by a poll thread, awaited per batch from asyncio.

    Construction does no I/O; :meth:`start` creates the clients, :meth:`close` flushes them.
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
        self._admin: Any = None
        self._draining: list[tuple[Any, float]] = []  # replaced clients with records in flight
        self._thread: threading.Thread | None = None
        self._meta_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # re-read topic metadata now
        self._topics: dict[str, TopicInfo | None] = {}
        self._warned_batch: set[str] = set()
        self._down = False
        self._down_since = 0.0
        self._fatal: Any = None
        self._closed = False
        self._finish_lock = threading.Lock()

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
                # librdkafka's idempotent producer checks a partition's in-flight *records*
                # (not requests) against its 5-request window, so while a partition's batch
                # is in flight and its next batch's linger has expired, the broker thread
                # re-arms an immediate wake-up and busy-polls until the ack (68 % of the
                # shim's CPU on a loaded machine). With one request per connection, another
                # partition's request waiting in the output queue stops that re-arming.
                "max.in.flight.requests.per.connection": c.max_in_flight,
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
    def start(self, topics: Sequence[str] = ()) -> None:
        """Create the clients, start the poll thread and the metadata thread that watches
        ``topics`` (idempotent)."""
        if self._producer is not None:
            return
        from confluent_kafka.admin import AdminClient

        for t in topics:
            self._topics.setdefault(t, None)
        self._producer = self._new_producer()
        self._admin = AdminClient(dict(self.kafka.client_conf(), logger=log))
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()
        self._meta_thread = threading.Thread(
            target=self._metadata_loop, name="kafka-metadata", daemon=True
        )
        self._meta_thread.start()

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        conf = self.librdkafka_conf()
        conf["error_cb"] = self._on_error
        return Producer(quiet(conf))  # repeated client errors rate-limited

    def close(self, timeout: float = 30.0) -> int:
        """Stop the threads and flush; returns the number of records left unflushed."""
        if self._closed or self._producer is None:
            self._closed = True
            return 0
        self._closed = True
        self._stop.set()
        self._wake.set()
        for t in (self._thread, self._meta_thread):
            if t is not None:
                t.join(timeout=5)
        deadline = time.monotonic() + timeout
        left = 0
        for p in [self._producer, *(old for old, _ in self._draining)]:
            left += p.flush(max(0.0, deadline - time.monotonic()))
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

    # -- topic metadata ------------------------------------------------------------------------
    def topic_info(self, topic: str) -> TopicInfo | None:
        """What is known about ``topic`` (None: not read yet). No I/O."""
        return self._topics.get(topic)

    async def lookup_topic(self, topic: str) -> TopicInfo | None:
        """Read ``topic``'s metadata now (in a worker thread); None when Kafka does not answer."""
        return await asyncio.to_thread(self.lookup_topic_blocking, topic)

    def lookup_topic_blocking(self, topic: str) -> TopicInfo | None:
        """:meth:`lookup_topic` for a thread that may block (up to ~2 s)."""
        self._topics.setdefault(topic, None)
        return self._refresh_topic(topic, 2.0)

    def _refresh_topic(self, topic: str, timeout: float) -> TopicInfo | None:
        """Blocking: does ``topic`` exist, and its max.message.bytes. Caches the answer."""
        from confluent_kafka.admin import ConfigResource, ResourceType

        try:
            md = self._producer.list_topics(topic=topic, timeout=timeout)
        except Exception as exc:
            log.debug("kafka metadata for %s: %s", topic, exc)
            return self._topics.get(topic)
        tm = md.topics.get(topic)
        if tm is None or (tm.error is not None and tm.error.code() == _UNKNOWN_TOPIC_OR_PART):
            info = TopicInfo(exists=False)
        else:
            limit = None
            try:
                res = ConfigResource(ResourceType.TOPIC, topic)
                fut = self._admin.describe_configs([res], request_timeout=timeout)[res]
                entry = fut.result(timeout=timeout + 1).get("max.message.bytes")
                limit = int(entry.value) if entry is not None and entry.value else None
            except Exception as exc:  # no DescribeConfigs permission: the producer limit holds
                log.debug("kafka: cannot read max.message.bytes of %s: %s", topic, exc)
            info = TopicInfo(exists=True, max_message_bytes=limit)
            small = limit is not None and limit < self.config.batch_size
            if small and topic not in self._warned_batch:
                self._warned_batch.add(topic)
                log.warning(
                    "kafka producer: topic %s has max.message.bytes=%d below producer.batch_size"
                    "=%d; a batch of small records can be refused whole, set batch_size <= %d",
                    topic, limit, self.config.batch_size, limit,
                )  # fmt: skip
        old = self._topics.get(topic)
        if old is not None and old.exists and not info.exists:
            log.error("kafka producer: topic %s does not exist (any more)", topic)
        self._topics[topic] = info
        return info

    def _metadata_loop(self) -> None:
        while not self._stop.is_set():
            for topic in list(self._topics):
                if self._stop.is_set():
                    return
                self._refresh_topic(topic, 5.0)
            pending = any(i is None or not i.exists for i in list(self._topics.values()))
            self._wake.wait(1.0 if pending else self.config.metadata_refresh_s)
            self._wake.clear()

    # -- producing -----------------------------------------------------------------------------
    def produce_batch(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes]],
        headers: Headers | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        threaded: bool = False,
    ) -> Any:
        """Queue every ``(key, value)`` record; the future resolves once each reported.

        The future is the running loop's (or ``loop``'s); with ``threaded``, a
        ``concurrent.futures.Future`` that the poll thread resolves directly, for a caller
        that is not on an event loop and blocks on it (no hop through the loop).

        It resolves to a :class:`Delivery` (records Kafka refused for good listed in it) or
        raises :class:`KafkaUnavailable` when a record failed in a way a retry may fix.
        Raises :class:`QueueFull` or :class:`KafkaUnavailable` when the batch is refused before
        anything is queued for it (or, rarely, when the queue filled up mid-batch: the records
        already queued are still delivered and counted as retry duplicates).
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
        batch = _Batch(
            None if threaded else loop or asyncio.get_running_loop(), topic, n, self._finish
        )
        cb = batch.on_delivery
        produce = p.produce
        done = 0
        try:
            for key, value in records:
                # Positional (topic, value, key, partition, callback, on_delivery, timestamp,
                # headers): keyword arguments cost ~1 us more per record (a dict per call).
                produce(topic, value, key, -1, cb, None, 0, headers)
                done += 1
        except BufferError as exc:
            batch.fut.cancel()
            batch.abandon(done)
            raise QueueFull(f"Kafka producer queue is full: {exc}", c.retry_after_s) from exc
        except Exception:
            batch.fut.cancel()
            batch.abandon(done)
            raise
        self.metrics.received(n)
        return batch.fut

    def _finish(self, batch: _Batch) -> None:  # once every queued record reported
        # The loop (or, threaded, the poll thread; then abandon() may race it: hence the lock).
        with self._finish_lock:
            if batch.finished:
                return
            batch.finished = True
        self.metrics.sent(batch.ok)
        self.metrics.failed(batch.reported - batch.ok)
        if batch.fut.done() or batch.error is not None:
            # Answered with a failure (or the caller gave up): what landed will land again.
            if batch.ok:
                RETRY_DUPLICATES.labels(batch.topic).inc(batch.ok)
            if batch.error is not None and batch.error.code() in (
                _UNKNOWN_TOPIC_OR_PART,
                _UNKNOWN_TOPIC,
            ):
                self._wake.set()
            if not batch.fut.done():
                failed = batch.n - batch.ok
                batch.fut.set_exception(
                    KafkaUnavailable(
                        f"Kafka did not acknowledge {failed} of {batch.n} records: {batch.error}",
                        self.config.retry_after_s,
                    )
                )
            return
        self._latency.observe(time.perf_counter() - batch.t0)
        if not batch.refused:
            batch.fut.set_result(Delivery())
            return
        err = batch.refused[0][1]
        info = self._topics.get(batch.topic)
        if info is not None and info.max_message_bytes is not None:
            # Records were sized for the limit read from the topic, so it changed (or a small
            # record shared a refused batch with a big one): re-read it; the retry is split
            # to the new limit and rejects only what cannot fit.
            self._wake.set()
            if batch.ok:
                RETRY_DUPLICATES.labels(batch.topic).inc(batch.ok)
            batch.fut.set_exception(
                KafkaUnavailable(
                    f"Kafka refused {len(batch.refused)} of {batch.n} records of topic "
                    f"{batch.topic} ({err.str()}); re-reading its limits, retry",
                    self.config.retry_after_s,
                )
            )
            return
        batch.fut.set_result(
            Delivery([v for v, _e in batch.refused], f"{err.str()} (code {err.code()})")
        )

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
                if self._draining:
                    self._drain()
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
        """Replace a client after a fatal error. Records it never sent are purged (their
        requests fail, a retry cannot duplicate them); records in flight may be written, so
        the old client keeps being polled until they report."""
        old = self._producer
        self._fatal = None
        try:
            old.purge(in_queue=True, in_flight=False, blocking=False)
            old.poll(0)
        except Exception as exc:
            log.debug("purge after fatal error: %s", exc)
        self._producer = self._new_producer()
        self._draining.append((old, time.monotonic() + self.config.delivery_timeout_s + 5))

    def _drain(self) -> None:
        keep = []
        for old, deadline in self._draining:
            try:
                old.poll(0)
                if len(old) and time.monotonic() > deadline:
                    old.purge()  # their timeout passed: report them failed
                    old.poll(0)
                if len(old):
                    keep.append((old, deadline))
            except Exception as exc:
                log.debug("draining a replaced kafka client: %s", exc)
        self._draining = keep
