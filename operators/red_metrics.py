"""Event-time windowed span metrics (RED) on Arrow batches.

``span_metrics(step_id, spans, cfg)`` turns a stream of span batches (``otelwax.schemas``'
``TRACES_SCHEMA`` columns; only ``Timestamp``, ``Duration``, ``ServiceName``, ``SpanName``,
``SpanKind``, ``StatusCode``, ``SpanAttributes``, ``ResourceAttributes`` are read) into metric
tables (``otel_metrics_sum`` / ``otel_metrics_histogram`` rows, cumulative) named like the
Collector's spanmetrics connector, so existing dashboards work:

    traces.span.metrics.calls      monotonic sum  → traces_span_metrics_calls_total
    traces.span.metrics.duration   histogram, ms  → traces_span_metrics_duration_milliseconds_*

with attributes ``service.name``, ``span.name``, ``span.kind``, ``status.code`` plus the
configured extra dimensions (span attribute, else resource attribute, else the default, else
absent), and the connector's default buckets (2 … 15 000 ms).

Windows: tumbling, on span **end** time (``Timestamp + Duration``), ``window_s`` long. The
watermark is the largest end time seen, **but never past the batch's ingest time**, minus
``allowed_lateness_s``; a window closes when the watermark passes its end, and then its series
are added to the running (cumulative) totals and emitted with the window end as timestamp (so
no sample is written with a future timestamp). The ingest time is the schema metadata
``otelwax.ingest_time_ms`` (``flows.spanmetrics`` sets the Kafka timestamp of the range's first
record), capped by the processing clock, which stands in when it is absent. Spans are
rejected, counted (``dropped{reason=...}``) and, with ``late_policy: route``, returned on the
``late`` stream with the reason in the schema metadata ``otelwax.reason``:

    future    ends more than ``max_future_skew_s`` ahead of the processing clock
    too_old   ended more than ``max_age_s`` before its ingest time (off with ``max_age_s: null``)
    late      its window has already closed

A span ahead of the clock by less than the skew (a host with a fast clock) is counted in its
window, which stays open until the ingest time passes it; it neither moves the watermark nor
makes other spans late, also while a backlog is read. When no span arrives for
``idle_close_s`` (processing time), the windows the clock has passed close; when the input
ends, every open window closes.

Determinism: span metrics are at-least-once (bytewax replays the input from the last
snapshot). The watermark bound and ``too_old`` use Kafka timestamps, which a replay reads
again (up to where ranges are cut); only the ``future`` check uses the processing clock,
because a range carries only its first record's timestamp, a lower bound for the others. The
clock only grows, so a replay accepts every span the first run accepted and may accept a span
it rejected as ``future``. A restored snapshot is checked against the clock: a watermark or
closed mark ahead of it (written by a version without this bound, or on a host whose clock
was wrong) is forgotten, as at a first start, and open windows and series dated beyond the
skew are dropped (counted), so a bad snapshot recovers instead of making every span late.

Series state: a series (its cumulative totals) with no update for ``series_ttl_s`` of event
time (the watermark) is evicted (``dropped{unit="series",reason="evicted"}``), so memory is
bounded by the series active within the TTL. A series that comes back starts again from zero
with a new ``StartTimeUnix``: Prometheus sees a counter reset, which ``rate``/``increase``
handle (as the spanmetrics connector's ``metrics_expiration`` and Tempo's ``stale_duration``).

Cardinality: at most ``cardinality_limit`` series per window; the rest fold into one overflow
series with the single attribute ``otel.metric.overflow="true"`` (series already known from
earlier windows are kept first, then the busiest).

Aggregation is columnar: each batch is grouped once with ``pyarrow`` ``group_by`` by (window,
dimensions, bucket); Python touches only the groups, never single spans. The state (open
windows, totals, watermark, closed windows) is a bytewax ``stateful`` operator's snapshot, so
it survives recovery.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulLogic
from pydantic import Field, field_validator

from otelwax.metric_schemas import HISTOGRAM, HISTOGRAM_SCHEMA, SUM, SUM_SCHEMA
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

__all__ = [
    "DEFAULT_BUCKETS_MS",
    "INGEST_TIME_KEY",
    "REASON_KEY",
    "Dimension",
    "SpanMetricsAggregator",
    "SpanMetricsConfig",
    "SpanMetricsStreams",
    "span_metrics",
]

log = logging.getLogger(__name__)

DEFAULT_BUCKETS_MS = (
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0,
    1000.0, 1400.0, 2000.0, 5000.0, 10000.0, 15000.0,
)  # fmt: skip
OVERFLOW_ATTR = "otel.metric.overflow"
INGEST_TIME_KEY = b"otelwax.ingest_time_ms"
REASON_KEY = b"otelwax.reason"
_OVERFLOW_KEY = ("\x00overflow",)
_CUMULATIVE = 2


class Dimension(StrictModel):
    """An extra dimension: span attribute ``name``, else resource attribute, else ``default``."""

    name: str = Field(..., min_length=1)
    default: str | None = None


class SpanMetricsConfig(StrictModel):
    """Span metrics (RED) windows."""

    window_s: float = Field(10.0, gt=0, description="tumbling window length (event time)")
    allowed_lateness_s: float = Field(5.0, ge=0, description="how late a span may still count")
    idle_close_s: float = Field(
        30.0, gt=0, description="close all windows after this long without spans (wall clock)"
    )
    dimensions: list[Dimension] = Field(default_factory=list)
    buckets_ms: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS_MS))
    cardinality_limit: int = Field(1000, gt=0, description="series per window before overflow")
    namespace: str = Field("traces.span.metrics", min_length=1)
    max_future_skew_s: float = Field(
        300.0, gt=0, description="drop spans ending further ahead of the clock (reason future)"
    )
    max_age_s: float | None = Field(
        86_400.0, gt=0, description="drop spans ending longer ago (reason too_old); null: off"
    )
    series_ttl_s: float | None = Field(
        900.0, gt=0, description="evict series without update for this long (event time)"
    )
    late_policy: Literal["drop", "route"] = Field(
        "drop", description="rejected spans (late, future, too_old): drop, or route (late_topic)"
    )
    shards: int = Field(
        1, gt=0, description="state keys (by service name hash); >1 spreads load over workers"
    )

    @field_validator("buckets_ms")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if not v or any(b <= a for a, b in itertools.pairwise(v)) or v[0] <= 0:
            raise ValueError("must be a non-empty, strictly increasing list of positive numbers")
        return v


_FIXED = ("ServiceName", "SpanName", "SpanKind", "StatusCode")
_ATTR_NAMES = ("service.name", "span.name", "span.kind", "status.code")


class SpanMetricsAggregator:
    """The windowing state machine, independent of bytewax (the operator wraps it).

    ``add(batch)`` → (metric table dicts emitted by windows that closed, rejected row batches);
    ``advance()`` → tables of windows the clock has passed; ``close_all()`` → tables of every
    open window; ``snapshot()`` → picklable state. ``clock`` is the processing clock (ns).
    """

    def __init__(
        self,
        cfg: SpanMetricsConfig,
        state: dict[str, Any] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.window_ns = int(cfg.window_s * 1e9)
        self.lateness_ns = int(cfg.allowed_lateness_s * 1e9)
        self.skew_ns = int(cfg.max_future_skew_s * 1e9)
        self.max_age_ns = None if cfg.max_age_s is None else int(cfg.max_age_s * 1e9)
        self.ttl_ns = None if cfg.series_ttl_s is None else int(cfg.series_ttl_s * 1e9)
        self.bounds = np.asarray(cfg.buckets_ms, dtype=np.float64)
        self.nb = len(self.bounds) + 1
        self.metrics = ComponentMetrics("span_metrics", "spans")
        self.series_metrics = ComponentMetrics("span_metrics", "series")
        s = state or {}
        self.max_end: int | None = s.get("max_end")
        self.closed_upto: int | None = s.get("closed_upto")  # windows ending <= this are closed
        self.windows: dict[int, dict[tuple, list]] = s.get("windows", {})
        # key -> [start ns, calls, duration sum ms, bucket counts, end of the last window ns]
        self.cum: dict[tuple, list] = s.get("cum", {})
        self.late_total: int = s.get("late_total", 0)
        self._attr_cache: dict[tuple, tuple[list, list]] = {}
        if state:
            self._check_restored(self.clock())

    def _floor(self, t: int) -> int:
        return t - t % self.window_ns

    def _check_restored(self, now: int) -> None:
        """Forget a restored watermark or closed mark that is ahead of the clock (it cannot be
        legitimate: both stay behind the ingest time); drop windows and series dated beyond
        the skew. The next batch then sets them again, as at a first start."""
        bound = now + self.skew_ns
        bad_end = self.max_end is not None and self.max_end > bound
        bad_closed = self.closed_upto is not None and self.closed_upto > self._floor(now)
        if bad_end or bad_closed:
            log.warning(
                "span metrics: restored watermark %.0f s and closed mark %.0f s ahead of the "
                "clock; forgotten",
                ((self.max_end or now) - now) / 1e9,
                ((self.closed_upto or now) - now) / 1e9,
            )
            self.max_end = None if bad_end else self.max_end
            self.closed_upto = None if bad_closed else self.closed_upto
        future = [w for w in self.windows if w > bound]
        n = sum(agg[0] for w in future for agg in self.windows.pop(w).values())
        self.metrics.dropped(n, "future")
        for c in self.cum.values():
            if len(c) == 4:  # written before series had a last update: as if updated now
                c.append(min(self._floor(now), max(c[0], self.closed_upto or c[0])))
        reset = [k for k, c in self.cum.items() if max(c[0], c[4]) > bound]
        for k in reset:
            del self.cum[k]
        self.series_metrics.dropped(len(reset), "future")

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "max_end": self.max_end,
                "closed_upto": self.closed_upto,
                "windows": self.windows,
                "cum": self.cum,
                "late_total": self.late_total,
            }
        )

    @property
    def open_windows(self) -> int:
        return len(self.windows)

    # -- ingest --
    def _dimension(self, batch: pa.RecordBatch | pa.Table, d: Dimension) -> pa.Array:
        span = pc.map_lookup(batch.column("SpanAttributes"), pa.scalar(d.name), "first")
        res = pc.map_lookup(batch.column("ResourceAttributes"), pa.scalar(d.name), "first")
        parts = [span, res]
        if d.default is not None:
            parts.append(pa.scalar(d.default))
        return pc.coalesce(*parts)

    def add(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[list[dict[str, pa.RecordBatch]], list[pa.RecordBatch | pa.Table]]:
        """Aggregate one batch; returns the tables of windows it closed and its rejected rows
        (one batch per reason, only with ``late_policy: route``)."""
        with _no_gc():
            return self._add(batch)

    def _add(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[list[dict[str, pa.RecordBatch]], list[pa.RecordBatch | pa.Table]]:
        n = batch.num_rows
        if n == 0:
            return [], []
        self.metrics.received(n)
        now = self.clock()
        ref = min(now, _ingest_time_ns(batch) or now)
        start = batch.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        dur = batch.column("Duration").to_numpy(zero_copy_only=False).astype(np.int64)
        end = start + dur
        win = end - np.mod(end, self.window_ns)
        checks = [("future", end > now + self.skew_ns)]
        if self.max_age_ns is not None:
            checks.append(("too_old", end < ref - self.max_age_ns))
        if self.closed_upto is not None:
            checks.append(("late", (win + self.window_ns) <= self.closed_upto))
        keep = np.ones(n, dtype=bool)
        rejected = []
        for reason, mask in checks:
            mask &= keep
            k = int(mask.sum())
            if not k:
                continue
            keep &= ~mask
            self.metrics.dropped(k, reason)
            if reason == "late":
                self.late_total += k
            if self.cfg.late_policy == "route":
                rows = batch.filter(pa.array(mask))
                meta = {**(rows.schema.metadata or {}), REASON_KEY: reason.encode()}
                rejected.append(rows.replace_schema_metadata(meta))
        if not keep.all():
            batch = batch.filter(pa.array(keep))
            end, win, dur = end[keep], win[keep], dur[keep]
        if batch.num_rows:
            self._aggregate(batch, win, dur)
            m = int(end.max())
            self.max_end = m if self.max_end is None else max(self.max_end, m)
        out = []
        if self.max_end is not None:
            # A span ahead of its ingest time (within the skew) does not move the watermark.
            out = self._close_until(min(self.max_end, ref) - self.lateness_ns)
        return out, rejected

    def _aggregate(self, batch: pa.RecordBatch | pa.Table, win: np.ndarray, dur: np.ndarray):
        dur_ms = dur / 1e6
        bucket = np.searchsorted(self.bounds, dur_ms, side="left")
        cols: dict[str, Any] = {"w": win}
        names = ["w"]
        for i, c in enumerate(_FIXED):
            cols[f"k{i}"] = batch.column(c)
            names.append(f"k{i}")
        for j, d in enumerate(self.cfg.dimensions):
            cols[f"d{j}"] = self._dimension(batch, d)
            names.append(f"d{j}")
        cols["b"] = bucket
        cols["dur"] = dur_ms
        t = pa.table(cols)
        g = t.group_by([*names, "b"], use_threads=False).aggregate(
            [("dur", "sum"), ("dur", "count")]
        )
        keys = [g.column(nm).to_pylist() for nm in names[1:]]
        ws = g.column("w").to_pylist()
        bs = g.column("b").to_pylist()
        sums = g.column("dur_sum").to_pylist()
        counts = g.column("dur_count").to_pylist()
        nb = self.nb
        for i in range(g.num_rows):
            key = tuple(k[i] for k in keys)
            series = self.windows.setdefault(ws[i], {})
            agg = series.get(key)
            if agg is None:
                agg = series[key] = [0, 0.0, [0] * nb]
            agg[0] += counts[i]
            agg[1] += sums[i]
            agg[2][bs[i]] += counts[i]

    # -- closing --
    def _close_until(self, watermark: int) -> list[dict[str, pa.RecordBatch]]:
        ready = sorted(w for w in self.windows if w + self.window_ns <= watermark)
        out = [self._close(w) for w in ready]
        if self.closed_upto is None or watermark > self.closed_upto:
            self.closed_upto = self._floor(watermark)
        if ready:
            self._evict()
        return out

    def advance(self) -> list[dict[str, pa.RecordBatch]]:
        """Close the windows the clock has passed (idle input: the watermark follows the clock)."""
        with _no_gc():
            return self._close_until(self.clock() - self.lateness_ns)

    def next_due_ns(self) -> int | None:
        """When the clock will have passed the oldest open window (None: nothing open)."""
        return min(self.windows) + self.window_ns + self.lateness_ns if self.windows else None

    def close_all(self) -> list[dict[str, pa.RecordBatch]]:
        """Close every open window (end of input), including windows still ahead of the clock;
        the closed mark stays behind the clock so that on-time spans never become late."""
        ready = sorted(self.windows)
        with _no_gc():
            out = [self._close(w) for w in ready]
        if ready:
            last_end = min(ready[-1] + self.window_ns, self._floor(self.clock()))
            self.closed_upto = max(self.closed_upto or last_end, last_end)
            self._evict()
        return out

    def _evict(self) -> None:
        """Forget series whose last window ended more than ``series_ttl_s`` before the
        closed mark; a series that comes back restarts (new start time, from zero)."""
        if self.ttl_ns is None or self.closed_upto is None:
            return
        cutoff = self.closed_upto - self.ttl_ns
        stale = [k for k, c in self.cum.items() if c[4] < cutoff]
        for k in stale:
            del self.cum[k]
        self.series_metrics.dropped(len(stale), "evicted")

    def _close(self, w: int) -> dict[str, pa.RecordBatch]:
        series = self.windows.pop(w)
        limit = self.cfg.cardinality_limit
        if len(series) > limit:
            ranked = sorted(series.items(), key=lambda kv: (kv[0] not in self.cum, -kv[1][0]))
            kept = dict(ranked[:limit])
            over = [0, 0.0, [0] * self.nb]
            for _, agg in ranked[limit:]:
                over[0] += agg[0]
                over[1] += agg[1]
                over[2] = [a + b for a, b in zip(over[2], agg[2], strict=True)]
            self.metrics.dropped(len(ranked) - limit, "cardinality_overflow_series")
            kept[_OVERFLOW_KEY] = over
            series = kept
        end = w + self.window_ns
        rows = []
        for key, agg in series.items():
            c = self.cum.get(key)
            if c is None:
                c = self.cum[key] = [w, 0, 0.0, [0] * self.nb, end]
            c[1] += agg[0]
            c[2] += agg[1]
            c[3] = [a + b for a, b in zip(c[3], agg[2], strict=True)]
            c[4] = end
            rows.append((key, c))
        self.metrics.sent(sum(a[0] for a in series.values()))
        return self._tables(rows, end)

    def _attrs(self, key: tuple) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        hit = self._attr_cache.get(key)
        if hit is None:
            if len(self._attr_cache) > 100_000:
                self._attr_cache.clear()
            hit = self._attr_cache[key] = self._make_attrs(key)
        return hit

    def _make_attrs(self, key: tuple) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        if key == _OVERFLOW_KEY:
            return [], [(OVERFLOW_ATTR, "true")]
        attrs = list(zip(_ATTR_NAMES, key[:4], strict=True))
        for d, v in zip(self.cfg.dimensions, key[4:], strict=True):
            if v is not None:
                attrs.append((d.name, v))
        return [("service.name", key[0])], attrs

    def _tables(self, rows: list[tuple[tuple, list]], end_ns: int) -> dict[str, pa.RecordBatch]:
        n = len(rows)
        res, attrs = zip(*(self._attrs(k) for k, _ in rows), strict=True) if n else ((), ())
        svc = [r[0][1] if r else "" for r in res]
        common = {
            "ResourceAttributes": pa.array(list(res), SUM_SCHEMA.field("ResourceAttributes").type),
            "ServiceName": pa.array(svc, pa.string()),
            "ScopeName": pa.array(["spanmetricsconnector"] * n, pa.string()),
            "Attributes": pa.array(list(attrs), SUM_SCHEMA.field("Attributes").type),
            "StartTimeUnix": pa.array([c[0] for _, c in rows], pa.int64()).cast(pa.timestamp("ns")),
            "TimeUnix": pa.array([end_ns] * n, pa.int64()).cast(pa.timestamp("ns")),
            "AggregationTemporality": pa.array([_CUMULATIVE] * n, pa.int32()),
        }
        calls = dict(common)
        calls["MetricName"] = pa.array([f"{self.cfg.namespace}.calls"] * n, pa.string())
        calls["Value"] = pa.array([float(c[1]) for _, c in rows], pa.float64())
        calls["IsMonotonic"] = pa.array([True] * n, pa.bool_())
        hist = dict(common)
        hist["MetricName"] = pa.array([f"{self.cfg.namespace}.duration"] * n, pa.string())
        hist["MetricUnit"] = pa.array(["ms"] * n, pa.string())
        hist["Count"] = pa.array([c[1] for _, c in rows], pa.uint64())
        hist["Sum"] = pa.array([c[2] for _, c in rows], pa.float64())
        hist["BucketCounts"] = pa.array([list(c[3]) for _, c in rows], pa.list_(pa.uint64()))
        hist["ExplicitBounds"] = pa.array([list(self.cfg.buckets_ms)] * n, pa.list_(pa.float64()))
        return {SUM: _fill(SUM_SCHEMA, calls, n), HISTOGRAM: _fill(HISTOGRAM_SCHEMA, hist, n)}


def _ingest_time_ns(batch: pa.RecordBatch | pa.Table) -> int | None:
    raw = (batch.schema.metadata or {}).get(INGEST_TIME_KEY)
    ms = int(raw) if raw else 0
    return ms * 1_000_000 if ms > 0 else None


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC: many short-lived tuples over large state would trigger full passes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fill(schema: pa.Schema, cols: dict[str, pa.Array], n: int) -> pa.RecordBatch:
    """A batch of ``schema`` from the given columns; the others get empty/zero values."""
    arrays = []
    for f in schema:
        a = cols.get(f.name)
        if a is None:
            t = f.type
            if pa.types.is_string(t):
                a = pa.array([""] * n, t)
            elif pa.types.is_map(t) or pa.types.is_list(t):
                a = pa.array([[]] * n, t)
            elif pa.types.is_timestamp(t):
                a = pa.array([0] * n, pa.int64()).cast(t)
            elif pa.types.is_boolean(t):
                a = pa.array([False] * n, t)
            else:
                a = pa.array([0] * n, t)
        arrays.append(a)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- bytewax operator -------------------------------------------------------------------------


class _WindowLogic(StatefulLogic[Any, tuple[str, Any], dict[str, Any]]):
    def __init__(self, cfg: SpanMetricsConfig, resume: dict[str, Any] | None) -> None:
        self.agg = SpanMetricsAggregator(cfg, resume)
        self.idle = timedelta(seconds=cfg.idle_close_s)
        self.last_arrival = datetime.now(UTC)

    @staticmethod
    def _emit(
        tables: Iterable[dict[str, pa.RecordBatch]], rejected: Iterable[Any] = ()
    ) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("metrics", t) for t in tables]
        out += [("late", rows) for rows in rejected if rows.num_rows]
        return out

    def on_item(self, value: Any) -> tuple[Iterable[tuple[str, Any]], bool]:
        self.last_arrival = datetime.now(UTC)
        tables, rejected = self.agg.add(value)
        return self._emit(tables, rejected), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        tables = self.agg.advance()
        log.info("span metrics: idle for %s, closed %d windows", self.idle, len(tables))
        return self._emit(tables), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return self._emit(self.agg.close_all()), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.agg.next_due_ns()
        if due is None:
            return None
        # idle, and (for a window ahead of the clock) not before the clock has passed it
        return max(self.last_arrival + self.idle, datetime.fromtimestamp(due / 1e9, UTC))

    def snapshot(self) -> dict[str, Any]:
        return self.agg.snapshot()


def _shard_batches(batch: pa.RecordBatch | pa.Table, shards: int) -> list[tuple[str, Any]]:
    """(shard key, rows) pairs; a service always lands in the same shard (crc32 of its name)."""
    if shards == 1:
        return [("0", batch)]
    enc = pc.dictionary_encode(batch.column("ServiceName"))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    per_value = np.array(
        [zlib.crc32(v.encode()) % shards for v in enc.dictionary.to_pylist()], dtype=np.int64
    )
    idx = per_value[enc.indices.to_numpy(zero_copy_only=False)]
    return [(str(s), batch.filter(pa.array(idx == s))) for s in np.unique(idx)]


@dataclass(frozen=True)
class SpanMetricsStreams:
    """Outputs of :func:`span_metrics`."""

    metrics: Stream[dict[str, pa.RecordBatch]]
    """Cumulative ``otel_metrics_sum``/``otel_metrics_histogram`` tables per closed window."""
    late: Stream[pa.RecordBatch]
    """Rejected span rows, one batch per reason (``late``, ``future``, ``too_old``) in the
    schema metadata key ``otelwax.reason`` (only with ``late_policy: route``)."""


@operator
def span_metrics(
    step_id: str, up: Stream[pa.RecordBatch], cfg: SpanMetricsConfig
) -> SpanMetricsStreams:
    """Span batches → span-metric tables per closed event-time window (+ rejected rows)."""
    keyed = op.flat_map("shard", up, lambda b: _shard_batches(b, cfg.shards))
    tagged = op.stateful("window", keyed, lambda resume: _WindowLogic(cfg, resume))
    values = op.map("unkey", tagged, lambda kv: kv[1])
    b = op.branch("split", values, lambda tv: tv[0] == "metrics")
    metrics = op.map("metrics", b.trues, lambda tv: tv[1])
    late = op.map("late", b.falses, lambda tv: tv[1])
    return SpanMetricsStreams(metrics, late)
