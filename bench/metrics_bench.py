"""Metrics benchmark: data points/s and spans/s per process, stage by stage.

    .venv/bin/python bench/metrics_bench.py [--requests 500] [--spans 200000] [--prom URL]
                                            [--kafka 127.0.0.1:19092] [--skip-flow]

Stages (one process, one core's worth of Python):
  decode            ExportMetricsServiceRequest → Arrow tables (otelwax.codec.pymetrics)
  decode+chdb       + insert every table into embedded chdb (connectors.clickhouse)
  decode+translate  + OTel → Prometheus series (connectors.prom_translate)
  decode+remote-write  + snappy WriteRequest POSTed to a real Prometheus
  flow (kafka→chdb+rw) the whole flows.metrics dataflow over a Kafka topic (run_main)
  span-metrics window  SpanMetricsAggregator.add on decoded span batches (group_by per batch)
  decode+window        decode_traces + window, spans/s

Writes ``bench/results/metrics.json`` and prints a table. Numbers are for comparison, not
thresholds (2 shared cores: expect ±20 %).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def metric_payloads(n: int, job: str) -> tuple[list[bytes], int]:
    """n requests of 100 data points (4 gauges, 4 sums incl. 2 delta, 2 histograms, x 10 points)."""
    from tests.promfixtures import counter, gauge, histogram, metrics_request

    base = time.time_ns() - 600 * 10**9
    out = []
    for i in range(n):
        t = base + i * 1_000_000
        r = i % 10
        res = {
            "service.name": f"{job}-{r}",
            "service.instance.id": f"i-{r}",
            "host.name": f"host-{r}",
            "cloud.region": "eu-west-1",
        }
        pts = [(t, float(i + j), {"k": f"v{j}", "route": "/api/x"}) for j in range(10)]
        ms = [gauge(f"bench.gauge{g}", pts, unit="By") for g in range(4)]
        ms += [counter(f"bench.count{c}", pts, delta=c >= 2) for c in range(4)]
        hp = [(t, [1, 2, 3, 4], 12.5, {"k": f"v{j}"}) for j in range(10)]
        ms += [histogram(f"bench.lat{h}", hp, [0.01, 0.1, 1.0], unit="s") for h in range(2)]
        out.append(metrics_request(res, ms))
    return out, n * 100


def timed(fn, *a, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*a)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="metric requests (100 points each)")
    ap.add_argument("--batch", type=int, default=100, help="requests per decode batch")
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--prom", default="http://127.0.0.1:19090")
    ap.add_argument("--kafka", default=os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092"))
    ap.add_argument("--skip-flow", action="store_true")
    args = ap.parse_args()

    import gc

    import pyarrow as pa

    from connectors.prom_translate import tables_to_series
    from connectors.remote_write import RemoteWriteClient, RemoteWriteConfig
    from otelwax.codec.pymetrics import decode_metrics

    job = f"bench_{uuid.uuid4().hex[:8]}"
    payloads, n_points = metric_payloads(args.requests, job)
    chunks = [payloads[i : i + args.batch] for i in range(0, len(payloads), args.batch)]
    results: dict[str, dict] = {}

    def record(name: str, secs: float, items: int, unit: str, **extra) -> None:
        results[name] = {
            "seconds": round(secs, 4),
            "items": items,
            "unit": unit,
            "per_s": round(items / secs) if secs else None,
            **extra,
        }

    gc.collect()
    secs, decoded = timed(lambda: [decode_metrics(c) for c in chunks], repeat=2)
    record("decode", secs, n_points, "datapoints")

    # chdb
    from connectors.clickhouse import ClickHouseConfig, open_client
    from connectors.clickhouse_metrics_schema import metrics_ddl

    tmp = tempfile.mkdtemp(prefix="metrics_bench_chdb_")
    client = open_client(ClickHouseConfig(path=tmp))
    for stmt in metrics_ddl("otel"):
        client.execute(stmt)

    def decode_chdb():
        for c in chunks:
            res = decode_metrics(c)
            for table, batch in res.tables.items():
                if batch.num_rows:
                    client.insert_arrow(f"otel.{table}", batch)

    secs, _ = timed(decode_chdb)
    rows = sum(client.execute(f"SELECT count() FROM otel.{t}")[0][0] for t in res_tables())
    record("decode+chdb", secs, n_points, "datapoints", rows_stored=rows)
    client.close()

    secs, series = timed(lambda: [tables_to_series(d.tables) for d in decoded], repeat=2)
    n_samples = sum(s.num_samples for s in series)
    record("translate only", secs, n_points, "datapoints", samples=n_samples)

    rw = RemoteWriteClient(RemoteWriteConfig(url=f"{args.prom}/api/v1/write"), "bench_rw")
    try:
        rw.send(tables_to_series(decoded[0].tables))  # warm-up / reachability
        prom_ok = True
    except Exception as exc:  # pragma: no cover - bench only
        print(f"remote-write unavailable: {exc}")
        prom_ok = False
    if prom_ok:
        job2 = job + "_rw"
        payloads2, _ = metric_payloads(args.requests, job2)
        chunks2 = [payloads2[i : i + args.batch] for i in range(0, len(payloads2), args.batch)]
        rw2 = RemoteWriteClient(RemoteWriteConfig(url=f"{args.prom}/api/v1/write"), "bench_rw")

        def decode_rw():
            sent = 0
            for c in chunks2:
                sent += rw2.send(tables_to_series(decode_metrics(c).tables))
            return sent

        secs, sent = timed(decode_rw)
        record(
            "decode+remote-write",
            secs,
            n_points,
            "datapoints",
            samples_sent=sent,
            requests=rw2.requests_sent,
        )
        rw2.close()
    rw.close()

    if not args.skip_flow:
        results.update(flow_bench(args, job))

    # span metrics
    from operators.windows import SpanMetricsAggregator, SpanMetricsConfig
    from otelwax.codec import decode_traces
    from tests.otlpgen import trace_payloads

    tp = trace_payloads(max(1, args.spans // 100), seed=1)
    secs_d, tres = timed(lambda: decode_traces(tp))
    spans = tres.batch
    n_spans = spans.num_rows
    # Re-time end times to a 60 s span so several windows open and close.
    import numpy as np

    now = time.time_ns()
    ts = now - 60 * 10**9 + np.linspace(0, 60 * 10**9, n_spans).astype(np.int64)
    spans = spans.set_column(0, spans.schema.field(0), pa.array(ts, pa.timestamp("ns")))
    # Realistic cardinality: 50 operation names per service (the generator's names are random).
    names = pa.array([f"op{i % 50}" for i in range(n_spans)], pa.string())
    i_name = spans.schema.get_field_index("SpanName")
    spans = spans.set_column(i_name, spans.schema.field(i_name), names)
    pieces = [spans.slice(i, 10_000) for i in range(0, n_spans, 10_000)]

    def window():
        agg = SpanMetricsAggregator(SpanMetricsConfig(window_s=10, allowed_lateness_s=5))
        out = []
        for p in pieces:
            out += agg.add(p)[0]
        out += agg.close_all()
        return out

    secs_w, closed = timed(window, repeat=2)
    record("span-metrics window", secs_w, n_spans, "spans", windows_closed=len(closed))
    record("decode+window (spans)", secs_d + secs_w, n_spans, "spans")

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests": args.requests,
        "datapoints": n_points,
        "spans": n_spans,
        "cpu_count": os.cpu_count(),
        "codec": "python",
    }
    (out_dir / "metrics.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{'stage':<34}{'items':>10}{'seconds':>10}{'per second':>14}  unit")
    for name, r in results.items():
        print(f"{name:<34}{r['items']:>10}{r['seconds']:>10.3f}{r['per_s'] or 0:>14,}  {r['unit']}")
    print(f"\nwritten: {out_dir / 'metrics.json'}")
    return 0


def res_tables() -> list[str]:
    from otelwax.metric_schemas import METRIC_TABLES

    return list(METRIC_TABLES)


def flow_bench(args, job: str) -> dict[str, dict]:
    """The whole flows.metrics dataflow (Kafka → decode → chdb + remote-write), one worker."""
    from bytewax.testing import run_main

    from connectors.kafka import create_topics, delete_topics
    from flows.metrics import build_from_settings, load_settings

    topic = f"bench_metrics_{uuid.uuid4().hex[:8]}"
    create_topics(args.kafka, [topic], partitions=1)
    out: dict[str, dict] = {}
    try:
        from confluent_kafka import Producer

        payloads, n_points = metric_payloads(args.requests, job + "_flow")
        p = Producer({"bootstrap.servers": args.kafka, "linger.ms": 20})
        for v in payloads:
            p.produce(topic, value=v)
        p.flush(60)
        for name, ch, rw in (
            ("flow kafka→chdb", True, False),
            ("flow kafka→remote-write", False, True),
        ):
            tmp = tempfile.mkdtemp(prefix="metrics_bench_flow_")
            settings = load_settings(
                None,
                kafka={"bootstrap_servers": args.kafka},
                topic=topic,
                tail=False,
                clickhouse={"path": tmp, "create_schema": True} if ch else None,
                remote_write={"url": f"{args.prom}/api/v1/write"} if rw else None,
                flow_id=f"bench_{name.split()[1].replace('→', '_').replace('-', '_')}",
            )
            t0 = time.perf_counter()
            run_main(build_from_settings(settings))
            secs = time.perf_counter() - t0
            out[name] = {
                "seconds": round(secs, 4),
                "items": n_points,
                "unit": "datapoints",
                "per_s": round(n_points / secs),
                "note": "includes flow start-up and the Kafka read",
            }
    finally:
        delete_topics(args.kafka, [topic])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
