"""Arrow → OTLP trace encoding (the Jaeger sink's CPU cost) on one core, and optionally the
whole export to a running Jaeger.

Workload: ``TRACES_SCHEMA`` batches decoded from tests/otlpgen requests (100 spans each: 5
resources x 20 spans, 8 attributes and 1 event per span), ``--requests`` requests per batch.

    .venv/bin/python bench/encode_bench.py [--requests 100] [--seconds 3]
    .venv/bin/python bench/encode_bench.py --jaeger 127.0.0.1:14317   # + export to Jaeger

Prints a table and writes bench/results/encode.json. The process pins itself to CPU 0 (the
Jaeger process, if any, is not pinned).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from otelwax.codec import native, pydecode, pyencode  # noqa: E402
from tests.otlpgen import trace_payloads  # noqa: E402


def measure(fn: Callable[[], object], rows: int, seconds: float) -> dict[str, float]:
    """Run ``fn`` repeatedly for about ``seconds``; rows/s of the best and median run."""
    fn()  # warm up
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "runs": len(times),
        "best_rows_per_s": rows / min(times),
        "median_rows_per_s": rows / statistics.median(times),
        "median_ms_per_call": statistics.median(times) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="100-span requests per batch")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--jaeger", default=None, help="host:port of a Jaeger OTLP gRPC receiver")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "encode.json"))
    args = ap.parse_args()

    pinned = False
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {0})
            pinned = True
        except OSError:
            pass

    batch = pydecode.decode_traces(trace_payloads(args.requests, seed=1)).batch
    n = batch.num_rows
    payload = pyencode.encode_traces(batch)
    results: dict[str, dict[str, float]] = {}
    results["python encode_traces"] = measure(
        lambda: pyencode.encode_traces(batch), n, args.seconds
    )
    if native.AVAILABLE:
        results["native encode_traces"] = measure(
            lambda: native.encode_traces(batch), n, args.seconds
        )
    if args.jaeger:
        from connectors.otlp_export import JaegerExporter, JaegerExporterConfig

        for name in ["python", *(["native"] if native.AVAILABLE else [])]:
            cfg = JaegerExporterConfig(enabled=True, endpoint=args.jaeger, encoder=name)
            with JaegerExporter(cfg, component="sink.jaeger.bench") as exp:
                results[f"export to Jaeger ({name} encoder, 1000 spans/request)"] = measure(
                    lambda exp=exp: exp.export(batch), n, args.seconds
                )

    print(f"\n{n} spans per batch, {len(payload) / n:.0f} B/span encoded, pinned={pinned}\n")
    print(f"{'stage':<58} {'best spans/s':>14} {'median spans/s':>15} {'ms/batch':>9}")
    for name, r in results.items():
        print(
            f"{name:<58} {r['best_rows_per_s']:>14,.0f} {r['median_rows_per_s']:>15,.0f} "
            f"{r['median_ms_per_call']:>9.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "spans_per_batch": n,
                "bytes_per_span": len(payload) / n,
                "pinned": pinned,
                "python": platform.python_version(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
