"""flows.metrics backlog into embedded chdb: data points/s of the whole flow, two trees interleaved.

    .venv/bin/python bench/metrics_flow_bench.py [--requests 3000] [--runs 3]
        [--kafka 127.0.0.1:19092] [--tree before=/tmp/base --tree after=.] [--profile out.prof]

Produces ``requests`` OTLP metrics requests of 100 data points (bench/metrics_bench.py's mix:
gauges, cumulative and delta sums, histograms) to a fresh 1-partition topic once, then runs
``flows.metrics`` (Kafka → decode → ClickHouse only, ``source.stop_at_end``) over it in a
fresh chdb folder per run, in a child process per run with each ``--tree`` first on
``PYTHONPATH``, alternating trees, and prints the median per tree. The time includes flow
start-up (chdb open, DDL) and the Kafka read. Numbers are for comparison, not thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(topic: str, kafka: str, n_points: int, profile: str | None) -> None:
    """Run the flow of the tree on sys.path once; print {"seconds", "rows"} as JSON."""
    from bytewax.testing import run_main

    from flows.metrics import build_from_settings, load_settings

    path = tempfile.mkdtemp(prefix="metrics_flow_bench_")
    common = {
        "kafka": {"bootstrap_servers": kafka},
        "clickhouse": {"path": path, "create_schema": True},
        "remote_write": None,
        "metrics_port": None,
        "progress_s": 0,
    }
    try:  # this tree's settings shape, else the one before issue 13
        settings = load_settings(None, env={}, source={"topic": topic, "stop_at_end": True},
                                 **common)  # fmt: skip
    except ValueError:
        common.pop("progress_s")
        settings = load_settings(None, env={}, topic=topic, tail=False, **common)
    flow = build_from_settings(settings)
    import otelwax.codec

    decode, spent = otelwax.codec.decode_metrics, {"decode": 0.0}

    def timed_decode(values: list[bytes]) -> object:
        t = time.perf_counter()
        try:
            return decode(values)
        finally:
            spent["decode"] += time.perf_counter() - t

    otelwax.codec.decode_metrics = timed_decode  # both trees import it when decoding
    t0 = time.perf_counter()
    if profile:
        import cProfile

        cProfile.runctx("run_main(flow)", globals(), {"run_main": run_main, "flow": flow},
                        profile)  # fmt: skip
    else:
        run_main(flow)
    secs = time.perf_counter() - t0
    import chdb.session

    s = chdb.session.Session(path)
    rows = sum(
        int(s.query(f"SELECT count() FROM otel.{t}", "CSV").data().strip() or 0)
        for t in ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram")
    )
    s.close()
    from prometheus_client import REGISTRY

    for m in REGISTRY.collect():  # seconds spent per (component, operation), all threads
        for smp in m.samples:
            if smp.name == "otelwax_latency_seconds_sum" and smp.value:
                spent[f"{smp.labels['component']}.{smp.labels['operation']}"] = smp.value
    where = {k: round(v, 2) for k, v in spent.items()}
    print(json.dumps({"seconds": secs, "rows": rows, "points": n_points, "where": where}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kafka", default=os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092"))
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--profile", help="cProfile the first tree's first run into this file")
    ap.add_argument("--child", nargs=2, metavar=("TOPIC", "POINTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.kafka, int(args.child[1]), args.profile)
        return 0
    sys.path.insert(0, str(ROOT))
    from confluent_kafka import Producer

    from bench.metrics_bench import metric_payloads
    from connectors.kafka import create_topics, delete_topics

    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(ROOT)}
    topic = f"bench_mflow_{uuid.uuid4().hex[:8]}"
    create_topics(args.kafka, [topic], partitions=1)
    results: dict[str, list[float]] = {name: [] for name in trees}
    try:
        payloads, n_points = metric_payloads(args.requests, "mflowbench")
        p = Producer({"bootstrap.servers": args.kafka, "linger.ms": 20})
        for v in payloads:
            p.produce(topic, value=v)
        assert p.flush(60) == 0
        for run in range(args.runs):
            for name, tree in trees.items():
                env = dict(os.environ, PYTHONPATH=tree)
                cmd = [sys.executable, str(ROOT / "bench/metrics_flow_bench.py"),
                       "--kafka", args.kafka, "--child", topic, str(n_points)]  # fmt: skip
                if args.profile and run == 0 and name == next(iter(trees)):
                    cmd += ["--profile", args.profile]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rate = r["points"] / r["seconds"]
                results[name].append(rate)
                print(f"run {run + 1} {name:<8} {r['seconds']:7.2f} s  {rate:>10,.0f} dp/s  "
                      f"rows {r['rows']}  s in {r.get('where')}", flush=True)  # fmt: skip
    finally:
        delete_topics(args.kafka, [topic])
    for name, rates in results.items():
        print(f"{name:<8} median {statistics.median(rates):>10,.0f} dp/s over {len(rates)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
