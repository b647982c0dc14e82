"""A partitioned Kafka source that cuts each partition into replayable offset *ranges*.

Why not ``bytewax.connectors.kafka.KafkaSource``: it emits single messages (or whatever one
``consume`` call returned), so where batches start and end depends on timing. Exactly-once
inserts need a replay to cut the *same* ranges as the first run, so that each insert carries the
same deduplication token. This source therefore

- owns one confluent-kafka consumer per Kafka partition, ``assign()``-ed to an exact offset (no
  consumer-group rebalancing; the position lives in bytewax's recovery snapshot). The confirmed
  offset is committed to the consumer group for Kafka's lag tools only, never read back
  (``connectors.kafka_offsets``);
- buffers messages and cuts a :class:`KafkaRange` when ``max_records``, ``max_bytes`` or
  ``max_delay_s`` is reached;
- on (re)start asks an :class:`IntentReader` (ranges the sink recorded before inserting them)
  for ranges at or after its resume offset, and re-cuts the replayed messages at exactly those
  boundaries (``KafkaRange.replay = True``);
- refuses to start a partition from a position that cannot be this topic's: a snapshot or a
  recorded range past the partition's end, or intents recorded under another topic id (the
  topic was deleted and created again, or the flow now reads another cluster). Resuming there
  would silently skip records; the error says how to start afresh (``on_stale_position``).

A partition's snapshot is the offset after its last emitted range (buffered messages are read
again after a restart). Settings: ``connectors.kafka_source_config``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import Gauge

from connectors.kafka import KafkaConfig, describe_topic_id, quiet, watermarks
from connectors.kafka_offsets import OffsetCommitter, commit_callback
from connectors.kafka_ranges import (
    IntentReader,
    KafkaRange,
    NoIntents,
    RangeAcks,
    plan_start,
    range_token,
)
from connectors.kafka_source_config import KafkaSourceConfig, RangeCutConfig, prefetch_conf
from otelwax.health import HEALTH
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = [
    "IntentReader",
    "KafkaRange",
    "KafkaSourceConfig",
    "NoIntents",
    "PartitionedKafkaSource",
    "RangeAcks",
    "RangeCutConfig",
    "plan_start",
    "range_token",
]

_START_LOCK = threading.Lock()
_END_CONFIRM_S = 60
_STUCK_CHECK_S = 10.0
"""An idle partition asks the broker this often whether records are waiting."""

CONSUMER_LAG = Gauge(
    "otelwax_kafka_consumer_lag",
    "Messages between the partition's high watermark and the next offset to read",
    ["topic", "partition"],
)


class _RangePartition(StatefulSourcePartition[KafkaRange, int]):
    def __init__(
        self,
        kafka: KafkaConfig,
        cfg: KafkaSourceConfig,
        partition: int,
        resume_state: int | None,
        intents: IntentReader | None,
        metrics: ComponentMetrics,
        bytes_metrics: ComponentMetrics,
        acks: RangeAcks | None = None,
        topic_id: str = "",
        announce: bool = False,
        stateful: bool = False,
    ) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        self._cfg = cfg
        self._acks = acks
        self._topic = cfg.topic
        self._partition = partition
        self._metrics = metrics
        self._bytes_metrics = bytes_metrics
        conf = kafka.client_conf()
        conf.update(
            {
                "group.id": cfg.group_id or "otelwax-flows",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                **prefetch_conf(cfg.prefetch_bytes),
                # librdkafka waits this long (default 1 s) to fetch again once the prefetch
                # queue was full: with a backlog every partition stalled a second per range.
                "fetch.queue.backoff.ms": 5,
            }
        )
        commits = ComponentMetrics("kafka_offset_commit", "partitions")
        conf["on_commit"] = commit_callback(commits)
        conf.update(cfg.extra)
        self._conf = quiet(conf)
        self._consumer = Consumer(self._conf)
        # Never enable.auto.commit: only what the sink confirmed (or a snapshot covers) is
        # committed, and assign() below always names the start offset, so no commit is read.
        self._commits = OffsetCommitter(
            self._consumer, self._topic, partition, commits, cfg.commit_offsets
        )
        tp = TopicPartition(self._topic, partition)
        low, high = watermarks(self._consumer, tp)
        default = low if cfg.start == "earliest" else high
        self._topic_id = topic_id
        if self._stale(intents, resume_state, high, default):
            resume_state = None  # the snapshot belongs to the old topic
        pending = None
        if intents is not None:
            pending = intents.pending_from(self._topic, partition)
            if stateful:
                pending, default = self._stateful_start(intents, resume_state, default)
        start, planned = plan_start(
            resume_state,
            pending,
            (lambda off: intents.ranges_from(self._topic, partition, off))
            if intents
            else (lambda off: []),
            default,
        )
        if start == OFFSET_END:  # pragma: no cover - defensive
            start = high
        self._planned = planned
        if acks is not None:
            acks.reset(self._topic, partition)
            acks.watch(self._topic, partition, self._commits.commit)
        self._next = start  # snapshot: offset after the last emitted range
        self._tp = TopicPartition(self._topic, partition)
        self._consumer.assign([TopicPartition(self._topic, partition, start)])
        log.info(
            "kafka %s[%d]: start at %d (snapshot=%s, pending intent=%s, watermarks=%d..%d), "
            "%d recorded range(s) to re-cut",
            self._topic,
            partition,
            start,
            resume_state,
            pending,
            low,
            high,
            len(planned),
        )
        # An empty range first: where the partition starts and how much is left to read.
        self._announce = (
            KafkaRange(self._topic, partition, start, start - 1, [], [], lag=max(0, high - start))
            if announce
            else None
        )
        self._values: list[bytes] = []
        self._offsets: list[int] = []
        self._stamps: list[int] = []
        self._nbytes = 0
        self._ts0 = 0
        self._since = 0.0
        self._eof = False
        self._done = False
        self._gave_up = False
        self._last_got = False
        self._paused = False
        self._lag_label = CONSUMER_LAG.labels(self._topic, str(partition))
        self._lag_at = 0.0
        self._checked_at = time.monotonic()  # last broker watermark look-up (stuck fetch check)
        self._got_at = time.monotonic()  # last message fetched
        self._reassigned_at: float | None = None  # last watchdog re-assignment
        self._progress = HEALTH.progress(f"{self._topic}[{partition}]")  # /livez, /readyz

    # --- where to start --------------------------------------------------------------------
    def _stateful_start(
        self, intents: IntentReader, resume: int | None, default: int
    ) -> tuple[None, int]:
        """(pending, default) for a flow with stateful operators: their state is the
        snapshot's, so the partition replays from the snapshot even over stored ranges (they
        are re-cut and skipped as stored); with no snapshot, from the first recorded range."""
        if resume is not None:
            return None, default
        recorded = intents.ranges_from(self._topic, self._partition, 0)
        if recorded:
            log.warning(
                "kafka %s[%d]: stateful operators and no recovery snapshot: replaying from the "
                "first recorded range (offset %d) to rebuild their state; run the flow with "
                "bytewax recovery (-r) to resume from snapshots",
                self._topic, self._partition, recorded[0][0],
            )  # fmt: skip
            return None, recorded[0][0]
        return None, default

    def _stale(
        self, intents: IntentReader | None, resume: int | None, high: int, default: int
    ) -> bool:
        """Check that the snapshot and the recorded intents belong to this topic; on a stale
        position raise, or (``on_stale_position: reset``) start afresh. True when ``resume``
        must be ignored."""
        topic, p = self._topic, self._partition
        latest = intents.latest(topic, p) if intents is not None else None
        rec_id, rec_last = latest if latest is not None else ("", None)
        why = ""
        if rec_id and self._topic_id and rec_id != self._topic_id:
            why = f"its intents belong to another topic (id {rec_id}; this one is {self._topic_id})"
        elif rec_last is not None and rec_last >= high:
            why = f"a recorded range ends at offset {rec_last}"
        if why:
            if self._cfg.on_stale_position == "fail":
                self._stale_error(why, high)
            log.warning("kafka %s[%d]: %s: starting afresh at %d", topic, p, why, default)
            intents.reset(topic, p, self._topic_id, default)  # type: ignore[union-attr]
            return True
        if resume is not None and resume > high:
            if self._cfg.on_stale_position == "fail":
                self._stale_error(f"the snapshot's offset {resume}", high)
            log.warning("kafka %s[%d]: snapshot %d past end %d: ignored", topic, p, resume, high)
            return True
        return False

    def _stale_error(self, why: str, high: int) -> None:
        msg = (
            f"kafka {self._topic}[{self._partition}]: the stored position is not this topic's: "
            f"{why}, but the partition's end is {high}. The topic was probably deleted and "
            "created again, or the flow now reads another cluster; resuming would skip records. "
            "To start this topic afresh (at source.start), run once with "
            "`source.on_stale_position: reset`."
        )
        log.error("%s", msg)
        raise RuntimeError(msg)

    # --- cutting ---------------------------------------------------------------------------
    def _emit(self, out: list[KafkaRange], bounds: tuple[int, int, str] | None) -> None:
        if not self._values and bounds is None:
            return
        if bounds is None:
            first, last, replay, topic_id = self._offsets[0], self._offsets[-1], False, None
        else:
            first, last, replay, topic_id = bounds[0], bounds[1], True, bounds[2]
        rng = KafkaRange(
            self._topic,
            self._partition,
            first,
            last,
            self._values,
            self._offsets,
            replay,
            self._ts0,
            self._nbytes,
            self._topic_id if topic_id is None else topic_id,  # a replay keeps its token
            timestamps=self._stamps,
            lag=self._records_after(last),
        )
        self._values, self._offsets, self._stamps, self._nbytes = [], [], [], 0
        self._next = last + 1
        if rng.values:
            if self._acks is not None:
                self._acks.emitted(self._topic, self._partition, first, rng.nbytes, last)
            out.append(rng)
            self._metrics.sent(len(rng.values))

    def _records_after(self, last: int) -> int:
        """Records in the partition after offset ``last`` as of the last fetch (-1: unknown)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except Exception:  # best effort: the lag gauge and range metadata only
            return -1
        return max(0, high - last - 1) if high >= 0 else -1

    def _in_planned(self) -> bool:
        return bool(self._planned and self._offsets and self._offsets[0] >= self._planned[0][0])

    def _add(self, out: list[KafkaRange], offset: int, value: bytes, ts_ms: int) -> None:
        planned = self._planned
        # Passed the end of a recorded range (offset gaps): close it with its own bounds.
        while planned and offset > planned[0][1]:
            if not self._values:
                planned.pop(0)  # none of its records are left (compaction/retention)
            elif self._in_planned():
                self._emit(out, planned.pop(0))
            else:
                self._emit(out, None)
        if planned and offset >= planned[0][0] and self._values and not self._in_planned():
            self._emit(out, None)  # unrecorded messages before a recorded range
        if not self._values:
            self._since = time.monotonic()
            self._ts0 = ts_ms
        self._values.append(value)
        self._offsets.append(offset)
        self._stamps.append(ts_ms)
        self._nbytes += len(value)
        if planned and offset >= planned[0][0]:
            if offset == planned[0][1]:
                self._emit(out, planned.pop(0))
            return
        b = self._cfg.batch
        if len(self._values) >= b.max_records or self._nbytes >= b.max_bytes:
            self._emit(out, None)

    def next_batch(self) -> list[KafkaRange]:
        from confluent_kafka import KafkaError

        acks = self._acks
        if acks is not None and acks.error is not None:
            raise RuntimeError(f"sink failed, stopping the source: {acks.error}") from acks.error
        if self._done:
            if self._confirming():
                return []
            raise StopIteration
        # Decoded ranges queue up between bytewax steps faster than they are stored (16 alive
        # at once were seen): hold reading until the sink catches up. The budget counts the
        # ranges being cut too (one per partition), except a replayed range, which must reach
        # its recorded end.
        self._paused = (
            acks is not None
            and acks.held_bytes >= self._cfg.max_inflight_bytes
            and not self._in_planned()
        )
        self._progress.tick(waiting=self._paused)
        if self._paused:
            out: list[KafkaRange] = []
            if self._values and time.monotonic() - self._since >= self._cfg.batch.max_delay_s:
                self._emit(out, None)  # a range being cut frees its share of the budget
                acks.buffered(self._topic, self._partition, 0)  # type: ignore[union-attr]
            return out
        msgs = self._consumer.consume(self._cfg.poll_max_messages, 0)
        out = []
        if self._announce is not None:
            out.append(self._announce)
            self._announce = None
        got = 0
        nbytes = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    continue
                if err.fatal():
                    raise RuntimeError(f"kafka {self._topic}[{self._partition}]: {err}")
                log.warning("kafka %s[%d]: %s", self._topic, self._partition, err)
                self._metrics.failed()
                continue
            off = m.offset()
            if off < self._next or (self._offsets and off <= self._offsets[-1]):
                continue  # re-delivered after a seek; never emit an offset twice
            value = m.value() or b""
            self._eof = False
            got += 1
            nbytes += len(value)
            self._add(out, off, value, m.timestamp()[1])
        if got:
            self._metrics.received(got)
            self._bytes_metrics.received(nbytes)
            self._got_at = time.monotonic()
        self._last_got = bool(got)
        if self._values and not self._in_planned():
            if time.monotonic() - self._since >= self._cfg.batch.max_delay_s:
                self._emit(out, None)
        if self._eof and self._cfg.stop_at_end and not got:
            if self._in_planned():
                self._emit(out, self._planned.pop(0))
            self._emit(out, None)
            self._done = True
            self._since = time.monotonic()  # start of the wait in _confirming
        if acks is not None:
            acks.buffered(self._topic, self._partition, self._nbytes)
        now = time.monotonic()
        if out or now - self._lag_at >= 2.0:  # cached watermark: no broker round trip
            self._lag_at = now
            lag = self._records_after(self._next - 1)
            if lag >= 0:
                self._lag_label.set(lag)
        if not got and now - self._checked_at >= _STUCK_CHECK_S:
            self._check_stuck(now)
        return out

    def _check_stuck(self, now: float) -> None:
        """Ask the broker (not the fetcher's cache) where the partition ends. The cached high
        watermark only moves while fetches succeed, so a fetcher that never resumed after a
        broker restart showed lag 0 while records waited (seen in the soak). Records waiting
        and none fetched for ``_STUCK_CHECK_S``: assign the partition again at the next offset
        to read (nothing emitted is read twice: offsets below ``_next`` are skipped). Still
        none fetched ``_STUCK_CHECK_S`` after that, or no answer from the broker for three
        times as long while the cache says records wait (a consumer whose connections never
        recovered, also seen in the soak): replace the consumer."""
        self._checked_at = now
        resume = self._offsets[-1] + 1 if self._offsets else self._next  # after the buffer
        try:
            _low, high = self._consumer.get_watermark_offsets(self._tp, timeout=1.0)
            answered = True
        except Exception:  # broker unreachable, or this consumer's connection is wedged
            high, answered = self._records_after(-1), False  # the cache's end
        behind = max(0, high - resume)
        if answered:
            self._lag_label.set(max(0, high - self._next))
        idle = now - self._got_at
        if not behind or idle < _STUCK_CHECK_S:
            return
        self._metrics.failed()
        again = self._reassigned_at is not None and self._reassigned_at >= self._got_at
        if not answered and idle < 3 * _STUCK_CHECK_S:
            return  # the broker may be down for everyone: librdkafka reconnects on its own
        if answered and not again:
            log.warning(
                "kafka %s[%d]: %d records waiting and none fetched for %.0f s; assigning the "
                "partition again at %d",
                self._topic, self._partition, behind, idle, resume,
            )  # fmt: skip
            self._assign(resume)
        else:
            log.warning(
                "kafka %s[%d]: %d records waiting and none fetched for %.0f s (%s); replacing "
                "the consumer, resuming at %d",
                self._topic, self._partition, behind, idle,
                "after a re-assignment" if answered else "the broker does not answer it",
                resume,
            )  # fmt: skip
            self._replace_consumer(resume)
        self._reassigned_at = self._got_at = now

    def _assign(self, offset: int) -> None:
        from confluent_kafka import TopicPartition

        self._consumer.resume([self._tp])  # a fetch state that survives assign() too
        self._consumer.unassign()
        self._consumer.assign([TopicPartition(self._topic, self._partition, offset)])

    def _replace_consumer(self, offset: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        old, self._consumer = self._consumer, Consumer(self._conf)
        self._commits.use(self._consumer)
        self._consumer.assign([TopicPartition(self._topic, self._partition, offset)])
        try:
            old.close()
        except Exception as exc:  # it was broken already
            log.info("kafka %s[%d]: old consumer: %s", self._topic, self._partition, exc)

    def _confirming(self) -> bool:
        """At the end (stop_at_end), wait (bounded) for the sink to confirm the last ranges,
        so their offsets are committed before the consumer closes."""
        if self._acks is None or not self._cfg.commit_offsets or self._gave_up:
            return False
        if self._acks.oldest(self._topic, self._partition) is None:
            return False
        if time.monotonic() - self._since < _END_CONFIRM_S:
            return True
        self._gave_up = True
        log.warning("kafka %s[%d]: last ranges not confirmed stored in %d s; not committed",
                    self._topic, self._partition, _END_CONFIRM_S)  # fmt: skip
        return False

    def next_awake(self) -> datetime | None:
        if self._done:
            return datetime.now(UTC) + timedelta(seconds=0.01) if self._confirming() else None
        if self._paused:
            return datetime.now(UTC) + timedelta(seconds=0.002)
        if self._last_got or self._done:
            return None
        wait = self._cfg.idle_poll_s
        if self._values and not self._in_planned():
            left = self._cfg.batch.max_delay_s - (time.monotonic() - self._since)
            wait = max(0.0, min(wait, left))
        return datetime.now(UTC) + timedelta(seconds=wait)

    def snapshot(self) -> int:
        if self._acks is not None:
            oldest = self._acks.oldest(self._topic, self._partition)
            if oldest is not None:
                return min(oldest, self._next)
            return self._next
        self._commits.commit(self._next)  # no confirming sink: what the epoch covers
        return self._next

    def close(self) -> None:
        HEALTH.forget(self._progress.name)
        if self._acks is not None:
            self._acks.watch(self._topic, self._partition, None)
            self._acks.buffered(self._topic, self._partition, 0)
        self._commits.close()
        self._consumer.close()


@dataclass
class PartitionedKafkaSource(FixedPartitionedSource[KafkaRange, int]):
    """One bytewax partition per Kafka partition; emits :class:`KafkaRange` items.

    Holds configuration only; consumers are created in ``build_part``. ``intents`` is a
    zero-argument factory for the sink's intent log (None disables range replay), called once
    per built partition. ``on_start`` runs once per process before the first partition is
    built (e.g. to serve ``/metrics``). With ``acks``, snapshots stay at the oldest range the
    sink has not confirmed (see :class:`RangeAcks`).
    """

    kafka: KafkaConfig
    config: KafkaSourceConfig
    intents: Callable[[], IntentReader] | None = None
    on_start: Callable[[], None] | None = None
    acks: RangeAcks | None = None
    announce: bool = False
    """Emit an empty range per partition before its records (see ``KafkaRange.lag``)."""
    stateful: bool = False
    """The flow has stateful operators (snapshotted with this source): resume from the
    snapshot, never past it to the sink's latest intent (see ``_RangePartition``)."""
    _started: bool = field(default=False, init=False, repr=False)
    _topic_id: str | None = field(default=None, init=False, repr=False)

    def _start_once(self) -> None:
        with _START_LOCK:  # worker threads of a process share this source object
            if not self._started and self.on_start is not None:
                self._started = True
                self.on_start()

    def list_parts(self) -> list[str]:
        # Every worker lists; a process that is assigned no Kafka partition still serves.
        self._start_once()
        if self.config.partitions is not None:
            return [str(p) for p in self.config.partitions]
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from otelwax.startup import exit_at_start

        kafka, name = self.kafka, self.config.topic
        # Our own line says what failed: librdkafka's would repeat it ~20 times a second.
        admin = AdminClient({**kafka.client_conf(), "log_level": 0})
        try:
            md = admin.list_topics(name, timeout=kafka.connect_timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            exit_at_start(
                f"Kafka at {kafka.bootstrap_servers} did not answer within "
                f"{kafka.connect_timeout_s:g} s ({getattr(err, 'str', lambda: err)()}): start it, "
                "or point kafka.bootstrap_servers (or $OTELWAX_KAFKA_BOOTSTRAP) at it",
                exc,
            )
        topic = md.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            why = f" ({topic.error.str()})" if topic is not None and topic.error else ""
            exit_at_start(
                f"Kafka topic {name!r} does not exist at {kafka.bootstrap_servers}{why}: create "
                f"it (otelwax kafka create-topics --bootstrap {kafka.bootstrap_servers} {name}) "
                "or set this flow's source topic"
            )
        return [str(p) for p in sorted(topic.partitions)]

    def topic_id(self) -> str:
        """The topic's id (Kafka's UUID), looked up once per process; "" when the broker
        does not say (then only a position past the partition's end is detected)."""
        with _START_LOCK:
            if self._topic_id is None:
                self._topic_id = describe_topic_id(self.kafka, self.config.topic)
            return self._topic_id

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RangePartition:
        self._start_once()
        return _RangePartition(
            self.kafka,
            self.config,
            int(for_part),
            resume_state,
            self.intents() if self.intents is not None else None,
            ComponentMetrics("kafka_source", "records"),
            ComponentMetrics("kafka_source", "bytes"),
            self.acks,
            self.topic_id(),
            self.announce,
            self.stateful,
        )
