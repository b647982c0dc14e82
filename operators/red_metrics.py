"""Span RED metrics in event-time windows (``operators.windows``) on Arrow batches.

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

A span's event time is its **end** (``Timestamp + Duration``); windows, the watermark bounded
by the ingest time, rejected spans (``future``, ``too_old``, ``late``), series eviction, the
cardinality limit and the snapshot are ``operators.windows``'. Aggregation is columnar: each
batch is grouped once with ``pyarrow`` ``group_by`` by (window, dimensions, bucket); Python
touches only the groups, never single spans.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.dataflow import Stream, operator
from pydantic import Field, field_validator

from operators.windows import (
    Aggregate,
    Attrs,
    EventTimeWindows,
    WindowConfig,
    WindowStreams,
    fill,
    windowed,
)
from otelwax.metric_schemas import HISTOGRAM, HISTOGRAM_SCHEMA, SUM, SUM_SCHEMA

__all__ = [
    "DEFAULT_BUCKETS_MS",
    "SpanMetricsAggregator",
    "SpanMetricsConfig",
    "span_metrics",
]

DEFAULT_BUCKETS_MS = (
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0,
    1000.0, 1400.0, 2000.0, 5000.0, 10000.0, 15000.0,
)  # fmt: skip


class SpanMetricsConfig(WindowConfig):
    """Span metrics (RED) windows."""

    buckets_ms: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS_MS))
    namespace: str = Field("traces.span.metrics", min_length=1)

    @field_validator("buckets_ms")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if not v or any(b <= a for a, b in itertools.pairwise(v)) or v[0] <= 0:
            raise ValueError("must be a non-empty, strictly increasing list of positive numbers")
        return v


_FIXED = ("ServiceName", "SpanName", "SpanKind", "StatusCode")
_ATTR_NAMES = ("service.name", "span.name", "span.kind", "status.code")


class SpanMetricsAggregator(EventTimeWindows):
    """Calls and a duration histogram per (service, span name, kind, status, dimensions).

    An aggregate is ``[calls, duration sum ms, bucket counts]``.
    """

    component: str = "span_metrics"
    unit: str = "spans"
    attributes_column: str = "SpanAttributes"
    cfg: SpanMetricsConfig

    def __init__(self, cfg: SpanMetricsConfig, *args: Any, **kwargs: Any) -> None:
        self.bounds = np.asarray(cfg.buckets_ms, dtype=np.float64)
        self.nb = len(self.bounds) + 1
        super().__init__(cfg, *args, **kwargs)

    def zero(self) -> Aggregate:
        return [0, 0.0, [0] * self.nb]

    def event_times(self, batch: pa.RecordBatch | pa.Table, ref: int) -> np.ndarray:
        start = batch.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        return start + batch.column("Duration").to_numpy(zero_copy_only=False).astype(np.int64)

    def aggregate(self, batch: pa.RecordBatch | pa.Table, win: np.ndarray) -> None:
        dur_ms = batch.column("Duration").to_numpy(zero_copy_only=False).astype(np.int64) / 1e6
        cols: dict[str, Any] = {"w": win}
        names = ["w"]
        for i, c in enumerate(_FIXED):
            cols[f"k{i}"] = batch.column(c)
            names.append(f"k{i}")
        for j, d in enumerate(self.cfg.dimensions):
            cols[f"d{j}"] = self.dimension(batch, d)
            names.append(f"d{j}")
        cols["b"] = np.searchsorted(self.bounds, dur_ms, side="left")
        cols["dur"] = dur_ms
        g = (
            pa.table(cols)
            .group_by([*names, "b"], use_threads=False)
            .aggregate([("dur", "sum"), ("dur", "count")])
        )
        keys = [g.column(nm).to_pylist() for nm in names[1:]]
        ws = g.column("w").to_pylist()
        bs = g.column("b").to_pylist()
        sums = g.column("dur_sum").to_pylist()
        counts = g.column("dur_count").to_pylist()
        for i in range(g.num_rows):
            agg = self.slot(ws[i], tuple(k[i] for k in keys))
            agg[0] += counts[i]
            agg[1] += sums[i]
            agg[2][bs[i]] += counts[i]

    def series_attrs(self, key: tuple) -> tuple[Attrs, Attrs]:
        attrs = list(zip(_ATTR_NAMES, key[:4], strict=True))
        return [("service.name", key[0])], attrs + self.dimension_attrs(key[4:])

    def tables(self, rows: list[tuple[tuple, list]], end_ns: int) -> dict[str, pa.RecordBatch]:
        n = len(rows)
        common = self.common_columns(rows, end_ns, "spanmetricsconnector")
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
        return {SUM: fill(SUM_SCHEMA, calls, n), HISTOGRAM: fill(HISTOGRAM_SCHEMA, hist, n)}


@operator
def span_metrics(
    step_id: str, up: Stream[pa.RecordBatch], cfg: SpanMetricsConfig
) -> WindowStreams:
    """Span batches → span-metric tables per closed event-time window (+ rejected rows)."""
    return windowed(up, cfg, lambda resume: SpanMetricsAggregator(cfg, resume))
