"""Head sampling (consistent by trace id, across processes) and tail sampling (decision window)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from operators.registry import Pipeline, build_pipeline
from operators.sampling import head_keep_mask, threshold, trace_randomness
from tests.operators.batches import logs_batch, random_spans, random_trace_ids, spans_batch

ROOT = Path(__file__).resolve().parents[2]


def test_randomness_is_the_low_56_bits_of_the_trace_id() -> None:
    ids = ["0af7651916cd43dd8448eb211c80319c", "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "", "xyz",
           "0af7651916cd43dd8448eb211c80319g", None]  # fmt: skip
    r, valid = trace_randomness(pa.array(ids, pa.string()))
    assert valid.tolist() == [True, True, False, False, False, False]
    assert int(r[0]) == int("0af7651916cd43dd8448eb211c80319c", 16) & ((1 << 56) - 1)
    assert int(r[1]) == (1 << 56) - 1


def test_head_decision_follows_the_otel_threshold_rule() -> None:
    ids = random_trace_ids(20_000, seed=7)
    for pct in (0, 1, 10, 33.3, 50, 100):
        keep = head_keep_mask(ids, pct)
        expected = [
            (int(t, 16) & ((1 << 56) - 1)) >= threshold(pct) for t in ids.to_pylist()[:2000]
        ]
        assert keep[:2000].tolist() == expected
        assert abs(keep.mean() - pct / 100) < 0.02
    # a lower rate keeps a subset of what a higher rate keeps
    assert not (head_keep_mask(ids, 10) & ~head_keep_mask(ids, 50)).any()


def test_all_spans_of_a_trace_share_the_decision() -> None:
    batch = random_spans(20_000, seed=3, spans_per_trace=10)
    (op,) = build_pipeline([{"type": "probabilistic_sampler", "sampling_percentage": 30}], "traces")
    out = op(batch)
    assert out.schema == batch.schema
    counts = pa.table({"t": out.column("TraceId")}).group_by("t").aggregate([("t", "count")])
    assert set(counts.column("t_count").to_pylist()) == {10}
    assert 0.25 < out.num_rows / batch.num_rows < 0.35


def test_invalid_trace_ids_keep_or_drop() -> None:
    logs = logs_batch([{"TraceId": ""}, {"TraceId": "ffffffffffffffffffffffffffffffff"}])
    (keep,) = build_pipeline([{"type": "probabilistic_sampler", "sampling_percentage": 1}], "logs")
    assert keep(logs).column("TraceId").to_pylist() == ["", "ffffffffffffffffffffffffffffffff"]
    (drop,) = build_pipeline(
        [{"type": "probabilistic_sampler", "sampling_percentage": 1, "invalid_trace_id": "drop"}],
        "logs",
    )
    assert drop(logs).num_rows == 1
    assert keep(logs_batch([])).num_rows == 0


_CHILD = """
import json, sys
import pyarrow as pa
from operators.registry import build_pipeline
from tests.operators.batches import random_spans
seed, order, chunk = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
batch = random_spans(30_000, seed=seed, spans_per_trace=6)
if order == "reversed":
    batch = batch.take(pa.array(range(batch.num_rows - 1, -1, -1)))
(op,) = build_pipeline([{"type": "probabilistic_sampler", "sampling_percentage": 20}], "traces")
kept = []
for start in range(0, batch.num_rows, chunk):
    kept += op(batch.slice(start, chunk)).column("SpanId").to_pylist()
print(json.dumps(sorted(kept)))
"""


def test_same_decisions_in_two_separate_processes() -> None:
    """Two worker processes, different batch cuts and order, decide identically."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, "11", order, chunk],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for order, chunk in (("forward", "1000"), ("reversed", "7777"))
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert 0.15 < len(outs[0]) / 30_000 < 0.25


# --- tail sampling --------------------------------------------------------------------------

T0 = 1_000.0
TID = {k: f"{i:032x}" for i, k in enumerate(["err", "slow", "fast", "late", "x"], start=1)}


def span(trace: str, sid: str, **kw) -> dict:
    return {"TraceId": TID[trace], "SpanId": sid, **kw}


def tail(**cfg):
    (op,) = build_pipeline([{"type": "tail_sampling", "decision_wait": 10, **cfg}], "traces")
    return op


def sids(batches: list[pa.RecordBatch]) -> list[str]:
    return sorted(s for b in batches for s in b.column("SpanId").to_pylist())


def test_tail_keeps_error_and_slow_traces_after_the_wait() -> None:
    op = tail(latency_threshold="2s")
    b1 = spans_batch([
        span("err", "e1"), span("slow", "s1", Duration=10**9), span("fast", "f1"),
    ])  # fmt: skip
    assert op.process(b1, now=T0) == []
    assert op.next_deadline() == pytest.approx(T0 + 10)
    b2 = spans_batch([
        span("err", "e2", StatusCode="STATUS_CODE_ERROR"),
        span("slow", "s2", Timestamp=1_700_000_002_500_000_000, Duration=10),  # ends 2.5 s later
        span("fast", "f2"),
    ])  # fmt: skip
    assert op.process(b2, now=T0 + 5) == []  # nothing due before the wait
    out = op.process(spans_batch([]), now=T0 + 10.01)
    assert sids(out) == ["e1", "e2", "s1", "s2"]
    assert out[0].schema == b1.schema
    assert op.next_deadline() is None
    # late spans follow the trace's decision
    late = op.process(spans_batch([span("err", "e3"), span("fast", "f3")]), now=T0 + 11)
    assert sids(late) == ["e3"]


def test_tail_base_rate_is_consistent_with_head_sampling() -> None:
    batch = random_spans(5_000, seed=5, spans_per_trace=5)
    batch = batch.set_column(
        batch.schema.get_field_index("StatusCode"), "StatusCode",
        pa.repeat(pa.scalar("STATUS_CODE_UNSET"), batch.num_rows),
    )  # fmt: skip
    op = tail(keep_errors=False, base_percentage=40)
    op.process(batch, now=T0)
    out = op.flush()
    expected = batch.filter(pa.array(head_keep_mask(batch.column("TraceId"), 40)))
    assert sids(out) == sorted(expected.column("SpanId").to_pylist())


def test_tail_memory_bound_decides_oldest_traces_early() -> None:
    op = tail(max_buffered_spans=10, keep_errors=True)
    old = spans_batch([span("err", f"e{i}", StatusCode="STATUS_CODE_ERROR") for i in range(8)])
    assert op.process(old, now=T0) == []
    new = spans_batch([span("x", f"x{i}") for i in range(8)])
    out = op.process(new, now=T0 + 1)  # 16 > 10 buffered: the oldest trace is decided now
    assert sids(out) == sorted(f"e{i}" for i in range(8))
    assert op.kernel._buffered == 8
    assert op.flush() == []  # trace x: no error, no base rate


def test_tail_flush_runs_through_the_rest_of_the_pipeline() -> None:
    ops = build_pipeline(
        [
            {"type": "tail_sampling", "decision_wait": 60, "latency_threshold": 0.0001},
            {"type": "filter", "drop": "SpanName == 'drop-me'"},
        ],
        "traces",
    )
    pipe = Pipeline(ops)
    assert pipe.stateful
    rows = [span("slow", "a", SpanName="keep", Duration=10**6),
            span("slow", "b", SpanName="drop-me")]  # fmt: skip
    assert pipe.process(spans_batch(rows), now=T0) == []
    assert pipe.next_deadline() == pytest.approx(T0 + 60)
    assert sids(pipe.tick(now=T0 + 61)) == ["a"]
    assert pipe.flush() == []


def test_tail_is_traces_only_and_single() -> None:
    with pytest.raises(ValueError, match="tail_sampling works on traces only"):
        build_pipeline([{"type": "tail_sampling"}], "logs")
    with pytest.raises(ValueError, match="only one tail_sampling"):
        build_pipeline([{"type": "tail_sampling", "name": "a"},
                        {"type": "tail_sampling", "name": "b"}], "traces")  # fmt: skip


def test_tail_counts_rows(metric) -> None:
    op = tail(name="tail-count")
    op.process(spans_batch([span("fast", "1"), span("err", "2", StatusCode="STATUS_CODE_ERROR")]),
               now=T0)  # fmt: skip
    op.process(spans_batch([]), now=T0 + 20)
    assert metric("received", "operator.tail-count") == 2
    assert metric("sent", "operator.tail-count") == 1
    assert metric("dropped", "operator.tail-count", reason="sampled") == 1


def test_head_sampler_uses_vectorised_decode() -> None:
    ids = random_trace_ids(10)
    # Sliced and upper-case input decode the same way.
    upper = pc.utf8_upper(ids)
    assert (trace_randomness(upper)[0] == trace_randomness(ids)[0]).all()
    assert (trace_randomness(ids.slice(3))[0] == trace_randomness(ids)[0][3:]).all()
    assert np.issubdtype(trace_randomness(ids)[0].dtype, np.uint64)


def test_tail_decisions_are_rate_limited_by_the_interval() -> None:
    op = tail(decision_wait=2, decision_interval=1, keep_errors=True)
    err = {"StatusCode": "STATUS_CODE_ERROR"}
    op.process(spans_batch([span("err", "a", **err)]), now=T0)
    assert sids(op.process(spans_batch([span("x", "b", **err)]), now=T0 + 1.5)) == []
    assert sids(op.process(spans_batch([]), now=T0 + 2)) == ["a"]  # first trace due
    # trace x is due at T0 + 3.5, and the last round was at T0 + 2: next round at 3.5
    assert op.next_deadline() == pytest.approx(T0 + 3.5)
    assert sids(op.process(spans_batch([]), now=T0 + 3.4)) == []
    assert sids(op.process(spans_batch([]), now=T0 + 3.5)) == ["b"]
    assert op.next_deadline() is None
