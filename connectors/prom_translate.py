"""OpenTelemetry metric tables → Prometheus series for the remote-write sink.

Follows the OpenTelemetry "Prometheus and OpenMetrics compatibility" specification, the way the
Collector's ``pkg/translator/prometheus`` does it with metric suffixes enabled (names and labels:
:mod:`connectors.prom_names`):

- non-monotonic sums are gauges; histograms give ``_bucket{le}`` (cumulative counts, ``+Inf``
  last), ``_sum`` and ``_count``; summaries give the base name with a ``quantile`` label, plus
  ``_sum`` and ``_count``;
- every resource attribute but those of ``job``/``instance`` goes to one ``target_info`` gauge
  (value 1) per resource, with the same ``job``/``instance``;
- exponential histograms become Prometheus *native* histograms
  (:mod:`connectors.prom_native_histogram`); scales below -4 are skipped with reason
  ``exponential_histogram_scale``;
- data points flagged "no recorded value" (``Flags & 1``) are skipped.

Timestamps become milliseconds. The output is a columnar :class:`SeriesBatch`
(``connectors.prom_series``): the rows of a table are grouped by series identity with Arrow and
numpy, so labels are looked up (and on a miss built) once per distinct series of a batch, and
timestamps and values stay numpy columns.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.prom_names import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_HISTOGRAM,
    KIND_SUMMARY,
    RESOURCE_JOB_KEYS,
    format_float,
    job_instance,
    labels_from_pairs,
    metric_name,
)
from connectors.prom_native_histogram import encode_native_histogram
from connectors.prom_series import Labels, SeriesBatch
from otelwax.arrowbufs import from_numpy, list_parts, numbers, scalar
from otelwax.rowkeys import codes, first_rows, group_rows, map_codes, map_keys

__all__ = [
    "TRANSLATED_COLUMNS",
    "Labels",
    "SeriesBatch",
    "tables_batch_to_series",
    "tables_to_series",
    "translated_columns",
]

TRANSLATED_COLUMNS = frozenset(
    ["ResourceAttributes", "Attributes", "MetricName", "MetricUnit", "TimeUnix", "Flags",
     "Value", "IsMonotonic", "AggregationTemporality", "Count", "Sum", "BucketCounts",
     "ExplicitBounds", "ValueAtQuantiles.Quantile", "ValueAtQuantiles.Value", "Scale",
     "ZeroCount", "PositiveOffset", "PositiveBucketCounts", "NegativeOffset",
     "NegativeBucketCounts"]
)  # fmt: skip
"""The columns of the metric tables that the translation reads."""


def translated_columns(
    tables: Mapping[str, pa.RecordBatch | pa.Table], extra: frozenset[str] = frozenset()
) -> dict[str, pa.RecordBatch | pa.Table]:
    """``tables`` with only the columns the translation (and ``extra``) read: the others
    (scope attributes, descriptions, exemplars) are then not copied by every filter and take
    on the way (zero-copy)."""
    keep = TRANSLATED_COLUMNS | extra
    return {
        name: t.select([c for c in t.schema.names if c in keep]) for name, t in tables.items()
    }


_CACHE_MAX = 200_000
_NS_PER_MS = scalar(1_000_000, pa.int64())


class _Caches:
    """Caches that live across calls (series repeat every scrape), cleared when too big."""

    def __init__(self) -> None:
        self.resources: dict[str, tuple[tuple[str, str], Labels | None]] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.series: dict[tuple, Any] = {}

    def trim(self) -> None:
        for d in (self.resources, self.attrs, self.series):
            if len(d) > _CACHE_MAX:
                d.clear()


_caches = _Caches()


class _Ctx:
    """Per-call state (target_info timestamps) over the shared caches."""

    def __init__(self, out: SeriesBatch) -> None:
        self.out = out
        self.resources = _caches.resources
        self.attrs = _caches.attrs
        self.series = _caches.series
        self.target_info: dict[Labels, int] = {}

    def resource(self, key: str, col: _MapCol, i: int, ts_ms: int) -> tuple[str, str]:
        hit = self.resources.get(key)
        if hit is None:
            pairs = col.pairs(i)
            ji = job_instance(dict(pairs))
            ti: Labels | None = None
            others = [(k, v) for k, v in pairs if k not in RESOURCE_JOB_KEYS]
            if others:
                labels = labels_from_pairs(others)
                labels.pop("job", None)
                labels.pop("instance", None)
                labels["__name__"] = "target_info"
                if ji[0]:
                    labels["job"] = ji[0]
                if ji[1]:
                    labels["instance"] = ji[1]
                ti = tuple(sorted(labels.items()))
            hit = self.resources[key] = (ji, ti)
        ji, ti = hit
        if ti is not None:
            # One target_info sample per resource, at the newest timestamp seen for it.
            prev = self.target_info.get(ti)
            if prev is None or ts_ms > prev:
                self.target_info[ti] = ts_ms
        return ji

    def series_labels(
        self, rows: _Rows, i: int, key: tuple[str, str, str, str], kind: str, name_kind: str
    ) -> Labels:
        """The label set of row ``i``'s one series; ``key`` is its (resource key, attributes
        key, name, unit) and ``kind`` tells series of one name apart."""
        labels = self.series.get((*key, kind))
        if labels is None:
            lab = _base_labels(self, rows, i)
            lab["__name__"] = metric_name(key[2], key[3], name_kind)
            labels = self.series[(*key, kind)] = tuple(sorted(lab.items()))
        return labels

    def labels(self, key: str, col: _MapCol, i: int) -> dict[str, str]:
        lab = self.attrs.get(key)
        if lab is None:
            lab = labels_from_pairs(col.pairs(i))
            self.attrs[key] = lab
        return lab


def _base_labels(ctx: _Ctx, rows: _Rows, i: int) -> dict[str, str]:
    """Row ``i``'s data point attributes as labels, with its resource's job and instance."""
    job, instance = ctx.resources[rows.res.key(i)][0]
    labels = dict(ctx.labels(rows.attrs.key(i), rows.attrs, i))
    # Resource identity wins over data point attributes of the same name.
    if job:
        labels["job"] = job
    if instance:
        labels["instance"] = instance
    return labels


def _arr(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _np(batch: pa.RecordBatch | pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    return numbers(batch.column(name), dtype)


class _MapCol:
    """A map column: its rows grouped by content (``codes``, dense), the string key of each
    group (built in C++ by ``otelwax.rowkeys`` for one row per group: hashing a str is
    cached, hashing a tuple of pairs is not) and the row's pairs on demand (cache misses
    only)."""

    __slots__ = ("codes", "col", "distinct")

    def __init__(self, batch: pa.RecordBatch | pa.Table, name: str) -> None:
        self.col = _arr(batch, name)
        self.codes, _ = map_codes(self.col)
        self.distinct: list[str] = map_keys(
            self.col.take(from_numpy(first_rows(self.codes)))
        ).to_pylist()

    def key(self, i: int) -> str:
        return self.distinct[self.codes[i]]

    def pairs(self, i: int) -> tuple[tuple[str, str], ...]:
        return tuple(self.col[i].as_py() or ())


class _Rows:
    """The rows of a table that have a recorded value (the others are counted skipped), their
    resources noted for target_info, grouped by series identity (resource, attributes, name,
    unit)."""

    __slots__ = ("attrs", "batch", "n", "names", "res", "series", "ts", "units")

    def __init__(self, ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
        flags = batch.column("Flags")
        one, zero = scalar(1, flags.type), scalar(0, flags.type)
        unrecorded = pc.not_equal(pc.bit_wise_and(flags, one), zero)
        n_skip = pc.sum(unrecorded).as_py() or 0
        if n_skip:
            ctx.out.skip("no_recorded_value", n_skip)
            batch = batch.filter(pc.invert(unrecorded))
        self.batch = batch
        self.n = batch.num_rows
        self.res = _MapCol(batch, "ResourceAttributes")
        self.attrs = _MapCol(batch, "Attributes")
        self.names = _arr(batch, "MetricName")
        self.units = _arr(batch, "MetricUnit")
        ts = pc.divide(_arr(batch, "TimeUnix").cast(pa.int64()), _NS_PER_MS)
        self.ts: np.ndarray = numbers(ts, np.int64)
        if not self.n:
            self.series = (np.empty(0, np.int64), 0)
            return
        rc = (self.res.codes, len(self.res.distinct))
        newest = np.full(rc[1], np.iinfo(np.int64).min)
        np.maximum.at(newest, rc[0], self.ts)
        for i, t in zip(first_rows(rc[0]).tolist(), newest.tolist(), strict=True):
            ctx.resource(self.res.key(i), self.res, i, t)
        ac = (self.attrs.codes, len(self.attrs.distinct))
        inv, first = group_rows(rc, ac, codes(self.names), codes(self.units))
        self.series = (inv, len(first))

    def first_keys(self, first: np.ndarray) -> list[tuple[str, str, str, str]]:
        """(resource key, attributes key, name, unit) of the rows ``first``."""
        idx = from_numpy(first)
        res = [self.res.distinct[c] for c in self.res.codes[first].tolist()]
        attrs = [self.attrs.distinct[c] for c in self.attrs.codes[first].tolist()]
        names, units = (c.take(idx).to_pylist() for c in (self.names, self.units))
        return list(zip(res, attrs, names, units, strict=True))


def _add_scalar_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table, sums: bool) -> None:
    rows = _Rows(ctx, batch)
    if not rows.n:
        return
    counter = np.zeros(rows.n, np.int64)
    if sums:
        counter = _np(rows.batch, "IsMonotonic", np.int64)
    inv, first = group_rows(rows.series, (counter, 2))
    out = ctx.out
    sids = np.empty(len(first), np.int64)
    for g, (i, key) in enumerate(zip(first.tolist(), rows.first_keys(first), strict=True)):
        kind = KIND_COUNTER if counter[i] else KIND_GAUGE
        sids[g] = out.series_id(ctx.series_labels(rows, i, key, kind, kind))
    out.add_columns(sids[inv], rows.ts, _np(rows.batch, "Value"))


def _histogram_labels(ctx: _Ctx, rows: _Rows, i: int, bounds: tuple):
    base = _base_labels(ctx, rows, i)
    pname = metric_name(rows.names[i].as_py(), rows.units[i].as_py(), KIND_HISTOGRAM)
    base["__name__"] = pname + "_count"
    count = tuple(sorted(base.items()))
    base["__name__"] = pname + "_sum"
    total = tuple(sorted(base.items()))
    base["__name__"] = pname + "_bucket"
    buckets = []
    for bound in bounds:
        base["le"] = format_float(bound)
        buckets.append(tuple(sorted(base.items())))
    base["le"] = "+Inf"
    inf = tuple(sorted(base.items()))
    return count, total, buckets, inf


def _add_histogram_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    rows = _Rows(ctx, batch)
    n = rows.n
    if not n:
        return
    b = rows.batch
    nb, bstart, bounds = list_parts(_arr(b, "ExplicitBounds"), np.float64)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(nb * 8, out=offsets[1:])
    bkeys = pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(bounds.tobytes())]
    )
    inv, first = group_rows(rows.series, codes(bkeys))
    # Per group: its series ids (count, sum, +Inf, and the buckets from bucket_at[group]).
    cache, out = ctx.series, ctx.out
    ng = len(first)
    fixed = np.empty((ng, 3), np.int64)
    bucket_at = np.empty(ng, np.int64)
    bucket_sids: list[int] = []
    for g, (i, key) in enumerate(zip(first.tolist(), rows.first_keys(first), strict=True)):
        bd = tuple(bounds[bstart[i] : bstart[i] + nb[i]].tolist())
        ckey = (*key, KIND_HISTOGRAM, bd)
        hit = cache.get(ckey)
        if hit is None:
            hit = cache[ckey] = _histogram_labels(ctx, rows, i, bd)
        count_l, sum_l, bucket_l, inf_l = hit
        fixed[g] = (out.series_id(count_l), out.series_id(sum_l), out.series_id(inf_l))
        bucket_at[g] = len(bucket_sids)
        bucket_sids.extend(out.series_id(lab) for lab in bucket_l)
    # Bucket j of a row: the cumulative count of its first j+1 bucket counts (counts past the
    # row's list count as 0).
    row = np.repeat(np.arange(n), nb)
    j = np.arange(len(row)) - np.repeat(bstart, nb)
    nbc, cstart, counts = list_parts(_arr(b, "BucketCounts"), np.uint64)
    cum = np.zeros(len(counts) + 1, np.uint64)
    np.cumsum(counts, out=cum[1:])
    start = cstart[row]
    bucket_val = (cum[start + np.minimum(j, nbc[row] - 1) + 1] - cum[start]).astype(np.float64)
    count = _np(b, "Count")
    sid = np.concatenate(
        [fixed[inv, 0], fixed[inv, 1], fixed[inv, 2],
         np.asarray(bucket_sids, np.int64)[bucket_at[inv[row]] + j]]
    )  # fmt: skip
    ts = np.concatenate([rows.ts, rows.ts, rows.ts, rows.ts[row]])
    out.add_columns(sid, ts, np.concatenate([count, _np(b, "Sum"), count, bucket_val]))


def _add_summary_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    rows = _Rows(ctx, batch)
    counts, sums, qs, qv = (
        _arr(rows.batch, c).to_pylist()
        for c in ("Count", "Sum", "ValueAtQuantiles.Quantile", "ValueAtQuantiles.Value")
    )
    names, units, ts = rows.names.to_pylist(), rows.units.to_pylist(), rows.ts.tolist()
    out = ctx.out
    for i in range(rows.n):
        t = ts[i]
        base = _base_labels(ctx, rows, i)
        name = metric_name(names[i], units[i], KIND_SUMMARY)
        base["__name__"] = name + "_count"
        out.add(tuple(sorted(base.items())), t, float(counts[i]))
        base["__name__"] = name + "_sum"
        out.add(tuple(sorted(base.items())), t, float(sums[i]))
        base["__name__"] = name
        for q, v in zip(qs[i] or [], qv[i] or [], strict=False):
            base["quantile"] = format_float(q)
            out.add(tuple(sorted(base.items())), t, float(v))


_EXP_HISTOGRAM_FIELDS = (
    "Count",
    "Sum",
    "Scale",
    "ZeroCount",
    "PositiveOffset",
    "PositiveBucketCounts",
    "NegativeOffset",
    "NegativeBucketCounts",
)


def _add_exp_histogram_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    rows = _Rows(ctx, batch)
    cols = [_arr(rows.batch, c).to_pylist() for c in _EXP_HISTOGRAM_FIELDS]
    ts = rows.ts.tolist()
    keys = rows.first_keys(np.arange(rows.n))
    out = ctx.out
    for i in range(rows.n):
        h = encode_native_histogram(*(c[i] if c[i] is not None else [] for c in cols))
        if h is None:
            out.skip("exponential_histogram_scale")
            continue
        labels = ctx.series_labels(rows, i, keys[i], "native_histogram", KIND_HISTOGRAM)
        out.add(labels, ts[i], h)


def _cumulative(batch: pa.RecordBatch | pa.Table, out: SeriesBatch) -> pa.RecordBatch | pa.Table:
    """``batch`` without its delta-temporality rows, which are counted skipped."""
    temporality = batch.column("AggregationTemporality")
    delta = pc.equal(temporality, scalar(1, temporality.type))
    n_delta = pc.sum(delta).as_py() or 0
    if n_delta:
        out.skip("delta_temporality", n_delta)
        batch = batch.filter(pc.invert(delta))
    return batch


def tables_to_series(
    tables: Mapping[str, pa.RecordBatch | pa.Table], out: SeriesBatch | None = None
) -> SeriesBatch:
    """Translate metric tables (``otel_metrics_*`` rows) to Prometheus series.

    Sums and histograms must already be cumulative (see ``flows.metrics``' delta→cumulative
    step); delta rows that reach this function are skipped with reason ``delta_temporality``.
    """
    # Many short-lived tuples over large long-lived caches: GC passes would dominate.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _tables_to_series(tables, out if out is not None else SeriesBatch())
    finally:
        if enabled:
            gc.enable()


def tables_batch_to_series(
    items: Sequence[Mapping[str, pa.RecordBatch | pa.Table]],
) -> list[SeriesBatch]:
    """The table sets of one bytewax batch translated in one call (for ``op.flat_map_batch``):
    delta→cumulative hands its rows on in one item per shard, and a call's fixed cost (Arrow
    kernels, grouping) is then paid once per batch instead of once per shard. One
    :class:`SeriesBatch` out, none when there is nothing in it."""
    by_name: dict[str, list[pa.RecordBatch | pa.Table]] = {}
    for tables in items:
        for name, t in tables.items():
            if t is not None and t.num_rows:
                by_name.setdefault(name, []).append(t)
    tables: dict[str, pa.RecordBatch | pa.Table] = {}
    rest: list[dict[str, pa.RecordBatch | pa.Table]] = []
    for name, ts in by_name.items():
        try:
            tables[name] = ts[0] if len(ts) == 1 else pa.concat_tables(
                [t if isinstance(t, pa.Table) else pa.Table.from_batches([t]) for t in ts]
            )  # fmt: skip
        except pa.ArrowInvalid:  # schemas differ (not seen with one codec): one call each
            rest.extend({name: t} for t in ts)
    out = tables_to_series(tables)
    for t in rest:
        tables_to_series(t, out)
    return [out] if out.num_samples or out.skipped else []


def _tables_to_series(
    tables: Mapping[str, pa.RecordBatch | pa.Table], out: SeriesBatch
) -> SeriesBatch:
    _caches.trim()
    ctx = _Ctx(out)
    for table, batch in tables.items():
        if batch is None or batch.num_rows == 0:
            continue
        if table.endswith("_gauge"):
            _add_scalar_rows(ctx, batch, sums=False)
        elif table.endswith("_sum"):
            _add_scalar_rows(ctx, _cumulative(batch, out), sums=True)
        elif table.endswith("_exponential_histogram"):
            _add_exp_histogram_rows(ctx, _cumulative(batch, out))
        elif table.endswith("_histogram"):
            _add_histogram_rows(ctx, _cumulative(batch, out))
        elif table.endswith("_summary"):
            _add_summary_rows(ctx, batch)
        else:
            out.skip("unknown_table", batch.num_rows)
    for labels, ts in ctx.target_info.items():
        out.add(labels, ts, 1.0)
    return out
