"""What the emulated insert-token check costs on ClickHouse 18.16 as the table grows.

18.16 has no ``insert_deduplication_token``: before an insert under a token that may have been
stored (a replayed range, a retried insert), the server client counts the rows stored under it
(``SELECT count() ... WHERE InsertToken = ?``), which reads the whole ``InsertToken`` column.
A new range skips that count (``insert_arrow(fresh=True)``). This bench fills a legacy
``otel_traces`` (default schema, trace copy included) to each ``--sizes`` step, then inserts
``--batch`` spans under new tokens, alternating the checked and the fresh path
(``--rounds`` each), and prints the median wall time per insert of each path and of the count
query alone. Wall time of one client against an otherwise idle server: the count runs on the
server while the client waits, so it is what a flow's insert loop loses.

    python bench/token_check_bench.py --server 127.0.0.1:19000:18123 --sizes 0,1000000,4000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.clickhouse import ClickHouseConfig, open_client
from connectors.clickhouse_schema import create_schema
from otelwax.codec import decode_traces
from tests.otlpgen import trace_payloads


def _renamed(batch: pa.RecordBatch, prefix: str) -> pa.RecordBatch:
    """``batch`` with TraceId/SpanId prefixed: distinct spans for each insert."""
    for col in ("TraceId", "SpanId"):
        i = batch.schema.get_field_index(col)
        batch = batch.set_column(i, col, pc.binary_join_element_wise(prefix, batch.column(i), ""))
    return batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:19000:18123", help="host:native:http")
    ap.add_argument("--sizes", default="0,1000000,4000000", help="table sizes to measure at")
    ap.add_argument("--batch", type=int, default=2000, help="spans per measured insert")
    ap.add_argument("--rounds", type=int, default=7, help="inserts per path and size")
    args = ap.parse_args()
    host, port, http = args.server.split(":")
    db = f"bench_token_{uuid.uuid4().hex[:6]}"
    cfg = ClickHouseConfig(
        mode="server", host=host, port=int(port), http_port=int(http), database=db
    )
    client = open_client(cfg)
    try:
        client.execute(f"CREATE DATABASE {db}")
        create_schema(client, db, "otel_traces", None, cfg.schema_options)
        fill = decode_traces(trace_payloads(50, seed=1)).batch  # ~5K spans, reused
        small = fill.slice(0, args.batch)
        stored, n = 0, 0
        print("| rows in table | insert, checked (ms) | insert, fresh (ms) | count alone (ms) |")
        print("|---:|---:|---:|---:|")
        for size in (int(s) for s in args.sizes.split(",")):
            while stored < size:
                n += 1
                b = _renamed(fill, f"f{n}-")
                client.insert_arrow("otel_traces", b, dedup_token=f"fill:0:{n}-{n}", fresh=True)
                stored += b.num_rows
            times: dict[str, list[float]] = {"checked": [], "fresh": [], "count": []}
            for r in range(args.rounds):
                for path in ("checked", "fresh"):
                    n += 1
                    b = _renamed(small, f"m{n}-")
                    t0 = time.perf_counter()
                    client.insert_arrow(
                        "otel_traces", b, dedup_token=f"m:0:{n}-{n}", fresh=path == "fresh"
                    )
                    times[path].append(time.perf_counter() - t0)
                    stored += b.num_rows
                t0 = time.perf_counter()
                client.execute(
                    f"SELECT count() FROM {db}.otel_traces WHERE InsertToken = {{t:String}}",
                    {"t": f"none:{r}"},
                )
                times["count"].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            row = (med["checked"], med["fresh"], med["count"])
            print(f"| {stored:,} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
