"""Head sampling (consistent by trace id, across processes); tail sampling: test_tail_sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.registry import build_pipeline
from operators.sampling import head_keep_mask, threshold, trace_randomness
from tests.operators.batches import logs_batch, random_spans, random_trace_ids

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


def test_head_sampler_uses_vectorised_decode() -> None:
    ids = random_trace_ids(10)
    # Sliced and upper-case input decode the same way.
    upper = pc.utf8_upper(ids)
    assert (trace_randomness(upper)[0] == trace_randomness(ids)[0]).all()
    assert (trace_randomness(ids.slice(3))[0] == trace_randomness(ids)[0][3:]).all()
    assert np.issubdtype(trace_randomness(ids)[0].dtype, np.uint64)
