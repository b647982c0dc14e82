"""Query-side benchmark: trace lookup by id and a service RED query, chdb vs a ClickHouse server.

Loads ``--spans`` spans (default 1M) into each target with the production schema:
``tests.otlpgen`` requests → ``otelwax.codec.decode_traces`` → ``connectors.clickhouse``
``insert_arrow`` in 100K-row batches. To keep generation cheap, ``--unique-spans`` spans are
generated and decoded once and then re-inserted with rewritten TraceId/SpanId prefixes and
shifted timestamps (vectorised), so every copy is a distinct set of traces.

Targets (``--target chdb|server|both``):

- ``chdb``: embedded chdb in a temporary folder, modern DDL (skip indexes,
  ``otel_traces_trace_id_ts`` lookup table + MV).
- ``server``: the ClickHouse server at ``--server`` (Debian's 18.16 here; started with
  ``scripts/services/clickhouse.sh`` when it does not answer, stopped again at the end), legacy
  DDL in a fresh ``bench_query_*`` database (dropped at the end). 18.16 cannot hold the modern
  lookup table, so the bench adds an equivalent one: plain MergeTree ``(TraceId, Start, End)``
  ordered by TraceId, fed by a materialized view.

Both targets also get a trace-ordered copy of the spans (``--by-trace``). The server gets the
one otelwax's default schema creates for a server (``tables.trace_copy``): on 18.16 (no
projections) the table ``otel_traces_by_trace``, ordered by ``(TraceId, Timestamp)`` with
``index_granularity = 256``, fed by a materialized view from ``otel_traces``; on a modern
server the ``by_trace`` projection. chdb (whose default schema has none) gets a projection
``by_trace (SELECT * ORDER BY TraceId) WITH SETTINGS (index_granularity = 1024)`` added by the
bench. Before measuring, the span tables are merged to one part (``OPTIMIZE ... FINAL``;
``--keep-parts`` skips it). The load reports the insert CPU per span of the loading process
and of the server (merges during the load included): ``--by-trace none --load-only`` against
the default measures what the copy costs.

Queries (literal SQL, the same text for both targets):

- ``lookup``: the Jaeger-style two-step trace lookup the schema is built for: time bounds from
  ``otel_traces_trace_id_ts``, then ``otel_traces WHERE TraceId = ? AND Timestamp BETWEEN ...``
  (with ``optimize_use_projections = 0`` when the projection exists, so this column stays the
  production schema's cost; with it the second step uses the projection too).
- ``lookup 1-step``: ``WHERE TraceId = ?`` on the trace-ordered copy (one query, no bounds step;
  with the projection the query names ``otel_traces`` itself).
- ``RED``: one service over the whole stored range, per minute: requests, errors, p50/p99.

Rows: chdb, loaded by one fresh process and queried by another (chdb reads its allocator settings
once per process): through ``connectors.clickhouse.EmbeddedClient`` (what otelwax uses: one chdb
session behind a lock) with 1 and 2 threads and with one ``chdb.connect()`` connection per thread
(2 threads), with otelwax's ``JE_MALLOC_CONF``; then again with each ``--chdb-malloc-conf``
(default ``dirty_decay_ms:1000,muzzy_decay_ms:0``). The server with 1/2/4/8 concurrent clients
(``--clients``): each client a separate Python process (HTTP keep-alive on a raw socket,
TabSeparated; the one-step lookup with ``use_uncompressed_cache = 1``, as ``otelwax query trace``
asks, and the cache's hit rate in each cell), and, when installed, ``clickhouse-benchmark`` (C++
native client, ``apt-get install clickhouse-tools``; the two-step lookup as one statement with
scalar subqueries). Each cell runs ``--seconds`` with every client issuing queries back to back:
p50/p99 are the latencies seen during that run, q/s the completed lookups (or RED queries) per
second, "CPU ms/q" the server's CPU per query (from /proc, the process listening on the native
port) + the clients' CPU per query (chdb: the whole process). The machine's 2 cores are shared by
server and clients.

    .venv/bin/python bench/query_bench.py                           # both, 1M spans
    .venv/bin/python bench/query_bench.py --spans 200000 --seconds 1 --target server

Prints a table and writes ``bench/results/query.json`` (``markdown`` holds the table). Not a
test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KINDS = ("lookup", "lookup1", "red")
KIND_LABEL = {"lookup": "trace lookup", "lookup1": "lookup 1-step", "red": "service RED"}

COLS_MODERN = (
    "Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Duration, "
    "StatusCode, SpanAttributes, ResourceAttributes"
)
COLS_LEGACY = (
    "Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Duration, "
    "StatusCode, `SpanAttributes.keys`, `SpanAttributes.values`, `ResourceAttributes.keys`, "
    "`ResourceAttributes.values`"
)


# --- data -----------------------------------------------------------------------------------


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


def base_batch(unique: int) -> tuple[pa.RecordBatch, dict]:
    from otelwax.codec import decode_traces
    from tests.otlpgen import trace_payloads

    t0 = time.perf_counter()
    payloads = trace_payloads(max(1, unique // 100), seed=3)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = decode_traces(payloads).batch
    return base, {"generate_s": round(gen_s, 2), "decode_s": round(time.perf_counter() - t0, 3)}


def load(client, table: str, base: pa.RecordBatch, spans: int, batch_rows: int,  # type: ignore[no-untyped-def]
         server_pid: int | None = None) -> dict:  # fmt: skip
    """Insert ``spans`` rows (copies of ``base``) into ``table``; returns timing and the CPU
    per span of this process and (``server_pid``) of the server, merges during the load
    included (copying the batches is this process's share too: the same for every schema)."""
    copies = -(-spans // base.num_rows)
    inserted = 0
    c0, s0 = _cpu(), _proc_cpu(server_pid)
    t0 = time.perf_counter()
    for k in range(copies):
        b = copy_batch(base, k)
        for off in range(0, b.num_rows, batch_rows):
            part = b.slice(off, min(batch_rows, spans - inserted, b.num_rows - off))
            if part.num_rows == 0:
                break
            client.insert_arrow(table, part)
            inserted += part.num_rows
    insert_s = time.perf_counter() - t0
    client_cpu, s1 = _cpu() - c0, _proc_cpu(server_pid)
    out = {
        "spans": inserted,
        "unique_generated": base.num_rows,
        "insert_s": round(insert_s, 2),
        "insert_spans_per_s": round(inserted / insert_s),
        "insert_client_cpu_us_per_span": round(client_cpu / inserted * 1e6, 2),
    }
    if s0 is not None and s1 is not None:
        out["insert_server_cpu_us_per_span"] = round((s1 - s0) / inserted * 1e6, 2)
    return out


# --- DDL the bench adds (the proposal) ------------------------------------------------------


def by_trace_mode(args: argparse.Namespace, legacy: bool) -> str:
    """``projection``, ``table`` or ``none`` for this target (``auto``: projections need a
    modern server; 18.16 gets the table)."""
    if args.by_trace == "auto":
        return "table" if legacy else "projection"
    if args.by_trace == "projection" and legacy:
        raise SystemExit("--by-trace projection: ClickHouse 18.16 has no projections")
    return args.by_trace


def bench_ddl(client, db: str, legacy: bool, granularity: int, by_trace: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The proposed trace-ordered copy of the spans (``by_trace``: a projection of
    ``otel_traces``, or the table ``otel_traces_by_trace`` + MV, or none); on a legacy server
    also a trace-id lookup table + MV."""
    cols = client.execute(
        "SELECT name, type FROM system.columns WHERE database = {db:String} "
        "AND table = 'otel_traces' AND default_kind NOT IN ('ALIAS', 'MATERIALIZED')",
        {"db": db},
    )
    codec = "" if legacy else " CODEC(ZSTD(1))"
    body = ",\n    ".join(f"`{n}` {t}{codec}" for n, t in cols)
    names = ", ".join(f"`{n}`" for n, _ in cols)
    out = []
    if by_trace == "projection":
        out.append(
            f"ALTER TABLE {db}.otel_traces ADD PROJECTION by_trace (SELECT * ORDER BY TraceId) "
            f"WITH SETTINGS (index_granularity = {int(granularity)})"
        )
    elif by_trace == "table":
        out += [
            f"CREATE TABLE {db}.otel_traces_by_trace (\n    {body}\n) ENGINE = MergeTree\n"
            f"PARTITION BY toDate(Timestamp)\nORDER BY (TraceId, Timestamp)\n"
            f"SETTINGS index_granularity = {int(granularity)}",
            f"CREATE MATERIALIZED VIEW {db}.otel_traces_by_trace_mv TO {db}.otel_traces_by_trace "
            f"AS SELECT {names} FROM {db}.otel_traces",
        ]
    if legacy:  # the modern lookup table needs SimpleAggregateFunction (ClickHouse >= 19.8)
        out += [
            f"CREATE TABLE {db}.otel_traces_trace_id_ts (TraceId String, Start DateTime, "
            "End DateTime) ENGINE = MergeTree PARTITION BY toMonday(Start) ORDER BY TraceId "
            "SETTINGS index_granularity = 8192",
            f"CREATE MATERIALIZED VIEW {db}.otel_traces_trace_id_ts_mv TO "
            f"{db}.otel_traces_trace_id_ts AS SELECT TraceId, min(Timestamp) AS Start, "
            f"max(Timestamp) AS End FROM {db}.otel_traces WHERE TraceId != '' GROUP BY TraceId",
        ]
    for sql in out:
        client.execute(sql)
    return out


# --- queries --------------------------------------------------------------------------------


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_bounds(db: str, tid: str) -> str:
    return (
        f"SELECT toUInt32(min(Start)), toUInt32(max(End)) FROM {db}.otel_traces_trace_id_ts "
        f"WHERE TraceId = {_lit(tid)}"
    )


def sql_spans(db: str, cols: str, tid: str, start: int | str, end: int | str) -> str:
    return (
        f"SELECT {cols} FROM {db}.otel_traces WHERE TraceId = {_lit(tid)} "
        f"AND Timestamp >= toDateTime({start}) AND Timestamp <= toDateTime({end}) + 1 "
        "ORDER BY Timestamp"
    )


def sql_lookup1(db: str, cols: str, tid: str, table: str = "otel_traces_by_trace",
                settings: str | None = None) -> str:  # fmt: skip
    """One-step lookup: from the trace-ordered table, or from ``otel_traces`` itself when its
    projection ordered by TraceId answers it (``settings``: a SETTINGS clause)."""
    sql = f"SELECT {cols} FROM {db}.{table} WHERE TraceId = {_lit(tid)} ORDER BY Timestamp"
    return sql + (settings or "")


def sql_red(db: str, svc: str, lo: int, hi: int) -> str:
    return (
        "SELECT toStartOfMinute(Timestamp) AS t, count() AS requests, "
        "countIf(StatusCode = 'STATUS_CODE_ERROR') AS errors, "
        "quantile(0.5)(Duration) AS p50, quantile(0.99)(Duration) AS p99 "
        f"FROM {db}.otel_traces WHERE ServiceName = {_lit(svc)} "
        f"AND Timestamp >= toDateTime({lo}) AND Timestamp < toDateTime({hi}) "
        "GROUP BY t ORDER BY t"
    )


def sql_lookup_one_statement(db: str, cols: str, tid: str) -> str:
    """The two-step lookup as one statement (for clickhouse-benchmark's query file)."""
    lk = f"{db}.otel_traces_trace_id_ts WHERE TraceId = {_lit(tid)}"
    return sql_spans(
        db, cols, tid, f"(SELECT min(Start) FROM {lk})", f"(SELECT max(End) FROM {lk})"
    )


def one_query(conn, kind: str, ctx: dict, arg: str) -> None:  # type: ignore[no-untyped-def]
    """Run one lookup (two queries for ``lookup``) or one RED query on ``conn``."""
    db, cols = ctx["db"], ctx["cols"]
    if kind == "lookup":
        ((start, end),) = conn.rows(sql_bounds(db, arg))
        conn.fetch(sql_spans(db, cols, arg, int(start), int(end)) + ctx.get("spans_settings", ""))
    elif kind == "lookup1":
        conn.fetch(sql_lookup1(db, cols, arg, ctx["by_trace_table"], ctx.get("lookup1_settings")))
    else:
        conn.fetch(sql_red(db, arg, ctx["lo"], ctx["hi"]))


# --- connections ----------------------------------------------------------------------------


def _tsv(text: str) -> list[tuple[str, ...]]:
    return [tuple(line.split("\t")) for line in text.splitlines() if line]


class ChdbConn:
    """One ``chdb.connect()`` connection (chdb 4.x runs queries of separate connections in
    parallel; one connection must not be shared by threads: its parameter state races)."""

    def __init__(self, path: str) -> None:
        import chdb

        self.c = chdb.connect(path)

    def fetch(self, sql: str) -> Any:
        return self.c.query(sql, "ArrowTable")

    def rows(self, sql: str) -> list[tuple]:
        return _tsv(str(self.c.query(sql, "TabSeparated")))

    def close(self) -> None:
        self.c.close()


class EmbeddedConn:
    """connectors.clickhouse.EmbeddedClient: the process's one chdb session behind a lock."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self.client = client

    def fetch(self, sql: str) -> Any:
        return self.client.execute(sql)

    rows = fetch

    def close(self) -> None:
        pass


class HttpConn:
    """A keep-alive HTTP/1.1 connection to a ClickHouse server on a raw socket (TabSeparated
    results): one ``sendall`` per query and a minimal response parse, ~0.1 ms of client CPU
    per lookup vs ~0.3 with ``http.client``, whose header parsing would otherwise be a
    third of what a lookup costs the 2 cores the bench shares with the server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("server closed the connection")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._fill()
        out, self.buf = self.buf[:i], self.buf[i + len(sep) :]
        return out

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _request(self, body: bytes) -> tuple[bytes, bytes]:
        self.sock.sendall(b"POST / HTTP/1.1\r\nHost: ch\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))  # fmt: skip
        head = self._until(b"\r\n\r\n").lower()
        if b"transfer-encoding: chunked" in head:
            parts = []
            while n := int(self._until(b"\r\n").split(b";")[0], 16):
                parts.append(self._take(n + 2)[:n])
            self._until(b"\r\n")
            return head, b"".join(parts)
        m = re.search(rb"content-length: *(\d+)", head)
        return head, self._take(int(m.group(1)) if m else 0)

    def fetch(self, sql: str) -> bytes:
        body = (sql + " FORMAT TabSeparated").encode()
        for attempt in (1, 2):  # the server closes idle keep-alive connections after 3 s
            try:
                head, data = self._request(body)
                break
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                self.sock.close()
                self._connect()
                if attempt == 2:
                    raise
        if not head.startswith(b"http/1.1 200"):
            status = head.split(b"\r\n", 1)[0]
            raise RuntimeError(f"{status!r}: {data[:300]!r}")
        return data

    def rows(self, sql: str) -> list[tuple]:
        return _tsv(self.fetch(sql).decode())

    def close(self) -> None:
        self.sock.close()


# --- running clients ------------------------------------------------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def client_loop(conn, kind: str, ctx: dict, args: list, t_start: float, t_end: float,  # type: ignore[no-untyped-def]
                seed: int, min_count: int = 0) -> list[float]:  # fmt: skip
    """Issue ``kind`` queries back to back from ``t_start`` to ``t_end`` (wall clock);
    returns each query's latency in seconds."""
    rnd = random.Random(seed)
    lat: list[float] = []
    delay = t_start - time.time()
    if delay > 0:
        time.sleep(delay)
    while time.time() < t_end or len(lat) < min_count:
        a = time.perf_counter()
        one_query(conn, kind, ctx, rnd.choice(args))
        lat.append(time.perf_counter() - a)
    return lat


_WORKER_CONN: HttpConn | None = None


def _worker(spec: dict) -> tuple[list[float], float]:
    """Pool task: one server client process running ``client_loop`` over HTTP."""
    global _WORKER_CONN
    if _WORKER_CONN is None:
        _WORKER_CONN = HttpConn(spec["host"], spec["http_port"])
    c0 = _cpu()
    lat = client_loop(
        _WORKER_CONN, spec["kind"], spec["ctx"], spec["args"], spec["t_start"], spec["t_end"],
        spec["seed"], spec["min_count"],
    )  # fmt: skip
    return lat, _cpu() - c0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def cell(lat: list[float], wall: float, srv_cpu: float | None, cli_cpu: float | None) -> dict:
    n = len(lat)
    out = {
        "n": n,
        "p50_ms": round(_pct(lat, 50) * 1000, 2),
        "p99_ms": round(_pct(lat, 99) * 1000, 2),
        "qps": round(n / wall, 1),
    }
    if srv_cpu is not None and n:
        out["server_cpu_ms_per_q"] = round(srv_cpu / n * 1000, 3)
    if cli_cpu is not None and n:
        out["client_cpu_ms_per_q"] = round(cli_cpu / n * 1000, 3)
    return out


def run_threads(conns: list, kind: str, ctx: dict, args: list, seconds: float,
                min_count: int) -> dict:  # fmt: skip
    """``len(conns)`` threads in this process (chdb), each with its connection."""
    t_start = time.time() + 0.05
    t_end = t_start + seconds
    lats: list[list[float]] = [[] for _ in conns]

    def work(j: int) -> None:
        lats[j] = client_loop(conns[j], kind, ctx, args, t_start, t_end, j, min_count)

    ts = [threading.Thread(target=work, args=(j,)) for j in range(len(conns))]
    c0 = _cpu()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = max(time.time() - t_start, 1e-9)
    return cell([x for lat in lats for x in lat], wall, None, _cpu() - c0)


def _proc_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_processes(pool, n: int, kind: str, ctx: dict, args: list, seconds: float,  # type: ignore[no-untyped-def]
                  srv: dict, min_count: int) -> dict:  # fmt: skip
    t_start = time.time() + 0.3  # every worker waits for the same start instant
    spec = dict(kind=kind, ctx=ctx, args=args, t_start=t_start, t_end=t_start + seconds,
                host=srv["host"], http_port=srv["http_port"], min_count=min_count)  # fmt: skip
    res = pool.map_async(_worker, [dict(spec, seed=j) for j in range(n)], chunksize=1)
    time.sleep(max(0.0, t_start - time.time()))
    s0, c0 = _proc_cpu(srv["pid"]), _cache_events(srv)
    out = res.get()
    wall = time.time() - t_start
    s1, c1 = _proc_cpu(srv["pid"]), _cache_events(srv)
    lat = [x for lt, _ in out for x in lt]
    srv_cpu = s1 - s0 if s0 is not None and s1 is not None else None
    got = cell(lat, wall, srv_cpu, sum(c for _, c in out))
    hits, misses = (c1[k] - c0[k] for k in ("UncompressedCacheHits", "UncompressedCacheMisses"))
    if hits + misses:
        got["uncompressed_cache_hit_rate"] = round(hits / (hits + misses), 3)
    return got


def _cache_events(srv: dict) -> dict[str, int]:
    """The server's uncompressed cache counters (hit rate of the lookups in a cell)."""
    conn = HttpConn(srv["host"], srv["http_port"])
    try:
        rows = conn.rows(
            "SELECT event, value FROM system.events "
            "WHERE event IN ('UncompressedCacheHits', 'UncompressedCacheMisses')"
        )
    finally:
        conn.close()
    out = {"UncompressedCacheHits": 0, "UncompressedCacheMisses": 0}
    out.update({k: int(v) for k, v in rows})
    return out


def run_ch_benchmark(n: int, queries: list[str], seconds: float, srv: dict, tmp: Path) -> dict:
    """clickhouse-benchmark with ``n`` concurrent connections over a query file (random order)."""
    qf = tmp / "queries.txt"
    qf.write_text("\n".join(queries) + "\n")
    jf = tmp / "report.json"
    jf.unlink(missing_ok=True)
    cmd = ["clickhouse-benchmark", "-c", str(n), "-t", str(seconds), "-r", "1", "-d", "0",
           "-h", srv["host"], "--port", str(srv["port"]), "--json", str(jf)]  # fmt: skip
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = _proc_cpu(srv["pid"])
    t0 = time.time()
    with qf.open() as fh:
        subprocess.run(cmd, stdin=fh, check=True, capture_output=True, timeout=seconds + 60)
    wall = time.time() - t0
    s1 = _proc_cpu(srv["pid"])
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rep = json.loads(jf.read_text())
    st, pq = rep["statistics"], rep["query_time_percentiles"]
    nq = int(st["num_queries"])
    out = {
        "n": nq,
        "p50_ms": round(pq["50"] * 1000, 2),
        "p99_ms": round(pq["99"] * 1000, 2),
        "qps": round(st["QPS"], 1),
    }
    if s0 is not None and s1 is not None and nq:
        out["server_cpu_ms_per_q"] = round((s1 - s0) / nq * 1000, 3)
    cli = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if nq:
        out["client_cpu_ms_per_q"] = round(cli / nq * 1000, 3)
    out["wall_s"] = round(wall, 2)
    return out


# --- targets --------------------------------------------------------------------------------


def settle(client, db: str, args: argparse.Namespace, mode: str) -> float:  # type: ignore[no-untyped-def]
    """Merge the tables to one part per partition (the lookup table always: its rows are only
    one per trace after merging), so no background merge competes with the measurement."""
    tables = ["otel_traces_trace_id_ts"]
    if not args.keep_parts:
        tables += ["otel_traces"] + (["otel_traces_by_trace"] if mode == "table" else [])
    t0 = time.perf_counter()
    for t in tables:
        client.execute(f"OPTIMIZE TABLE {db}.{t} FINAL")
    return round(time.perf_counter() - t0, 2)


def sample_args(conn, db: str, n_tids: int) -> tuple[list[str], list[str], int, int]:  # type: ignore[no-untyped-def]
    tids = [
        r[0]
        for r in conn.rows(
            f"SELECT TraceId FROM {db}.otel_traces_trace_id_ts "
            f"GROUP BY TraceId ORDER BY cityHash64(TraceId) LIMIT {int(n_tids)}"
        )
    ]
    svcs = [r[0] for r in conn.rows(f"SELECT DISTINCT ServiceName FROM {db}.otel_traces")]
    ((lo, hi),) = conn.rows(
        f"SELECT toUInt32(min(Timestamp)), toUInt32(max(Timestamp)) + 1 FROM {db}.otel_traces"
    )
    return tids, svcs, int(lo), int(hi)


def table_info(conn, db: str) -> dict:  # type: ignore[no-untyped-def]
    rows = conn.rows(
        "SELECT table, sum(rows), sum(bytes_on_disk), count() FROM system.parts "
        f"WHERE database = '{db}' AND active GROUP BY table ORDER BY table"
    )
    return {t: {"rows": int(r), "bytes": int(b), "parts": int(p)} for t, r, b, p in rows}


def _chdb_load(path: str, args: argparse.Namespace, base: pa.RecordBatch) -> dict:
    """Create the schema and load the spans into chdb at ``path`` (run in a child process)."""
    from connectors.clickhouse import ClickHouseConfig, open_client

    client = open_client(ClickHouseConfig(mode="embedded", path=path, create_schema=True))
    try:
        mode = by_trace_mode(args, False)
        bench_ddl(client, "otel", False, args.by_trace_granularity, mode)
        info = load(client, "otel.otel_traces", base, args.spans, args.batch_rows)
        info["optimize_s"] = settle(client, "otel", args, mode)
        info["by_trace"] = mode
        return info
    finally:
        client.close()


def _in_child(fn, fn_args: tuple, malloc_conf: str | None) -> Any:  # type: ignore[no-untyped-def]
    """Run ``fn(*fn_args)`` in a fresh spawned process whose chdb reads ``JE_MALLOC_CONF`` =
    ``malloc_conf`` (None: unset, so connectors.clickhouse's default applies)."""
    old = os.environ.get("JE_MALLOC_CONF")
    if malloc_conf is None:
        os.environ.pop("JE_MALLOC_CONF", None)
    else:
        os.environ["JE_MALLOC_CONF"] = malloc_conf
    try:
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, fn_args)
    finally:
        if old is None:
            os.environ.pop("JE_MALLOC_CONF", None)
        else:
            os.environ["JE_MALLOC_CONF"] = old


def _chdb_queries(path: str, args: argparse.Namespace, mode: str, full: bool) -> tuple:
    """The chdb rows (and the table sizes), measured in a process that only queries (run by
    ``_in_child``)."""
    from connectors.clickhouse import ClickHouseConfig, open_client

    db = "otel"
    client = open_client(ClickHouseConfig(mode="embedded", path=path))  # sets JE_MALLOC_CONF
    conf = os.environ.get("JE_MALLOC_CONF", "")
    conns: list[ChdbConn] = []
    rows: list[dict] = []
    try:
        conns = [ChdbConn(path) for _ in range(2)]
        tables = table_info(conns[0], db)
        tids, svcs, lo, hi = sample_args(conns[0], db, args.trace_ids)
        ctx = {"db": db, "cols": COLS_MODERN, "lo": lo, "hi": hi,
               "by_trace_table": _by_trace_table(mode)}  # fmt: skip
        if mode == "projection":  # the two-step row shows the production schema's cost
            ctx["spans_settings"] = " SETTINGS optimize_use_projections = 0"
        emb = EmbeddedConn(client)
        kinds = [k for k in KINDS if k != "lookup1" or mode != "none"]
        for k in kinds:  # warm caches
            one_query(emb, k, ctx, svcs[0] if k == "red" else tids[0])
        variants = [("EmbeddedClient", [emb])]
        if full:
            variants.append(("EmbeddedClient", [emb, emb]))
        variants.append(("connection per thread", conns))
        for label, cs in variants:
            row: dict[str, Any] = {"target": f"chdb 26.9 ({label}; {conf})", "clients": len(cs),
                                   "unit": "threads", "je_malloc_conf": conf}  # fmt: skip
            for k in kinds:
                al = svcs if k == "red" else tids
                mc = args.queries if len(cs) == 1 and k != "red" else 0
                row[k] = run_threads(cs, k, ctx, al, args.seconds, mc)
            rows.append(row)
            print_row(row)
        return rows, tables
    finally:
        for c in conns:
            c.close()
        client.close()


def run_chdb(args: argparse.Namespace, base: pa.RecordBatch, rows_out: list[dict]) -> dict:
    with tempfile.TemporaryDirectory(prefix="otelwax-query-bench-") as d:
        # Load and queries run in separate fresh processes: chdb reads its allocator settings
        # (JE_MALLOC_CONF) once per process, and each setting gets its own query process.
        info = _in_child(_chdb_load, (d, args, base), None)
        mode = info["by_trace"]
        for i, conf in enumerate([None, *args.chdb_malloc_conf]):
            rows, info["tables"] = _in_child(_chdb_queries, (d, args, mode, i == 0), conf)
            rows_out += rows
        return info


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _server_pid(port: int) -> int | None:
    """PID of the process listening on ``port`` (via ``ss -ltnp``), for its CPU time."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def run_server(args: argparse.Namespace, base: pa.RecordBatch, rows_out: list[dict]) -> dict:
    from connectors.clickhouse import ClickHouseConfig, open_client

    host, native, http_port = args.server.split(":")
    srv = {"host": host, "port": int(native), "http_port": int(http_port)}
    script = ROOT / "scripts" / "services" / "clickhouse.sh"
    started = False
    if not _port_open(host, srv["port"]):
        env = dict(os.environ, CH_TCP_PORT=native, CH_HTTP_PORT=http_port)
        subprocess.run([str(script), "start"], check=True, env=env, capture_output=True)
        started = True
    srv["pid"] = _server_pid(srv["port"])
    db = f"bench_query_{uuid.uuid4().hex[:8]}"
    # The trace-ordered copy is the server's default schema (tables.trace_copy); --by-trace
    # none measures the schema without it.
    copy = "off" if args.by_trace == "none" else "on"
    cfg = ClickHouseConfig(
        mode="server", host=host, port=srv["port"], http_port=srv["http_port"], database=db,
        create_schema=True, tables={"trace_copy": copy},
    )  # fmt: skip
    client = open_client(cfg)
    ctxm = mp.get_context("spawn")
    pool = None
    tmp = Path(tempfile.mkdtemp(prefix="otelwax-query-bench-"))
    try:
        version = client.version
        legacy = client.legacy
        cols = COLS_LEGACY if legacy else COLS_MODERN
        mode = "none" if copy == "off" else "table" if legacy else "projection"
        bench_ddl(client, db, legacy, args.by_trace_granularity, "none")
        info = load(client, f"{db}.otel_traces", base, args.spans, args.batch_rows, srv["pid"])
        info["optimize_s"] = settle(client, db, args, mode)
        info["server_version"] = version
        print(f"server load ({mode}): {json.dumps(info)}", flush=True)
        if args.load_only:
            info["by_trace"] = mode
            return info
        conn = HttpConn(host, srv["http_port"])
        info["tables"] = table_info(conn, db)
        tids, svcs, lo, hi = sample_args(conn, db, args.trace_ids)
        ctx = {"db": db, "cols": cols, "lo": lo, "hi": hi, "by_trace_table": _by_trace_table(mode)}
        if not args.no_uncompressed_cache:  # what otelwax query trace asks for
            ctx["lookup1_settings"] = " SETTINGS use_uncompressed_cache = 1"
        info["by_trace"] = mode
        kinds = [k for k in KINDS if k != "lookup1" or mode != "none"]
        for k in kinds:
            one_query(conn, k, ctx, svcs[0] if k == "red" else tids[0])
        conn.close()
        label = f"ClickHouse {version} server"
        pool = ctxm.Pool(max(args.clients))
        pool.map(_sleep, [0.0] * max(args.clients))  # start every worker before timing
        for n in args.clients:
            row: dict[str, Any] = {"target": f"{label}, Python HTTP clients", "clients": n,
                                   "unit": "processes"}  # fmt: skip
            for k in kinds:
                al = svcs if k == "red" else tids
                mc = args.queries if n == 1 and k != "red" else 0
                row[k] = run_processes(pool, n, k, ctx, al, args.seconds, srv, mc)
            rows_out.append(row)
            print_row(row)
        if shutil.which("clickhouse-benchmark") and not args.no_ch_benchmark:
            qfiles = {
                "lookup": [sql_lookup_one_statement(db, cols, t) for t in tids],
                "lookup1": [
                    sql_lookup1(db, cols, t, ctx["by_trace_table"], ctx.get("lookup1_settings"))
                    for t in tids
                ],
                "red": [sql_red(db, s, lo, hi) for s in svcs],
            }
            for n in args.clients:
                row = {"target": f"{label}, clickhouse-benchmark", "clients": n,
                       "unit": "connections"}  # fmt: skip
                for k in kinds:
                    row[k] = run_ch_benchmark(n, qfiles[k], args.seconds, srv, tmp)
                rows_out.append(row)
                print_row(row)
        elif not args.no_ch_benchmark:
            info["clickhouse_benchmark"] = "not installed (apt-get install clickhouse-tools)"
        return info
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {db}")
        finally:
            client.close()
            if started:
                env = dict(os.environ, CH_TCP_PORT=native, CH_HTTP_PORT=http_port)
                subprocess.run([str(script), "stop"], check=False, env=env, capture_output=True)


def _by_trace_table(mode: str) -> str:
    return "otel_traces" if mode == "projection" else "otel_traces_by_trace"


def _sleep(s: float) -> None:
    time.sleep(s)


# --- output ---------------------------------------------------------------------------------


def _fmt_cell(c: dict | None) -> list[str]:
    if not c:
        return ["", "", "", ""]
    cpu = c.get("server_cpu_ms_per_q")
    cli = c.get("client_cpu_ms_per_q")
    cpus = " + ".join(f"{x:.2f}" for x in (cpu, cli) if x is not None)
    return [f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}", f"{c['qps']:.0f}", cpus]


def markdown(rows: list[dict]) -> str:
    head = ["target", "clients"]
    for k in KINDS:
        lab = KIND_LABEL[k]
        head += [f"{lab} p50 ms", "p99 ms", "q/s", "CPU ms/q"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["target"], f"{r['clients']}"]
        for k in KINDS:
            cells += _fmt_cell(r.get(k))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_row(r: dict) -> None:
    parts = []
    for k in KINDS:
        c = r.get(k)
        if c:
            p50, p99, qps, cpu = _fmt_cell(c)
            hit = c.get("uncompressed_cache_hit_rate")
            hits = f" (uncompressed cache hits {hit:.0%})" if hit is not None else ""
            parts.append(f"{KIND_LABEL[k]} {p50}/{p99} ms {qps} q/s cpu {cpu}{hits}")
    print(f"{r['target']} x{r['clients']}: " + "; ".join(parts), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=("chdb", "server", "both"), default="both")
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--unique-spans", type=int, default=100_000, help="generated, then copied")
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per cell (target, clients, query)")
    ap.add_argument(
        "--queries", type=int, default=100, help="at least this many lookups in 1-client cells"
    )
    ap.add_argument("--trace-ids", type=int, default=2000, help="random trace ids to look up")
    ap.add_argument("--server", default="127.0.0.1:19000:18123", help="host:native:http")
    ap.add_argument("--clients", default="1,2,4,8", help="server: concurrent clients per row")
    ap.add_argument("--by-trace-granularity", type=int, default=1024)
    ap.add_argument(
        "--chdb-malloc-conf", action="append", default=["dirty_decay_ms:1000,muzzy_decay_ms:0"],
        help="extra chdb query rows with this JE_MALLOC_CONF (besides otelwax's default)",
    )  # fmt: skip
    ap.add_argument(
        "--by-trace", choices=("auto", "projection", "table", "none"), default="auto",
        help="the trace-ordered copy for the 1-step lookup. chdb: a projection of otel_traces "
        "(auto), the otel_traces_by_trace table + MV, or none. server: the default schema's "
        "copy (any but none: the projection on modern servers, the table + MV on 18.16) or "
        "none (tables.trace_copy: off)",
    )  # fmt: skip
    ap.add_argument(
        "--keep-parts",
        action="store_true",
        help="measure the span tables with the parts the load left (default: OPTIMIZE FINAL)",
    )
    ap.add_argument("--no-ch-benchmark", action="store_true", help="skip clickhouse-benchmark")
    ap.add_argument(
        "--no-uncompressed-cache", action="store_true",
        help="server: one-step lookups without use_uncompressed_cache = 1 (otelwax query trace "
        "sets it; the bench's --trace-ids repeat, so its hit rate is a repeated view's)",
    )  # fmt: skip
    ap.add_argument(
        "--load-only", action="store_true",
        help="server: load (insert CPU per span) and stop, no queries (A/B of --by-trace)",
    )  # fmt: skip
    args = ap.parse_args()
    args.clients = [int(x) for x in args.clients.split(",") if x]
    t0 = time.perf_counter()
    base, gen = base_batch(args.unique_spans)
    rows: list[dict] = []
    res: dict[str, Any] = {"benchmark": "query", "generate": gen, "args": vars(args)}
    res["loadavg_before"] = os.getloadavg()
    if args.target in ("chdb", "both"):
        res["load_chdb"] = run_chdb(args, base, rows)
    if args.target in ("server", "both"):
        res["load_server"] = run_server(args, base, rows)
    res["rows"] = rows
    res["markdown"] = markdown(rows)
    res["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["loadavg_after"] = os.getloadavg()
    # What scripts/bench.sh's summary reads (chdb load + per-query rows).
    ld = res.get("load_chdb") or res.get("load_server") or {}
    tables = ld.get("tables", {})
    res["load"] = {
        "stored": tables.get("otel_traces", {}).get("rows", ld.get("spans")),
        "lookup_rows": tables.get("otel_traces_trace_id_ts", {}).get("rows"),
        "insert_spans_per_s": ld.get("insert_spans_per_s"),
    }
    res["queries"] = [
        {
            "schema": f"{r['target']} x{r['clients']}",
            "query": KIND_LABEL[k],
            "p50_ms": r[k]["p50_ms"],
            "p99_ms": r[k]["p99_ms"],
            "qps_1_thread": r[k]["qps"] if r["clients"] == 1 else "",
            "qps_2_thread": r[k]["qps"] if r["clients"] == 2 else "",
        }
        for r in rows
        for k in KINDS
        if k in r
    ]
    print()
    for name in ("load_chdb", "load_server"):
        if name in res:
            ld = res[name]
            tb = ", ".join(
                f"{t} {v['rows']} rows/{v['parts']} parts/{v['bytes'] / 2**20:.0f} MiB"
                for t, v in ld["tables"].items()
            )
            print(f"{name}: {ld['spans']} spans at {ld['insert_spans_per_s']} spans/s; {tb}")
    print(res["markdown"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "query.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {RESULTS / 'query.json'} ({res['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
