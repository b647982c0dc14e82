"""Replay (backfill): store a time window of a flow's Kafka topic in ClickHouse, exactly once.

    otelwax replay traces --from 2026-12-06T09:00:00Z --to -1h [--table otel_traces_backfill]

Per partition the window is the offsets ``[start, end)`` Kafka finds for the two times
(``offsets_for_times``: the first record at or after each). The replay goes through the same
exactly-once path as the flow (``connectors.clickhouse_sink``: intent, insert with the range's
token, stored mark) under the flow's intents (flow name and target table), so it is no-dup by
construction (:func:`plan_segments`):

- a range the intents mark **stored** is skipped, whatever cut it (the flow or a replay);
- a range **recorded but not marked** (a crash between intent and mark) is re-cut at exactly
  its recorded boundaries, so its insert carries the same token and ClickHouse skips it if it
  got there;
- only the **gaps** between recorded ranges are cut anew (intents recorded before the insert,
  like the flow). Into the flow's own table they are cut only below the flow's frontier (where
  its unfinished ranges begin, ``IntentLog.pending_from``): the flow never reads below it
  again, while past it the flow stores the records itself (its unfinished ranges included),
  so those are left to it. Into another table (``--table``) the window is that table's alone.

A second replay of a window therefore finds every range stored and inserts nothing, and a
replay killed at any point is finished by running it again. Replay stores into ClickHouse only
(no Jaeger export); undecodable records and operator failures go to the DLQ like in the flow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.clickhouse_sink import ClickHouseSink
from connectors.kafka_ranges import KafkaRange

log = logging.getLogger(__name__)

__all__ = [
    "ReplaySummary", "Segment", "Target", "metrics_target", "pipeline_target", "plan_segments",
    "replay",
]  # fmt: skip

_READ_IDLE_S = 30.0
"""A segment's records stop arriving for this long: the replay fails (broker gone)."""
_BATCH_RANGES = 16
"""Ranges stored per sink batch (one intent insert, one mark insert)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Offsets ``first..last`` (inclusive) of one partition and what the replay does there."""

    first: int
    last: int
    kind: Literal["stored", "recorded", "new"]
    """stored: skip; recorded: re-cut at these boundaries (same token); new: cut anew."""
    topic_id: str = ""


def plan_segments(
    start: int,
    end: int,
    recorded: list[tuple[int, int, str]],
    stored: set[tuple[int, int]],
    frontier: int | None,
) -> tuple[list[Segment], int]:
    """What to do with the window ``[start, end)`` of a partition.

    ``recorded`` are the intents ``(first, last, topic_id)`` with ``last >= start`` (sorted),
    ``stored`` the ranges marked stored, ``frontier`` the offset from which new ranges and
    unfinished recorded ones are left to the flow (None: no limit). Recorded ranges are kept
    whole (they may reach outside the window); overlapping leftovers of an inconsistent history
    keep the earlier one, as the flow's source does. Returns the segments in offset order and
    the number of offsets left to the flow.
    """
    limit = end if frontier is None else max(start, min(end, frontier))
    segs: list[Segment] = []
    pos = start

    def gap(upto: int) -> None:  # new ranges for [pos, upto), below the limit
        hi = min(upto, limit)
        if hi > pos:
            segs.append(Segment(pos, hi - 1, "new"))

    for first, last, topic_id in recorded:
        if first >= end:
            break
        if segs and first <= segs[-1].last:
            continue
        gap(first)
        pos = max(pos, last + 1)
        kind: Literal["stored", "recorded"] = "stored" if (first, last) in stored else "recorded"
        if kind == "recorded" and frontier is not None and first >= limit:
            continue  # the flow's unfinished range: it stores it (two writers could race)
        segs.append(Segment(first, last, kind, topic_id))
    gap(end)
    # Offsets past the limit that no recorded range covers: the flow's to store.
    left = end - limit
    for s in segs:
        if s.kind != "new":
            left -= max(0, min(end, s.last + 1) - max(limit, s.first))
    return segs, max(0, left)


@dataclass
class ReplaySummary:
    """What a replay did (``otelwax replay`` prints it)."""

    partitions: int = 0
    records_in_window: int = 0
    records_read: int = 0
    ranges_new: int = 0
    ranges_recut: int = 0
    ranges_skipped: int = 0
    rows_stored: int = 0
    left_to_flow: int = 0
    windows: dict[int, tuple[int, int]] = field(default_factory=dict)
    """partition -> its window ``[start, end)`` of offsets."""
    seconds: float = 0.0


class _Reader:
    """Reads offsets ``first..last`` of one partition (one consumer, re-assigned per segment)."""

    def __init__(self, kafka: Any, topic: str) -> None:
        from confluent_kafka import Consumer

        from connectors.kafka import quiet

        conf = kafka.client_conf()
        conf.update(
            {
                "group.id": "otelwax-replay",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer = Consumer(quiet(conf))
        self.topic = topic

    def windows(
        self, partitions: list[int], from_ms: int, to_ms: int, timeout: float
    ) -> dict[int, tuple[int, int]]:
        """partition -> ``[start, end)``: the first offsets at/after ``from_ms`` and ``to_ms``
        (the end of the partition where no record is that late)."""
        from confluent_kafka import TopicPartition

        out: dict[int, tuple[int, int]] = {}
        found = [  # one look-up per time: a partition may appear once per request
            {
                tp.partition: tp.offset
                for tp in self.consumer.offsets_for_times(
                    [TopicPartition(self.topic, p, ms) for p in partitions], timeout=timeout
                )
            }
            for ms in (from_ms, to_ms)
        ]
        for p in partitions:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=timeout
            )
            a, b = found[0][p], found[1][p]
            start = a if a >= 0 else high
            end = b if b >= 0 else high
            out[p] = (start, max(start, end))
        return out

    def read(self, partition: int, first: int, last: int) -> Iterator[tuple[int, bytes, int]]:
        """``(offset, value, timestamp ms)`` of the records ``first..last`` still in Kafka."""
        from confluent_kafka import KafkaError, TopicPartition

        self.consumer.assign([TopicPartition(self.topic, partition, first)])
        got_at = time.monotonic()
        while True:
            msgs = self.consumer.consume(1000, 0.5)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return  # the rest of the segment is gone (retention, compaction)
                    if err.fatal():
                        raise RuntimeError(f"kafka {self.topic}[{partition}]: {err}")
                    continue
                off = m.offset()
                if off > last:
                    return
                if off >= first:
                    yield off, m.value() or b"", m.timestamp()[1]
            if msgs:
                got_at = time.monotonic()
            elif time.monotonic() - got_at > _READ_IDLE_S:
                raise RuntimeError(
                    f"kafka {self.topic}[{partition}]: no records for {_READ_IDLE_S:g} s "
                    f"reading offsets {first}..{last}"
                )

    def close(self) -> None:
        self.consumer.close()


def _cut(
    reader: _Reader, topic: str, p: int, seg: Segment, topic_id: str, cut: Any
) -> Iterator[KafkaRange]:
    """The ranges of a segment: a recorded one whole, a new one cut by ``cut``
    (``RangeCutConfig``: records and bytes; time plays no part in a replay)."""
    values: list[bytes] = []
    offsets: list[int] = []
    state = {"nbytes": 0, "ts0": 0}

    def emit(first: int, last: int, replay: bool, tid: str) -> KafkaRange:
        rng = KafkaRange(
            topic, p, first, last, list(values), list(offsets), replay, state["ts0"],
            state["nbytes"], tid,
        )  # fmt: skip
        values.clear()
        offsets.clear()
        state["nbytes"] = 0
        return rng

    for off, value, ts in reader.read(p, seg.first, seg.last):
        if not values:
            state["ts0"] = ts
        values.append(value)
        offsets.append(off)
        state["nbytes"] += len(value)
        if seg.kind == "new" and (
            len(values) >= cut.max_records or state["nbytes"] >= cut.max_bytes
        ):
            yield emit(offsets[0], offsets[-1], False, topic_id)
    if values and seg.kind == "recorded":
        yield emit(seg.first, seg.last, True, seg.topic_id)
    elif values:
        yield emit(offsets[0], offsets[-1], False, topic_id)


@dataclass
class Target:
    """Where a replay stores: the flow's topic, its intents and its exactly-once sink path."""

    kafka: Any
    topic: str
    partitions: list[int] | None
    cut: Any
    """``RangeCutConfig`` of the flow: new ranges are cut by records and bytes like its own."""
    own_table: bool
    """The flow's own table(s): new ranges only below its frontier."""
    open: Callable[[], tuple[Any, Any]]
    """Opens ``(intent log, sink partition)``; the partition's ``close()`` closes the client."""
    convert: Callable[[KafkaRange], Any]
    """A range to what the sink partition's ``write_batch`` takes."""
    rows: Callable[[Any], int]


def pipeline_target(settings: Any, signal: Any, table: str | None = None) -> Target:
    """Target of ``flows.traces``/``flows.logs`` (``flows.pipeline``): ``signal``'s table, or
    ``table`` (created like it when missing; its own intents)."""
    from flows.pipeline import range_steps

    conn = settings.clickhouse
    own = getattr(conn, signal.table_field)
    if table and table != own:
        conn = conn.model_copy(update={"create_schema": True})
    sink_cfg = settings.sink.model_copy(update={"overlap": False, "serve_queries": False})
    sink = ClickHouseSink(
        conn, sink_cfg, table=table or own, schema=signal.schema, sort_key=signal.sort_key
    )
    steps = [fn for _, fn in range_steps(settings, signal)]

    def open_() -> tuple[Any, Any]:
        intents = sink.intent_log(sink.client())
        return intents, sink.build("clickhouse", 0, 1)  # holds the client until close()

    def convert(rng: KafkaRange) -> Any:
        item: Any = rng
        for fn in steps:
            item = fn(item)
        return item

    src = settings.source
    return Target(
        settings.kafka, src.topic, src.partitions, src.batch, not table or table == own, open_,
        convert, lambda r: r.batch.num_rows,
    )  # fmt: skip


def metrics_target(settings: Any) -> Target:
    """Target of ``flows.metrics`` (its ``otel_metrics_*`` tables and intents, through the
    same exactly-once sink as the flow; ClickHouse only: Prometheus remote-write is not
    replayed)."""
    from flows import metrics
    from flows.pipeline import DeadLetterOutbox

    if settings.clickhouse is None:
        raise ValueError("flows.metrics has no ClickHouse output (clickhouse: null)")
    sink_cfg = settings.sink.model_copy(update={"overlap": False, "serve_queries": False})
    sink = metrics.metrics_sink(settings.clickhouse, sink_cfg)
    decode = metrics._Decode(DeadLetterOutbox(settings))

    def open_() -> tuple[Any, Any]:
        intents = sink.intent_log(sink.client())
        return intents, sink.build("clickhouse", 0, 1)

    src = settings.source
    return Target(
        settings.kafka, src.topic, src.partitions, src.batch, True, open_, decode,
        lambda r: sum(b.num_rows for b in r.tables.values()),
    )  # fmt: skip


def replay(
    target: Target,
    from_ms: int,
    to_ms: int,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Store the records of ``target``'s topic between ``from_ms`` and ``to_ms`` (Kafka
    timestamps, ms) exactly once. ``progress(done, total)`` is called as offsets are handled
    (skipped ones count)."""
    from connectors.kafka import describe_topic_id

    t0 = time.monotonic()
    topic = target.topic
    summary = ReplaySummary()
    reader = _Reader(target.kafka, topic)
    try:
        timeout = target.kafka.connect_timeout_s
        md = reader.consumer.list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise RuntimeError(f"Kafka topic {topic!r} does not exist")
        partitions = sorted(target.partitions or meta.partitions)
        windows = reader.windows(partitions, from_ms, to_ms, timeout)
        summary.partitions, summary.windows = len(partitions), windows
        topic_id = describe_topic_id(target.kafka, topic)
        intents, part = target.open()
        try:
            plans = {}
            for p, (start, end) in windows.items():
                frontier = None
                if target.own_table:  # beyond the flow's frontier the flow stores itself
                    frontier = intents.pending_from(topic, p)
                    frontier = start if frontier is None else frontier
                plans[p], left = plan_segments(
                    start, end, intents.ranges_from(topic, p, start),
                    intents.stored_from(topic, p, start), frontier,
                )  # fmt: skip
                summary.left_to_flow += left
                summary.records_in_window += end - start
            total = sum(s.last - s.first + 1 for segs in plans.values() for s in segs)
            done = 0
            report = progress or (lambda done, total: None)
            for p, segs in plans.items():
                batch: list[Any] = []
                for seg in segs:
                    if seg.kind == "stored":
                        summary.ranges_skipped += 1
                    else:
                        for rng in _cut(reader, topic, p, seg, topic_id, target.cut):
                            summary.records_read += len(rng.values)
                            batch.append(target.convert(rng))
                            if len(batch) >= _BATCH_RANGES:
                                _store(part, batch, summary, target.rows)
                                report(done + rng.last - seg.first + 1, total)
                        _store(part, batch, summary, target.rows)
                    done += seg.last - seg.first + 1
                    report(done, total)
        finally:
            part.close()
    finally:
        reader.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _store(
    part: Any, batch: list[Any], summary: ReplaySummary, rows: Callable[[Any], int]
) -> None:
    """Store ``batch`` through the sink's exactly-once path and empty it."""
    if not batch:
        return
    part.write_batch(batch)
    for r in batch:
        summary.rows_stored += rows(r)
        if r.replay:
            summary.ranges_recut += 1
        else:
            summary.ranges_new += 1
    batch.clear()
