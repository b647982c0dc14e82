"""tail_sampling: each policy, the event clock, late spans, the memory bound, snapshots, and the
kernel against the offline oracle for any cut of the input into batches."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.registry import Pipeline, build_pipeline, parse_specs
from operators.sampling import head_keep_mask
from operators.tail_sampling import TailSampler, TailSamplingConfig
from otelwax.codec import decode_traces
from otelwax.schemas import TRACES_SCHEMA
from otelwax.settings import format_errors
from tests.operators.batches import random_spans, spans_batch
from tests.operators.tail_oracle import MIX_POLICIES, kept_spans
from tests.tailgen import trace_mix

T = {k: f"{i:032x}" for i, k in enumerate("abcdefg", start=1)}
ERR = {"StatusCode": "STATUS_CODE_ERROR"}
S = 1_000  # ms


def sampler(*policies: dict, wait: float = 1, **kw) -> TailSampler:
    cfg = {"type": "tail_sampling", "decision_wait": wait, "policies": list(policies), **kw}
    return TailSampler(TailSamplingConfig.model_validate(cfg), TRACES_SCHEMA)


def rows(*spans: tuple[str, str, dict] | tuple[str, str]) -> pa.RecordBatch:
    return spans_batch([{"TraceId": T[t], "SpanId": sid, **(x[0] if x else {})}
                        for t, sid, *x in spans])  # fmt: skip


def ids(t: pa.Table) -> list[str]:
    return sorted(t.column("SpanId").to_pylist())


def run(k: TailSampler, *batches: tuple[pa.RecordBatch, int]) -> list[str]:
    """Feed (batch, record time ms) pairs, then a record far later to decide everything."""
    out: list[str] = []
    for b, ts in batches:
        out += ids(k.process(b, ts))
    out += ids(k.process(rows(("e", "tick")), 10**6))
    return sorted(out)


def test_status_code_keeps_the_whole_trace_including_spans_read_before_the_error() -> None:
    k = sampler({"type": "status_code", "status_codes": ["ERROR"]})
    assert run(k, (rows(("a", "a1"), ("b", "b1")), 0), (rows(("a", "a2", ERR)), 500)) == [
        "a1", "a2"]  # fmt: skip


def test_latency_is_last_end_minus_first_start_over_the_trace() -> None:
    k = sampler({"type": "latency", "threshold": "2s", "upper_threshold": "10s"})
    t0 = 1_700_000_000_000_000_000
    slow = [("a", "a1", {"Timestamp": t0, "Duration": 10}),
            ("a", "a2", {"Timestamp": t0 + 2 * 10**9, "Duration": 10})]  # fmt: skip
    fast = [("b", "b1", {"Timestamp": t0, "Duration": 10**9})]
    huge = [("c", "c1", {"Timestamp": t0, "Duration": 11 * 10**9})]
    assert run(k, (rows(*slow, *fast, *huge), 0)) == ["a1", "a2"]


def test_probabilistic_agrees_with_the_head_sampler() -> None:
    batch = random_spans(3_000, seed=5, spans_per_trace=5)
    batch = batch.set_column(batch.schema.get_field_index("StatusCode"), "StatusCode",
                             pa.repeat(pa.scalar("STATUS_CODE_UNSET"), batch.num_rows))  # fmt: skip
    k = sampler({"type": "probabilistic", "sampling_percentage": 30})
    k.process(batch, 0)
    got = ids(k.flush())
    expected = batch.filter(pa.array(head_keep_mask(batch.column("TraceId"), 30)))
    assert got == sorted(expected.column("SpanId").to_pylist())
    assert 0 < len(got) < batch.num_rows


def test_string_attribute_looks_at_span_then_resource_attributes() -> None:
    k = sampler({"type": "string_attribute", "key": "tier", "values": ["gold", "plat.*"],
                 "regex": True})  # fmt: skip
    b = rows(("a", "a1", {"SpanAttributes": [("tier", "gold")]}),
             ("b", "b1", {"ResourceAttributes": [("tier", "platinum")]}),
             ("c", "c1", {"SpanAttributes": [("tier", "basic")]}), ("d", "d1"))  # fmt: skip
    assert run(k, (b, 0)) == ["a1", "b1"]
    k = sampler({"type": "string_attribute", "key": "tier", "values": ["basic"],
                 "invert_match": True})  # fmt: skip
    assert run(k, (b, 0)) == ["a1", "b1", "d1"]


def test_numeric_attribute_parses_values_and_ignores_non_numbers() -> None:
    k = sampler({"type": "numeric_attribute", "key": "size", "min_value": 100, "max_value": 1e4})
    b = rows(("a", "a1", {"SpanAttributes": [("size", "250")]}),
             ("b", "b1", {"SpanAttributes": [("size", "1e5")]}),
             ("c", "c1", {"SpanAttributes": [("size", "lots")]}),
             ("d", "d1", {"SpanAttributes": [("size", "99.5")]}))  # fmt: skip
    assert run(k, (b, 0)) == ["a1"]
    with pytest.raises(ValidationError, match="min_value, max_value or both"):
        sampler({"type": "numeric_attribute", "key": "size"})


def test_rate_limiting_counts_spans_per_second_of_the_event_clock() -> None:
    k = sampler({"type": "rate_limiting", "spans_per_second": 3})
    two = [("a", "a1"), ("a", "a2")]
    b1 = rows(*two, ("b", "b1"), ("b", "b2"), ("c", "c1"))  # a: 2 fits, b: 2 more does not
    # decided at clock 1000 (same second): a kept, b refused, c (1 span) fits; d next second
    assert run(k, (b1, 0), (rows(("d", "d1"), ("d", "d2")), 1_000)) == ["a1", "a2", "c1", "d1",
                                                                            "d2"]  # fmt: skip


def test_and_needs_every_sub_policy() -> None:
    k = sampler({"type": "and", "policies": [
        {"type": "status_code", "status_codes": ["ERROR"]},
        {"type": "string_attribute", "key": "tier", "values": ["gold"]}]})  # fmt: skip
    gold = {"ResourceAttributes": [("tier", "gold")]}
    b = rows(("a", "a1", {**ERR, **gold}), ("b", "b1", ERR), ("c", "c1", gold))
    assert run(k, (b, 0)) == ["a1"]


def test_span_count_counts_the_spans_read_before_the_decision() -> None:
    b = rows(("a", "a1"), ("a", "a2"), ("b", "b1"), *[("c", f"c{i}") for i in range(4)])
    assert run(sampler({"type": "span_count", "min_spans": 2, "max_spans": 3}), (b, 0)) == [
        "a1", "a2"]  # fmt: skip
    # max_spans 0 (the default) is no upper bound, as in the Collector
    got = run(sampler({"type": "span_count", "min_spans": 2}), (b, 0))
    assert got == ["a1", "a2", "c0", "c1", "c2", "c3"]
    with pytest.raises(ValidationError, match="max_spans is below min_spans"):
        sampler({"type": "span_count", "min_spans": 3, "max_spans": 2})


def test_boolean_attribute_matches_the_rendered_value_span_then_resource() -> None:
    b = rows(("a", "a1", {"SpanAttributes": [("cached", "true")]}),
             ("b", "b1", {"ResourceAttributes": [("cached", "false")]}),
             ("c", "c1", {"SpanAttributes": [("cached", "yes")]}), ("d", "d1"))  # fmt: skip
    assert run(sampler({"type": "boolean_attribute", "key": "cached", "value": True}),
               (b, 0)) == ["a1"]  # fmt: skip
    assert run(sampler({"type": "boolean_attribute", "key": "cached", "value": False}),
               (b, 0)) == ["b1"]  # fmt: skip


def composite(total: int, subs: list[dict], alloc: dict[str, int], order=None) -> dict:
    rate = [{"policy": n, "percent": pct} for n, pct in alloc.items()]
    c = {"type": "composite", "max_total_spans_per_second": total, "composite_sub_policy": subs,
         "rate_allocation": rate}  # fmt: skip
    return {**c, "policy_order": order} if order else c


GOLD = {"name": "gold", "type": "string_attribute", "key": "tier", "values": ["gold"]}
ERRORS = {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}


def test_composite_first_matching_sub_policy_in_policy_order_wins() -> None:
    # gold may keep 2 spans per second, errors 18: b matches both, but whichever comes first
    # in policy_order decides it (a full gold allocation drops b, errors is not asked).
    both = {**ERR, "ResourceAttributes": [("tier", "gold")]}
    b = rows(("a", "a1", both), ("a", "a2", both), ("b", "b1", both), ("c", "c1", ERR))
    alloc = {"gold": 10, "errors": 90}
    k = sampler(composite(20, [ERRORS, GOLD], alloc, order=["gold", "errors"]))
    assert run(k, (b, 0)) == ["a1", "a2", "c1"]
    k = sampler(composite(20, [ERRORS, GOLD], alloc, order=["errors", "gold"]))
    assert run(k, (b, 0)) == ["a1", "a2", "b1", "c1"]
    k = sampler(composite(20, [GOLD, ERRORS], alloc))  # no policy_order: as listed
    assert run(k, (b, 0)) == ["a1", "a2", "c1"]


def test_composite_allocation_is_honoured_per_second_of_the_event_clock() -> None:
    every = {"name": "all", "type": "span_count", "min_spans": 1}
    k = sampler(composite(10, [every], {"all": 50}))  # 5 spans per second
    two = [(t, f"{t}{i}") for t in "abc" for i in (1, 2)]
    # decided at clock 1000: a and b fit (4), c does not (6), the smaller d still does (5);
    # f and g are decided at the tick, in a new second
    assert run(k, (rows(*two, ("d", "d1")), 0),
               (rows(("f", "f1"), ("f", "f2"), ("g", "g1"), ("g", "g2")), 1_000)) == [
        "a1", "a2", "b1", "b2", "d1", "f1", "f2", "g1", "g2"]  # fmt: skip
    # percent 0: an equal share of the total (6 // 2 = 3); no rate_allocation entry: 0
    gold = {"ResourceAttributes": [("tier", "gold")]}
    b = rows(("a", "a1", gold), ("a", "a2", gold), ("b", "b1", ERR), ("c", "c1", gold),
             ("c", "c2", gold), ("d", "d1", gold))  # fmt: skip
    assert run(sampler(composite(6, [GOLD, ERRORS], {"gold": 0})), (b, 0)) == ["a1", "a2", "d1"]


def test_composite_rate_limiting_sub_policy_counts_only_the_traces_reaching_it() -> None:
    paced = {"name": "paced", "type": "rate_limiting", "spans_per_second": 2}
    k = sampler(composite(100, [ERRORS, paced], {"errors": 50, "paced": 50}))
    b = rows(("a", "a1", ERR), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("c", "c1"))
    assert run(k, (b, 0)) == ["a1", "a2", "b1", "b2"]  # a went to errors; c is over paced's 2


def test_composite_config_errors_name_the_path() -> None:
    def problems(policy: dict) -> list[str]:
        with pytest.raises(ValidationError) as info:
            sampler(policy)
        return format_errors(info.value)

    at = "policies.0.composite"
    assert problems(composite(10, [GOLD, ERRORS], {"gold": 50}, order=["gold", "nope"])) == [
        f"{at}.policy_order: Value error, entry 1: 'nope' is not a composite_sub_policy name "
        "(gold, errors)"]  # fmt: skip
    assert problems(composite(10, [GOLD, ERRORS], {"gold": 50}, order=["gold"])) == [
        f"{at}.policy_order: Value error, list every composite_sub_policy or none "
        "(missing: errors)"]  # fmt: skip
    assert problems(composite(10, [GOLD, ERRORS], {"gold": 60, "errors": 50})) == [
        f"{at}.rate_allocation: Value error, the percents add up to more than 100"]
    assert problems(composite(10, [GOLD, ERRORS], {"gold": 50, "golden": 5})) == [
        f"{at}.rate_allocation: Value error, entry 1: 'golden' is not a composite_sub_policy "
        "name (gold, errors)"]  # fmt: skip
    unnamed = {k: v for k, v in ERRORS.items() if k != "name"}
    assert problems(composite(10, [GOLD, unnamed], {"gold": 50}))[0].startswith(
        f"{at}.composite_sub_policy: Value error, sub-policy 1 needs a name")
    assert problems(composite(10, [GOLD, GOLD], {"gold": 50}))[0].endswith(
        "sub-policy names repeat: gold")
    assert problems({**composite(10, [GOLD], {"gold": 50}), "max_spans_per_second": 5}) == [
        f"{at}.max_spans_per_second: unknown key"]
    assert problems(composite(10, [{**GOLD, "valuez": ["x"]}], {"gold": 50}))[-1] == (
        f"{at}.composite_sub_policy.0.string_attribute.valuez: unknown key")


def test_the_clock_is_the_record_time_and_late_spans_follow_the_decision() -> None:
    k = sampler({"type": "status_code", "status_codes": ["ERROR"]}, wait=1)
    assert ids(k.process(rows(("a", "a1", ERR), ("b", "b1")), 0)) == []
    # A record older than the clock does not move it back; nothing is due yet.
    assert ids(k.process(rows(("a", "a2")), 300)) == []
    assert ids(k.process(rows(("c", "c1")), 200)) == []
    assert k.clock_ms == 300
    # Time 1000 reaches a's and b's due time: decided before this record's spans are read,
    # so a3 and b2 are late and follow (kept / dropped).
    out = k.process(rows(("a", "a3"), ("b", "b2"), ("c", "c2", ERR)), 1_000)
    assert ids(out) == ["a1", "a2", "a3"]
    assert (k.stats["kept"], k.stats["sampled"], k.dropped_rows) == (1, 1, 2)
    assert k.waiting_traces == 1  # c: first read at clock 300, due at 1300
    assert ids(k.process(rows(("a", "a4"), ("d", "d1")), 1_300)) == ["a4", "c1", "c2"]


def test_memory_bound_decides_or_drops_the_oldest_traces_and_counts(metric) -> None:
    err = [("a", "a1", ERR), ("b", "b1", ERR), ("c", "c1", ERR)]
    k = sampler({"type": "status_code", "status_codes": ["ERROR"]}, max_traces=2)
    assert ids(k.process(rows(*err), 0)) == ["a1"]  # decided early, at the current clock
    assert (k.stats["early"], k.waiting_traces) == (1, 2)
    k = sampler({"type": "status_code", "status_codes": ["ERROR"]}, max_traces=2,
                overflow="drop")  # fmt: skip
    assert ids(k.process(rows(*err), 0)) == []
    assert (k.stats["overflow"], k.overflow_rows) == (1, 1)
    assert ids(k.process(rows(("a", "a2", ERR)), 5)) == []  # a was dropped: a2 follows
    (op,) = build_pipeline([{"type": "tail_sampling", "name": "tail-bound", "max_traces": 1,
                             "overflow": "drop"}], "traces")  # fmt: skip
    op.process(rows(("a", "a1"), ("b", "b1")), now=0)
    assert metric("dropped", "operator.tail-bound", reason="tail_overflow") == 1


def test_decided_cache_evicts_the_oldest_decisions() -> None:
    k = sampler({"type": "status_code", "status_codes": ["ERROR"]}, decided_cache=1)
    k.process(rows(("a", "a1", ERR)), 0)
    k.process(rows(("b", "b1", ERR)), 2_000)  # a decided (kept); b waits
    k.process(rows(("c", "c1")), 4_000)  # b decided (kept): a leaves the cache
    # a's late span starts a new trace (no error: dropped); b's follows its decision
    assert run(k, (rows(("a", "a2"), ("b", "b2")), 4_000)) == ["b2"]


def test_snapshot_copy_and_pickle_resume_identically() -> None:
    recs = trace_mix(300, seed=9)
    policies = [{"type": "status_code", "status_codes": ["ERROR"]},
                {"type": "rate_limiting", "spans_per_second": 30}]  # fmt: skip
    k = sampler(*policies)
    parts = [recs[i : i + 40] for i in range(0, len(recs), 40)]
    outs = [_feed(k, p) for p in parts[:3]]
    snap = pickle.loads(pickle.dumps(copy.deepcopy(k)))
    rest = [_feed(k, p) for p in parts[3:]]
    again = [_feed(snap, p) for p in parts[3:]]
    assert rest == again and any(rest) and any(outs)


def _feed(k: TailSampler, part: list) -> list[str]:
    res = decode_traces([r.value for r in part])
    ts = np.repeat(np.array([r.ts_ms for r in part], np.int64), res.rows_per_payload)
    return k.process(res.batch, ts).column("SpanId").to_pylist()




@pytest.mark.parametrize("seed", [1, 2])
def test_any_cut_into_batches_keeps_what_the_oracle_keeps(seed: int) -> None:
    recs = trace_mix(700, seed=seed)
    expected, _ = kept_spans([(0, r.ts_ms, r.value) for r in recs], 1.0, MIX_POLICIES)
    rnd = random.Random(seed)
    k = sampler(*MIX_POLICIES, wait=1)
    got: list[str] = []
    i = 0
    while i < len(recs):
        n = rnd.randint(1, 80)
        got += _feed(k, recs[i : i + n])
        i += n
    assert len(got) == len(set(got))
    assert set(got) == expected and expected


def test_pipeline_runs_by_event_time_and_refuses_the_wall_clock() -> None:
    specs = [{"type": "tail_sampling", "decision_wait": 1},
             {"type": "filter", "drop": "SpanName == 'drop-me'"}]  # fmt: skip
    ops = build_pipeline(specs, "traces")
    pipe = Pipeline(ops)
    b = rows(("a", "a1", {**ERR, "SpanName": "drop-me"}), ("a", "a2"))
    assert pipe.process(b, now=0) == []
    out = pipe.process(rows(("b", "b1")), now=5)
    assert [s for o in out for s in o.column("SpanId").to_pylist()] == ["a2"]
    assert pipe.next_deadline() is None
    with pytest.raises(Exception, match="needs the event time"):
        pipe.process(b)


def test_config_problems() -> None:
    with pytest.raises(ValueError, match="tail_sampling works on traces only"):
        build_pipeline([{"type": "tail_sampling"}], "logs")
    with pytest.raises(ValueError, match="only one tail_sampling"):
        build_pipeline([{"type": "tail_sampling", "name": "a"},
                        {"type": "tail_sampling", "name": "b"}], "traces")  # fmt: skip
    with pytest.raises(ValueError, match=r"operators\.1\.type: tail_sampling must be the first"):
        build_pipeline([{"type": "redact"}, {"type": "tail_sampling"}], "traces")
    with pytest.raises(ValidationError, match="status_codes"):
        parse_specs([{"type": "tail_sampling", "policies": [{"type": "status_code"}]}])
    (spec,) = parse_specs([{"type": "tail_sampling", "decision_wait": "500ms"}])
    assert spec.decision_wait == 0.5 and spec.policies[0].type == "status_code"
