"""OTLP → Arrow decode throughput on one core: native (Rust) vs pure-Python reference.

Workload: realistic requests from tests/otlpgen (100 spans each: 5 resources x 20 spans, 8
attributes and 1 event per span; logs: 100 records each), decoded in batches of ``--requests``
payloads (default 100 → 10K spans per call), the way a flow decodes a batch of Kafka messages.
Also metrics (100 data points per request: gauges, sums, histograms) and the native
Arrow → OTLP trace encoder.

    .venv/bin/python bench/codec_bench.py [--requests 100] [--seconds 3]

Prints a table and writes bench/results/codec.json. The process pins itself to CPU 0.
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

from otelwax.codec import native, pydecode, pymetrics  # noqa: E402
from tests.otlpgen import logs_payloads, trace_payloads  # noqa: E402


def _metric_payloads(n: int) -> list[bytes]:
    """100 data points per request: 4 gauges, 4 sums, 2 histograms x 10 points (as
    bench/metrics_bench.py)."""
    from tests.promfixtures import counter, gauge, histogram, metrics_request

    base = 1_764_000_000_000_000_000
    out = []
    for i in range(n):
        t = base + i * 1_000_000
        r = i % 10
        res = {"service.name": f"svc-{r}", "service.instance.id": f"i-{r}", "host.name": f"h-{r}"}
        pts = [(t, float(i + j), {"k": f"v{j}", "route": "/api/x"}) for j in range(10)]
        ms = [gauge(f"bench.gauge{g}", pts, unit="By") for g in range(4)]
        ms += [counter(f"bench.count{c}", pts, delta=c >= 2) for c in range(4)]
        hp = [(t, [1, 2, 3, 4], 12.5, {"k": f"v{j}"}) for j in range(10)]
        ms += [histogram(f"bench.lat{h}", hp, [0.01, 0.1, 1.0], unit="s") for h in range(2)]
        out.append(metrics_request(res, ms))
    return out


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
    ap.add_argument("--requests", type=int, default=100, help="payloads per decode call")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "codec.json"))
    args = ap.parse_args()

    pinned = False
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {0})
            pinned = True
        except OSError:
            pass

    metrics = _metric_payloads(args.requests)
    n_points = pymetrics.decode_metrics(metrics).num_rows
    metrics_bytes = sum(map(len, metrics))
    traces = trace_payloads(args.requests, seed=1)
    logs = logs_payloads(args.requests, seed=1)
    n_spans = pydecode.decode_traces(traces).batch.num_rows
    n_logs = pydecode.decode_logs(logs).batch.num_rows
    trace_bytes = sum(map(len, traces))
    logs_bytes = sum(map(len, logs))

    cases: list[tuple[str, str, Callable[[], object], int, int]] = [
        ("traces decode", "python", lambda: pydecode.decode_traces(traces), n_spans, trace_bytes),
        ("logs decode", "python", lambda: pydecode.decode_logs(logs), n_logs, logs_bytes),
        (
            "metrics decode",
            "python",
            lambda: pymetrics.decode_metrics(metrics),
            n_points,
            metrics_bytes,
        ),
    ]
    if native.AVAILABLE:
        batch = native.decode_traces(traces).batch
        encoded_len = len(native.encode_traces(batch))
        cases += [
            ("traces decode", "native", lambda: native.decode_traces(traces), n_spans, trace_bytes),
            ("logs decode", "native", lambda: native.decode_logs(logs), n_logs, logs_bytes),
            (
                "metrics decode",
                "native",
                lambda: native.decode_metrics(metrics),
                n_points,
                metrics_bytes,
            ),
            ("traces encode", "native", lambda: native.encode_traces(batch), n_spans, encoded_len),
        ]
    else:
        print(f"native codec not built ({native.IMPORT_ERROR}); measuring Python only")

    results = []
    for stage, impl, fn, rows, nbytes in cases:
        r = measure(fn, rows, args.seconds)
        r.update(
            stage=stage,
            impl=impl,
            rows_per_call=rows,
            mb_per_s=nbytes * r["best_rows_per_s"] / rows / 1e6,
        )
        results.append(r)

    def speed(stage: str, impl: str) -> float | None:
        for r in results:
            if r["stage"] == stage and r["impl"] == impl:
                return r["best_rows_per_s"]
        return None

    print(
        f"\nOTLP ⇄ Arrow codec, one core (pinned: {pinned}), {args.requests} requests per call, "
        f"{n_spans} spans / {n_logs} logs / {n_points} metric points per call\n"
    )
    hdr = (
        f"{'stage':<16} {'impl':<7} {'best rows/s':>13} {'median rows/s':>14} "
        f"{'ms/call':>8} {'MB/s':>7} {'speedup':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        base = speed(r["stage"], "python")
        up = f"{r['best_rows_per_s'] / base:7.1f}x" if base and r["impl"] == "native" else ""
        print(
            f"{r['stage']:<16} {r['impl']:<7} {r['best_rows_per_s']:>13,.0f} "
            f"{r['median_rows_per_s']:>14,.0f} {r['median_ms_per_call']:>8.2f} "
            f"{r['mb_per_s']:>7.1f} {up:>8}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "bench": "codec",
                "requests_per_call": args.requests,
                "spans_per_call": n_spans,
                "logs_per_call": n_logs,
                "metric_points_per_call": n_points,
                "pinned_cpu0": pinned,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
