"""Remote-write in series order: a bounded reorder buffer in front of the remote-write sink.

Prometheus refuses a sample older than the newest one it holds for its series, and one such
sample fails the whole request. Kafka orders records only within a partition, so when a
producer does not key metrics by resource (the Collector's kafkaexporter spreads them over
partitions by default), the points of one series reach the flow out of order. This step puts
them back in order before they are sent::

    shard        each series to a stable shard (crc32 of its labels), so one series is always
                 ordered by one worker, whatever the number of workers or processes
    order        stateful_batch per shard: each sample is held ``order.delay_s`` (processing
                 time: the disorder comes from partitions being read in turn, so it is bounded
                 in read time) and then released with every held sample of its series not
                 newer than it, sorted; samples not newer than the last one released for their
                 series are dropped (``otelwax_dropped_total{reason="out_of_order"|
                 "duplicate_timestamp"}``); at end of input (``tail: false``) everything held is
                 released; past ``order.max_series``/``order.max_samples`` the series held
                 longest are released early
    sink         connectors.remote_write (its own last-sent check is off: this step does it)

The held samples and the last released timestamp of each series are in the bytewax recovery
snapshot, so a restart neither loses held samples nor sends a sample older than what the last
run released (Prometheus would refuse it). Remote-write stays at-least-once: samples released
after the last snapshot are released again when bytewax replays from it; they are identical
(same timestamp and value), so Prometheus ignores the newest and refuses the older ones, which
the sink bisects away. A series silent for ``order.series_ttl_s`` is forgotten
(``otelwax_dropped_total{unit="series",reason="expired"}``).
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from datetime import UTC
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors.prom_translate import Labels, SeriesBatch
from connectors.remote_write import LastSent, OrderConfig, RemoteWriteConfig, RemoteWriteSink
from otelwax.telemetry import ComponentMetrics

__all__ = ["SeriesOrder", "shard_series", "write_in_order"]

log = logging.getLogger(__name__)

_shard_cache: dict[Labels, int] = {}


def _shard_of(labels: Labels) -> int:
    h = _shard_cache.get(labels)
    if h is None:
        if len(_shard_cache) > 500_000:
            _shard_cache.clear()
        h = _shard_cache[labels] = zlib.crc32("\0".join(map("\0".join, labels)).encode())
    return h


def shard_series(batch: SeriesBatch, shards: int) -> list[tuple[str, SeriesBatch]]:
    """``batch`` split by a stable hash of each series' labels: ``[(shard, part)]``; the
    skipped counts travel with the first part."""
    parts: dict[str, SeriesBatch] = {}
    for labels, samples in batch.series.items():
        key = str(_shard_of(labels) % shards)
        part = parts.get(key)
        if part is None:
            part = parts[key] = SeriesBatch()
        part.series[labels] = samples
    if batch.skipped:
        first = next(iter(parts.values()), None)
        if first is None:
            first = parts["0"] = SeriesBatch()
        first.skipped.update(batch.skipped)
    return list(parts.items())


Held = list[tuple[float, list[tuple[int, Any]]]]
"""One series' held samples: ``[(arrival wall time, [(ts_ms, value), ...]), ...]``."""


class SeriesOrder(StatefulBatchLogic[SeriesBatch, SeriesBatch, bytes]):
    """The reorder buffer of one shard (see the module docstring)."""

    def __init__(
        self, cfg: RemoteWriteConfig, component: str, resume: bytes | None = None
    ) -> None:
        self.cfg: OrderConfig = cfg.order
        self.drop_out_of_order = cfg.drop_out_of_order
        self.max_series = max(1, self.cfg.max_series // self.cfg.shards)
        self.max_samples = max(1, self.cfg.max_samples // self.cfg.shards)
        self.metrics = ComponentMetrics(component, "samples")
        self.held: dict[Labels, Held] = {}
        self.n_held = 0
        self.last = LastSent(self.cfg.series_ttl_s, ComponentMetrics(component, "series"))
        if resume is not None:
            self.held, self.last.entries = pickle.loads(resume)
            self.n_held = sum(len(s) for h in self.held.values() for _, s in h)

    # -- bytewax --
    def on_batch(self, values: list[SeriesBatch]) -> tuple[list[SeriesBatch], bool]:
        now = time.time()
        out = SeriesBatch()
        for batch in values:
            for reason, n in batch.skipped.items():
                out.skip(reason, n)
            for labels, samples in batch.series.items():
                self._hold(labels, samples, now)
        self._release(out, now - self.cfg.delay_s)
        if len(self.held) > self.max_series or self.n_held > self.max_samples:
            self._release_oldest(out)
        self.last.expire(now)
        return self._emit(out)

    def on_notify(self) -> tuple[list[SeriesBatch], bool]:
        now = time.time()
        out = SeriesBatch()
        self._release(out, now - self.cfg.delay_s)
        self.last.expire(now)
        return self._emit(out)

    def on_eof(self) -> tuple[list[SeriesBatch], bool]:
        out = SeriesBatch()
        self._release(out, float("inf"))
        return self._emit(out)

    def notify_at(self) -> Any:
        from datetime import datetime

        due = [self.last.next_expiry()]
        if self.held:
            due.append(min(h[0][0] for h in self.held.values()) + self.cfg.delay_s)
        at = min(d for d in due if d is not None) if any(d is not None for d in due) else None
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def snapshot(self) -> bytes:
        return pickle.dumps((self.held, self.last.entries), pickle.HIGHEST_PROTOCOL)

    # -- buffer --
    def _emit(self, out: SeriesBatch) -> tuple[list[SeriesBatch], bool]:
        items = [out] if out.series or out.skipped else []
        return items, not (self.held or self.last.entries)  # discard an empty shard

    def _hold(self, labels: Labels, samples: list[tuple[int, Any]], now: float) -> None:
        last = self.last.get(labels)
        if last is not None and self.drop_out_of_order:
            keep = [s for s in samples if s[0] > last]
            if len(keep) != len(samples):
                older = sum(1 for s in samples if s[0] < last)
                self.metrics.dropped(older, "out_of_order")
                self.metrics.dropped(len(samples) - len(keep) - older, "duplicate_timestamp")
                if older:
                    log.warning(
                        "remote-write: dropped %d samples older than the last one sent for "
                        "their series (%s); key metrics by resource in Kafka to keep a series "
                        "in one partition, or raise remote_write.order.delay_s",
                        older,
                        dict(labels).get("__name__", "?"),
                    )
            samples = keep
        if samples:
            self.held.setdefault(labels, []).append((now, samples))
            self.n_held += len(samples)
        self.last.touch(labels, now)

    def _release(self, out: SeriesBatch, ripe_before: float) -> None:
        for labels in [k for k, h in self.held.items() if h[0][0] <= ripe_before]:
            held = self.held[labels]
            cut = max(ts for arrived, s in held if arrived <= ripe_before for ts, _ in s)
            self._release_series(out, labels, cut)

    def _release_oldest(self, out: SeriesBatch) -> None:
        n = self.n_held
        for labels in sorted(self.held, key=lambda k: self.held[k][0][0]):
            if len(self.held) <= self.max_series and self.n_held <= self.max_samples:
                break
            self._release_series(out, labels, None)
        log.warning(
            "remote-write: reorder buffer full (%d series / %d samples per shard): released "
            "%d samples early; raise remote_write.order.max_series/max_samples",
            self.max_series,
            self.max_samples,
            n - self.n_held,
        )

    def _release_series(self, out: SeriesBatch, labels: Labels, cut: int | None) -> None:
        """Release the held samples of ``labels`` not newer than ``cut`` (all when None)."""
        held = self.held.pop(labels)
        ready: dict[int, Any] = {}
        kept: Held = []
        n = 0
        for arrived, samples in held:
            later = []
            for s in samples:
                if cut is None or s[0] <= cut:
                    n += 1
                    ready[s[0]] = s[1]  # same timestamp twice: the last one read wins
                else:
                    later.append(s)
            if later:
                kept.append((arrived, later))
        if kept:
            self.held[labels] = kept
        self.n_held -= n
        self.metrics.dropped(n - len(ready), "duplicate_timestamp")
        if ready:
            samples = sorted(ready.items())
            out.series[labels] = samples
            self.last.sent(labels, samples[-1][0])


@operator
def write_in_order(
    step_id: str, up: Stream[SeriesBatch], cfg: RemoteWriteConfig, component: str = "remote_write"
) -> None:
    """Send ``up`` with remote-write, each series' samples in timestamp order across
    partitions and restarts (``shard`` → ``order`` → ``sink``; see the module docstring)."""
    shards = cfg.order.shards
    keyed = op.flat_map("shard", up, lambda b: shard_series(b, shards))
    ordered = op.stateful_batch("order", keyed, lambda resume: SeriesOrder(cfg, component, resume))
    batches = op.map("unkey", ordered, lambda kv: kv[1])
    op.output("sink", batches, RemoteWriteSink(cfg, component, check_order=False))
