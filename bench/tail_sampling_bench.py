"""Benchmark of tail_sampling (``operators.tail_sampling``) on one worker: spans/s of the
sampler on Kafka-range-sized batches, and the memory a waiting trace costs.

Data: ``tests/tailgen.trace_mix`` — traces of 1..18 spans (mean ~6) in 1-3 records each, 8 %
with an error, 6 % slow, 8 % with a late span, 4 attributes per span — decoded range by range
beforehand (decode is measured separately: it is the flow's cost either way). Policies: all
of ``tests.operators.tail_oracle.MIX_POLICIES``.

    .venv/bin/python bench/tail_sampling_bench.py                       # 30K traces, 10 s wait
    .venv/bin/python bench/tail_sampling_bench.py --traces 5000 --core -1   # quick

``--spacing-ms`` sets the traces per second of event time, so ``decision_wait / spacing`` traces
wait at any moment. Reports sampler spans/s (best and median of ``--repeat``), the peak of
waiting traces, the Arrow bytes they hold (per trace and per span), the process RSS growth,
and the cost of a bytewax snapshot (pickle: lz4 Arrow IPC) at the peak; extrapolates the
traces one worker holds in 512 MiB. Writes ``bench/results/tail_sampling.json``. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from operators.tail_sampling import TailSampler, TailSamplingConfig  # noqa: E402
from otelwax.codec import codec_name, decode_traces  # noqa: E402
from otelwax.schemas import TRACES_SCHEMA  # noqa: E402
from tests.operators.tail_oracle import MIX_POLICIES  # noqa: E402
from tests.tailgen import trace_mix  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MIB = 1 << 20


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--traces", type=int, default=30_000)
    ap.add_argument("--spacing-ms", type=float, default=1.0, help="event time between traces")
    ap.add_argument("--wait", type=float, default=10.0, help="decision_wait, seconds")
    ap.add_argument("--range-records", type=int, default=500, help="records per Kafka range")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--core", type=int, default=1, help="pin to this CPU (-1: no pinning)")
    args = ap.parse_args()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})

    recs = trace_mix(args.traces, seed=7, spacing_ms=args.spacing_ms)
    ranges = []
    t0 = time.perf_counter()
    for i in range(0, len(recs), args.range_records):
        part = recs[i : i + args.range_records]
        res = decode_traces([r.value for r in part])
        ts = np.repeat(np.array([r.ts_ms for r in part], np.int64), res.rows_per_payload)
        ranges.append((res.batch, ts))
    decode_s = time.perf_counter() - t0
    spans = sum(b.num_rows for b, _ in ranges)
    cfg = TailSamplingConfig.model_validate({
        "type": "tail_sampling", "decision_wait": args.wait, "policies": MIX_POLICIES,
        "max_traces": 10**7, "decided_cache": 100_000,
    })  # fmt: skip

    # One pass for the memory figures (looked at after every range), then timed passes.
    base = rss_mib()
    k = TailSampler(cfg, TRACES_SCHEMA)
    kept = 0
    top = (0, 0, 0, 0.0)
    for batch, ts in ranges:
        kept += k.process(batch, ts).num_rows
        if k.waiting_traces > top[0]:
            top = (k.waiting_traces, k.buffered_rows, k.nbytes, rss_mib() - base)
    t1 = time.perf_counter()
    blob = pickle.dumps(copy.deepcopy(k))
    snap_s = time.perf_counter() - t1
    peak = {"waiting_traces": top[0], "waiting_spans": top[1], "arrow_bytes": top[2],
            "rss_growth_mib": round(top[3], 1), "kept_spans": kept,
            "end_state_bytes": k.nbytes, "end_waiting": k.waiting_traces,
            "snapshot_bytes": len(blob), "snapshot_s": snap_s}  # fmt: skip
    del k, blob
    rates = []
    for _ in range(args.repeat):
        k = TailSampler(cfg, TRACES_SCHEMA)
        t0 = time.perf_counter()
        for batch, ts in ranges:
            k.process(batch, ts)
        rates.append(spans / (time.perf_counter() - t0))
    per_trace = peak["arrow_bytes"] / max(1, peak["waiting_traces"])
    rss_per_trace = peak["rss_growth_mib"] * MIB / max(1, peak["waiting_traces"])
    out = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "codec": codec_name(),
        "traces": args.traces,
        "spans": spans,
        "spans_per_trace": spans / args.traces,
        "decision_wait_s": args.wait,
        "traces_per_s_event_time": 1000 / args.spacing_ms,
        "range_records": args.range_records,
        "decode_spans_per_s": spans / decode_s,
        "sampler_best_spans_per_s": max(rates),
        "sampler_median_spans_per_s": statistics.median(rates),
        **peak,
        "arrow_bytes_per_waiting_trace": per_trace,
        "arrow_bytes_per_waiting_span": peak["arrow_bytes"] / max(1, peak["waiting_spans"]),
        "rss_bytes_per_waiting_trace": rss_per_trace,
        "traces_in_512_mib_arrow": int(512 * MIB / per_trace),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tail_sampling.json").write_text(json.dumps(out, indent=2))
    for key, v in out.items():
        print(f"{key:34} {v:,.1f}" if isinstance(v, float) else f"{key:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
