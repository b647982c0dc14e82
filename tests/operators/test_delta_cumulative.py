"""operators.delta_cumulative in a real bytewax flow: decoded OTLP requests in, the cumulative
rows the remote-write branch translates out."""

from __future__ import annotations

import time

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.delta_cumulative import DeltaToCumulativeConfig, to_cumulative
from otelwax.codec import decode_metrics
from otelwax.metric_schemas import HISTOGRAM, SUM
from tests.promfixtures import counter, histogram, metrics_request

# Series told apart only by where a separator-like character sits: in the key or the value, in
# the resource or the point, in the scope, or by monotonicity.
_SERIES = [
    ({"service.name": "a"}, "s", {"k": "x:y"}, True),
    ({"service.name": "a"}, "s", {"k:x": "y"}, True),
    ({"service.name": "a"}, "s", {"k": "x\x1fy"}, True),
    ({"service.name": "a"}, "s", {"k\x1fx": "y"}, True),
    ({"service.name": "a"}, "s", {}, True),
    ({"service.name": "a"}, "s", {"": ""}, True),
    ({"service.name": "a", "k": "x"}, "s", {}, True),
    ({"service.name": "a"}, "s:x", {}, True),
    ({"service.name": "a"}, "s", {}, False),
]


def _requests(rounds: int) -> list[bytes]:
    t0 = time.time_ns() - 60 * 10**9
    out = []
    for r in range(rounds):
        t = t0 + r * 10**9
        for i, (res, scope, attrs, mono) in enumerate(_SERIES):
            c = counter("jobs", [(t, float(i + 1), attrs)], delta=True, monotonic=mono)
            out.append(metrics_request(res, [c], scope=scope))
    return out


def _run(batches: list[dict[str, pa.RecordBatch]], shards: int) -> list[dict[str, pa.RecordBatch]]:
    flow = Dataflow("dtc_test")
    got: list[dict[str, pa.RecordBatch]] = []
    tables = op.input("in", flow, TestingSource(batches))
    cumulative = to_cumulative(tables, DeltaToCumulativeConfig(shards=shards))
    op.output("out", cumulative, TestingSink(got))
    run_main(flow)
    return got


def test_delta_series_apart_by_any_value_sum_separately() -> None:
    """Each delta series' running total counts only its own points, however its resource,
    scope, attributes and monotonicity differ; the totals survive batches cut anywhere."""
    rounds = 3
    reqs = _requests(rounds)
    batches = [decode_metrics(reqs[i : i + 4]).tables for i in range(0, len(reqs), 4)]
    for shards in (1, 4):
        rows = pa.Table.from_batches(
            [b for out in _run(batches, shards) for name, b in out.items() if name == SUM]
        )
        assert rows.num_rows == rounds * len(_SERIES)
        assert set(rows.column("AggregationTemporality").to_pylist()) == {2}
        last = rows.sort_by("TimeUnix").to_pylist()[-len(_SERIES) :]
        # Point values are the series' index + 1: a total reached by mixing series differs.
        assert sorted(r["Value"] for r in last) == [rounds * (i + 1.0) for i in range(len(_SERIES))]


def test_delta_histograms_add_bucket_by_bucket() -> None:
    t = time.time_ns() - 60 * 10**9
    points = [[(t + i * 10**9, [1, 2, 3], 6.0, {"r": "/"})] for i in range(3)]
    reqs = [
        metrics_request({"service.name": "h"}, [histogram("lat", p, [0.1, 1.0], delta=True)])
        for p in points
    ]
    out = _run([decode_metrics([r]).tables for r in reqs], 2)
    rows = pa.Table.from_batches([b for o in out for n, b in o.items() if n == HISTOGRAM])
    last = rows.sort_by("TimeUnix").to_pylist()[-1]
    assert (last["Count"], last["Sum"], last["BucketCounts"]) == (18, 18.0, [3, 6, 9])


def test_late_points_are_merged_and_changed_bounds_start_over() -> None:
    """Within a batch and across batches: a point not newer than its series' last one still
    adds up and is reported 1 ms after it; a histogram point with other bounds or another
    number of buckets starts its series over; points of other series in between change
    nothing."""
    t = time.time_ns() - 60 * 10**9
    s = 10**9
    ms = 1_000_000

    def sums(points: list[tuple[int, float]], attrs: dict) -> bytes:
        pts = [(tt, v, attrs) for tt, v in points]
        return metrics_request({"service.name": "late"}, [counter("c", pts, delta=True)])

    def hist(tt: int, counts: list[int], bounds: list[float]) -> bytes:
        p = [(tt, counts, float(sum(counts)), {})]
        return metrics_request({"service.name": "late"}, [histogram("h", p, bounds, delta=True)])

    batches = [
        [sums([(t + 2 * s, 1.0), (t + s, 2.0), (t + 2 * s, 4.0)], {"a": "1"}),
         sums([(t + s, 100.0)], {"a": "2"}),
         hist(t, [1, 1, 1], [1.0, 2.0]), hist(t + s, [1, 1, 1], [1.0, 2.0]),
         hist(t + 2 * s, [5, 5, 5], [1.0, 3.0])],
        [sums([(t + s, 8.0), (t + 5 * s, 16.0)], {"a": "1"}),
         hist(t + 3 * s, [1, 1, 1], [1.0, 3.0]), hist(t + 4 * s, [2, 2], [1.0]),
         hist(t + 4 * s, [1, 1], [1.0])],
    ]  # fmt: skip
    out = _run([decode_metrics(b).tables for b in batches], 2)
    got = pa.Table.from_batches([b for o in out for n, b in o.items() if n == SUM])
    rows = [(r["Attributes"], r["TimeUnix"].value - t, r["Value"]) for r in got.to_pylist()]
    a1, a2 = [("a", "1")], [("a", "2")]
    assert sorted(rows) == sorted([
        (a1, s, 2.0), (a1, 2 * s, 3.0), (a1, 2 * s + ms, 7.0), (a2, s, 100.0),
        (a1, 2 * s + 2 * ms, 15.0), (a1, 5 * s, 31.0),
    ])  # fmt: skip
    assert set(got.column("StartTimeUnix").to_pylist()) == {_ts(t)}  # the first point's
    got = pa.Table.from_batches([b for o in out for n, b in o.items() if n == HISTOGRAM])
    rows = [
        (r["TimeUnix"].value - t, r["StartTimeUnix"].value - t, r["Count"], r["BucketCounts"])
        for r in got.to_pylist()
    ]
    assert sorted(rows) == [
        (0, -s, 3, [1, 1, 1]),
        (s, -s, 6, [2, 2, 2]),
        (2 * s, s, 15, [5, 5, 5]),  # other bounds: starts over
        (3 * s, s, 18, [6, 6, 6]),
        (4 * s, 3 * s, 4, [2, 2]),  # fewer buckets: starts over
        (4 * s + ms, 3 * s, 6, [3, 3]),  # same time: late, 1 ms later
    ]


def _ts(ns: int):
    return pa.scalar(ns, pa.timestamp("ns")).as_py()
