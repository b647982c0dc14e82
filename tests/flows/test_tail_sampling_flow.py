"""flows.traces with tail_sampling, exactly once: SIGKILL at random moments, then the stored
spans must be exactly the set the policy selects from the whole input (offline oracle)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.conftest import free_port
from tests.flows.conftest import chdb_rows, consume_all, produce, scrape_metrics
from tests.operators.tail_oracle import MIX_POLICIES, kept_spans, spans_of
from tests.tailgen import trace_mix

WAIT_S = 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recovery", "workers"),
    [
        pytest.param(True, 1, marks=pytest.mark.extended),
        # make test-all (CI time): make test keeps the traces flow's SIGKILL test and the
        # sampler's snapshot-resume and any-cut tests (tests/operators), ~21 s cheaper
        pytest.param(False, 1, marks=pytest.mark.extended),
        pytest.param(True, 2, marks=pytest.mark.extended),
    ],
    ids=["bytewax-recovery", "intents-only", "recovery-2-workers"],
)
def test_sigkill_at_random_moments_stores_exactly_the_oracles_spans(
    flow_run, recovery: bool, workers: int
) -> None:
    """Errors, slow roots, gold customers, late spans (2.5 s after the trace started, after
    its decision) in 2 partitions; small ranges cut by time, so where ranges end depends on
    timing and a replay must re-cut them from the intents and feed them to the snapshot's
    sampler state. Without recovery, a restart rebuilds the state from the first range. With
    two workers a partition's ranges move to the worker that owns its sampler (and sink)."""
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    run = flow_run(
        partitions=2,
        source={"batch": {"max_records": 60, "max_delay_s": 0.1}, "poll_max_messages": 8},
        operators=[{"type": "tail_sampling", "decision_wait": WAIT_S, "policies": MIX_POLICIES}],
    )
    if recovery:
        run.init_recovery(partitions=workers)
    recs = trace_mix(900, seed=seed, t0_ms=int(time.time() * 1000) - 120_000)
    half = len(recs) * 2 // 3

    def send(part: list) -> None:
        produce(run.bootstrap, run.topic, [r.value for r in part], [r.key for r in part],
                timestamps=[r.ts_ms for r in part])  # fmt: skip

    send(recs[:half])

    def late_produce() -> None:  # more records arrive while the flow is being killed
        for i in range(half, len(recs), 100):
            time.sleep(0.4)
            send(recs[i : i + 100])

    producer = threading.Thread(target=late_produce, daemon=True)
    producer.start()
    kills = run.kill_at_random_moments(
        rnd, 3, span=(1.0, 3.0), after="codec: using", recovery=recovery, snapshot_s=1,
        extra=["-w", str(workers)],
    )
    producer.join(60)
    # A record 10 s later on each partition moves its clock past every trace's decision.
    tick = trace_mix(1, seed=seed + 1, t0_ms=recs[-1].ts_ms + 10_000)[0]  # a trace of its own
    for p in (0, 1):
        produce(run.bootstrap, run.topic, [tick.value], [tick.key], p, [tick.ts_ms])
    run.run_to_end(recovery=recovery, snapshot_s=1, timeout=120, extra=["-w", str(workers)])

    msgs = sorted(consume_all(run.bootstrap, run.topic), key=lambda m: (m.partition(), m.offset()))
    assert len(msgs) == len(recs) + 2
    records = [(m.partition(), m.timestamp()[1], m.value()) for m in msgs]
    expected, waiting = kept_spans(records, WAIT_S, MIX_POLICIES)
    stored = [r[0] for r in chdb_rows(run.settings["clickhouse"]["path"],
                                      "SELECT SpanId FROM otel.otel_traces")]  # fmt: skip
    log = run.log_text(10**9)
    why = f"seed={seed} kills={kills} replays={log.count('to re-cut') - log.count(' 0 recorded')}"
    assert len(stored) == len(set(stored)), f"duplicate spans; {why}"
    assert set(stored) == expected, (
        f"missing {len(expected - set(stored))}, extra {len(set(stored) - expected)}; {why}"
    )
    assert waiting == 2  # the two tick traces wait for a clock that never comes
    assert kills >= 2, why


def test_decisions_are_counted_on_metrics(flow_run) -> None:
    """/metrics: spans kept (sent) and sampled out (dropped) as rows, decided traces kept and
    sampled out as traces, equal to what the oracle decides."""
    run = flow_run(
        partitions=1,
        operators=[{"type": "tail_sampling", "decision_wait": WAIT_S, "policies": MIX_POLICIES}],
    )
    recs = trace_mix(150, seed=5, t0_ms=int(time.time() * 1000) - 60_000)
    recs.append(trace_mix(1, seed=6, t0_ms=recs[-1].ts_ms + 10_000)[0])  # moves the clock
    produce(run.bootstrap, run.topic, [r.value for r in recs], [r.key for r in recs], 0,
            [r.ts_ms for r in recs])  # fmt: skip
    kept, waiting = kept_spans([(0, r.ts_ms, r.value) for r in recs], WAIT_S, MIX_POLICIES)
    spans = [s for r in recs for s in spans_of(r.value)]
    kept_traces = {s.trace_id for s in spans if s.span_id in kept}
    port = free_port()
    p = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
    c = 'component="operator.tail_sampling.0"'
    rows = f'otelwax_sent_total{{{c},unit="rows"}} {float(len(kept))}'
    traces = f'otelwax_sent_total{{{c},unit="traces"}} {float(len(kept_traces))}'
    text = scrape_metrics(port, rows, traces)
    p.kill()
    assert rows in text and traces in text, text[-3000:]
    assert waiting == 1
    sampled = 150 - len(kept_traces)
    assert f'otelwax_dropped_total{{{c},reason="sampled",unit="traces"}} {float(sampled)}' in text
    tick_spans = len(spans_of(recs[-1].value))
    dropped_rows = float(len(spans) - len(kept) - tick_spans)
    assert f'otelwax_dropped_total{{{c},reason="sampled",unit="rows"}} {dropped_rows}' in text
