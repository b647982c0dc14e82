"""Benchmark of the whole traces flow: Kafka → ``flows.traces`` process → ClickHouse.

Phases (each a real ``python -m bytewax.run`` process, Kafka at $OTELWAX_TEST_KAFKA or
127.0.0.1:19092):

1. ``decode``: the decode→Arrow stage alone on the same payloads (in this process).
2. ``backlog``: K spans preloaded into a fresh topic; the flow drains it (``stop_at_end``);
   spans/s = K / (time from the first partition's start to process exit), peak RSS sampled.
   Targets: embedded chdb (1 process) and, unless ``--skip-server``, a ClickHouse server with
   1 and 2 processes (cluster ``-a/-i``).
3. ``latency``: records produced at a steady rate while the flow runs (chdb); p50/p99
   event-to-queryable latency from the sink's histogram (Kafka record timestamp → insert
   returned), scraped from the flow's ``/metrics``.

    .venv/bin/python bench/traces_flow_bench.py --spans 300000
    .venv/bin/python bench/traces_flow_bench.py --spans 100000 --skip-server

Prints a table and writes ``bench/results/traces_flow.json``. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from connectors.kafka import create_topics, delete_topics  # noqa: E402
from tests import otlpgen  # noqa: E402

BOOTSTRAP = os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def produce(topic: str, payloads: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20, "compression.type": "lz4"})
    for i, v in enumerate(payloads):
        while True:
            try:
                p.produce(topic, value=v, key=b"%032x" % i)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def write_config(
    path: Path,
    topic: str,
    clickhouse: dict,
    metrics_port: int | None,
    sink: dict | None = None,
    **src,
) -> None:
    cfg = {
        "kafka": {"bootstrap_servers": BOOTSTRAP},
        "source": {"topic": topic, **src},
        "clickhouse": clickhouse,
        "metrics_port": metrics_port,
        "dead_letters": {"topic": f"dlq_{topic}"},
        "sink": sink or {},
    }
    path.write_text(yaml.safe_dump(cfg))


def start_flow(
    cfg: Path, log: Path, extra: list[str] | None = None, env_extra: dict | None = None
) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    env.pop("OTELWAX_METRICS_PORT", None)
    args = [sys.executable, "-m", "bytewax.run", f"flows.traces:build({str(cfg)!r})"]
    with open(log, "wb") as fh:
        return subprocess.Popen(
            args + (extra or []), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )


def watch(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> dict:
    """Wait for exit; returns wall time from the first 'start at' log line and peak RSS."""
    ps = [psutil.Process(p.pid) for p in procs]
    peak = [0] * len(procs)
    peak_anon = [0] * len(procs)
    t_start = t_done = None
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise RuntimeError("flow did not finish; logs: " + ", ".join(map(str, logs)))
        for i, p in enumerate(ps):
            try:
                mi = p.memory_info()
                peak[i] = max(peak[i], mi.rss)
                peak_anon[i] = max(peak_anon[i], mi.rss - mi.shared)  # minus mapped files
            except psutil.Error:
                pass
        texts = [lg.read_text(errors="replace") for lg in logs]
        if t_start is None and any("start at" in t for t in texts):
            t_start = time.monotonic()
        if t_done is None and all("input finished" in t for t in texts):
            t_done = time.monotonic()
        time.sleep(0.05)
    end = time.monotonic()
    rcs = [p.returncode for p in procs]
    if any(rcs):
        raise RuntimeError(f"flow exited with {rcs}; logs: {logs}")
    # Stored = every sink saw the end of its input (all inserts returned); exit adds teardown.
    return {
        "seconds": (t_done or end) - (t_start or end),
        "teardown_s": round(end - (t_done or end), 2),
        "peak_rss_mib": [round(x / 2**20) for x in peak],
        # chdb maps a 555 MB library: ~270 MiB of RSS are its (shared, reclaimable) code pages
        "peak_anon_mib": [round(x / 2**20) for x in peak_anon],
    }


def histogram_quantiles(text: str, component: str, operation: str) -> dict[str, float]:
    """p50/p99 of an otelwax_latency_seconds histogram (interpolated within buckets)."""
    c, o = re.escape(component), re.escape(operation)
    pat = re.compile(
        r"otelwax_latency_seconds_bucket\{component=\"" + c + r"\",le=\"([^\"]+)\","
        r"operation=\"" + o + r"\"\} (\S+)"
    )
    buckets = sorted(
        ((float("inf") if le == "+Inf" else float(le)), float(v)) for le, v in pat.findall(text)
    )
    if not buckets or buckets[-1][1] == 0:
        return {}
    total = buckets[-1][1]
    out = {}
    for q in (0.5, 0.99):  # linear interpolation inside the bucket, like histogram_quantile
        rank = q * total
        lo_le, lo_c = 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    out[f"p{int(q * 100)}_s"] = lo_le
                else:
                    frac = (rank - lo_c) / (c - lo_c) if c > lo_c else 1.0
                    out[f"p{int(q * 100)}_s"] = round(lo_le + (le - lo_le) * frac, 3)
                break
            lo_le, lo_c = le, c
    out["count"] = total
    return out


def run_backlog(
    name: str,
    payloads: list[bytes],
    spans: int,
    clickhouse: dict,
    procs: int,
    tmp: Path,
    partitions: int,
    workers: int = 1,
    max_bytes: int | None = None,
    sink: dict | None = None,
    env: dict | None = None,
) -> dict:
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    create_topics(BOOTSTRAP, [topic, f"dlq_{topic}"], partitions=partitions)
    try:
        produce(topic, payloads)
        cfg = tmp / f"{name}.yaml"
        batch = {"max_bytes": max_bytes} if max_bytes else {}
        write_config(cfg, topic, clickhouse, None, sink, stop_at_end=True, batch=batch)
        logs = [tmp / f"{name}-{i}.log" for i in range(procs)]
        extra: list[list[str]] = [["-w", str(workers)] for _ in range(procs)]
        if procs > 1:
            addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(procs))
            extra = [["-w", str(workers), "-a", addrs, "-i", str(i)] for i in range(procs)]
        ps = [start_flow(cfg, logs[i], extra[i], env) for i in range(procs)]
        r = watch(ps, logs, timeout=900)
    finally:
        delete_topics(BOOTSTRAP, [topic, f"dlq_{topic}"])
    r.update(
        name=name,
        processes=procs,
        workers=workers,
        max_bytes=max_bytes,
        sink=sink or {},
        env=env or {},
        spans=spans,
        spans_per_s=round(spans / r["seconds"]),
    )
    return r


def run_latency(
    rate: float, seconds: float, tmp: Path, clickhouse: dict, per_req: int, max_delay: float
) -> dict:
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    create_topics(BOOTSTRAP, [topic, f"dlq_{topic}"], partitions=4)
    port = free_port()
    cfg = tmp / "latency.yaml"
    write_config(cfg, topic, clickhouse, port, batch={"max_delay_s": max_delay})
    p = start_flow(cfg, tmp / "latency.log")
    try:
        time.sleep(4)  # startup
        n_req = int(rate * seconds / per_req)
        payloads = otlpgen.trace_payloads(n_req, seed=7, n_resources=1, spans_per_resource=per_req)
        prod = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
        t0 = time.monotonic()
        for i, v in enumerate(payloads):
            prod.produce(topic, value=v, key=b"%032x" % i)
            prod.poll(0)
            wait = t0 + (i + 1) * per_req / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        prod.flush(30)
        time.sleep(3)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        p.kill()
        p.wait()
        delete_topics(BOOTSTRAP, [topic, f"dlq_{topic}"])
    q = histogram_quantiles(text, "clickhouse_sink", "event_to_stored")
    lag = sum(float(v) for v in re.findall(r"otelwax_kafka_consumer_lag\{[^}]*\} (\S+)", text))
    return {
        "name": f"latency chdb, cut {max_delay}s",
        "rate_spans_per_s": rate,
        "max_delay_s": max_delay,
        "final_lag_records": lag,
        **q,
    }


def run_decode(payloads: list[bytes], spans: int) -> dict:
    from otelwax.codec import codec_name, decode_traces

    chunk = 100
    t = time.perf_counter()
    for i in range(0, len(payloads), chunk):
        decode_traces(payloads[i : i + chunk])
    s = time.perf_counter() - t
    return {
        "name": f"decode only ({codec_name()})",
        "spans": spans,
        "seconds": s,
        "spans_per_s": round(spans / s),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--server", default="127.0.0.1:19000:18123", help="host:native:http")
    ap.add_argument("--max-bytes", type=int, default=None, help="source.batch.max_bytes")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="-w values for chdb")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per chdb variant")
    ap.add_argument("--latency-rate", type=float, default=20_000, help="spans/s; 0 skips")
    ap.add_argument(
        "--latency-delays", type=float, nargs="+", default=[1.0, 0.25], help="max_delay_s"
    )
    args = ap.parse_args()

    n_req = args.spans // 100
    payloads = otlpgen.trace_payloads(n_req, seed=1)
    spans = n_req * 100
    results = [run_decode(payloads, spans)]
    with tempfile.TemporaryDirectory(prefix="otelwax-flow-bench-") as d:
        tmp = Path(d)
        # Side by side, interleaved (machines are noisy): as before this change (inserts
        # inline, unsorted, 8 MiB ranges, chdb's allocator defaults), then one change at a
        # time up to the defaults (overlap, presort, 16 MiB ranges, 300 ms decay), and the
        # defaults with immediate decay; the median of --repeat runs is kept.
        je_default = {"JE_MALLOC_CONF": "abort_conf:false"}  # set, so chdb's own defaults stay
        decay0 = {"JE_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0"}
        old = 8 * 2**20
        m = args.max_bytes
        before = {"overlap": False, "presort": False}
        variants = [
            ("inline, unsorted, 8 MiB, chdb's decay", before, old, je_default),
            ("overlap, unsorted, 8 MiB", {"presort": False}, old, None),
            ("overlap, presort, 8 MiB", {}, old, None),
            ("defaults (overlap, presort, 16 MiB)", {}, m, None),
            ("defaults, allocator decay 0", {}, m, decay0),
        ]
        for w in args.workers:
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeat):
                for label, sink, max_bytes, env in variants:
                    chdb = {
                        "mode": "embedded",
                        "path": str(tmp / f"chdb-{uuid.uuid4().hex[:8]}"),
                        "create_schema": True,
                    }
                    name = f"chdb -w {w} {label}"
                    r = run_backlog(
                        name,
                        payloads,
                        spans,
                        chdb,
                        1,
                        tmp,
                        args.partitions,
                        w,
                        max_bytes,
                        sink,
                        env,
                    )
                    runs.setdefault(label, []).append(r)
            for rs in runs.values():
                rs.sort(key=lambda r: r["spans_per_s"])
                med = dict(rs[len(rs) // 2])
                med["runs_spans_per_s"] = [r["spans_per_s"] for r in rs]
                results.append(med)
        if not args.skip_server:
            host, native, http = args.server.split(":")
            subprocess.run(
                [str(ROOT / "scripts/services/clickhouse.sh"), "start"],
                check=True,
                capture_output=True,
            )
            for procs in (1, 2):
                srv = {
                    "mode": "server",
                    "host": host,
                    "port": int(native),
                    "http_port": int(http),
                    "database": f"bench_{uuid.uuid4().hex[:6]}",
                    "create_schema": True,
                }
                results.append(
                    run_backlog(
                        f"server x{procs}",
                        payloads,
                        spans,
                        srv,
                        procs,
                        tmp,
                        args.partitions,
                        max_bytes=args.max_bytes,
                    )
                )
        if args.latency_rate:
            for delay in args.latency_delays:
                chdb2 = {
                    "mode": "embedded",
                    "path": str(tmp / f"chdb-lat-{delay}"),
                    "create_schema": True,
                }
                results.append(run_latency(args.latency_rate, 15, tmp, chdb2, 20, delay))

    print(
        f"{'run':<48}{'procs':>6}{'spans':>10}{'spans/s':>12}{'peak RSS MiB':>14}"
        f"{'anon MiB':>10}  runs / latency"
    )
    for r in results:
        lat = ""
        if "p99_s" in r:
            lat = f"p50 ~{r['p50_s']} s, p99 ~{r['p99_s']} s @ {r['rate_spans_per_s']:.0f} sp/s"
        lat = lat or " ".join(map(str, r.get("runs_spans_per_s", [])))
        print(
            f"{r['name']:<48}{r.get('processes', ''):>6}{r.get('spans', ''):>10}"
            f"{r.get('spans_per_s', ''):>12}{r.get('peak_rss_mib', '')!s:>14}"
            f"{r.get('peak_anon_mib', '')!s:>10}  {lat}"
        )
    out = ROOT / "bench" / "results" / "traces_flow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.time(), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
