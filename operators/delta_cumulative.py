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

from otelwax.metric_schemas import HISTOGRAM, SUM
from otelwax.rowkeys import row_keys
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


def _series_keys(batch: pa.RecordBatch) -> tuple[list[str], np.ndarray]:
    """The series of each row as one string, built by Arrow (a tuple of the maps' pairs per
    row cost more than the rest of the branch); a sum's monotonicity is part of it. Returns
    the distinct keys and each row's index into them."""
    names = _SERIES_COLUMNS + (["IsMonotonic"] if "IsMonotonic" in batch.schema.names else [])
    d = row_keys(batch, names).dictionary_encode()
    return d.dictionary.to_pylist(), d.indices.to_numpy(zero_copy_only=False)


def split_deltas(tables: Tables, shards: int) -> list[tuple[str, dict[str, tuple]]]:
    """Delta sum/histogram rows grouped by shard: ``[(shard, {table: (batch, keys)})]``.

    A series' shard is the crc32 of its key, computed once per distinct series of the batch;
    the rows are put in shard order with one take and handed out as slices (rows of a shard
    keep their order). Equal keys are one str object, whose hash is computed once."""
    out: dict[str, dict[str, tuple]] = {}
    for table in (SUM, HISTOGRAM):
        batch = tables.get(table)
        if batch is None or batch.num_rows == 0:
            continue
        mask = pc.equal(batch.column("AggregationTemporality"), DELTA)
        if not pc.any(mask).as_py():
            continue
        deltas = batch.filter(mask)
        distinct, of_row = _series_keys(deltas)
        of_key = np.fromiter(
            (zlib.crc32(k.encode()) % shards for k in distinct), np.int64, len(distinct)
        )
        shard = of_key[of_row]
        order = np.argsort(shard, kind="stable")
        rows = deltas.take(pa.array(order))
        keys = [distinct[i] for i in of_row[order].tolist()]
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)], strict=True):
            out.setdefault(str(shard[order[a]]), {})[table] = (rows.slice(a, b - a), keys[a:b])
    return list(out.items())


def without_deltas(tables: Tables) -> Tables:
    """``tables`` minus delta sum/histogram rows (those go through the state)."""
    out = dict(tables)
    for table in (SUM, HISTOGRAM):
        batch = out.get(table)
        if batch is not None and batch.num_rows:
            out[table] = batch.filter(pc.not_equal(batch.column("AggregationTemporality"), DELTA))
    return out


_dtc_metrics = ComponentMetrics("delta_to_cumulative", "datapoints")
_dtc_series = ComponentMetrics("delta_to_cumulative", "series")
_META = ("\0otelwax",)
"""State key of ``[next sweep (time.time), {series key: last update (time.time)}]``."""
# Late points are merged, not dropped: counted as "received" by their own component name.
_late_merged = ComponentMetrics("delta_to_cumulative_late_merged", "datapoints")


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
    for table, (batch, keys) in value.items():
        order = pc.sort_indices(batch.column("TimeUnix")).to_pylist()
        starts = batch.column("StartTimeUnix").cast(pa.int64()).to_pylist()
        times = batch.column("TimeUnix").cast(pa.int64()).to_pylist()
        keep: list[int] = []
        new_start: list[int] = []
        new_time: list[int] = []
        if table == SUM:
            values = batch.column("Value").to_pylist()
            new_val: list[float] = []
            for i in order:
                k, t = keys[i], times[i]
                seen[k] = now
                e = state.get(k)
                if e is None:
                    e = state[k] = [starts[i] or t, t, values[i]]
                else:
                    if t <= e[1]:
                        late += 1
                        t = e[1] + 1_000_000
                    e[1] = t
                    e[2] += values[i]
                keep.append(i)
                new_time.append(t)
                new_start.append(e[0])
                new_val.append(e[2])
            rows = batch.take(pa.array(keep, pa.int64()))
            rows = _set(rows, "Value", pa.array(new_val, pa.float64()))
        else:
            counts = batch.column("Count").to_pylist()
            sums = batch.column("Sum").to_pylist()
            bcs = batch.column("BucketCounts").to_pylist()
            bounds = batch.column("ExplicitBounds").to_pylist()
            n_count: list[int] = []
            n_sum: list[float] = []
            n_bc: list[list[int]] = []
            for i in order:
                k, t = keys[i], times[i]
                seen[k] = now
                e = state.get(k)
                b = tuple(bounds[i])
                if e is None or e[5] != b or len(e[4]) != len(bcs[i]):
                    e = state[k] = [starts[i] or t, t, counts[i], sums[i], list(bcs[i]), b]
                else:
                    if t <= e[1]:
                        late += 1
                        t = e[1] + 1_000_000
                    e[1] = t
                    e[2] += counts[i]
                    e[3] += sums[i]
                    e[4] = [x + y for x, y in zip(e[4], bcs[i], strict=True)]
                keep.append(i)
                new_time.append(t)
                new_start.append(e[0])
                n_count.append(e[2])
                n_sum.append(e[3])
                n_bc.append(list(e[4]))
            rows = batch.take(pa.array(keep, pa.int64()))
            rows = _set(rows, "Count", pa.array(n_count, pa.uint64()))
            rows = _set(rows, "Sum", pa.array(n_sum, pa.float64()))
            rows = _set(rows, "BucketCounts", pa.array(n_bc, pa.list_(pa.uint64())))
        rows = _set(rows, "StartTimeUnix", pa.array(new_start, pa.int64()).cast(pa.timestamp("ns")))
        rows = _set(rows, "TimeUnix", pa.array(new_time, pa.int64()).cast(pa.timestamp("ns")))
        rows = _set(rows, "AggregationTemporality", pa.array([CUMULATIVE] * len(keep), pa.int32()))
        out[table] = rows
    _dtc_metrics.received(sum(b.num_rows for b, _ in value.values()))
    if late:
        _late_merged.received(late)
    return state, out


def _set(batch: pa.RecordBatch, name: str, arr: pa.Array) -> pa.RecordBatch:
    i = batch.schema.get_field_index(name)
    return batch.set_column(i, batch.schema.field(i), arr)

