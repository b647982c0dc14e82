"""Benchmark of the OTLP → Arrow decode stage alone, on one core.

Decodes realistic 100-span ``ExportTraceServiceRequest`` payloads from ``tests/otlpgen.py``
(5 resources x 20 spans, 8 attributes, 1 event per span, ~425 B/span) in batches, with the
pure-Python reference decoder and, when it is built, the native one (for comparison), plus
logs. Each case runs ``--repeat`` times; the best and the median wall-clock rate are reported,
and the best rate per CPU second (the machine is shared: CPU time is the steadier number).

    .venv/bin/python bench/decode_bench.py                     # pinned to core 1
    .venv/bin/python bench/decode_bench.py --requests 100 --repeat 3 --core -1   # quick

Prints a table and writes ``bench/results/decode.json`` and ``decode.txt``.
Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otelwax.codec import _as_result, pydecode  # noqa: E402
from tests.otlpgen import logs_payloads, trace_payloads  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def measure(fn: Callable[[list[bytes]], object], batches: list[list[bytes]], repeat: int) -> dict:
    rows = 0
    rates = []
    cpu_rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        c0 = time.process_time()
        rows = 0
        for b in batches:
            rows += _as_result(fn(b)).batch.num_rows
        rates.append(rows / (time.perf_counter() - t0))
        cpu_rates.append(rows / max(time.process_time() - c0, 1e-9))
    return {
        "rows": rows,
        "best_rows_per_s": max(rates),
        "median_rows_per_s": statistics.median(rates),
        "best_rows_per_cpu_s": max(cpu_rates),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="100-span requests per run")
    ap.add_argument("--batch", type=int, default=100, help="requests decoded per call")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--core", type=int, default=1, help="pin to this CPU (-1: no pinning)")
    args = ap.parse_args()
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})

    traces = trace_payloads(args.requests, seed=42)
    rich = trace_payloads(args.requests // 5 or 1, seed=43, all_value_types=True, links_per_span=2)
    logs = logs_payloads(args.requests, seed=44)
    per_span = sum(map(len, traces)) / (100 * len(traces))

    def batched(p: list[bytes]) -> list[list[bytes]]:
        return [p[i : i + args.batch] for i in range(0, len(p), args.batch)]

    cases: list[tuple[str, Callable, list[bytes]]] = [
        ("python traces (100-span requests)", pydecode.decode_traces, traces),
        ("python traces, all value types + 2 links", pydecode.decode_traces, rich),
        ("python logs (100-record requests)", pydecode.decode_logs, logs),
    ]
    try:
        import otelwax._native as native  # built by the native codec helper (optional)

        cases += [
            ("native traces (100-span requests)", native.decode_traces, traces),
            ("native logs (100-record requests)", native.decode_logs, logs),
        ]
    except ImportError:
        pass

    results = []
    lines: list[str] = []

    def out(line: str) -> None:
        print(line)
        lines.append(line)

    out(f"payloads: {len(traces)} x 100 spans, {per_span:.0f} B/span, batch {args.batch} req")
    out(f"{'case':<44} {'rows':>8} {'best rows/s':>12} {'median':>12} {'rows/CPU-s':>12}")
    for name, fn, payloads in cases:
        r = measure(fn, batched(payloads), args.repeat)
        r["case"] = name
        results.append(r)
        out(
            f"{name:<44} {r['rows']:>8} {r['best_rows_per_s']:>12,.0f} "
            f"{r['median_rows_per_s']:>12,.0f} {r['best_rows_per_cpu_s']:>12,.0f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "bench": "decode",
        "python": platform.python_version(),
        "core": args.core,
        "requests": args.requests,
        "batch_requests": args.batch,
        "bytes_per_span": per_span,
        "results": results,
    }
    (RESULTS / "decode.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / "decode.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'decode.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
