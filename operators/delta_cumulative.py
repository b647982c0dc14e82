"""Delta → cumulative for the metrics flow's remote-write branch: per-series running totals.

    from operators.delta_cumulative import DeltaToCumulativeConfig, to_cumulative
    cumulative = to_cumulative(tables, DeltaToCumulativeConfig())   # Stream[{table: batch}]

Steps (:func:`to_cumulative`, top-level step ids so recovery snapshots keep their keys):

    cumulative_as_is     gauges, cumulative sums/histograms, summaries: straight on
    split_deltas         delta sum/histogram rows split into ``shards`` keys by series
    delta_to_cumulative  stateful_map keyed by shard: per series running totals, snapshotted
                         by bytewax recovery with the source offsets, so a restart resumes the
                         totals exactly where the offsets resume
    unkey, all_cumulative  back to one stream of tables

Rules: the first point of a series starts it (StartTimeUnix = its start time, or its time when
unset); later points add up; a histogram whose bounds change starts over. A point not newer
than the last one of its series (Kafka partitions interleave, so points of one series can
arrive out of order) is still added — sums commute — and the new total is reported 1 ms after
the series' last sample, so Prometheus sees a monotonic history and no total is lost (counted
under component ``delta_to_cumulative_late_merged``). Unlike the Collector's
deltatocumulative processor, which drops such points, this keeps totals exact; the price is a
timestamp skew of the late point only. A series without a point for ``ttl_s`` is forgotten.
"""

from __future__ import annotations

import gc
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax import operators as op
from bytewax.dataflow import Stream
from pydantic import Field

from otelwax.arrowbufs import from_numpy, list_parts, numbers, scalar
from otelwax.metric_schemas import HISTOGRAM, SUM
from otelwax.rowkeys import row_groups
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

__all__ = [
    "CUMULATIVE",
    "DELTA",
    "READ_COLUMNS",
    "DeltaToCumulativeConfig",
    "delta_to_cumulative",
    "split_deltas",
    "to_cumulative",
    "without_deltas",
]

DELTA = 1
CUMULATIVE = 2

Tables = dict[str, pa.RecordBatch]


class DeltaToCumulativeConfig(StrictModel):
    """State keys and series expiry of :func:`to_cumulative`."""

    shards: int = Field(
        64, gt=0, le=65536, description="state keys for delta→cumulative (spread over workers)"
    )
    ttl_s: float = Field(
        900.0,
        gt=0,
        description="forget a delta series' running total after this long without a point "
        "(its next point starts a new cumulative series, a counter reset)",
    )


def to_cumulative(tables: Stream[Tables], cfg: DeltaToCumulativeConfig) -> Stream[Tables]:
    """Wire the steps above: every table of ``tables`` with delta rows made cumulative."""
    shards, ttl = cfg.shards, cfg.ttl_s
    direct = op.map("cumulative_as_is", tables, without_deltas)
    keyed = op.flat_map("split_deltas", tables, lambda t: split_deltas(t, shards))
    cum = op.stateful_map(
        "delta_to_cumulative", keyed, lambda st, v: delta_to_cumulative(st, v, ttl)
    )
    cum_tables = op.map("unkey", cum, lambda kv: kv[1])
    return op.merge("all_cumulative", direct, cum_tables)


_SERIES_COLUMNS = ["ResourceAttributes", "ScopeName", "MetricName", "MetricUnit", "Attributes"]
READ_COLUMNS = frozenset(
    [*_SERIES_COLUMNS, "IsMonotonic", "AggregationTemporality", "StartTimeUnix", "TimeUnix",
     "Value", "Count", "Sum", "BucketCounts", "ExplicitBounds"]
)  # fmt: skip
"""The columns this module reads (and writes) of the sum and histogram tables."""


def _series_keys(batch: pa.RecordBatch, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The series of each of ``rows`` as one string built by Arrow (a tuple of the maps' pairs
    per row cost more than the rest of the branch), for one row per series; a sum's
    monotonicity is part of it. Returns the distinct keys and each row's index into them."""
    names = _SERIES_COLUMNS + (["IsMonotonic"] if "IsMonotonic" in batch.schema.names else [])
    return row_groups(batch, names, rows)


def _is_delta(batch: pa.RecordBatch, delta: bool = True) -> pa.Array:
    col = batch.column("AggregationTemporality")
    return (pc.equal if delta else pc.not_equal)(col, scalar(DELTA, col.type))


def split_deltas(tables: Tables, shards: int) -> list[tuple[str, dict[str, tuple]]]:
    """Delta sum/histogram rows grouped by shard: ``[(shard, {table: (batch, keys, series)})]``
    where row ``i`` of ``batch`` is of the series ``keys[series[i]]``.

    A series' shard is the crc32 of its key, computed once per distinct series of the batch;
    the delta rows are put in shard order with one take and handed out as slices (rows of a
    shard keep their order)."""
    out: dict[str, dict[str, tuple]] = {}
    for table in (SUM, HISTOGRAM):
        batch = tables.get(table)
        if batch is None or batch.num_rows == 0:
            continue
        deltas = np.flatnonzero(numbers(_is_delta(batch), np.bool_))
        if not len(deltas):
            continue
        distinct, of_row = _series_keys(batch, deltas)
        of_key = np.fromiter(
            (zlib.crc32(k.encode()) % shards for k in distinct), np.int64, len(distinct)
        )
        shard = of_key[of_row]
        order = np.argsort(shard, kind="stable")
        rows = batch.take(from_numpy(deltas[order]))
        series = of_row[order]
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)], strict=True):
            used, local = np.unique(series[a:b], return_inverse=True)
            keys = [distinct[i] for i in used.tolist()]
            out.setdefault(str(shard[order[a]]), {})[table] = (rows.slice(a, b - a), keys, local)
    return list(out.items())


def without_deltas(tables: Tables) -> Tables:
    """``tables`` minus delta sum/histogram rows (those go through the state)."""
    out = dict(tables)
    for table in (SUM, HISTOGRAM):
        batch = out.get(table)
        if batch is not None and batch.num_rows:
            keep = _is_delta(batch, False)
            if keep.null_count or not pc.all(keep).as_py():  # no delta rows: no copy
                out[table] = batch.filter(keep)
    return out


_dtc_metrics = ComponentMetrics("delta_to_cumulative", "datapoints")
_dtc_series = ComponentMetrics("delta_to_cumulative", "series")
_META = ("\0otelwax",)
"""State key of ``[next sweep (time.time), {series key: last update (time.time)}]``."""
# Late points are merged, not dropped: counted as "received" by their own component name.
_late_merged = ComponentMetrics("delta_to_cumulative_late_merged", "datapoints")
_NS = pa.timestamp("ns")


def delta_to_cumulative(
    state: dict[str | tuple, list] | None, value: dict[str, tuple], ttl_s: float = 900.0
) -> tuple[dict[str | tuple, list], dict[str, pa.RecordBatch]]:
    """stateful_map mapper: running totals per series (state) → cumulative rows.

    State entries: sums ``[start_ns, last_ns, total]``; histograms
    ``[start_ns, last_ns, count, sum, bucket_counts, bounds]``. A series without a point for
    ``ttl_s`` (wall time) is forgotten, swept when its shard next gets points
    (``otelwax_dropped_total{component="delta_to_cumulative",unit="series",reason="expired"}``).
    """
    enabled = gc.isenabled()
    gc.disable()  # the per-series state is large and long-lived: avoid full GC passes
    try:
        state = {} if state is None else state
        _expire(state, time.time(), ttl_s)
        return _delta_to_cumulative(state, value)
    finally:
        if enabled:
            gc.enable()


def _expire(state: dict[str | tuple, list], now: float, ttl_s: float) -> None:
    """Drop the series of ``state`` not updated for ``ttl_s`` (sweeps every ``ttl_s / 4``)."""
    meta = state.get(_META)
    if meta is None:  # a new shard, or a snapshot from before the TTL: every series is fresh
        state[_META] = [now + ttl_s / 4, dict.fromkeys(list(state), now)]
        return
    if now < meta[0]:
        return
    meta[0] = now + ttl_s / 4
    seen = meta[1]
    cutoff = now - ttl_s
    stale = [k for k, t in seen.items() if t < cutoff]
    for k in stale:
        del seen[k]
        state.pop(k, None)
    _dtc_series.dropped(len(stale), "expired")


def _delta_to_cumulative(
    state: dict[str | tuple, list], value: dict[str, tuple]
) -> tuple[dict[str | tuple, list], dict[str, pa.RecordBatch]]:
    out: dict[str, pa.RecordBatch] = {}
    late = 0
    seen = state[_META][1]
    now = time.time()
    for table, (batch, keys, series) in value.items():
        # Rows are added up in time order (each series' rows one slice of `pos`) and leave in
        # their own order (`back`), so the batch keeps its other columns as they are.
        times = numbers(batch.column("TimeUnix"), np.int64)
        order = np.argsort(times, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        t_in = times[order]
        run = _Run(t_in, numbers(batch.column("StartTimeUnix"), np.int64)[order])
        of_row = series[order]
        pos = np.argsort(of_row, kind="stable")
        cuts = (np.flatnonzero(np.diff(of_row[pos])) + 1).tolist()
        firsts = [0, *cuts]
        ends = [*cuts, len(pos)]
        rows = batch
        if table == SUM:
            totals = _SumTotals(numbers(batch.column("Value"), np.float64)[order])
            for a, b in zip(firsts, ends, strict=True):
                k = keys[of_row[pos[a]]]
                seen[k] = now
                late += totals.add(state, k, pos[a:b], run)
            rows = _set(rows, "Value", from_numpy(totals.out[back]))
        else:
            totals = _HistogramTotals(batch, order)
            for a, b in zip(firsts, ends, strict=True):
                k = keys[of_row[pos[a]]]
                seen[k] = now
                late += totals.add(state, k, pos[a:b], run)
            rows = _set(rows, "Count", from_numpy(totals.count[back]))
            rows = _set(rows, "Sum", from_numpy(totals.sum[back]))
            rows = _set(rows, "BucketCounts", totals.bucket_counts())
        rows = _set(rows, "StartTimeUnix", from_numpy(run.start[back], _NS))
        rows = _set(rows, "TimeUnix", from_numpy(run.time[back], _NS))
        temporality = np.full(len(order), CUMULATIVE, np.int32)
        rows = _set(rows, "AggregationTemporality", from_numpy(temporality))
        out[table] = rows
    _dtc_metrics.received(sum(v[0].num_rows for v in value.values()))
    if late:
        _late_merged.received(late)
    return state, out


class _Run:
    """Start and (adjusted) time of each output row: a point not newer than the one before it
    in its series is reported 1 ms after it."""

    __slots__ = ("start", "start_in", "t_in", "time")

    def __init__(self, t_in: np.ndarray, start_in: np.ndarray) -> None:
        self.t_in, self.start_in = t_in, start_in
        self.time = t_in.copy()
        self.start = np.empty(len(t_in), np.int64)

    def times(self, at: np.ndarray, last: int | None) -> tuple[list[int] | None, int]:
        """The times of the rows ``at`` of one series whose last time was ``last`` (None: a
        new series), as a list when one had to move (else None: unchanged), and how many
        did."""
        t = self.t_in[at]
        if (last is None or t[0] > last) and bool(np.all(t[1:] > t[:-1])):
            return None, 0
        out = t.tolist()
        moved = 0
        for j, tj in enumerate(out):
            if last is not None and tj <= last:
                moved += 1
                tj = out[j] = last + 1_000_000
            last = tj
        self.time[at] = out
        return out, moved

    def first_start(self, i: int) -> int:
        """A new series' start: its first point's start time, or its time when unset."""
        return int(self.start_in[i]) or int(self.t_in[i])


def _running(base: float | int | None, values: np.ndarray) -> np.ndarray:
    """``base + v0``, ``base + v0 + v1``, ... added left to right (as a Python loop would, so
    floating-point totals are the same); no base: from ``v0``."""
    if base is None:
        return np.cumsum(values)
    return np.cumsum(np.concatenate((np.array([base], values.dtype), values)))[1:]


class _SumTotals:
    """Running totals of the delta sum rows, one series at a time (state
    ``[start_ns, last_ns, total]``)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.out = np.empty(len(values), np.float64)

    def add(self, state: dict, k: str, at: np.ndarray, run: _Run) -> int:
        e = state.get(k)
        times, late = run.times(at, None if e is None else e[1])
        if e is None:
            e = state[k] = [run.first_start(at[0]), 0, 0.0]
            total = self.out[at] = _running(None, self.values[at])
        else:
            total = self.out[at] = _running(e[2], self.values[at])
        run.start[at] = e[0]
        e[1] = times[-1] if times is not None else int(run.t_in[at[-1]])
        e[2] = total[-1].item()
        return late


class _HistogramTotals:
    """Running totals of the delta histogram rows, one series at a time (state
    ``[start_ns, last_ns, count, sum, bucket_counts, bounds]``); a point whose bounds or
    number of buckets differ from its series' starts the series over."""

    def __init__(self, batch: pa.RecordBatch, order: np.ndarray) -> None:
        self.counts_in = numbers(batch.column("Count"), np.uint64)[order]
        self.sums_in = numbers(batch.column("Sum"), np.float64)[order]
        self.n_bounds, self.bounds_at, self.bounds = _lists(batch, "ExplicitBounds", order)
        self.n_buckets, self.buckets_at, self.buckets = _lists(batch, "BucketCounts", order)
        self.count = np.empty(len(order), np.uint64)
        self.sum = np.empty(len(order), np.float64)
        # The output lists are in the batch's row order, their values written in time order.
        self.offsets = np.zeros(len(order) + 1, np.int32)
        self.offsets[1:][order] = self.n_buckets
        np.cumsum(self.offsets, out=self.offsets)
        self.out_at = self.offsets[:-1][order]
        self.out_buckets = np.empty(int(self.offsets[-1]), np.uint64)

    def bucket_counts(self) -> pa.Array:
        return pa.ListArray.from_arrays(from_numpy(self.offsets), from_numpy(self.out_buckets))

    def _matrix(self, flat: np.ndarray, at: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
        return flat[starts[at][:, None] + np.arange(n)]

    def add(self, state: dict, k: str, at: np.ndarray, run: _Run) -> int:
        e = state.get(k)
        nb, nc = self.n_bounds[at], self.n_buckets[at]
        if not ((nb == nb[0]).all() and (nc == nc[0]).all()):
            return self._add_rows(state, k, at, run)
        bounds = self._matrix(self.bounds, at, self.bounds_at, int(nb[0]))
        b = tuple(bounds[0].tolist())
        if not (bounds == bounds[0]).all() or (e is not None and (e[5] != b or len(e[4]) != nc[0])):
            return self._add_rows(state, k, at, run)
        times, late = run.times(at, None if e is None else e[1])
        buckets = self._matrix(self.buckets, at, self.buckets_at, int(nc[0]))
        if e is None:
            e = state[k] = [run.first_start(at[0]), 0, 0, 0.0, [], b]
            base = None
        else:
            base = np.array(e[4], np.uint64)
        count = self.count[at] = _running(None if base is None else e[2], self.counts_in[at])
        total = self.sum[at] = _running(None if base is None else e[3], self.sums_in[at])
        cum = np.cumsum(buckets, axis=0, dtype=np.uint64)
        if base is not None:
            cum += base
        self.out_buckets[self.out_at[at][:, None] + np.arange(int(nc[0]))] = cum
        run.start[at] = e[0]
        e[1] = times[-1] if times is not None else int(run.t_in[at[-1]])
        e[2], e[3], e[4] = count[-1].item(), total[-1].item(), cum[-1].tolist()
        return late

    def _add_rows(self, state: dict, k: str, at: np.ndarray, run: _Run) -> int:
        """One row at a time: the series starts over within these rows, or they differ from
        its state."""
        late = 0
        for i in at.tolist():
            t = int(run.t_in[i])
            at_b, at_c = self.bounds_at[i], self.buckets_at[i]
            b = tuple(self.bounds[at_b : at_b + self.n_bounds[i]].tolist())
            bcs = self.buckets[at_c : at_c + self.n_buckets[i]].tolist()
            c, sm = int(self.counts_in[i]), float(self.sums_in[i])
            e = state.get(k)
            if e is None or e[5] != b or len(e[4]) != len(bcs):
                e = state[k] = [run.first_start(i), t, c, sm, bcs, b]
            else:
                if t <= e[1]:
                    late += 1
                    t = e[1] + 1_000_000
                e[1] = t
                e[2] += c
                e[3] += sm
                e[4] = [x + y for x, y in zip(e[4], bcs, strict=True)]
            run.time[i], run.start[i] = t, e[0]
            self.count[i], self.sum[i] = e[2], e[3]
            self.out_buckets[self.out_at[i] : self.out_at[i] + len(bcs)] = e[4]
        return late


def _lists(
    batch: pa.RecordBatch, name: str, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~otelwax.arrowbufs.list_parts` of column ``name``, lengths and starts of the
    rows in ``order``."""
    dtype = np.float64 if name == "ExplicitBounds" else np.uint64
    lengths, starts, flat = list_parts(batch.column(name), dtype)
    return lengths[order], starts[order], flat


def _set(batch: pa.RecordBatch, name: str, arr: pa.Array) -> pa.RecordBatch:
    i = batch.schema.get_field_index(name)
    return batch.set_column(i, batch.schema.field(i), arr)

