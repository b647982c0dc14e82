"""Registry: pipelines from YAML specs, user operator modules, counters, bytewax flows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.registry import (
    OperatorError,
    Pipeline,
    build_batch_operator,
    build_pipeline,
    run_pipeline,
)
from tests.operators.batches import random_spans, spans_batch

FIX = "tests.operators.user_ops_fixtures"


def test_typical_pipeline_from_dicts() -> None:
    specs = [
        {"type": "filter", "name": "no-health", "drop": "SpanAttributes['http.route'] in "
                                                       "['/health', '/ready']"},
        {"type": "transform", "actions": [{"action": "hash", "map": "SpanAttributes",
                                           "keys": ["user.email"]}]},
        {"type": "redact"},
        {"type": "probabilistic_sampler", "sampling_percentage": 50},
    ]  # fmt: skip
    ops = build_pipeline(specs, "traces")
    assert [o.name for o in ops] == ["no-health", "transform.1", "redact.2",
                                     "probabilistic_sampler.3"]  # fmt: skip
    batch = random_spans(2_000)
    out = run_pipeline(ops, batch)
    assert out.schema == batch.schema
    assert 0 < out.num_rows < batch.num_rows
    flat = [dict(m) for m in out.column("SpanAttributes").to_pylist()]
    assert all(m["http.route"] not in ("/health", "/ready") for m in flat)
    assert all(len(m["user.email"]) == 64 for m in flat)
    assert all(m["authorization"] == "Bearer ****" for m in flat)


def test_counters_per_operator(metric) -> None:
    ops = build_pipeline(
        [{"type": "filter", "name": "cnt", "keep": "ServiceName == 'a'"}], "traces"
    )
    before = metric("received", "operator.cnt")
    ops[0](spans_batch([{"ServiceName": "a"}, {"ServiceName": "b"}, {"ServiceName": "c"}]))
    assert metric("received", "operator.cnt") - before == 3
    assert metric("sent", "operator.cnt") >= 1
    assert metric("dropped", "operator.cnt", reason="filtered") >= 2


def test_duplicate_names_and_unknown_signal() -> None:
    with pytest.raises(ValueError, match="duplicate operator name 'x'"):
        build_pipeline([{"type": "redact", "name": "x"}, {"type": "redact", "name": "x"}], "traces")
    with pytest.raises(ValueError, match="unknown signal"):
        build_pipeline([], "profiles")


# --- user operators -------------------------------------------------------------------------


def test_example_user_function_and_factory() -> None:
    ops = build_pipeline(
        [
            {"module": "operators.example_user_ops:template_span_names", "name": "tpl"},
            {"module": "operators.example_user_ops:keep_services", "factory": True,
             "config": {"services": ["cart"]}},
        ],
        "traces",
    )  # fmt: skip
    batch = spans_batch([
        {"SpanName": "GET /users/42/orders/7", "ServiceName": "cart"},
        {"SpanName": "GET /x/1", "ServiceName": "other"},
    ])  # fmt: skip
    out = run_pipeline(ops, batch)
    assert out.column("SpanName").to_pylist() == ["GET /users/{id}/orders/{id}"]
    assert out.schema == batch.schema


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_pkg.mod:fn", "cannot import 'no_such_pkg.mod'"),
        ("operators.example_user_ops:nope", "has no attribute 'nope'"),
        (f"{FIX}:NOT_CALLABLE", "is not callable"),
    ],
)
def test_user_module_load_errors(target: str, message: str) -> None:
    with pytest.raises(OperatorError) as info:
        build_pipeline([{"module": target, "name": "mine"}], "traces")
    assert "operator step 'mine'" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("boom", "raised ValueError: user code failed on purpose"),
        ("drop_column", "returned the wrong schema: missing columns StatusMessage"),
        ("retype_column", "Duration: int64 instead of uint64"),
        ("not_a_batch", "returned list, expected pyarrow.RecordBatch"),
    ],
)
def test_user_function_runtime_errors_name_step_and_function(fn: str, message: str, metric) -> None:
    (o,) = build_pipeline([{"module": f"{FIX}:{fn}", "name": f"user-{fn}"}], "traces")
    with pytest.raises(OperatorError) as info:
        o(spans_batch([{}]))
    text = str(info.value)
    assert f"operator step 'user-{fn}' ({FIX}:{fn})" in text and message in text
    assert metric("failed", f"operator.user-{fn}") >= 1


def test_user_function_may_return_a_table_and_factory_errors() -> None:
    (o,) = build_pipeline([{"module": f"{FIX}:as_table"}], "traces")
    b = spans_batch([{}, {}])
    assert o(b).equals(b)
    with pytest.raises(OperatorError, match="factory did not return a callable"):
        build_pipeline([{"module": f"{FIX}:bad_factory", "factory": True}], "traces")


def test_flow_compat_entry_point() -> None:
    o = build_batch_operator({"type": "filter", "keep": "ServiceName == 'svc'"})
    assert o(spans_batch([{}])).num_rows == 1
    with pytest.raises(ValueError, match=r"operators\.0\.keep: unknown column"):
        build_batch_operator({"type": "filter", "keep": "Nope == 1"})


# --- inside bytewax flows -------------------------------------------------------------------


def test_stateless_pipeline_in_a_bytewax_flow() -> None:
    ops = build_pipeline([{"type": "filter", "drop": "ServiceName == 'b'"}, {"type": "redact"}],
                         "traces")  # fmt: skip
    batches = [spans_batch([{"ServiceName": s, "SpanAttributes": {"m": "x@y.io"}}
                            for s in ("a", "b", "c")]) for _ in range(3)]  # fmt: skip
    out: list[pa.RecordBatch] = []
    flow = Dataflow("ops_stateless")
    s = op.input("in", flow, TestingSource(batches))
    s = op.map("ops", s, lambda b: run_pipeline(ops, b))
    op.output("out", s, TestingSink(out))
    run_main(flow)
    assert sum(b.num_rows for b in out) == 6
    assert {dict(m)["m"] for b in out for m in b.column("SpanAttributes").to_pylist()} == {"****"}


def test_pipeline_skips_empty_batches() -> None:
    pipe = Pipeline(build_pipeline([{"type": "filter", "keep": "false"}, {"type": "redact"}],
                                   "traces"))  # fmt: skip
    assert pipe.process(spans_batch([{}])) == []
    assert pipe.flush() == [] and pipe.next_deadline() is None
