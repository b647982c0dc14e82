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

Samples are columnar (``connectors.prom_series``): each shard numbers its series and keeps the
held samples and per-series state as numpy columns. The snapshot is ``("remote_write_order/2",
state)``; the format before it (a pickled pair of dicts keyed by label tuples) is still read,
so an upgrade keeps held samples and last-sent timestamps. An older release cannot read the
new format (a downgrade needs a fresh recovery directory).
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from datetime import UTC
from typing import Any

import numpy as np
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors.prom_series import Labels, SeriesBatch, last_of_ties, object_column
from connectors.remote_write import OrderConfig, RemoteWriteConfig, RemoteWriteSink, series_runs
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
    sid, ts, val, obj = batch.columns()
    parts: list[tuple[str, SeriesBatch]] = []
    if len(sid):
        n = len(batch.labels)
        of_series = np.fromiter((_shard_of(lab) % shards for lab in batch.labels), np.int64, n)
        # Series by shard, numbered from 0 within their shard.
        by_shard = np.argsort(of_series, kind="stable")
        s_starts, s_ends = series_runs(of_series[by_shard])
        local = np.empty(n, np.int64)
        local[by_shard] = np.arange(n) - np.repeat(s_starts, s_ends - s_starts)
        series_at = dict(zip(of_series[by_shard[s_starts]].tolist(),
                             zip(s_starts.tolist(), s_ends.tolist(), strict=True), strict=True))
        # Samples by shard (a 16-bit stable sort is a radix sort).
        shard = of_series[sid].astype(np.int16 if shards <= 1 << 15 else np.int64)
        order = np.argsort(shard, kind="stable")
        shard, lsid, ts, val = shard[order], local[sid[order]], ts[order], val[order]
        obj = None if obj is None else obj[order]
        for a, b in zip(*(r.tolist() for r in series_runs(shard)), strict=True):
            k = int(shard[a])
            sa, sb = series_at[k]
            labels = [batch.labels[i] for i in by_shard[sa:sb].tolist()]
            part = SeriesBatch.of(labels, lsid[a:b], ts[a:b], val[a:b],
                                  None if obj is None else obj[a:b])  # fmt: skip
            parts.append((str(k), part))
    if batch.skipped:
        if not parts:
            parts.append(("0", SeriesBatch()))
        parts[0][1].skipped.update(batch.skipped)
    return parts


_NO_TS = np.iinfo(np.int64).min
_SNAPSHOT_FORMAT = "remote_write_order/2"


class SeriesOrder(StatefulBatchLogic[SeriesBatch, SeriesBatch, bytes]):
    """The reorder buffer of one shard (see the module docstring).

    Series get an id of this shard on first sight (``labels[id]``); ``last_ts``/``seen`` are
    per id (the last timestamp released, ``_NO_TS`` for none; when samples last came), and the
    held samples are columns in arrival order: series id, timestamp, value, native histogram
    (or None), arrival time.
    """

    def __init__(
        self, cfg: RemoteWriteConfig, component: str, resume: bytes | None = None
    ) -> None:
        self.cfg: OrderConfig = cfg.order
        self.drop_out_of_order = cfg.drop_out_of_order
        self.max_series = max(1, self.cfg.max_series // self.cfg.shards)
        self.max_samples = max(1, self.cfg.max_samples // self.cfg.shards)
        self.metrics = ComponentMetrics(component, "samples")
        self.series_metrics = ComponentMetrics(component, "series")
        self.labels: list[Labels] = []
        self.ids: dict[Labels, int] = {}
        self.last_ts = np.empty(0, np.int64)
        self.seen = np.empty(0, np.float64)
        e_i, e_f = np.empty(0, np.int64), np.empty(0, np.float64)
        self.held: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray] = (
            e_i, e_i, e_f, None, e_f
        )  # fmt: skip
        self._next_sweep = 0.0
        if resume is not None:
            self._restore(pickle.loads(resume))

    @property
    def n_held(self) -> int:
        return len(self.held[0])

    # -- bytewax --
    def on_batch(self, values: list[SeriesBatch]) -> tuple[list[SeriesBatch], bool]:
        now = time.time()
        out = SeriesBatch()
        batch = _merged(values)
        out.skipped.update(batch.skipped)
        sid, ts, val, obj = batch.columns()
        if len(sid):
            used, inv = np.unique(sid, return_inverse=True)
            ids = self._ids([batch.labels[i] for i in used.tolist()], now)
            self._hold(ids, ids[inv], ts, val, obj, now)
        self._release(out, now - self.cfg.delay_s)
        n = self.n_held
        if n > self.max_samples or (
            n > self.max_series and len(np.unique(self.held[0])) > self.max_series
        ):
            self._release_oldest(out)
        self._expire(now)
        return self._emit(out)

    def on_notify(self) -> tuple[list[SeriesBatch], bool]:
        now = time.time()
        out = SeriesBatch()
        self._release(out, now - self.cfg.delay_s)
        self._expire(now)
        return self._emit(out)

    def on_eof(self) -> tuple[list[SeriesBatch], bool]:
        out = SeriesBatch()
        self._release(out, float("inf"))
        return self._emit(out)

    def notify_at(self) -> Any:
        from datetime import datetime

        due = [self._next_sweep] if self.labels else []
        if self.n_held:
            due.append(float(self.held[4].min()) + self.cfg.delay_s)
        return datetime.fromtimestamp(min(due), UTC) if due else None

    def snapshot(self) -> bytes:
        n = len(self.labels)
        state = (self.labels, self.last_ts[:n], self.seen[:n], self.held)
        return pickle.dumps((_SNAPSHOT_FORMAT, state), pickle.HIGHEST_PROTOCOL)

    # -- state --
    def _restore(self, state: Any) -> None:
        if state[0] == _SNAPSHOT_FORMAT:
            labels, last_ts, seen, self.held = state[1]
            self._ids(labels, 0.0)
            self.last_ts[: len(labels)] = last_ts
            self.seen[: len(labels)] = seen
            return
        # The format before the columnar samples: ({labels: [(arrived, [(ts, value)])]},
        # {labels: [last ts | None, seen]}).
        held, entries = state
        ids = self._ids(list(entries) + list(held), 0.0)
        for i, (ts, seen) in zip(ids.tolist(), entries.values(), strict=False):
            self.last_ts[i] = _NO_TS if ts is None else ts
            self.seen[i] = seen
        rows = sorted(
            ((arrived, self.ids[labels], t, v) for labels, h in held.items()
             for arrived, samples in h for t, v in samples),
            key=lambda r: r[0],
        )  # fmt: skip
        if rows:
            arrived, sid, ts, values = zip(*rows, strict=True)
            batch = SeriesBatch()
            for s, t, v in zip(sid, ts, values, strict=True):
                batch.add(self.labels[s], t, v)
            _, _, val, obj = batch.columns()
            self.held = (np.array(sid, np.int64), np.array(ts, np.int64), val, obj,
                         np.array(arrived, np.float64))  # fmt: skip

    def _ids(self, labels: list[Labels], now: float) -> np.ndarray:
        """This shard's ids of ``labels`` (new ones added, first seen ``now``)."""
        out = np.empty(len(labels), np.int64)
        for k, lab in enumerate(labels):
            i = self.ids.get(lab)
            if i is None:
                i = self.ids[lab] = len(self.labels)
                self.labels.append(lab)
            out[k] = i
        n, cap = len(self.labels), len(self.last_ts)
        if n > cap:
            grow = max(n, 2 * cap, 64) - cap
            self.last_ts = np.concatenate((self.last_ts, np.full(grow, _NO_TS)))
            self.seen = np.concatenate((self.seen, np.full(grow, now)))
        return out

    def _emit(self, out: SeriesBatch) -> tuple[list[SeriesBatch], bool]:
        items = [out] if out.num_samples or out.skipped else []
        return items, not (self.n_held or self.labels)  # discard an empty shard

    def _expire(self, now: float) -> None:
        """Forget the series idle for ``series_ttl_s``; sweeps at most every quarter of it."""
        if now < self._next_sweep:
            return
        ttl = self.cfg.series_ttl_s
        self._next_sweep = now + ttl / 4
        n = len(self.labels)
        stale = self.seen[:n] < now - ttl
        stale[self.held[0]] = False
        n_stale = int(stale.sum())
        self.series_metrics.dropped(n_stale, "expired")
        if not n_stale:
            return
        keep = ~stale
        new_id = np.cumsum(keep) - 1
        self.labels = [lab for lab, k in zip(self.labels, keep.tolist(), strict=True) if k]
        self.ids = {lab: i for i, lab in enumerate(self.labels)}
        self.last_ts, self.seen = self.last_ts[:n][keep], self.seen[:n][keep]
        self.held = (new_id[self.held[0]], *self.held[1:])

    # -- buffer --
    def _hold(self, used: np.ndarray, sid: np.ndarray, ts: np.ndarray, val: np.ndarray,
              obj: np.ndarray | None, now: float) -> None:  # fmt: skip
        self.seen[used] = now
        if self.drop_out_of_order:
            last = self.last_ts[sid]
            late = ts <= last
            if late.any():
                older = ts < last
                n_older = int(older.sum())
                self.metrics.dropped(n_older, "out_of_order")
                self.metrics.dropped(int(late.sum()) - n_older, "duplicate_timestamp")
                if n_older:
                    log.warning(
                        "remote-write: dropped %d samples older than the last one sent for "
                        "their series (%s); key metrics by resource in Kafka to keep a series "
                        "in one partition, or raise remote_write.order.delay_s",
                        n_older,
                        dict(self.labels[sid[np.argmax(older)]]).get("__name__", "?"),
                    )
                keep = ~late
                sid, ts, val = sid[keep], ts[keep], val[keep]
                obj = None if obj is None else obj[keep]
        if not len(sid):
            return
        h_sid, h_ts, h_val, h_obj, h_arr = self.held
        if h_obj is not None or obj is not None:
            h_obj = np.concatenate((object_column(h_obj, len(h_sid)), object_column(obj, len(sid))))
        self.held = (np.concatenate((h_sid, sid)), np.concatenate((h_ts, ts)),
                     np.concatenate((h_val, val)), h_obj,
                     np.concatenate((h_arr, np.full(len(sid), now))))  # fmt: skip

    def _release(self, out: SeriesBatch, ripe_before: float) -> None:
        """Release each series that has a sample held since ``ripe_before``: its held samples
        not newer than the newest of those."""
        h_sid, h_ts, _, _, h_arr = self.held
        if not len(h_arr) or h_arr.min() > ripe_before:
            return
        ripe = h_arr <= ripe_before
        cut = np.full(len(self.labels), _NO_TS)
        np.maximum.at(cut, h_sid[ripe], h_ts[ripe])
        self._release_mask(out, h_ts <= cut[h_sid])

    def _release_oldest(self, out: SeriesBatch) -> None:
        n = self.n_held
        h_sid, h_arr = self.held[0], self.held[4]
        used, inv, counts = np.unique(h_sid, return_inverse=True, return_counts=True)
        oldest = np.full(len(used), np.inf)
        np.minimum.at(oldest, inv, h_arr)
        order = np.argsort(oldest, kind="stable")
        left = n - np.concatenate(([0], np.cumsum(counts[order])))  # after releasing k series
        fits = (len(used) - np.arange(len(used) + 1) <= self.max_series) & (
            left <= self.max_samples
        )
        k = int(np.argmax(fits))
        self._release_mask(out, np.isin(h_sid, used[order[:k]]))
        log.warning(
            "remote-write: reorder buffer full (%d series / %d samples per shard): released "
            "%d samples early; raise remote_write.order.max_series/max_samples",
            self.max_series,
            self.max_samples,
            n - self.n_held,
        )

    def _release_mask(self, out: SeriesBatch, release: np.ndarray) -> None:
        """Release the held samples where ``release``, sorted; of samples with the same series
        and timestamp the last one read wins."""
        idx = np.flatnonzero(release)
        if not len(idx):
            return
        h_sid, h_ts, h_val, h_obj, h_arr = self.held
        idx = idx[np.lexsort((h_ts[idx], h_sid[idx]))]  # stable: arrival order within ties
        sid, ts = h_sid[idx], h_ts[idx]
        last = last_of_ties(sid, ts)
        self.metrics.dropped(int(len(idx) - last.sum()), "duplicate_timestamp")
        idx, sid, ts = idx[last], sid[last], ts[last]
        ends = np.flatnonzero(np.append(sid[1:] != sid[:-1], True))
        self.last_ts[sid[ends]] = ts[ends]
        out.extend(self.labels, sid, ts, h_val[idx], None if h_obj is None else h_obj[idx])
        keep = ~release
        self.held = (h_sid[keep], h_ts[keep], h_val[keep],
                     None if h_obj is None else h_obj[keep], h_arr[keep])  # fmt: skip


def _merged(batches: list[SeriesBatch]) -> SeriesBatch:
    """The items of one bytewax batch as one (sharded once, not once per item)."""
    if len(batches) == 1:
        return batches[0]
    out = SeriesBatch()
    for b in batches:
        out.merge(b)
    return out


@operator
def write_in_order(
    step_id: str, up: Stream[SeriesBatch], cfg: RemoteWriteConfig, component: str = "remote_write"
) -> None:
    """Send ``up`` with remote-write, each series' samples in timestamp order across
    partitions and restarts (``shard`` → ``order`` → ``sink``; see the module docstring)."""
    shards = cfg.order.shards
    keyed = op.flat_map_batch("shard", up, lambda bs: shard_series(_merged(bs), shards))
    ordered = op.stateful_batch("order", keyed, lambda resume: SeriesOrder(cfg, component, resume))
    batches = op.map("unkey", ordered, lambda kv: kv[1])
    op.output("sink", batches, RemoteWriteSink(cfg, component, check_order=False))
