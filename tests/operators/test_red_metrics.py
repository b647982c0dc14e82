"""Span-metrics windows (operators.red_metrics): end time, lateness, overflow, recovery."""

from __future__ import annotations

import pickle
import time

import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.prom_translate import tables_to_series
from operators.red_metrics import (
    DEFAULT_BUCKETS_MS,
    SpanMetricsAggregator,
    SpanMetricsConfig,
    span_metrics,
)
from operators.watermark import LAG_KEY, PARTITION_KEY
from operators.windows import INGEST_TIME_KEY, Dimension, WindowLogic
from otelwax.schemas import TRACES_SCHEMA

S = 10**9
T0 = 1_700_000_000  # a window boundary for 10 s windows


def spans(rows: list[tuple]) -> pa.RecordBatch:
    """rows: (end_s, dur_ms, service, name[, status[, span_attrs]])."""
    d: dict[str, list] = {f.name: [] for f in TRACES_SCHEMA}
    for row in rows:
        end_s, dur_ms, svc, name = row[:4]
        status = row[4] if len(row) > 4 else "STATUS_CODE_UNSET"
        attrs = row[5] if len(row) > 5 else {}
        dur = round(dur_ms * 1e6)
        d["Timestamp"].append(round(end_s * S) - dur)
        d["Duration"].append(dur)
        d["ServiceName"].append(svc)
        d["SpanName"].append(name)
        d["SpanKind"].append("SPAN_KIND_SERVER")
        d["StatusCode"].append(status)
        d["SpanAttributes"].append(list(attrs.items()))
        d["ResourceAttributes"].append([("service.name", svc), ("deployment", "prod")])
    n = len(rows)
    for f in TRACES_SCHEMA:
        if not d[f.name]:
            nested = pa.types.is_list(f.type) or pa.types.is_map(f.type)
            d[f.name] = [[]] * n if nested else [""] * n
    return pa.RecordBatch.from_pydict(d, schema=TRACES_SCHEMA)


def calls(tables_list: list[dict]) -> dict[tuple, list[tuple[int, float]]]:
    """{(service, span, status, ...extra labels): [(ts_ms, cumulative calls)]}."""
    out: dict[tuple, list] = {}
    for tables in tables_list:
        for labels, samples in tables_to_series(tables).series.items():
            lab = dict(labels)
            if lab["__name__"] != "traces_span_metrics_calls_total":
                continue
            key = tuple(
                v for k, v in sorted(lab.items()) if k not in ("__name__", "job", "span_kind")
            )
            out.setdefault(key, []).extend(samples)
    return out


def cfg(**kw) -> SpanMetricsConfig:
    kw.setdefault("window_s", 10)
    kw.setdefault("allowed_lateness_s", 5)
    kw.setdefault("max_age_s", None)  # T0 is long past
    return SpanMetricsConfig(**kw)


def test_windows_by_end_time_out_of_order_and_late() -> None:
    agg = SpanMetricsAggregator(cfg())
    emitted: list[dict] = []
    # a span that starts in window 0 but ends in window 1 counts in window 1
    out, _ = agg.add(spans([(T0 + 1, 5, "a", "op"), (T0 + 11, 3000, "a", "op")]))
    emitted += out
    assert out == [] and sorted(agg.windows) == [T0 * S, (T0 + 10) * S]
    # out of order but within lateness: still counted in window 0
    out, _ = agg.add(spans([(T0 + 14, 1, "a", "op"), (T0 + 2, 1, "a", "op")]))
    emitted += out
    assert len(out) == 0  # watermark T0+9: nothing closed yet
    out, _ = agg.add(spans([(T0 + 16, 1, "a", "op")]))  # watermark T0+11 closes window 0
    emitted += out
    assert len(out) == 1
    # late: window 0 is closed
    out, late = agg.add(spans([(T0 + 3, 1, "a", "op"), (T0 + 9, 1, "b", "op")]))
    emitted += out
    assert late == []  # policy drop
    assert agg.late_total == 2
    emitted += agg.close_all()
    got = calls(emitted)
    key = ("a", "op", "STATUS_CODE_UNSET")
    # window 0: 2 spans (T0+1, T0+2); window 1: 3 spans (T0+11, T0+14, T0+16) → cumulative
    assert got[key] == [((T0 + 10) * 1000, 2.0), ((T0 + 20) * 1000, 5.0)]
    assert ("b", "op", "STATUS_CODE_UNSET") not in got


def test_late_spans_routed_when_configured() -> None:
    agg = SpanMetricsAggregator(cfg(late_policy="route", allowed_lateness_s=0))
    agg.add(spans([(T0 + 25, 1, "a", "op")]))  # closes everything before T0+20
    _, (late,) = agg.add(spans([(T0 + 3, 1, "a", "x"), (T0 + 26, 1, "a", "y")]))
    assert late.column("SpanName").to_pylist() == ["x"]
    assert late.schema.metadata[b"otelwax.reason"] == b"late"


def test_duration_histogram_uses_connector_buckets() -> None:
    assert DEFAULT_BUCKETS_MS[:3] == (2.0, 4.0, 6.0) and DEFAULT_BUCKETS_MS[-1] == 15000.0
    agg = SpanMetricsAggregator(cfg())
    # 2 ms is in le=2 (upper bounds are inclusive), 2.5 in le=4, 20 s only in +Inf
    agg.add(spans([(T0 + 1, 2, "a", "op"), (T0 + 1, 2.5, "a", "op"), (T0 + 1, 20000, "a", "op")]))
    (tables,) = agg.close_all()
    series = tables_to_series(tables).series
    buckets = {
        dict(k)["le"]: v[0][1]
        for k, v in series.items()
        if dict(k)["__name__"] == "traces_span_metrics_duration_milliseconds_bucket"
    }
    assert buckets["2"] == 1 and buckets["4"] == 2 and buckets["15000"] == 2
    assert buckets["+Inf"] == 3
    sums = [
        v[0][1]
        for k, v in series.items()
        if dict(k)["__name__"] == "traces_span_metrics_duration_milliseconds_sum"
    ]
    assert sums == [pytest.approx(20004.5)]


def test_dimensions_from_span_then_resource_then_default() -> None:
    c = cfg(
        dimensions=[
            Dimension(name="http.method"),
            Dimension(name="deployment"),
            Dimension(name="region", default="eu"),
        ]
    )
    agg = SpanMetricsAggregator(c)
    agg.add(spans([(T0 + 1, 1, "a", "op", "STATUS_CODE_OK", {"http.method": "GET"})]))
    agg.add(spans([(T0 + 1, 1, "a", "op", "STATUS_CODE_OK", {})]))
    (tables,) = agg.close_all()
    attrs = [dict(a) for a in tables["otel_metrics_sum"].column("Attributes").to_pylist()]
    assert {"http.method": "GET", "deployment": "prod", "region": "eu"}.items() <= attrs[0].items()
    # no value and no default: the dimension is absent, like the Collector's connector
    assert "http.method" not in attrs[1]
    assert attrs[1]["span.kind"] == "SPAN_KIND_SERVER"
    assert attrs[1]["status.code"] == "STATUS_CODE_OK"


def test_cardinality_limit_folds_into_overflow_series() -> None:
    agg = SpanMetricsAggregator(cfg(cardinality_limit=3))
    rows = [(T0 + 1, 1, "a", f"op{i}") for i in range(10)] + [(T0 + 1, 1, "a", "op0")] * 5
    agg.add(spans(rows))
    (tables,) = agg.close_all()
    got = calls([tables])
    overflow = [v for k, v in got.items() if "true" in k]
    assert overflow == [[((T0 + 10) * 1000, 7.0)]]  # 10 series - 3 kept = 7 calls folded
    assert got[("a", "op0", "STATUS_CODE_UNSET")][0][1] == 6.0  # busiest kept
    assert sum(v[0][1] for v in got.values()) == 15


def test_snapshot_restore_equals_uninterrupted() -> None:
    batches = [
        spans([(T0 + i + j * 0.1, 1 + j, "a", f"op{j % 3}") for j in range(10)])
        for i in range(0, 60, 3)
    ]
    a = SpanMetricsAggregator(cfg())
    out_a: list[dict] = []
    for b in batches:
        out_a += a.add(b)[0]
    out_a += a.close_all()
    b_agg = SpanMetricsAggregator(cfg())
    out_b: list[dict] = []
    for i, b in enumerate(batches):
        if i == 7:  # "crash": continue from a pickled snapshot
            b_agg = SpanMetricsAggregator(cfg(), pickle.loads(pickle.dumps(b_agg.snapshot())))
        out_b += b_agg.add(b)[0]
    out_b += b_agg.close_all()
    assert calls(out_a) == calls(out_b)


def test_operator_in_a_dataflow_closes_windows_at_eof() -> None:
    flow = Dataflow("sm_test")
    from bytewax import operators as op

    src = op.input(
        "in",
        flow,
        TestingSource(
            [
                spans([(T0 + 1, 1, "a", "op"), (T0 + 12, 1, "a", "op")]),
                spans([(T0 + 2, 1, "a", "op")]),  # out of order, within lateness
                spans([(T0 + 30, 1, "a", "op")]),  # watermark T0+25: closes 0 and 10
                spans([(T0 + 4, 1, "a", "op")]),  # late
            ]
        ),
    )
    out = span_metrics("sm", src, cfg(late_policy="route"))
    got: list = []
    late: list = []
    op.output("out", out.metrics, TestingSink(got))
    op.output("late", out.late, TestingSink(late))
    run_main(flow)
    key = ("a", "op", "STATUS_CODE_UNSET")
    assert calls(got)[key] == [
        ((T0 + 10) * 1000, 2.0),
        ((T0 + 20) * 1000, 3.0),
        ((T0 + 40) * 1000, 4.0),  # closed at EOF
    ]
    assert [b.num_rows for b in late] == [1]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="increasing"):
        SpanMetricsConfig(buckets_ms=[5, 2])
    with pytest.raises(ValueError):
        SpanMetricsConfig(window_s=0)


def test_idle_timeout_closes_open_windows() -> None:
    from datetime import UTC, datetime, timedelta

    logic = WindowLogic(SpanMetricsAggregator(cfg(idle_close_s=30)))
    assert logic.notify_at() is None  # nothing open: no timer
    emitted, _ = logic.on_item(spans([(T0 + 1, 1, "a", "op")]))
    assert list(emitted) == []
    due = logic.notify_at()
    assert due is not None
    assert timedelta(seconds=29) < due - datetime.now(UTC) <= timedelta(seconds=30)
    emitted, _ = logic.on_notify()
    (tag, tables), *_ = list(emitted)
    assert tag == "metrics" and tables["otel_metrics_sum"].num_rows == 1
    assert logic.notify_at() is None
    # the closed window stays closed: its spans are late now
    logic.on_item(spans([(T0 + 2, 1, "a", "op")]))
    assert logic.agg.late_total == 1
    # and the state round-trips through a snapshot
    again = WindowLogic(SpanMetricsAggregator(cfg(), pickle.loads(pickle.dumps(logic.snapshot()))))
    assert again.agg.cum == logic.agg.cum


# --- watermark bounded by processing time; series eviction ------------------------------------


def _dropped(reason: str, unit: str = "spans") -> float:
    from prometheus_client import REGISTRY

    labels = {"component": "span_metrics", "unit": unit, "reason": reason}
    return REGISTRY.get_sample_value("otelwax_dropped_total", labels) or 0.0


def _now_s() -> int:
    """A window boundary a minute ago (10 s windows)."""
    return (int(time.time()) - 60) // 10 * 10


def test_one_span_a_day_ahead_does_not_make_on_time_spans_late() -> None:
    now = _now_s()
    agg = SpanMetricsAggregator(cfg(late_policy="route"))
    future_before = _dropped("future")
    emitted, first_rejected = agg.add(spans([(now + 86_400, 1, "a", "op")]))
    for i in range(10):  # 1,000 on-time spans over 5 windows, in order
        batch = spans([(now + i * 5 + j * 0.04, 1, "a", "op") for j in range(100)])
        out, rejected = agg.add(batch)
        emitted += out
        assert not rejected
    assert agg.late_total == 0
    emitted += agg.close_all()
    samples = calls(emitted)[("a", "op", "STATUS_CODE_UNSET")]
    assert samples[-1][1] == 1000.0
    # the span a day ahead is counted as dropped and routed with its reason
    assert _dropped("future") - future_before == 1
    assert [b.schema.metadata[b"otelwax.reason"] for b in first_rejected] == [b"future"]
    # nothing is ever emitted with a timestamp in the future
    assert max(ts for ts, _ in samples) <= (now + 60) * 1000


class FakeClock:
    """A processing clock the test moves (ns)."""

    def __init__(self, t_s: float) -> None:
        self.ns = round(t_s * S)

    def __call__(self) -> int:
        return self.ns


def ingested(batch: pa.RecordBatch, t_s: float) -> pa.RecordBatch:
    """The batch as flows.spanmetrics hands it on: with its Kafka (ingest) timestamp."""
    return batch.replace_schema_metadata({INGEST_TIME_KEY: str(round(t_s * 1000)).encode()})


@pytest.mark.parametrize("reading", ["live", "backlog"])
def test_clock_skewed_spans_within_skew_count_without_holding_back_the_others(
    reading: str,
) -> None:
    """A host whose clock is 2 minutes fast: its span counts, and the on-time spans after it
    are not late, whether read live (the processing clock bounds the watermark) or from a
    backlog an hour old (the Kafka timestamps do)."""
    clock = FakeClock(T0)
    agg = SpanMetricsAggregator(cfg(max_future_skew_s=300), clock=clock)

    def feed(rows: list[tuple], at_s: float) -> tuple[list[dict], list]:
        if reading == "live":
            clock.ns = round(at_s * S)
            return agg.add(spans(rows))
        clock.ns = (T0 + 3600) * S
        return agg.add(ingested(spans(rows), at_s))

    emitted, _ = feed([(T0 + 120.5, 1, "skewed", "op")], T0 + 0.5)
    for i in range(6):
        out, rejected = feed([(T0 + i * 10 + 1, 1, "a", "op")], T0 + i * 10 + 1.2)
        emitted += out
        assert rejected == []
    assert agg.late_total == 0
    got = calls(emitted)
    # windows closed as the ingest time passed them (the last at T0+51 keeps T0+50 open)
    assert got[("a", "op", "STATUS_CODE_UNSET")][-1][1] == 4.0
    assert ("skewed", "op", "STATUS_CODE_UNSET") not in got  # its window is still open
    emitted += agg.close_all()
    got = calls(emitted)
    assert got[("skewed", "op", "STATUS_CODE_UNSET")][-1][1] == 1.0
    assert got[("a", "op", "STATUS_CODE_UNSET")][-1][1] == 6.0


def test_spans_older_than_max_age_are_dropped_and_routed() -> None:
    now = _now_s()
    agg = SpanMetricsAggregator(cfg(max_age_s=3600, late_policy="route"))
    before = _dropped("too_old")
    _, rejected = agg.add(spans([(1, 1, "a", "epoch"), (now, 1, "a", "op")]))
    assert [b.column("SpanName").to_pylist() for b in rejected] == [["epoch"]]
    assert rejected[0].schema.metadata[b"otelwax.reason"] == b"too_old"
    assert _dropped("too_old") - before == 1
    assert list(agg.windows) == [now * S]


def test_restore_clamps_a_stored_watermark_far_ahead_of_now() -> None:
    """A snapshot written while one span a day ahead drove the watermark (the state the
    unbounded watermark left behind) recovers: on-time spans count again after a restart."""
    now = _now_s()
    ahead = (now + 86_400) * S
    future_key = ("a", "op", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET")
    bad = {
        "max_end": ahead,
        "closed_upto": ahead - 10 * S,
        "windows": {ahead - 10 * S: {future_key: [1, 1.0, [1] + [0] * 16]}},
        "cum": {future_key: [ahead - 20 * S, 1, 1.0, [1] + [0] * 16]},
        "late_total": 0,
    }
    future_before = _dropped("future")
    logic = WindowLogic(SpanMetricsAggregator(cfg(), pickle.loads(pickle.dumps(bad))))
    assert _dropped("future") - future_before == 1  # the open future window's span
    emitted: list = []
    for i in range(3):
        out, _ = logic.on_item(spans([(now + i * 10 + 1, 1, "a", "op")] * 10))
        emitted += [t for tag, t in out if tag == "metrics"]
    emitted += [t for tag, t in logic.on_eof()[0] if tag == "metrics"]
    assert logic.agg.late_total == 0
    samples = calls(emitted)[("a", "op", "STATUS_CODE_UNSET")]
    assert samples[-1][1] == 30.0  # the future span's series was reset, not carried on
    starts = {ts.value for t in emitted for ts in t["otel_metrics_sum"].column("StartTimeUnix")}
    assert max(starts) <= (now + 30) * S
    assert logic.agg.max_end is not None and logic.agg.max_end <= time.time_ns() + 300 * S


def test_series_without_updates_for_the_ttl_are_evicted_and_restart_from_zero() -> None:
    agg = SpanMetricsAggregator(cfg(series_ttl_s=30))
    evicted_before = _dropped("evicted", unit="series")
    emitted: list[dict] = []
    out, _ = agg.add(spans([(T0 + 1, 1, "a", "rare"), (T0 + 1, 1, "a", "busy")]))
    emitted += out
    for i in range(1, 8):  # "busy" keeps going; "rare" stays quiet for 70 s
        out, _ = agg.add(spans([(T0 + i * 10 + 1, 1, "a", "busy")]))
        emitted += out
    assert ("a", "rare", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET") not in agg.cum
    assert len(agg.cum) == 1  # memory bounded by the series seen within the TTL
    assert _dropped("evicted", unit="series") - evicted_before == 1
    out, _ = agg.add(spans([(T0 + 81, 1, "a", "rare")]))
    emitted += out
    emitted += agg.close_all()
    rare = calls(emitted)[("a", "rare", "STATUS_CODE_UNSET")]
    # back after eviction: a fresh cumulative series (a counter reset for Prometheus)
    assert rare == [((T0 + 10) * 1000, 1.0), ((T0 + 90) * 1000, 1.0)]
    sums = [t["otel_metrics_sum"] for t in emitted]
    rare_starts = [
        st.value
        for t in sums
        for st, a in zip(t.column("StartTimeUnix"), t.column("Attributes").to_pylist(), strict=True)
        if dict(a)["span.name"] == "rare"
    ]
    assert rare_starts == [T0 * S, (T0 + 80) * S]


def test_eviction_survives_a_snapshot() -> None:
    agg = SpanMetricsAggregator(cfg(series_ttl_s=30))
    agg.add(spans([(T0 + 1, 1, "a", "rare"), (T0 + 1, 1, "a", "busy")]))
    agg.add(spans([(T0 + 21, 1, "a", "busy")]))
    again = SpanMetricsAggregator(cfg(series_ttl_s=30), pickle.loads(pickle.dumps(agg.snapshot())))
    again.add(spans([(T0 + 61, 1, "a", "busy")]))
    assert [k[1] for k in again.cum] == ["busy"]


def test_idle_leaves_a_window_ahead_of_the_clock_open_until_the_clock_passes_it() -> None:
    from datetime import UTC, datetime, timedelta

    logic = WindowLogic(SpanMetricsAggregator(cfg(idle_close_s=1)))
    logic.on_item(spans([(time.time() + 120, 1, "skewed", "op")]))  # within the 300 s skew
    emitted, _ = logic.on_notify()  # idle: the clock has not reached the window
    assert list(emitted) == [] and logic.agg.open_windows == 1
    due = logic.notify_at()
    assert due is not None and due - datetime.now(UTC) > timedelta(seconds=110)  # no busy loop
    emitted, _ = logic.on_eof()  # the end of the input closes it
    assert [tag for tag, _ in emitted] == ["metrics"]
    assert logic.agg.closed_upto is not None and logic.agg.closed_upto <= time.time_ns()


def from_partition(
    batch: pa.RecordBatch, part: int, left: int, t_s: float | None
) -> pa.RecordBatch:
    """The batch as flows.windowed hands it on from Kafka partition ``part`` with ``left``
    records behind it; ``t_s`` None: the empty batch a partition starts with."""
    meta = {PARTITION_KEY: f"spans:{part}".encode(), LAG_KEY: str(left).encode()}
    if t_s is not None:
        meta[INGEST_TIME_KEY] = str(round(t_s * 1000)).encode()
    return batch.replace_schema_metadata(meta)


def test_a_partition_read_behind_the_others_is_not_late() -> None:
    """After a restart, partition 1 has a minute of backlog while partition 0 is caught up.
    Partition 0's current spans must not close the windows partition 1 has yet to deliver:
    its spans count, none is late, and the windows close once it has caught up."""
    clock = FakeClock(T0 + 120)
    agg = SpanMetricsAggregator(cfg(), clock=clock)
    emitted: list[dict] = []
    for part, left in ((0, 0), (1, 3)):
        agg.add(from_partition(spans([])[:0], part, left, None))
    emitted += agg.add(from_partition(spans([(T0 + 118, 1, "svc", "now")]), 0, 0, T0 + 119))[0]
    for i, left in enumerate((2, 1, 0)):  # the backlog, 20 s per batch
        t = T0 + 60 + 20 * i
        emitted += agg.add(from_partition(spans([(t + 1, 1, "svc", "old")]), 1, left, t + 2))[0]
    assert agg.late_total == 0
    counted = calls(emitted)
    assert counted[("svc", "old", "STATUS_CODE_UNSET")][-1][1] == 3
    # caught up: windows up to the slowest caught-up clock minus lateness are closed
    assert agg.closed_upto == T0 * S + 110 * S


def test_a_stalled_partition_stops_holding_the_windows() -> None:
    """A partition with records left that delivers nothing for ``partition_stall_s`` no
    longer holds the watermark: the others' windows close."""
    clock = FakeClock(T0 + 60)
    agg = SpanMetricsAggregator(cfg(partition_stall_s=0.2), clock=clock)
    agg.add(from_partition(spans([(T0 + 10, 1, "svc", "old")]), 1, 5, T0 + 11))
    out, _ = agg.add(from_partition(spans([(T0 + 58, 1, "svc", "now")]), 0, 0, T0 + 59))
    assert out == []  # partition 1 (at T0+10) holds
    time.sleep(0.3)
    out, _ = agg.add(from_partition(spans([(T0 + 59, 1, "svc", "now")]), 0, 0, T0 + 59))
    assert calls(out)[("svc", "old", "STATUS_CODE_UNSET")][-1][1] == 1


def test_every_shard_hears_where_each_partition_is() -> None:
    """With ``shards: 4`` a batch whose services all hash to one shard still reaches the
    others (no rows, same partition metadata), so a shard whose services went quiet on a
    partition does not keep waiting for that partition to catch up."""
    from operators.windows import shard_batches

    batch = from_partition(spans([(T0 + 1, 1, "svc", "op")] * 3), 1, 0, T0 + 2)
    out = dict(shard_batches(batch, 4))
    assert sorted(out) == ["0", "1", "2", "3"]
    assert sum(b.num_rows for b in out.values()) == 3
    assert all(b.schema.metadata == batch.schema.metadata for b in out.values())


def test_a_partition_of_only_rejected_spans_does_not_hold_the_windows() -> None:
    """A partition whose every span is dropped (a producer with a clock a day ahead) while it
    keeps records waiting must not hold the windows: the other partition's windows close."""
    clock = FakeClock(T0 + 60)
    agg = SpanMetricsAggregator(cfg(), clock=clock)
    out = []
    for i in range(3):
        t = T0 + 30 + 10 * i
        agg.add(from_partition(spans([(t + 86_400, 1, "skewed", "op")]), 1, 5, t))
        out += agg.add(from_partition(spans([(t, 1, "svc", "op")]), 0, 0, t + 1))[0]
    assert calls(out)[("svc", "op", "STATUS_CODE_UNSET")][-1][1] == 1  # [T0+30, T0+40)
