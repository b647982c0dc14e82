"""Query-side benchmark: trace lookup by id and a service RED query over stored spans (chdb).

Loads ``--spans`` spans (default 1M) into an embedded chdb ``otel_traces`` table with the
production schema (skip indexes, trace-id/timestamp lookup table + materialized view):
``tests.otlpgen`` requests → ``otelwax.codec.decode_traces`` → ``connectors.clickhouse``
``insert_arrow`` in 100K-row batches. To keep generation cheap, ``--unique-spans`` spans are
generated and decoded once and then re-inserted with rewritten TraceId/SpanId prefixes and
shifted timestamps (vectorised), so every copy is a distinct set of traces.

Then, with the data at rest:

- ``trace lookup``: Jaeger-style two-step lookup of one random trace id: its time bounds from
  ``otel_traces_trace_id_ts``, then the spans ``WHERE TraceId = ? AND Timestamp BETWEEN ...``.
- ``service RED``: for one service over the whole stored range, per minute: requests, errors,
  p50/p99 duration.

Latency p50/p99 for each (sequential), and lookups/s with 1 and 2 threads for a fixed time.
Seed targets: < 100 ms per query, > 1K lookups/s. A second run (unless ``--no-projection``)
adds a projection ordered by TraceId to ``otel_traces`` (``ALTER TABLE ... ADD PROJECTION``),
which the trace lookup then reads instead of scanning bloom-filtered granules sorted by
service/span name; it shows what a trace-ordered copy buys and costs (disk, insert speed).

    .venv/bin/python bench/query_bench.py                    # 1M spans
    .venv/bin/python bench/query_bench.py --spans 200000     # quick

Prints a table and writes ``bench/results/query.json``. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from connectors.clickhouse import ClickHouseConfig, open_client  # noqa: E402
from otelwax.codec import decode_traces  # noqa: E402
from tests.otlpgen import trace_payloads  # noqa: E402

RESULTS = ROOT / "bench" / "results"

LOOKUP_BOUNDS = (
    "SELECT min(Start), max(End) FROM otel.otel_traces_trace_id_ts WHERE TraceId = {tid:String}"
)
LOOKUP_SPANS = (
    "SELECT Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, "
    "Duration, StatusCode, SpanAttributes, ResourceAttributes "
    "FROM otel.otel_traces WHERE TraceId = {tid:String} "
    "AND Timestamp >= {start:DateTime} AND Timestamp <= addSeconds({end:DateTime}, 1) "
    "ORDER BY Timestamp"
)
RED = (
    "SELECT toStartOfMinute(Timestamp) AS t, count() AS requests, "
    "countIf(StatusCode = 'STATUS_CODE_ERROR') AS errors, "
    "quantile(0.5)(Duration) AS p50, quantile(0.99)(Duration) AS p99 "
    "FROM otel.otel_traces WHERE ServiceName = {svc:String} "
    "AND Timestamp >= {start:DateTime64(9)} AND Timestamp < {end:DateTime64(9)} "
    "GROUP BY t ORDER BY t"
)


def _prefix(col: pa.Array, prefix: str, keep_from: int) -> pa.Array:
    """``prefix`` + ``col[keep_from:]`` for a string column (empty strings stay empty)."""
    rest = pc.utf8_slice_codeunits(col, keep_from)
    out = pc.binary_join_element_wise(pa.scalar(prefix), rest, "")
    return pc.if_else(pc.equal(col, ""), col, out)


def copy_batch(batch: pa.RecordBatch, k: int) -> pa.RecordBatch:
    """Copy ``k`` of ``batch``: distinct trace/span ids, timestamps shifted by ``k`` minutes."""
    if k == 0:
        return batch
    p = f"{k:04x}"
    shift = pa.scalar(k * 60 * 10**9, pa.duration("ns"))
    cols = {}
    for name in ("TraceId", "SpanId", "ParentSpanId"):
        cols[name] = _prefix(batch.column(name), p, len(p))
    ts = batch.column("Timestamp")
    cols["Timestamp"] = pc.add(ts, shift).cast(ts.type)
    arrays = [cols.get(n, batch.column(i)) for i, n in enumerate(batch.schema.names)]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def load(client, spans: int, unique: int, batch_rows: int) -> dict:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    payloads = trace_payloads(max(1, unique // 100), seed=3)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = decode_traces(payloads).batch
    decode_s = time.perf_counter() - t0
    copies = -(-spans // base.num_rows)
    inserted = 0
    t0 = time.perf_counter()
    for k in range(copies):
        b = copy_batch(base, k)
        for off in range(0, b.num_rows, batch_rows):
            part = b.slice(off, min(batch_rows, spans - inserted, b.num_rows - off))
            if part.num_rows == 0:
                break
            client.insert_arrow("otel.otel_traces", part)
            inserted += part.num_rows
    insert_s = time.perf_counter() - t0
    return {
        "spans": inserted,
        "unique_generated": base.num_rows,
        "generate_s": round(gen_s, 2),
        "decode_s": round(decode_s, 3),
        "insert_s": round(insert_s, 2),
        "insert_spans_per_s": round(inserted / insert_s),
    }


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def trace_lookup(client, tid: str) -> int:  # type: ignore[no-untyped-def]
    ((start, end),) = client.execute(LOOKUP_BOUNDS, {"tid": tid})
    rows = client.execute(
        LOOKUP_SPANS,
        {"tid": tid, "start": _dt(start), "end": _dt(end)},
    )
    return len(rows)


def _dt(v) -> str:  # type: ignore[no-untyped-def]
    """A DateTime result (datetime or epoch seconds) as 'YYYY-MM-DD hh:mm:ss' (UTC)."""
    if isinstance(v, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v))
    return v.strftime("%Y-%m-%d %H:%M:%S")


def measure(name: str, fn, args_list: list, n: int) -> dict:  # type: ignore[no-untyped-def]
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(*args_list[i % len(args_list)])
        lat.append(time.perf_counter() - t0)
    return {
        "query": name,
        "n": n,
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2),
    }


def throughput(fn, args_list: list, threads: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(j: int) -> None:
        rnd = random.Random(j)
        while time.perf_counter() < stop:
            fn(*rnd.choice(args_list))
            counts[j] += 1

    ts = [threading.Thread(target=work, args=(j,)) for j in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


PROJECTION = "ALTER TABLE otel.otel_traces ADD PROJECTION by_trace (SELECT * ORDER BY TraceId)"


def run(args: argparse.Namespace, projection: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="otelwax-query-bench-") as d:
        cfg = ClickHouseConfig(mode="embedded", path=d, create_schema=True)
        client = open_client(cfg)
        try:
            if projection:
                client.execute(PROJECTION)
            info = load(client, args.spans, args.unique_spans, args.batch_rows)
            client.execute("OPTIMIZE TABLE otel.otel_traces_trace_id_ts FINAL")
            ((count,),) = client.execute("SELECT count() FROM otel.otel_traces")
            ((lk,),) = client.execute("SELECT count() FROM otel.otel_traces_trace_id_ts")
            ((parts,),) = client.execute(
                "SELECT count() FROM system.parts WHERE database = 'otel' "
                "AND table = 'otel_traces' AND active"
            )
            info.update(stored=count, lookup_rows=lk, active_parts=parts)
            tids = [
                r[0]
                for r in client.execute(
                    "SELECT TraceId FROM otel.otel_traces_trace_id_ts "
                    "ORDER BY cityHash64(TraceId) LIMIT 2000"
                )
            ]
            ((lo, hi),) = client.execute(
                "SELECT toString(min(Timestamp)), toString(max(Timestamp) + 1) "
                "FROM otel.otel_traces"
            )
            svcs = [
                r[0] for r in client.execute("SELECT DISTINCT ServiceName FROM otel.otel_traces")
            ]
            found = trace_lookup(client, tids[0])

            def red(svc: str) -> int:
                return len(client.execute(RED, {"svc": svc, "start": lo, "end": hi}))

            def lookup(tid: str) -> int:
                return trace_lookup(client, tid)

            lookup(tids[1])
            red(svcs[0])  # warm
            rows = [
                measure("trace lookup by id", lookup, [(t,) for t in tids], args.queries),
                measure("service RED (per minute)", red, [(s,) for s in svcs], args.queries // 4),
            ]
            for r, fn, al in (
                (rows[0], lookup, [(t,) for t in tids]),
                (rows[1], red, [(s,) for s in svcs]),
            ):
                for th in (1, 2):
                    r[f"qps_{th}_thread"] = round(throughput(fn, al, th, args.seconds), 1)
            info["spans_per_trace_found"] = found
            (disk,) = client.execute(
                "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'otel' "
                "AND table = 'otel_traces' AND active"
            )[0]
            info["bytes_on_disk"] = int(disk)
            schema = "+ projection ORDER BY TraceId" if projection else "default schema"
            for r in rows:
                r["schema"] = schema
            return {"load": info, "queries": rows}
        finally:
            client.close()


def print_table(res: dict) -> None:
    for v in res["variants"]:
        ld = v["load"]
        print(
            f"{v['queries'][0]['schema']}: stored {ld['stored']} spans ({ld['lookup_rows']} "
            f"traces in the lookup table, {ld['active_parts']} parts, "
            f"{ld['bytes_on_disk'] / 2**20:.0f} MiB), insert {ld['insert_spans_per_s']} spans/s"
        )
    cols = [("schema", 30), ("query", 26), ("p50_ms", 8), ("p99_ms", 8), ("qps_1_thread", 13),
            ("qps_2_thread", 13)]  # fmt: skip
    print(" ".join(f"{c:>{w}}" for c, w in cols))
    for r in res["queries"]:
        print(" ".join(f"{r[c]!s:>{w}}" for c, w in cols))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--unique-spans", type=int, default=100_000, help="generated, then copied")
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=400, help="sequential lookups for p50/p99")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    ap.add_argument(
        "--no-projection",
        action="store_true",
        help="skip the second run with a projection ordered by TraceId",
    )
    args = ap.parse_args()
    variants = [run(args, False)]
    if not args.no_projection:
        variants.append(run(args, True))
    res = {
        "load": variants[0]["load"],
        "queries": [q for v in variants for q in v["queries"]],
        "variants": variants,
    }
    res.update(benchmark="query", time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print_table(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "query.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {RESULTS / 'query.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
