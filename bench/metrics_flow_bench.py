"""flows.metrics backlog into embedded chdb or Prometheus: data points/s of the whole flow, trees
interleaved.

    .venv/bin/python bench/metrics_flow_bench.py [--requests 3000] [--runs 3] [--sink chdb|rw]
        [--kafka 127.0.0.1:19092] [--prom http://127.0.0.1:19090]
        [--tree before=/tmp/base --tree after=.] [--profile out.prof]
        [--set source.batch.max_bytes=67108864] [--tree-set after:KEY=JSON]

Produces ``requests`` OTLP metrics requests of 100 data points (bench/metrics_bench.py's mix:
gauges, cumulative and delta sums, histograms) to a fresh 1-partition topic, then runs
``flows.metrics`` (Kafka → decode → one sink, ``source.stop_at_end``) over it in a child
process per run with each ``--tree`` first on ``PYTHONPATH``, alternating trees, and prints
the median per tree (a tree may appear twice under two names, told apart by ``--tree-set``
settings). ``--sink chdb``: a fresh chdb folder per run, no remote-write; ``--sink
rw``: remote-write only (``clickhouse: null``) into ``--prom``, a fresh topic per run whose
series carry a job name of their own (Prometheus refuses samples it already has). Per run:
wall seconds (flow start-up and the Kafka read included), CPU seconds of the child (all
threads: ``getrusage``, chdb's inserts and merges included) and the CPU seconds per name of
the threads still alive at the end (chdb's threads end with the flow's client, so they show
only in the total). Numbers are for comparison, not thresholds.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name of this process (threads alive now)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            st = (task / "stat").read_text()
        except OSError:
            continue
        name = st[st.index("(") + 1 : st.rindex(")")]
        f = st[st.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def _nested(sets: list[str]) -> dict[str, Any]:
    """``a.b=json`` settings as nested keyword overrides ({"a": {"b": value}})."""
    out: dict[str, Any] = {}
    for item in sets:
        path, _, raw = item.partition("=")
        *parents, leaf = path.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = json.loads(raw)
    return out


def child(
    topic: str, kafka: str, n_points: int, profile: str | None, prom: str | None, sets: list[str]
) -> None:
    """Run the flow of the tree on sys.path once; print {"seconds", "cpu", "rows"} as JSON."""
    import resource

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
    if prom:
        common.update(clickhouse=None, remote_write={"url": f"{prom}/api/v1/write"})
    extra = _nested(sets)
    source = {"topic": topic, "stop_at_end": True, **extra.pop("source", {})}
    common.update(extra)
    try:  # this tree's settings shape, else the one before issue 13
        settings = load_settings(None, env={}, source=source, **common)
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
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if profile:
        import cProfile

        cProfile.runctx("run_main(flow)", globals(), {"run_main": run_main, "flow": flow},
                        profile)  # fmt: skip
    else:
        run_main(flow)
    secs = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    threads = {k: round(v, 2) for k, v in sorted(thread_cpu().items(), key=lambda kv: -kv[1])[:5]}
    from prometheus_client import REGISTRY

    rows = 0
    for m in REGISTRY.collect():  # seconds spent per (component, operation), all threads
        for smp in m.samples:
            if smp.name == "otelwax_latency_seconds_sum" and smp.value:
                spent[f"{smp.labels['component']}.{smp.labels['operation']}"] = smp.value
            if (prom and smp.name == "otelwax_sent_total" and smp.labels["unit"] == "samples"
                    and smp.labels["component"] == "remote_write"):  # fmt: skip
                rows += int(smp.value)
    if not prom:
        import chdb.session

        s = chdb.session.Session(path)
        rows = sum(
            int(s.query(f"SELECT count() FROM otel.{t}", "CSV").data().strip() or 0)
            for t in ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram")
        )
        s.close()
    where = {k: round(v, 2) for k, v in spent.items()}
    print(json.dumps({"seconds": secs, "cpu": cpu, "rows": rows, "points": n_points,
                      "where": where, "threads": threads}))  # fmt: skip


def produce(kafka: str, requests: int, job: str) -> tuple[str, int]:
    """A fresh 1-partition topic holding ``requests`` metrics requests; (topic, data points)."""
    from confluent_kafka import Producer

    from bench.metrics_bench import metric_payloads
    from connectors.kafka import create_topics

    topic = f"bench_mflow_{uuid.uuid4().hex[:8]}"
    create_topics(kafka, [topic], partitions=1)
    payloads, n_points = metric_payloads(requests, job)
    p = Producer({"bootstrap.servers": kafka, "linger.ms": 20})
    for v in payloads:
        p.produce(topic, value=v)
    assert p.flush(60) == 0
    return topic, n_points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kafka", default=os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092"))
    ap.add_argument("--sink", choices=("chdb", "rw"), default="chdb")
    ap.add_argument("--prom", default="http://127.0.0.1:19090", help="remote-write target")
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="flow setting for every run, e.g. source.batch.max_bytes=67108864")
    ap.add_argument("--tree-set", action="append", default=[], metavar="NAME:KEY=JSON",
                    help="flow setting for the runs of one tree (repeatable)")  # fmt: skip
    ap.add_argument("--profile", help="cProfile the first tree's first run into this file")
    ap.add_argument("--child", nargs=2, metavar=("TOPIC", "POINTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    prom = args.prom if args.sink == "rw" else None
    if args.child:
        child(args.child[0], args.kafka, int(args.child[1]), args.profile, prom, args.set)
        return 0
    sys.path.insert(0, str(ROOT))
    from connectors.kafka import delete_topics

    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(ROOT)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    topics: list[str] = []
    try:
        for run in range(args.runs):
            for name, tree in trees.items():
                if prom or not topics:  # remote-write: new series each run
                    job = f"mflowbench_{uuid.uuid4().hex[:6]}"
                    topics.append(produce(args.kafka, args.requests, job)[0])
                n_points = args.requests * 100
                env = dict(os.environ, PYTHONPATH=tree)
                cmd = [sys.executable, str(ROOT / "bench/metrics_flow_bench.py"), "--sink",
                       args.sink, "--prom", args.prom, "--kafka", args.kafka,
                       "--child", topics[-1], str(n_points)]  # fmt: skip
                for item in args.set + [t.split(":", 1)[1] for t in args.tree_set
                                        if t.split(":", 1)[0] == name]:  # fmt: skip
                    cmd += ["--set", item]
                if args.profile and run == 0 and name == next(iter(trees)):
                    cmd += ["--profile", args.profile]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rate, per_cpu = r["points"] / r["seconds"], r["points"] / r["cpu"]
                results[name].append((rate, per_cpu))
                print(f"run {run + 1} {name:<8} {r['seconds']:7.2f} s {rate:>10,.0f} dp/s  "
                      f"cpu {r['cpu']:6.2f} s {per_cpu:>10,.0f} dp/cpu-s  stored {r['rows']}  "
                      f"s in {r.get('where')} threads {r.get('threads')}", flush=True)  # fmt: skip
    finally:
        delete_topics(args.kafka, topics)
    summary = {}
    for name, rs in results.items():
        summary[name] = {"dp_per_s": statistics.median(r[0] for r in rs),
                         "dp_per_cpu_s": statistics.median(r[1] for r in rs), "runs": len(rs)}
        print(f"{name:<8} median {summary[name]['dp_per_s']:>10,.0f} dp/s  "
              f"{summary[name]['dp_per_cpu_s']:>10,.0f} dp/cpu-s over {len(rs)} runs")
    # The first tree's medians, for make bench's goals table (bench/goals.py).
    out = ROOT / "bench" / "results" / f"metrics_flow_{args.sink}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    first = summary[next(iter(trees))]
    out.write_text(json.dumps({"sink": args.sink, "points": args.requests * 100, **first,
                               "trees": summary}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
