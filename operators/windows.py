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
watermark is the largest end time seen minus ``allowed_lateness_s``; a window closes when the
watermark passes its end, and then its series are added to the running (cumulative) totals and
emitted with the window end as timestamp. A span whose window has already closed is late: it is
counted (``dropped{reason="late"}``) and dropped, or returned on the ``late`` stream when
``late_policy: route``. When no span arrives for ``idle_close_s`` (processing time), or the input
ends, every open window closes.

Cardinality: at most ``cardinality_limit`` series per window; the rest fold into one overflow
series with the single attribute ``otel.metric.overflow="true"`` (series already known from
earlier windows are kept first, then the busiest).

Aggregation is columnar: each batch is grouped once with ``pyarrow`` ``group_by`` by (window,
dimensions, bucket); Python touches only the groups, never single spans. The state (open
windows, totals, watermark) is a bytewax ``stateful`` operator's snapshot, so it survives
recovery.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import zlib
from collections.abc import Iterable, Iterator
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
    late_policy: Literal["drop", "route"] = "drop"
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

    ``add(batch)`` → (metric table dicts emitted by windows that closed, late rows or None);
    ``close_all()`` → tables of every open window; ``snapshot()`` → picklable state.
    """

    def __init__(self, cfg: SpanMetricsConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.window_ns = int(cfg.window_s * 1e9)
        self.lateness_ns = int(cfg.allowed_lateness_s * 1e9)
        self.bounds = np.asarray(cfg.buckets_ms, dtype=np.float64)
        self.nb = len(self.bounds) + 1
        self.metrics = ComponentMetrics("span_metrics", "spans")
        s = state or {}
        self.max_end: int | None = s.get("max_end")
        self.closed_upto: int | None = s.get("closed_upto")  # windows ending <= this are closed
        self.windows: dict[int, dict[tuple, list]] = s.get("windows", {})
        self.cum: dict[tuple, list] = s.get("cum", {})
        self.late_total: int = s.get("late_total", 0)
        self._attr_cache: dict[tuple, tuple[list, list]] = {}

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
    ) -> tuple[list[dict[str, pa.RecordBatch]], pa.RecordBatch | pa.Table | None]:
        """Aggregate one batch; returns the tables of windows it closed and its late rows."""
        with _no_gc():
            return self._add(batch)

    def _add(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[list[dict[str, pa.RecordBatch]], pa.RecordBatch | pa.Table | None]:
        n = batch.num_rows
        if n == 0:
            return [], None
        self.metrics.received(n)
        start = batch.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        dur = batch.column("Duration").to_numpy(zero_copy_only=False).astype(np.int64)
        end = start + dur
        win = end - np.mod(end, self.window_ns)
        late_rows = None
        if self.closed_upto is not None:
            late = (win + self.window_ns) <= self.closed_upto
            n_late = int(late.sum())
            if n_late:
                self.late_total += n_late
                self.metrics.dropped(n_late, "late")
                if self.cfg.late_policy == "route":
                    late_rows = batch.filter(pa.array(late))
                keep = ~late
                batch = batch.filter(pa.array(keep))
                end, win, dur = end[keep], win[keep], dur[keep]
        if batch.num_rows:
            self._aggregate(batch, win, dur)
            m = int(end.max())
            self.max_end = m if self.max_end is None else max(self.max_end, m)
        out = []
        if self.max_end is not None:
            out = self._close_until(self.max_end - self.lateness_ns)
        return out, late_rows

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
            self.closed_upto = watermark - np.mod(watermark, self.window_ns)
        return out

    def close_all(self) -> list[dict[str, pa.RecordBatch]]:
        """Close every open window (end of input, or idle)."""
        ready = sorted(self.windows)
        with _no_gc():
            out = [self._close(w) for w in ready]
        if ready:
            last_end = ready[-1] + self.window_ns
            self.closed_upto = max(self.closed_upto or last_end, last_end)
        return out

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
                c = self.cum[key] = [w, 0, 0.0, [0] * self.nb]
            c[1] += agg[0]
            c[2] += agg[1]
            c[3] = [a + b for a, b in zip(c[3], agg[2], strict=True)]
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
    def _emit(tables: Iterable[dict[str, pa.RecordBatch]], late: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("metrics", t) for t in tables]
        if late is not None and late.num_rows:
            out.append(("late", late))
        return out

    def on_item(self, value: Any) -> tuple[Iterable[tuple[str, Any]], bool]:
        self.last_arrival = datetime.now(UTC)
        tables, late = self.agg.add(value)
        return self._emit(tables, late), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        log.info("span metrics: idle for %s, closing %d windows", self.idle, self.agg.open_windows)
        return self._emit(self.agg.close_all(), None), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return self._emit(self.agg.close_all(), None), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.last_arrival + self.idle if self.agg.open_windows else None

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
    """Late span rows (only with ``late_policy: route``)."""


@operator
def span_metrics(
    step_id: str, up: Stream[pa.RecordBatch], cfg: SpanMetricsConfig
) -> SpanMetricsStreams:
    """Span batches → span-metric tables per closed event-time window (+ late rows)."""
    keyed = op.flat_map("shard", up, lambda b: _shard_batches(b, cfg.shards))
    tagged = op.stateful("window", keyed, lambda resume: _WindowLogic(cfg, resume))
    values = op.map("unkey", tagged, lambda kv: kv[1])
    b = op.branch("split", values, lambda tv: tv[0] == "metrics")
    metrics = op.map("metrics", b.trues, lambda tv: tv[1])
    late = op.map("late", b.falses, lambda tv: tv[1])
    return SpanMetricsStreams(metrics, late)
