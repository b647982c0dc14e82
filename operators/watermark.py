"""Per-partition source clocks: the watermark of event-time windows read from Kafka.

Each Kafka partition has a clock: the largest event time it delivered, never past its ingest
time (a record ahead of it, within the allowed skew, does not move the clock). The watermark
source is the slowest clock of the partitions that still have records to read, or, when all
are caught up, the fastest one. So a partition read behind the others (a backlog after a
restart, a fetcher that fell behind) holds the windows open instead of seeing its records
turned late by the others, and a quiet partition (nothing left to read) does not hold them.

A batch says which partition it came from and how many records were left behind it when it was
read in its schema metadata (``otelwax.partition``, ``otelwax.lag``; the flows set them, see
``flows.windowed``). A batch without them counts as one partition that is caught up. Before
its first records, a partition announces itself with an empty batch without ingest time: if it
has records to read, nothing closes until it has delivered some (its position is unknown). A
partition with records left that delivers none for ``stall_s`` (wall clock) stops holding.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

__all__ = ["INGEST_TIME_KEY", "LAG_KEY", "PARTITION_KEY", "PartitionClocks"]

INGEST_TIME_KEY = b"otelwax.ingest_time_ms"
PARTITION_KEY = b"otelwax.partition"
LAG_KEY = b"otelwax.lag"


class PartitionClocks:
    """Clocks of the partitions a window state reads. ``state`` is a :meth:`snapshot`."""

    def __init__(self, stall_s: float, state: dict[str, list] | None = None) -> None:
        self.stall_ns = int(stall_s * 1e9)
        # partition -> [largest accepted event time | None, largest ingest time | None (not
        # read yet), records left (-1: unknown)]
        self.parts: dict[str, list] = state or {}
        # partition -> when it last delivered (monotonic ns; a restored one: at restore)
        self._seen: dict[str, int] = dict.fromkeys(self.parts, time.monotonic_ns())

    def snapshot(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.parts.items()}

    def check_restored(self, now: int, bound: int) -> None:
        """Forget restored clocks ahead of ``bound`` and ingest times ahead of ``now``."""
        for p in self.parts.values():
            if p[0] is not None and p[0] > bound:
                p[0] = None
            p[1] = None if p[1] is None else min(p[1], now)

    def update(self, batch: pa.RecordBatch | pa.Table, ref: int, accepted_max: int | None) -> None:
        """Record a batch: its ingest time ``ref``, its largest accepted event time, and the
        records its partition had left when it was read."""
        meta = batch.schema.metadata or {}
        key = meta.get(PARTITION_KEY, b"").decode()
        # Without a partition: one source that is read as it comes (the clock of old).
        lag = int(meta.get(LAG_KEY, b"-1")) if PARTITION_KEY in meta else 0
        announce = PARTITION_KEY in meta and INGEST_TIME_KEY not in meta
        p = self.parts.get(key)
        if p is None:
            p = self.parts[key] = [None, None, lag]
        if accepted_max is not None:
            p[0] = accepted_max if p[0] is None else max(p[0], accepted_max)
        if not announce:
            p[1] = ref if p[1] is None else max(p[1], ref)
        p[2] = lag
        self._seen[key] = time.monotonic_ns()

    def _holding(self, mono_now: int) -> list[tuple[str, Any]]:
        return [
            (k, p)
            for k, p in self.parts.items()
            if p[2] != 0 and mono_now - self._seen.get(k, mono_now) < self.stall_ns
        ]

    def _held_clocks(self) -> list[int] | None:
        """Clocks of the holding partitions; None when one has not been read yet (its
        position is unknown). A partition read but with no accepted record yet (all rejected:
        a producer with a broken clock) neither holds nor moves the watermark."""
        out = []
        for _, p in self._holding(time.monotonic_ns()):
            if p[1] is None:
                return None
            if p[0] is not None:
                out.append(min(p[0], p[1]))
        return out

    def source_clock(self) -> int | None:
        """The slowest clock of the partitions holding the watermark; none holding: the
        fastest clock. None: no clock yet, or a holding partition has not been read yet."""
        held = self._held_clocks()
        if held is None:
            return None
        if held:
            return min(held)
        clocks = [c for p in self.parts.values() if (c := _clock(p)) is not None]
        return max(clocks) if clocks else None

    def idle_bound(self, now: int) -> int | None:
        """How far windows may close while no input arrives: the processing clock ``now``,
        but not past a holding partition (None: one has not been read yet)."""
        held = self._held_clocks()
        return None if held is None else min([now, *held])

    def stall_in_ns(self) -> int | None:
        """How long until the first holding partition stops holding (None: none holds)."""
        mono_now = time.monotonic_ns()
        held = self._holding(mono_now)
        if not held:
            return None
        return min(self._seen.get(k, mono_now) + self.stall_ns for k, _ in held) - mono_now


def _clock(p: list) -> int | None:
    """None until the partition has delivered an accepted record and an ingest time."""
    return None if p[0] is None or p[1] is None else min(p[0], p[1])
