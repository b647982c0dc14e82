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

Timestamps become milliseconds. The output is a :class:`SeriesBatch`: samples keyed by their
sorted label set, which the remote-write sink encodes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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
from otelwax.rowkeys import map_keys

__all__ = ["Labels", "SeriesBatch", "tables_to_series"]

Labels = tuple[tuple[str, str], ...]


class SeriesBatch:
    """Samples grouped by series: ``{sorted label tuple: [(timestamp_ms, value), ...]}``.

    ``skipped`` counts data points that were not translated, by reason.
    """

    __slots__ = ("series", "skipped")

    def __init__(self) -> None:
        self.series: dict[Labels, list[tuple[int, float]]] = {}
        self.skipped: dict[str, int] = {}

    def add(self, labels: Labels, ts_ms: int, value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            self.series[labels] = [(ts_ms, value)]
        else:
            s.append((ts_ms, value))

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: SeriesBatch) -> None:
        for labels, samples in other.series.items():
            s = self.series.get(labels)
            if s is None:
                self.series[labels] = list(samples)
            else:
                s.extend(samples)
        for reason, n in other.skipped.items():
            self.skip(reason, n)

    @property
    def num_samples(self) -> int:
        return sum(len(v) for v in self.series.values())

    def __len__(self) -> int:
        return len(self.series)


_CACHE_MAX = 200_000


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

    def labels(self, key: str, col: _MapCol, i: int) -> dict[str, str]:
        lab = self.attrs.get(key)
        if lab is None:
            lab = labels_from_pairs(col.pairs(i))
            self.attrs[key] = lab
        return lab

    def series_labels(self, rows: _Rows, i: int, kind: str, name_kind: str) -> Labels:
        """The label set of row ``i``'s one series (``kind`` tells series of a name apart)."""
        rk = rows.res.keys[i]
        key = (rk, rows.attrs.keys[i], rows.names[i], rows.units[i], kind)
        labels = self.series.get(key)
        if labels is None:
            lab = _base_labels(self, rk, rows.attrs, i)
            lab["__name__"] = metric_name(rows.names[i], rows.units[i], name_kind)
            labels = self.series[key] = tuple(sorted(lab.items()))
        return labels


def _base_labels(ctx: _Ctx, rkey: str, attrs: _MapCol, i: int) -> dict[str, str]:
    job, instance = ctx.resources[rkey][0]
    labels = dict(ctx.labels(attrs.keys[i], attrs, i))
    # Resource identity wins over data point attributes of the same name.
    if job:
        labels["job"] = job
    if instance:
        labels["instance"] = instance
    return labels


def _col(batch: pa.RecordBatch | pa.Table, name: str) -> list:
    return batch.column(name).to_pylist()


def _cols(batch: pa.RecordBatch | pa.Table, *names: str) -> list[list]:
    return [batch.column(name).to_pylist() for name in names]


class _MapCol:
    """A map column: one string key per row (built in C++ by ``otelwax.rowkeys``: hashing a
    str is cached, hashing a tuple of pairs is not) and the row's pairs on demand (cache
    misses only)."""

    __slots__ = ("col", "keys")

    def __init__(self, batch: pa.RecordBatch | pa.Table, name: str) -> None:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        self.col = col
        self.keys: list[str] = map_keys(col).to_pylist()

    def pairs(self, i: int) -> tuple[tuple[str, str], ...]:
        return tuple(self.col[i].as_py() or ())


def _ts_ms(col: pa.Array | pa.ChunkedArray) -> list[int]:
    return pc.divide(col.cast(pa.int64()), 1_000_000).to_pylist()

class _Rows:
    """The columns every metric table has, read once per batch."""

    __slots__ = ("_flags", "attrs", "names", "res", "ts", "units")

    def __init__(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.names = _col(batch, "MetricName")
        self.units = _col(batch, "MetricUnit")
        self.res = _MapCol(batch, "ResourceAttributes")
        self.attrs = _MapCol(batch, "Attributes")
        self.ts = _ts_ms(batch.column("TimeUnix"))
        self._flags = _col(batch, "Flags")

    def recorded(self, ctx: _Ctx) -> Iterator[int]:
        """Rows with a recorded value, their resource noted; the others are counted skipped."""
        res, ts = self.res, self.ts
        for i, flags in enumerate(self._flags):
            if flags & 1:
                ctx.out.skip("no_recorded_value")
                continue
            ctx.resource(res.keys[i], res, i, ts[i])
            yield i


def _add_scalar_rows(
    ctx: _Ctx, batch: pa.RecordBatch | pa.Table, kind_of_row: Sequence[str], values: Sequence
) -> None:
    rows = _Rows(batch)
    add = ctx.out.add
    for i in rows.recorded(ctx):
        kind = kind_of_row[i]
        add(ctx.series_labels(rows, i, kind, kind), rows.ts[i], float(values[i]))


def _histogram_labels(
    ctx: _Ctx, rkey: str, attrs: _MapCol, i: int, name: str, unit: str, bounds: tuple
):
    base = _base_labels(ctx, rkey, attrs, i)
    pname = metric_name(name, unit, KIND_HISTOGRAM)
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
    rows = _Rows(batch)
    fields = ("Count", "Sum", "BucketCounts", "ExplicitBounds")
    counts, sums, bucket_counts, bounds = _cols(batch, *fields)
    cache = ctx.series
    add = ctx.out.add
    for i in rows.recorded(ctx):
        t = rows.ts[i]
        rk = rows.res.keys[i]
        bd = tuple(bounds[i] or ())
        key = (rk, rows.attrs.keys[i], rows.names[i], rows.units[i], KIND_HISTOGRAM, bd)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = _histogram_labels(
                ctx, rk, rows.attrs, i, rows.names[i], rows.units[i], bd
            )
        count_l, sum_l, bucket_l, inf_l = hit
        add(count_l, t, float(counts[i]))
        add(sum_l, t, float(sums[i]))
        cum = 0
        bc = bucket_counts[i] or []
        nbc = len(bc)
        for j, lab in enumerate(bucket_l):
            cum += bc[j] if j < nbc else 0
            add(lab, t, float(cum))
        add(inf_l, t, float(counts[i]))


def _add_summary_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    rows = _Rows(batch)
    counts, sums, qs, qv = _cols(
        batch, "Count", "Sum", "ValueAtQuantiles.Quantile", "ValueAtQuantiles.Value"
    )
    out = ctx.out
    for i in rows.recorded(ctx):
        t = rows.ts[i]
        base = _base_labels(ctx, rows.res.keys[i], rows.attrs, i)
        name = metric_name(rows.names[i], rows.units[i], KIND_SUMMARY)
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
    rows = _Rows(batch)
    cols = _cols(batch, *_EXP_HISTOGRAM_FIELDS)
    out = ctx.out
    for i in rows.recorded(ctx):
        h = encode_native_histogram(*(c[i] if c[i] is not None else [] for c in cols))
        if h is None:
            out.skip("exponential_histogram_scale")
            continue
        labels = ctx.series_labels(rows, i, "native_histogram", KIND_HISTOGRAM)
        out.add(labels, rows.ts[i], h)  # type: ignore[arg-type]


def _cumulative(batch: pa.RecordBatch | pa.Table, out: SeriesBatch) -> pa.RecordBatch | pa.Table:
    """``batch`` without its delta-temporality rows, which are counted skipped."""
    delta = pc.equal(batch.column("AggregationTemporality"), 1)
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


def _tables_to_series(
    tables: Mapping[str, pa.RecordBatch | pa.Table], out: SeriesBatch
) -> SeriesBatch:
    _caches.trim()
    ctx = _Ctx(out)
    for table, batch in tables.items():
        if batch is None or batch.num_rows == 0:
            continue
        if table.endswith("_gauge"):
            _add_scalar_rows(ctx, batch, [KIND_GAUGE] * batch.num_rows, _col(batch, "Value"))
        elif table.endswith("_sum"):
            batch = _cumulative(batch, out)
            mono = _col(batch, "IsMonotonic")
            kinds = [KIND_COUNTER if m else KIND_GAUGE for m in mono]
            _add_scalar_rows(ctx, batch, kinds, _col(batch, "Value"))
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
