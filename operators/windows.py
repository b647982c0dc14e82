"""Event-time tumbling windows that count records into cumulative metric series.

The machinery shared by span RED metrics (``operators.red_metrics``) and log counts
(``operators.log_counts``): a subclass of :class:`EventTimeWindows` says when a record happened
(``event_times``), how a window's rows fold into per-series aggregates (``aggregate``) and how
series become metric tables (``tables``); everything about time lives here.

Windows: tumbling, ``window_s`` long, on the subclass's event time. The watermark is the
largest event time seen, **but never past the batch's ingest time**, per Kafka partition, and
then the slowest of the partitions still being read (``operators.watermark``), minus
``allowed_lateness_s``; a window closes when the watermark passes its end, and then its series
are added to the running (cumulative) totals and emitted with the window end as timestamp (so
no sample is written with a future timestamp). The ingest time is the schema metadata
``otelwax.ingest_time_ms`` (the flows set the Kafka timestamp of the range's first record),
capped by the processing clock, which stands in when it is absent. Records are rejected,
counted (``dropped{reason=...}``) and, with ``late_policy: route``, returned on the ``late``
stream with the reason in the schema metadata ``otelwax.reason``:

    future    more than ``max_future_skew_s`` ahead of the processing clock
    too_old   more than ``max_age_s`` before its ingest time (off with ``max_age_s: null``)
    late      its window has already closed

A record ahead of the clock by less than the skew (a host with a fast clock) is counted in its
window, which stays open until the ingest time passes it; it neither moves the watermark nor
makes other records late, also while a backlog is read. When nothing arrives for
``idle_close_s`` (processing time), the windows the clock has passed close, but not past a
partition that still has records to read (until it stalls); when the input ends, every open
window closes.

Determinism: window metrics are at-least-once (bytewax replays the input from the last
snapshot). The watermark bound and ``too_old`` use Kafka timestamps, which a replay reads
again (up to where ranges are cut); only the ``future`` check uses the processing clock,
because a range carries only its first record's timestamp, a lower bound for the others. The
clock only grows, so a replay accepts every record the first run accepted and may accept one
it rejected as ``future``. A restored snapshot is checked against the clock: a watermark or
closed mark ahead of it (written on a host whose clock was wrong) is forgotten, as at a first
start, and open windows and series dated beyond the skew are dropped (counted), so a bad
snapshot recovers instead of making every record late.

Series state: a series (its cumulative totals) with no update for ``series_ttl_s`` of event
time (the closed mark) is evicted (``dropped{unit="series",reason="evicted"}``), so memory is
bounded by the series active within the TTL. A series that comes back starts again from zero
with a new ``StartTimeUnix``: Prometheus sees a counter reset, which ``rate``/``increase``
handle (as the spanmetrics connector's ``metrics_expiration`` and Tempo's ``stale_duration``).

Cardinality: at most ``cardinality_limit`` series per window; the rest fold into one overflow
series with the single attribute ``otel.metric.overflow="true"`` (series already known from
earlier windows are kept first, then the busiest).

Aggregates are lists whose first item is the record count; the other items are numbers or
lists of numbers, added item by item. The cumulative entry of a series is
``[start ns, *aggregate, end of its last window ns]``. The state (open windows, totals,
watermark, closed mark) is a bytewax ``stateful`` operator's snapshot, so it survives recovery.
"""

from __future__ import annotations

import contextlib
import copy
import gc
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
from bytewax.dataflow import Stream
from bytewax.operators import StatefulLogic
from pydantic import Field

from operators.watermark import INGEST_TIME_KEY, PartitionClocks
from otelwax.metric_schemas import SUM_SCHEMA
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

__all__ = [
    "INGEST_TIME_KEY",
    "OVERFLOW_ATTR",
    "REASON_KEY",
    "Aggregate",
    "Attrs",
    "Dimension",
    "EventTimeWindows",
    "WindowConfig",
    "WindowLogic",
    "WindowStreams",
    "fill",
    "windowed",
]

log = logging.getLogger(__name__)

OVERFLOW_ATTR = "otel.metric.overflow"
REASON_KEY = b"otelwax.reason"
OVERFLOW_KEY = ("\x00overflow",)
CUMULATIVE = 2

Attrs = list[tuple[str, str]]
Aggregate = list[Any]


class Dimension(StrictModel):
    """An extra dimension: record attribute ``name``, else resource attribute, else
    ``default``, else absent."""

    name: str = Field(..., min_length=1)
    default: str | None = None


class WindowConfig(StrictModel):
    """Event-time windows: length, lateness, the watermark's bounds, series limits."""

    window_s: float = Field(10.0, gt=0, description="tumbling window length (event time)")
    allowed_lateness_s: float = Field(5.0, ge=0, description="how late a record may still count")
    idle_close_s: float = Field(
        30.0, gt=0, description="close all windows after this long without input (wall clock)"
    )
    partition_stall_s: float = Field(
        120.0,
        gt=0,
        description="a partition with records left that delivers none for this long stops "
        "holding windows open (wall clock)",
    )
    dimensions: list[Dimension] = Field(default_factory=list)
    cardinality_limit: int = Field(1000, gt=0, description="series per window before overflow")
    max_future_skew_s: float = Field(
        300.0, gt=0, description="drop records further ahead of the clock (reason future)"
    )
    max_age_s: float | None = Field(
        86_400.0, gt=0, description="drop records older than this at ingest (too_old); null: off"
    )
    series_ttl_s: float | None = Field(
        900.0, gt=0, description="evict series without update for this long (event time)"
    )
    late_policy: Literal["drop", "route"] = Field(
        "drop", description="rejected records (late, future, too_old): drop, or route (late_topic)"
    )
    shards: int = Field(
        1, gt=0, description="state keys (by service name hash); >1 spreads load over workers"
    )


class EventTimeWindows:
    """The windowing state machine, independent of bytewax (:class:`WindowLogic` wraps it).

    ``add(batch)`` → (metric table dicts emitted by windows that closed, rejected row batches);
    ``advance()`` → tables of windows the clock has passed; ``close_all()`` → tables of every
    open window; ``snapshot()`` → picklable state. ``clock`` is the processing clock (ns).
    Subclasses set ``component``/``unit``/``attributes_column`` and implement
    ``event_times``, ``aggregate``, ``zero``, ``series_attrs`` and ``tables``.
    """

    component: str = "windows"
    unit: str = "records"
    attributes_column: str = "LogAttributes"
    """The record's own attribute map, looked up before the resource's for a dimension."""

    def __init__(
        self,
        cfg: WindowConfig,
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
        self.metrics = ComponentMetrics(self.component, self.unit)
        self.series_metrics = ComponentMetrics(self.component, "series")
        s = state or {}
        self.max_end: int | None = s.get("max_end")
        self.closed_upto: int | None = s.get("closed_upto")  # windows ending <= this are closed
        self.windows: dict[int, dict[tuple, Aggregate]] = s.get("windows", {})
        self.cum: dict[tuple, list] = s.get("cum", {})  # key -> [start, *aggregate, last end]
        self.late_total: int = s.get("late_total", 0)
        self.clocks = PartitionClocks(cfg.partition_stall_s, s.get("parts"))
        self._attr_cache: dict[tuple, tuple[Attrs, Attrs]] = {}
        if state:
            self._check_restored(self.clock())

    # -- what a subclass defines --
    def event_times(self, batch: pa.RecordBatch | pa.Table, ref: int) -> np.ndarray:
        """Each row's event time (ns, int64); ``ref`` is the batch's ingest time."""
        raise NotImplementedError

    def aggregate(self, batch: pa.RecordBatch | pa.Table, win: np.ndarray) -> None:
        """Fold the accepted rows into ``self.slot(window start, series key)``."""
        raise NotImplementedError

    def zero(self) -> Aggregate:
        """An empty aggregate: ``[count, ...]``."""
        raise NotImplementedError

    def series_attrs(self, key: tuple) -> tuple[Attrs, Attrs]:
        """(resource attributes, attributes) of a series key (not the overflow key)."""
        raise NotImplementedError

    def tables(self, rows: list[tuple[tuple, list]], end_ns: int) -> dict[str, pa.RecordBatch]:
        """Metric tables of ``rows`` (series key, cumulative entry) at ``end_ns``."""
        raise NotImplementedError

    # -- helpers for subclasses --
    def slot(self, w: int, key: tuple) -> Aggregate:
        series = self.windows.setdefault(w, {})
        agg = series.get(key)
        if agg is None:
            agg = series[key] = self.zero()
        return agg

    def dimension(self, batch: pa.RecordBatch | pa.Table, d: Dimension) -> pa.Array:
        own = pc.map_lookup(batch.column(self.attributes_column), pa.scalar(d.name), "first")
        res = pc.map_lookup(batch.column("ResourceAttributes"), pa.scalar(d.name), "first")
        parts = [own, res]
        if d.default is not None:
            parts.append(pa.scalar(d.default))
        return pc.coalesce(*parts)

    def dimension_attrs(self, values: Iterable[str | None]) -> Attrs:
        """The configured dimensions' (name, value) pairs of a key, absent ones left out."""
        return [
            (d.name, v) for d, v in zip(self.cfg.dimensions, values, strict=True) if v is not None
        ]

    def common_columns(
        self, rows: list[tuple[tuple, list]], end_ns: int, scope: str
    ) -> dict[str, pa.Array]:
        """The columns every metric table of ``rows`` shares (attributes, times, temporality)."""
        n = len(rows)
        res, attrs = zip(*(self._attrs(k) for k, _ in rows), strict=True) if n else ((), ())
        svc = [r[0][1] if r else "" for r in res]
        return {
            "ResourceAttributes": pa.array(list(res), SUM_SCHEMA.field("ResourceAttributes").type),
            "ServiceName": pa.array(svc, pa.string()),
            "ScopeName": pa.array([scope] * n, pa.string()),
            "Attributes": pa.array(list(attrs), SUM_SCHEMA.field("Attributes").type),
            "StartTimeUnix": pa.array([c[0] for _, c in rows], pa.int64()).cast(pa.timestamp("ns")),
            "TimeUnix": pa.array([end_ns] * n, pa.int64()).cast(pa.timestamp("ns")),
            "AggregationTemporality": pa.array([CUMULATIVE] * n, pa.int32()),
        }

    # -- state --
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
                "%s: restored watermark %.0f s and closed mark %.0f s ahead of the clock; "
                "forgotten",
                self.component,
                ((self.max_end or now) - now) / 1e9,
                ((self.closed_upto or now) - now) / 1e9,
            )
            self.max_end = None if bad_end else self.max_end
            self.closed_upto = None if bad_closed else self.closed_upto
        self.clocks.check_restored(now, bound)
        future = [w for w in self.windows if w > bound]
        n = sum(agg[0] for w in future for agg in self.windows.pop(w).values())
        self.metrics.dropped(n, "future")
        width = len(self.zero()) + 1
        for c in self.cum.values():
            if len(c) == width:  # written before series had a last update: as if updated now
                c.append(min(self._floor(now), max(c[0], self.closed_upto or c[0])))
        reset = [k for k, c in self.cum.items() if max(c[0], c[-1]) > bound]
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
                "parts": self.clocks.snapshot(),
            }
        )

    @property
    def open_windows(self) -> int:
        return len(self.windows)

    # -- ingest --
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
        now = self.clock()
        ref = min(now, _ingest_time_ns(batch) or now)
        if n == 0:  # a range with no decodable record still says where its partition is
            self.clocks.update(batch, ref, None)
            return [], []
        self.metrics.received(n)
        end = self.event_times(batch, ref)
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
            end, win = end[keep], win[keep]
        m = None
        if batch.num_rows:
            self.aggregate(batch, win)
            m = int(end.max())
            self.max_end = m if self.max_end is None else max(self.max_end, m)
        self.clocks.update(batch, ref, m)
        source = self.clocks.source_clock()
        out = [] if source is None else self._close_until(source - self.lateness_ns)
        return out, rejected

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
        """Close the windows the clock has passed (idle input: the watermark follows the clock),
        not past a partition with records left to read (a stalled source is not idle)."""
        bound = self.clocks.idle_bound(self.clock())
        if bound is None:
            return []
        with _no_gc():
            return self._close_until(bound - self.lateness_ns)

    def next_due_ns(self) -> int | None:
        """When the clock will have passed the oldest open window (None: nothing open), and,
        while a partition with records left holds the watermark, it will have stalled."""
        if not self.windows:
            return None
        due = min(self.windows) + self.window_ns + self.lateness_ns
        stall = self.clocks.stall_in_ns()
        return due if stall is None else max(due, self.clock() + stall)

    def close_all(self) -> list[dict[str, pa.RecordBatch]]:
        """Close every open window (end of input), including windows still ahead of the clock;
        the closed mark stays behind the clock so that on-time records never become late."""
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
        stale = [k for k, c in self.cum.items() if c[-1] < cutoff]
        for k in stale:
            del self.cum[k]
        self.series_metrics.dropped(len(stale), "evicted")

    def _close(self, w: int) -> dict[str, pa.RecordBatch]:
        series = self.windows.pop(w)
        limit = self.cfg.cardinality_limit
        if len(series) > limit:
            ranked = sorted(series.items(), key=lambda kv: (kv[0] not in self.cum, -kv[1][0]))
            kept = dict(ranked[:limit])
            over = self.zero()
            for _, agg in ranked[limit:]:
                _add_into(over, agg)
            self.metrics.dropped(len(ranked) - limit, "cardinality_overflow_series")
            kept[OVERFLOW_KEY] = over
            series = kept
        end = w + self.window_ns
        rows = []
        for key, agg in series.items():
            c = self.cum.get(key)
            if c is None:
                c = self.cum[key] = [w, *self.zero(), end]
            _add_into(c, agg, 1)
            c[-1] = end
            rows.append((key, c))
        self.metrics.sent(sum(a[0] for a in series.values()))
        return self.tables(rows, end)

    def _attrs(self, key: tuple) -> tuple[Attrs, Attrs]:
        hit = self._attr_cache.get(key)
        if hit is None:
            if len(self._attr_cache) > 100_000:
                self._attr_cache.clear()
            if key == OVERFLOW_KEY:
                hit = ([], [(OVERFLOW_ATTR, "true")])
            else:
                hit = self.series_attrs(key)
            self._attr_cache[key] = hit
        return hit


def _add_into(dst: list, src: Aggregate, at: int = 0) -> None:
    """``dst[at:at+len(src)] += src`` item by item (lists element-wise)."""
    for i, v in enumerate(src, at):
        if isinstance(v, list):
            dst[i] = [a + b for a, b in zip(dst[i], v, strict=True)]
        else:
            dst[i] += v


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


def fill(schema: pa.Schema, cols: dict[str, pa.Array], n: int) -> pa.RecordBatch:
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


class WindowLogic(StatefulLogic[Any, tuple[str, Any], dict[str, Any]]):
    """One state key's windows in a bytewax ``stateful`` step; emits ``("metrics", tables)``
    and ``("late", rows)``."""

    def __init__(self, agg: EventTimeWindows) -> None:
        self.agg = agg
        self.idle = timedelta(seconds=agg.cfg.idle_close_s)
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
        log.info("%s: idle for %s, closed %d windows", self.agg.component, self.idle, len(tables))
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


def shard_batches(batch: pa.RecordBatch | pa.Table, shards: int) -> list[tuple[str, Any]]:
    """(shard key, rows) pairs; a service always lands in the same shard (crc32 of its name).
    A shard without rows gets the batch's empty slice: its schema metadata still tells the
    shard's watermark where the partition is (``operators.watermark``)."""
    if shards == 1:
        return [("0", batch)]
    enc = pc.dictionary_encode(batch.column("ServiceName"))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    per_value = np.array(
        [zlib.crc32(v.encode()) % shards for v in enc.dictionary.to_pylist()], dtype=np.int64
    )
    idx = per_value[enc.indices.to_numpy(zero_copy_only=False)]
    present = set(np.unique(idx).tolist())
    return [
        (str(s), batch.filter(pa.array(idx == s)) if s in present else batch.slice(0, 0))
        for s in range(shards)
    ]


@dataclass(frozen=True)
class WindowStreams:
    """Outputs of :func:`windowed`."""

    metrics: Stream[dict[str, pa.RecordBatch]]
    """Cumulative metric tables (``otel_metrics_*`` name → rows) per closed window."""
    late: Stream[pa.RecordBatch]
    """Rejected rows, one batch per reason (``late``, ``future``, ``too_old``) in the schema
    metadata key ``otelwax.reason`` (only with ``late_policy: route``)."""


def windowed(
    up: Stream[pa.RecordBatch],
    cfg: WindowConfig,
    make: Callable[[dict[str, Any] | None], EventTimeWindows],
) -> WindowStreams:
    """The steps of a window operator (call it inside an ``@operator`` function):
    ``shard`` → ``window`` (stateful, one :class:`WindowLogic` per shard built by ``make``
    from its resume state) → ``split`` into metrics and rejected rows."""
    keyed = op.flat_map("shard", up, lambda b: shard_batches(b, cfg.shards))
    tagged = op.stateful("window", keyed, lambda resume: WindowLogic(make(resume)))
    values = op.map("unkey", tagged, lambda kv: kv[1])
    b = op.branch("split", values, lambda tv: tv[0] == "metrics")
    metrics = op.map("metrics", b.trues, lambda tv: tv[1])
    late = op.map("late", b.falses, lambda tv: tv[1])
    return WindowStreams(metrics, late)
