"""Benchmark of ClickHouse inserts from Arrow batches: embedded chdb and a ClickHouse server.

chdb: rows/s into the full ``otel_traces`` schema at 10K- and 100K-row batches, with and without
the skip (bloom-filter/minmax/tokenbf) indexes, through the sink's path (``INSERT ... SELECT *
FROM Python(batch)``) and, for comparison, an ``ArrowStream`` body via ``send_insert``.

Server (Debian 18.16, legacy layout): rows/s of the sink's path (Arrow buffers → ``Native``
format with numpy, POSTed over HTTP) against clickhouse-driver's columnar insert fed with plain
Arrow → Python lists, and the client-side conversion cost of each alone.

    .venv/bin/python bench/clickhouse_bench.py                 # server on 127.0.0.1:19000/18123
    .venv/bin/python bench/clickhouse_bench.py --rows 100000 --skip-server   # quick, chdb only

The server is started with scripts/services/clickhouse.sh when it is not running. Prints a
table and writes ``bench/results/clickhouse.json`` and ``clickhouse.txt``.
Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from connectors.clickhouse import (  # noqa: E402
    ClickHouseConfig,
    encode_native,
    init_schema,
    open_client,
    plan_columns,
)
from connectors.clickhouse_schema import TableOptions  # noqa: E402
from connectors.clickhouse_server import _python_column  # noqa: E402
from otelwax.codec import decode_traces  # noqa: E402
from tests.otlpgen import trace_payloads  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LINES: list[str] = []


def out(line: str) -> None:
    print(line)
    LINES.append(line)


def make_batches(rows: int, batch_rows: int, seed: int) -> list[pa.RecordBatch]:
    """``rows`` spans cut into batches of ``batch_rows`` (unique span ids)."""
    payloads = trace_payloads(rows // 100, seed=seed)
    out = []
    per = batch_rows // 100
    for i in range(0, len(payloads), per):
        out.append(decode_traces(payloads[i : i + per]).batch)
    return out


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def to_python_lists(batch: pa.RecordBatch, plan) -> list:  # type: ignore[no-untyped-def]
    """The clickhouse-driver baseline's conversion: every planned column as a Python list."""
    return [_python_column(batch, c, "") for c in plan.cols]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def bench_chdb(args: argparse.Namespace, results: list[dict]) -> None:
    path = tempfile.mkdtemp(prefix="chdb-bench-")
    for batch_rows in (10_000, 100_000):
        batches = make_batches(args.rows, batch_rows, seed=batch_rows)
        n = sum(b.num_rows for b in batches)
        for indexes in (True, False):
            db = f"bench_{uuid.uuid4().hex[:8]}"
            cfg = ClickHouseConfig(
                path=path, database=db, tables=TableOptions(skip_indexes=indexes)
            )
            client = open_client(cfg)
            init_schema(client, cfg)
            dt = sum(timed(client.insert_arrow, cfg.traces_table, b) for b in batches)
            row = {
                "target": "chdb",
                "path": "INSERT SELECT FROM Python(batch) (sink)",
                "batch_rows": batch_rows,
                "skip_indexes": indexes,
                "rows": n,
                "rows_per_s": n / dt,
            }
            results.append(row)
            report(row)
            if indexes:
                # An ArrowStream body through chdb's streaming insert, for comparison.
                eng = client._engine
                cols = ", ".join(f"`{c}`" for c in batches[0].schema.names)
                sql = f"INSERT INTO {db}.{cfg.traces_table} ({cols})"
                t_total = 0.0
                for b in batches:
                    t0 = time.perf_counter()
                    sink = pa.BufferOutputStream()
                    with pa.ipc.new_stream(sink, b.schema) as w:
                        w.write_batch(b)
                    with eng.lock, eng.session.send_insert(sql, "ArrowStream") as ins:
                        ins.append(sink.getvalue().to_pybytes())
                        ins.finish()
                    t_total += time.perf_counter() - t0
                row = dict(row, path="INSERT FORMAT ArrowStream", rows_per_s=n / t_total)
                results.append(row)
                report(row)
            client.execute(f"DROP DATABASE {db}")
            client.close()


def bench_server(args: argparse.Namespace, results: list[dict]) -> None:
    if not port_open(args.port):
        subprocess.run([str(ROOT / "scripts" / "services" / "clickhouse.sh"), "start"], check=True)
    db = f"bench_{uuid.uuid4().hex[:8]}"
    base = ClickHouseConfig(mode="server", port=args.port, http_port=args.http_port, database=db)
    admin = open_client(base)
    init_schema(admin, base)
    try:
        for batch_rows in (10_000, 100_000):
            batches = make_batches(args.server_rows, batch_rows, seed=7 + batch_rows)
            n = sum(b.num_rows for b in batches)
            plan = plan_columns(batches[0].schema, admin.table_columns(base.traces_table))
            enc = sum(timed(encode_native, b, plan, "") for b in batches)
            conv = sum(timed(to_python_lists, b, plan) for b in batches)
            for fmt, label, client_s in (
                ("native_http", "Arrow→Native (numpy) over HTTP", enc),
                ("driver", "Arrow→Python lists, clickhouse-driver", conv),
            ):
                client = open_client(base.model_copy(update={"insert_format": fmt}))
                dt = sum(timed(client.insert_arrow, base.traces_table, b) for b in batches)
                client.close()
                row = {
                    "target": "server 18.16 (legacy table)",
                    "path": label,
                    "batch_rows": batch_rows,
                    "skip_indexes": False,
                    "rows": n,
                    "rows_per_s": n / dt,
                    "client_conversion_rows_per_s": n / client_s,
                }
                results.append(row)
                report(row)
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.close()


def report(row: dict) -> None:
    conv = row.get("client_conversion_rows_per_s")
    out(
        f"{row['target']:<28} {row['path']:<42} {row['batch_rows']:>8} "
        f"{'yes' if row['skip_indexes'] else 'no':>7} {row['rows_per_s']:>12,.0f} "
        f"{(f'{conv:,.0f}' if conv else '-'):>14}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=300_000, help="rows per chdb case")
    ap.add_argument("--server-rows", type=int, default=200_000, help="rows per server case")
    ap.add_argument("--port", type=int, default=19000)
    ap.add_argument("--http-port", type=int, default=18123)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-chdb", action="store_true")
    args = ap.parse_args()
    results: list[dict] = []
    out(
        f"{'target':<28} {'path':<42} {'batch':>8} {'indexes':>7} {'rows/s':>12} "
        f"{'convert rows/s':>14}"
    )
    if not args.skip_chdb:
        bench_chdb(args, results)
    if not args.skip_server:
        bench_server(args, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clickhouse.json").write_text(
        json.dumps({"bench": "clickhouse", "results": results}, indent=2)
    )
    (RESULTS / "clickhouse.txt").write_text("\n".join(LINES) + "\n")
    print(f"wrote {RESULTS / 'clickhouse.json'} and clickhouse.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
