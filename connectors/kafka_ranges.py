"""What a Kafka range is, and the bookkeeping around it shared by the source and the sinks.

- :class:`KafkaRange`: consecutive records of one partition, one item of a flow;
  :func:`range_token` its deterministic id (the insert deduplication token's base);
- :class:`RangeAcks`: the registry a flow's source and sink share: ranges emitted, ranges the
  sink confirmed stored, and so which offset a partition may snapshot;
- :class:`IntentReader` (:class:`NoIntents`): what the source asks on (re)start about ranges
  the sink recorded, and :func:`plan_start`, where a partition resumes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = ["IntentReader", "KafkaRange", "NoIntents", "RangeAcks", "plan_start", "range_token"]


def range_token(topic: str, partition: int, first: int, last: int, topic_id: str = "") -> str:
    """Deterministic id of a range: ``topic:partition:first:last``, plus ``@topic_id`` when
    known (a recreated topic reuses offsets; its ranges must not look stored)."""
    base = f"{topic}:{partition}:{first}:{last}"
    return f"{base}@{topic_id}" if topic_id else base


@dataclass(slots=True)
class KafkaRange:
    """Consecutive records ``first..last`` (inclusive) of one partition, emitted as one item."""

    topic: str
    partition: int
    first: int
    last: int
    values: list[bytes]
    offsets: list[int]
    replay: bool = False
    """True when the boundaries come from a recorded intent (a replay after a restart)."""
    first_timestamp_ms: int = 0
    """Kafka timestamp of the first record (producer/ingest time), for latency metrics."""
    nbytes: int = 0
    topic_id: str = ""
    """The topic's id (Kafka's UUID) as recorded in the range's intent; empty when unknown."""
    lag: int = -1
    """Records after this range in its partition when it was cut (from the high watermark of
    the last fetch, no broker round trip); -1 when unknown."""
    timestamps: list[int] = field(default_factory=list)
    """Kafka timestamp (ms) of each record: the event clock of stateful operators."""

    @property
    def token(self) -> str:
        """Deterministic id of the range (see :func:`range_token`)."""
        return range_token(self.topic, self.partition, self.first, self.last, self.topic_id)


class RangeAcks:
    """Ranges a source emitted that its sink has not confirmed stored yet (per process).

    A sink that stores asynchronously (``connectors.clickhouse_sink``, overlapping an insert
    with the decode of the next ranges) returns before the rows are in ClickHouse, so bytewax
    may close the epoch first. A source given this registry snapshots the first offset of its
    oldest unconfirmed range instead of the offset after its last emitted one: a restart then
    re-reads (and, through the intents, re-cuts under the same tokens) whatever was in flight.
    Source and sink of one range run on the same worker (no exchange in between), so one
    registry per process sees both sides. Every emitted range must reach ``stored``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._emitted_next: dict[tuple[str, int], int] = {}
        self._watchers: dict[tuple[str, int], Callable[[int], None]] = {}
        self.inflight_bytes = 0
        """Payload bytes of all unconfirmed ranges (sources pause reading above a budget)."""
        self._buffered: dict[tuple[str, int], int] = {}
        self.error: BaseException | None = None
        """Set by a sink that stopped storing: its sources stop too, instead of waiting."""

    def buffered(self, topic: str, partition: int, nbytes: int) -> None:
        """A source partition holds ``nbytes`` of payload in the range it is cutting."""
        self._buffered[(topic, partition)] = nbytes

    @property
    def held_bytes(self) -> int:
        """Payload bytes read and not yet stored: ranges being cut plus unconfirmed ones."""
        return self.inflight_bytes + sum(self._buffered.values())

    def fail(self, exc: BaseException) -> None:
        """The sink cannot store any more: sources raise ``exc`` on their next poll."""
        self.error = exc

    def reset(self, topic: str, partition: int) -> None:
        """Forget a partition's unconfirmed ranges (its source partition starts afresh)."""
        with self._lock:
            self._emitted_next.pop((topic, partition), None)
            self._buffered.pop((topic, partition), None)
            for _, nbytes in self._open.pop((topic, partition), ()):
                self.inflight_bytes -= nbytes

    def watch(self, topic: str, partition: int, fn: Callable[[int], None] | None) -> None:
        """Call ``fn(offset)`` (from the confirming thread) whenever the partition's confirmed
        prefix grows: ``offset`` is the first one not confirmed stored. None stops it."""
        with self._lock:
            if fn is None:
                self._watchers.pop((topic, partition), None)
            else:
                self._watchers[(topic, partition)] = fn

    def emitted(
        self, topic: str, partition: int, first: int, nbytes: int, last: int | None = None
    ) -> None:
        with self._lock:
            self._open.setdefault((topic, partition), deque()).append((first, nbytes))
            self.inflight_bytes += nbytes
            if last is not None:
                self._emitted_next[(topic, partition)] = last + 1

    def stored(self, topic: str, partition: int, first: int) -> None:
        key = (topic, partition)
        with self._lock:
            q = self._open.get(key)
            for i, (f, nbytes) in enumerate(q or ()):
                if f == first:  # almost always i == 0: stored in emission order
                    del q[i]  # type: ignore[arg-type]
                    self.inflight_bytes -= nbytes
                    break
            else:
                return
            watcher = self._watchers.get(key) if i == 0 else None
            confirmed = q[0][0] if q else self._emitted_next.get(key)  # type: ignore[index]
        if watcher is not None and confirmed is not None:
            watcher(confirmed)

    def oldest(self, topic: str, partition: int) -> int | None:
        """First offset of the partition's oldest unconfirmed range, or None."""
        with self._lock:
            q = self._open.get((topic, partition))
            return q[0][0] if q else None


class IntentReader(Protocol):
    """Read side of the sink's intent log (see ``connectors.clickhouse_sink.IntentLog``)."""

    def ranges_from(self, topic: str, partition: int, offset: int) -> list[tuple[int, int, str]]:
        """Recorded ranges ``(first, last, topic_id)`` with ``last >= offset``, sorted."""
        ...

    def pending_from(self, topic: str, partition: int) -> int | None:
        """First offset of the oldest range that may not be stored yet, or None."""
        ...

    def latest(self, topic: str, partition: int) -> tuple[str, int | None] | None:
        """``(topic_id, last recorded offset)`` of the partition's history, or None."""
        ...

    def reset(self, topic: str, partition: int, topic_id: str, offset: int) -> None:
        """Durably start the partition afresh at ``offset`` (earlier intents stop counting)."""
        ...


class NoIntents:
    """Intent reader with no recorded ranges (flows whose sink records none)."""

    def ranges_from(self, topic: str, partition: int, offset: int) -> list[tuple[int, int, str]]:
        return []

    def pending_from(self, topic: str, partition: int) -> int | None:
        return None

    def latest(self, topic: str, partition: int) -> tuple[str, int | None] | None:
        return None

    def reset(self, topic: str, partition: int, topic_id: str, offset: int) -> None:
        return None


def plan_start(
    resume: int | None,
    pending: int | None,
    ranges: Callable[[int], list[tuple[int, int, str]]],
    default: int,
) -> tuple[int, list[tuple[int, int, str]]]:
    """Decide where a partition starts and which recorded ranges it must re-cut.

    ``resume`` is bytewax's snapshot (offset after the last emitted range), ``pending`` the start
    of the oldest range the sink may not have finished (everything before it is stored, because
    the sink records a group of intents only after the previous group is stored). Starting at
    the larger of the two replays the least; with neither, ``default`` (earliest/latest).
    Returns the start offset and the recorded ranges ``(first, last, topic_id)`` at or after
    it, non-overlapping.
    """
    candidates = [x for x in (resume, pending) if x is not None]
    start = max(candidates) if candidates else default
    planned: list[tuple[int, int, str]] = []
    for rng in ranges(start):
        if planned and rng[0] <= planned[-1][1]:
            continue  # overlapping leftovers of an inconsistent history: keep the earlier one
        planned.append(rng)
    if planned and planned[0][0] < start:
        # A fresh start landed inside a recorded range: replay all of it with its token.
        start = planned[0][0]
    return start, planned
