"""OpenTelemetry → Prometheus translation (names, labels, series) for the remote-write sink.

Follows the OpenTelemetry "Prometheus and OpenMetrics compatibility" specification, the way the
Collector's ``pkg/translator/prometheus`` does it with metric suffixes enabled:

- metric names: characters outside ``[a-zA-Z0-9_:]`` become ``_`` (runs collapse), a leading
  digit gets a ``_`` prefix; the unit is appended as a word (``s`` → ``_seconds``, ``By`` →
  ``_bytes``, ``ms`` → ``_milliseconds``, ``m/s`` → ``_meters_per_second``; ``{annotations}``
  are dropped) unless the name already contains it; gauges with unit ``1`` get ``_ratio``;
  monotonic sums are counters and get ``_total`` (moved to the end when already present);
- non-monotonic sums are gauges; histograms give ``_bucket{le}`` (cumulative counts, ``+Inf``
  last), ``_sum`` and ``_count``; summaries give the base name with a ``quantile`` label, plus
  ``_sum`` and ``_count``;
- label names: invalid characters → ``_``, a leading digit gets ``key_``, a single leading
  ``_`` gets ``key``; when two attributes map to the same label their values are joined with
  ``;`` in key order; labels with an empty value are left out (Prometheus treats them as
  absent);
- ``job`` = ``service.namespace/service.name`` (or ``service.name``), ``instance`` =
  ``service.instance.id``; every other resource attribute goes to one ``target_info`` gauge
  (value 1) per resource, with the same ``job``/``instance``;
- exponential histograms become Prometheus *native* histograms (remote-write 1.0's
  ``TimeSeries.histograms``; the receiving Prometheus needs ``--enable-feature=native-histograms``):
  schema = scale (scales above 8 are downscaled by merging buckets, below -4 are skipped with
  reason ``exponential_histogram_scale``), counts delta-encoded in one span per sign;
- data points flagged "no recorded value" (``Flags & 1``) are skipped.

Timestamps become milliseconds. The output is a :class:`SeriesBatch`: samples keyed by their
sorted label set, which the remote-write sink encodes.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import pyarrow as pa

__all__ = [
    "SeriesBatch",
    "job_instance",
    "metric_name",
    "sanitize_label_name",
    "tables_to_series",
]

Labels = tuple[tuple[str, str], ...]

UNIT_WORDS: dict[str, str] = {
    # time
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    # bytes
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    # SI
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    # misc
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNIT_WORDS: dict[str, str] = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}

_NON_NAME = re.compile(r"[^a-zA-Z0-9]+")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_ANNOTATION = re.compile(r"\{[^}]*\}")

KIND_GAUGE = "gauge"
KIND_COUNTER = "counter"
KIND_HISTOGRAM = "histogram"
KIND_SUMMARY = "summary"

RESOURCE_JOB_KEYS = ("service.name", "service.namespace", "service.instance.id")


def _unit_tokens(unit: str) -> tuple[list[str], list[str]]:
    """(main unit words, per-unit words) for a UCUM unit string."""
    unit = _ANNOTATION.sub("", unit or "").strip()
    if not unit:
        return [], []
    main, _, per = unit.partition("/")
    main_words: list[str] = []
    per_words: list[str] = []
    main = main.strip()
    if main:
        word = UNIT_WORDS.get(main)
        if word is None:
            word = "_".join(t for t in _NON_NAME.split(main) if t)
        if word:
            main_words = [word]
    per = per.strip()
    if per:
        word = PER_UNIT_WORDS.get(per)
        if word is None:
            word = "_".join(t for t in _NON_NAME.split(per) if t)
        if word:
            per_words = ["per", word]
    return main_words, per_words


@lru_cache(maxsize=65536)
def metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus base metric name for an OTel metric (before ``_bucket``/``_sum``/...).

    ``kind`` is one of ``gauge``, ``counter`` (monotonic sum), ``histogram``, ``summary``.
    """
    tokens = [t for t in _NON_NAME.split(name) if t]
    main_words, per_words = _unit_tokens(unit)
    for word in main_words:
        if word not in tokens:
            tokens.append(word)
    if per_words and per_words[1] not in tokens:
        tokens.extend(per_words)
    if kind == KIND_COUNTER:
        tokens = [t for t in tokens if t != "total"]
        tokens.append("total")
    if kind == KIND_GAUGE and (unit or "").strip() == "1" and "ratio" not in tokens:
        tokens.append("ratio")
    out = "_".join(tokens) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out


@lru_cache(maxsize=65536)
def sanitize_label_name(name: str) -> str:
    """A valid Prometheus label name for an attribute key."""
    if not name:
        return "key_"
    out = _BAD_LABEL.sub("_", name)
    if out[0].isdigit():
        out = "key_" + out
    elif out.startswith("_") and not out.startswith("__"):
        out = "key" + out
    return out


def _labels_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Sanitized label dict; colliding names have their values joined with ';' in key order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in pairs:
        groups.setdefault(sanitize_label_name(key), []).append((key, value))
    out: dict[str, str] = {}
    for label, kvs in groups.items():
        value = kvs[0][1] if len(kvs) == 1 else ";".join(v for _, v in sorted(kvs))
        if value:  # Prometheus: an empty label value is the same as no label
            out[label] = value
    return out


def job_instance(resource: Mapping[str, str]) -> tuple[str, str]:
    """(job, instance) from resource attributes, per the compatibility spec."""
    svc = resource.get("service.name", "")
    ns = resource.get("service.namespace", "")
    job = f"{ns}/{svc}" if ns and svc else (svc or ns)
    return job, resource.get("service.instance.id", "")


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


def _fmt_float(x: float) -> str:
    """Prometheus label value for a bound or quantile (Go ``strconv.FormatFloat(f, 'f', -1)``)."""
    if x == float("inf"):
        return "+Inf"
    if x == float("-inf"):
        return "-Inf"
    if x != x:
        return "NaN"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    if "e" in r or "E" in r:
        from decimal import Decimal

        r = format(Decimal(r), "f")
    return r


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
                labels = _labels_from_pairs(others)
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
            lab = _labels_from_pairs(col.pairs(i))
            self.attrs[key] = lab
        return lab


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


class _MapCol:
    """A map column: one string key per row (built in C++ by pyarrow: hashing a str is cached,
    hashing a tuple of pairs is not) and the row's pairs on demand (cache misses only)."""

    __slots__ = ("col", "keys")

    def __init__(self, batch: pa.RecordBatch | pa.Table, name: str) -> None:
        import pyarrow.compute as pc

        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        self.col = col
        offs = col.offsets
        base = offs[0].as_py()
        end = offs[-1].as_py()
        child = col.values.slice(base, end - base)
        k, v = child.flatten()
        if base:
            offs = pc.subtract(offs, base)
        kl = pa.ListArray.from_arrays(offs, k)
        vl = pa.ListArray.from_arrays(offs, v)
        # "<n>\x1d<k1>\x1f<k2>...\x1e<v1>\x1f<v2>...": the count keeps {} and {"": ""} apart;
        # keys/values holding these control characters could collide (not seen in practice).
        joined = pc.binary_join_element_wise(
            pc.cast(pc.list_value_length(kl), pa.string()),
            pc.binary_join(kl, "\x1f"),
            pc.binary_join(vl, "\x1f"),
            "\x1d",
        )
        self.keys: list[str] = joined.to_pylist()

    def pairs(self, i: int) -> tuple[tuple[str, str], ...]:
        return tuple(self.col[i].as_py() or ())


def _ts_ms(col: pa.Array | pa.ChunkedArray) -> list[int]:
    import pyarrow.compute as pc

    return pc.divide(col.cast(pa.int64()), 1_000_000).to_pylist()


def _add_scalar_rows(
    ctx: _Ctx, batch: pa.RecordBatch | pa.Table, kind_of_row: Sequence[str], values: Sequence
) -> None:
    names = _col(batch, "MetricName")
    units = _col(batch, "MetricUnit")
    res = _MapCol(batch, "ResourceAttributes")
    attrs = _MapCol(batch, "Attributes")
    rkeys = res.keys
    akeys = attrs.keys
    flags = _col(batch, "Flags")
    ts = _ts_ms(batch.column("TimeUnix"))
    out = ctx.out
    cache = ctx.series
    add = out.add
    for i in range(len(names)):
        if flags[i] & 1:
            out.skip("no_recorded_value")
            continue
        t = ts[i]
        rk = rkeys[i]
        ctx.resource(rk, res, i, t)
        key = (rk, akeys[i], names[i], units[i], kind_of_row[i])
        labels = cache.get(key)
        if labels is None:
            lab = _base_labels(ctx, rk, attrs, i)
            lab["__name__"] = metric_name(names[i], units[i], kind_of_row[i])
            labels = cache[key] = tuple(sorted(lab.items()))
        add(labels, t, float(values[i]))


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
        base["le"] = _fmt_float(bound)
        buckets.append(tuple(sorted(base.items())))
    base["le"] = "+Inf"
    inf = tuple(sorted(base.items()))
    return count, total, buckets, inf


def _add_histogram_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    names = _col(batch, "MetricName")
    units = _col(batch, "MetricUnit")
    res = _MapCol(batch, "ResourceAttributes")
    attrs = _MapCol(batch, "Attributes")
    rkeys = res.keys
    akeys = attrs.keys
    flags = _col(batch, "Flags")
    counts = _col(batch, "Count")
    sums = _col(batch, "Sum")
    bucket_counts = _col(batch, "BucketCounts")
    bounds = _col(batch, "ExplicitBounds")
    ts = _ts_ms(batch.column("TimeUnix"))
    out = ctx.out
    cache = ctx.series
    add = out.add
    for i in range(len(names)):
        if flags[i] & 1:
            out.skip("no_recorded_value")
            continue
        t = ts[i]
        rk = rkeys[i]
        ctx.resource(rk, res, i, t)
        bd = tuple(bounds[i] or ())
        key = (rk, akeys[i], names[i], units[i], KIND_HISTOGRAM, bd)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = _histogram_labels(ctx, rk, attrs, i, names[i], units[i], bd)
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
    names = _col(batch, "MetricName")
    units = _col(batch, "MetricUnit")
    res = _MapCol(batch, "ResourceAttributes")
    attrs = _MapCol(batch, "Attributes")
    rkeys = res.keys
    flags = _col(batch, "Flags")
    counts = _col(batch, "Count")
    sums = _col(batch, "Sum")
    qs = _col(batch, "ValueAtQuantiles.Quantile")
    qv = _col(batch, "ValueAtQuantiles.Value")
    ts = _ts_ms(batch.column("TimeUnix"))
    out = ctx.out
    for i in range(len(names)):
        if flags[i] & 1:
            out.skip("no_recorded_value")
            continue
        t = ts[i]
        ctx.resource(rkeys[i], res, i, t)
        base = _base_labels(ctx, rkeys[i], attrs, i)
        name = metric_name(names[i], units[i], KIND_SUMMARY)
        base["__name__"] = name + "_count"
        out.add(tuple(sorted(base.items())), t, float(counts[i]))
        base["__name__"] = name + "_sum"
        out.add(tuple(sorted(base.items())), t, float(sums[i]))
        base["__name__"] = name
        for q, v in zip(qs[i] or [], qv[i] or [], strict=False):
            base["quantile"] = _fmt_float(q)
            out.add(tuple(sorted(base.items())), t, float(v))


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _pb_varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _downscale(offset: int, counts: list[int], by: int) -> tuple[int, list[int]]:
    """Merge buckets 2**by to 1 (OTel index i → i >> by), as a lower scale requires."""
    if by <= 0 or not counts:
        return offset, counts
    merged: dict[int, int] = {}
    for k, c in enumerate(counts):
        j = (offset + k) >> by
        merged[j] = merged.get(j, 0) + c
    lo, hi = min(merged), max(merged)
    return lo, [merged.get(j, 0) for j in range(lo, hi + 1)]


def _buckets_fields(offset: int, counts: list[int], span_tag: int, delta_tag: int) -> bytes:
    if not counts:
        return b""
    # OTel bucket i covers (base^i, base^(i+1)]; Prometheus bucket j covers (base^(j-1), base^j].
    span = b"\x08" + _pb_varint(_zigzag(offset + 1)) + b"\x10" + _pb_varint(len(counts))
    out = bytes((span_tag,)) + _pb_varint(len(span)) + span
    deltas = bytearray()
    prev = 0
    for c in counts:
        deltas += _pb_varint(_zigzag(c - prev))
        prev = c
    return out + bytes((delta_tag,)) + _pb_varint(len(deltas)) + bytes(deltas)


NATIVE_MIN_SCALE = -4
NATIVE_MAX_SCALE = 8
DEFAULT_ZERO_THRESHOLD = 1e-128


def encode_native_histogram(
    count: int,
    total: float,
    scale: int,
    zero_count: int,
    pos_offset: int,
    pos_counts: list[int],
    neg_offset: int,
    neg_counts: list[int],
) -> bytes | None:
    """``prometheus.Histogram`` fields (no timestamp) for an OTel exponential histogram point,
    or None when its scale is below Prometheus' smallest schema (-4).

    Scales above 8 are reduced to 8 by merging buckets; bucket indexes shift by one (OTel
    buckets are lower-exclusive, Prometheus' upper-inclusive at the same boundaries).
    """
    if scale < NATIVE_MIN_SCALE:
        return None
    if scale > NATIVE_MAX_SCALE:
        by = scale - NATIVE_MAX_SCALE
        pos_offset, pos_counts = _downscale(pos_offset, pos_counts, by)
        neg_offset, neg_counts = _downscale(neg_offset, neg_counts, by)
        scale = NATIVE_MAX_SCALE
    out = b"\x08" + _pb_varint(count)  # count_int
    out += b"\x19" + _pack_d(total)  # sum
    out += b"\x20" + _pb_varint(_zigzag(scale))  # schema
    out += b"\x29" + _pack_d(DEFAULT_ZERO_THRESHOLD)  # zero_threshold
    out += b"\x30" + _pb_varint(zero_count)  # zero_count_int
    out += _buckets_fields(neg_offset, neg_counts, 0x42, 0x4A)  # negative spans 8 / deltas 9
    out += _buckets_fields(pos_offset, pos_counts, 0x5A, 0x62)  # positive spans 11 / deltas 12
    return out


def _pack_d(x: float) -> bytes:
    import struct

    return struct.pack("<d", x)


def _add_exp_histogram_rows(ctx: _Ctx, batch: pa.RecordBatch | pa.Table) -> None:
    names = _col(batch, "MetricName")
    units = _col(batch, "MetricUnit")
    res = _MapCol(batch, "ResourceAttributes")
    attrs = _MapCol(batch, "Attributes")
    rkeys = res.keys
    akeys = attrs.keys
    flags = _col(batch, "Flags")
    cols = [
        _col(batch, c)
        for c in (
            "Count",
            "Sum",
            "Scale",
            "ZeroCount",
            "PositiveOffset",
            "PositiveBucketCounts",
            "NegativeOffset",
            "NegativeBucketCounts",
        )
    ]
    ts = _ts_ms(batch.column("TimeUnix"))
    out = ctx.out
    for i in range(len(names)):
        if flags[i] & 1:
            out.skip("no_recorded_value")
            continue
        t = ts[i]
        ctx.resource(rkeys[i], res, i, t)
        h = encode_native_histogram(*(c[i] if c[i] is not None else [] for c in cols))
        if h is None:
            out.skip("exponential_histogram_scale")
            continue
        key = (rkeys[i], akeys[i], names[i], units[i], "native_histogram")
        labels = ctx.series.get(key)
        if labels is None:
            lab = _base_labels(ctx, rkeys[i], attrs, i)
            lab["__name__"] = metric_name(names[i], units[i], KIND_HISTOGRAM)
            labels = ctx.series[key] = tuple(sorted(lab.items()))
        out.add(labels, t, h)  # type: ignore[arg-type]


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
            temporality = batch.column("AggregationTemporality")
            import pyarrow.compute as pc

            delta = pc.equal(temporality, 1)
            n_delta = pc.sum(delta).as_py() or 0
            if n_delta:
                out.skip("delta_temporality", n_delta)
                batch = batch.filter(pc.invert(delta))
            mono = _col(batch, "IsMonotonic")
            kinds = [KIND_COUNTER if m else KIND_GAUGE for m in mono]
            _add_scalar_rows(ctx, batch, kinds, _col(batch, "Value"))
        elif table.endswith("_exponential_histogram"):
            import pyarrow.compute as pc

            delta = pc.equal(batch.column("AggregationTemporality"), 1)
            n_delta = pc.sum(delta).as_py() or 0
            if n_delta:
                out.skip("delta_temporality", n_delta)
                batch = batch.filter(pc.invert(delta))
            _add_exp_histogram_rows(ctx, batch)
        elif table.endswith("_histogram"):
            import pyarrow.compute as pc

            delta = pc.equal(batch.column("AggregationTemporality"), 1)
            n_delta = pc.sum(delta).as_py() or 0
            if n_delta:
                out.skip("delta_temporality", n_delta)
                batch = batch.filter(pc.invert(delta))
            _add_histogram_rows(ctx, batch)
        elif table.endswith("_summary"):
            _add_summary_rows(ctx, batch)
        else:
            out.skip("unknown_table", batch.num_rows)
    for labels, ts in ctx.target_info.items():
        out.add(labels, ts, 1.0)
    return out
