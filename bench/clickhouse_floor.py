"""ClickHouse's own floor: CPU per span / data point of ClickHouse alone, no otelwax pipeline.

Issue 14, goals 2 (chdb), 3 and 5 (chdb). Everything runs in this process, pinned to one core
(``--cpu``; chdb's insert and merge threads inherit the pin), and the inputs are prepared before
any clock starts: ``tests.otlpgen`` spans (``bench/metrics_bench.py``'s data points for metrics)
decoded by the native codec, the traces presorted by the table key as the sink does, then
written once to /dev/shm as

- ``native_lc``: Native with the table's own types (LowCardinality dictionaries), written by
  chdb itself: the cheapest input ClickHouse reads;
- ``native_plain``: Native of the plain types (LowCardinality stripped), the types
  ``encode_native`` sends a server;
- ``rowbinary``: RowBinary of the plain types;
- ``arrow``: the decoded batch through ``EmbeddedClient.insert_arrow`` (``Python()``): the path
  the chdb flow takes.

A case is one ``INSERT ... SELECT * FROM file(...)`` (or ``insert_arrow``) per block, each
under its own ``insert_deduplication_token`` as the sink sends one, blocks of ``--blocks``
rows (the flow's 16 MiB range holds ~36K spans); the file cases of a bigger block read several
block files in one insert (ClickHouse squashes them into one block). CPU = ``getrusage`` of
the process (every thread) from the first insert to: *stored* = the last insert returned;
*one part* = no merge running for ``--quiet-s``, then ``OPTIMIZE TABLE ... FINAL`` on each
MergeTree table of the case that still holds more than one part in a partition (merges
included, as ``bench/mergetree_bench.py``'s "one part", which also rewrites a lone part).

Variants of the default schema (DDL from ``init_schema`` / ``metrics_ddl``, rewritten from
``SHOW CREATE``): ``null`` (``ENGINE = Null`` copy, no view), ``lz4`` (no CODEC clauses: the
default LZ4), ``no_skip`` (no skip indexes), ``no_lc`` (LowCardinality(T) -> T), ``bare``
(``lz4`` + ``no_skip`` + no trace-id lookup table and view).

The ``server`` cases POST the flow's Native body (``ServerClient.insert_arrow``) to a ClickHouse
server (a private 18.16 instance started here on ``--server-ports`` unless ``--server-http``
names a running one and ``--server-pid`` its process) and count the SERVER process's CPU
(/proc/<pid>/stat) per span into a Null copy and into the default (legacy) schema.

    python bench/clickhouse_floor.py              # the main cases, ~5 minutes (loaded box: ~10)
    python bench/clickhouse_floor.py --all --repeat 3   # every variant, ~30 minutes
    python bench/clickhouse_floor.py --quick      # ~1 minute, one repeat of small inputs

Not a test: no thresholds. Prints a table, writes ``bench/results/clickhouse_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from mergetree_bench import quiesce  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TRACES = "otel_traces"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- DDL variants -------------------------------------------------------------------------

_CODEC = re.compile(r"\s*CODEC\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")
_INDEX = re.compile(r",\n\s*INDEX [^\n]*?(?=,?\n)")
_LOW_CARD = re.compile(r"LowCardinality\(([^()]+)\)")


def rewrite(ddl: str, src_db: str, db: str, variant: set[str]) -> str:
    """``SHOW CREATE`` text of a table of ``src_db`` as the same table of ``db`` in ``variant``
    (a set of: null, lz4, no_skip, no_lc)."""
    ddl = ddl.replace(f"{src_db}.", f"{db}.")
    if "lz4" in variant:
        ddl = _CODEC.sub("", ddl)
    if variant & {"no_skip", "null"}:
        ddl = _INDEX.sub("", ddl)
    if "no_lc" in variant:
        ddl = _LOW_CARD.sub(r"\1", ddl)
    if "null" in variant:
        ddl = ddl[: ddl.index("\nENGINE")] + "\nENGINE = Null"
    return ddl


VARIANTS = {
    "default": set(),
    "null": {"null", "no_views"},
    "null_no_lc": {"null", "no_views", "no_lc"},
    "lz4": {"lz4"},
    "no_skip": {"no_skip"},
    "no_lc": {"no_lc"},
    "bare": {"lz4", "no_skip", "no_views"},
}


def copy_schema(client, src_db: str, db: str, variant: set[str], tables: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Create ``db`` with ``tables`` of ``src_db`` in ``variant`` (and the views that read
    them, unless ``no_views``); returns the MergeTree tables to bring to one part."""
    client.execute(f"CREATE DATABASE {db}")
    rows = client.execute(
        f"SELECT name, engine FROM system.tables WHERE database = '{src_db}' ORDER BY "
        "engine = 'MaterializedView'"  # views after the tables they read and write
    )
    merged = []
    for name, engine in rows:
        view_of = [t for t in tables if name.startswith(t) and name != t]
        if name not in tables and not view_of:
            continue
        if view_of and "no_views" in variant:
            continue
        ddl = client.execute(f"SHOW CREATE TABLE {src_db}.{name}")[0][0]
        client.execute(rewrite(ddl, src_db, db, variant if name in tables else set()))
        if engine.endswith("MergeTree") and "null" not in variant:
            merged.append(name)
    return merged


# --- measuring ----------------------------------------------------------------------------


def to_one_part(client, db: str, tables: list[str], quiet_s: float) -> int:  # type: ignore[no-untyped-def]
    """Wait for background merges, then ``OPTIMIZE ... FINAL`` each table that still holds
    more than one part in a partition (a part already alone is not written again); returns
    the active parts left."""
    if not tables:
        return 0
    quiesce(client, quiet_s, 300)
    names = ", ".join(f"'{t}'" for t in tables)
    parts = f"system.parts WHERE database = '{db}' AND table IN ({names}) AND active"
    for (t,) in client.execute(
        f"SELECT DISTINCT table FROM (SELECT table, partition, count() AS n FROM {parts} "
        "GROUP BY table, partition) WHERE n > 1"
    ):
        client.execute(f"OPTIMIZE TABLE {db}.{t} FINAL")
    return int(client.execute(f"SELECT count() FROM {parts}")[0][0])


def run_case(client, db: str, merged: list[str], inserts: list[Callable[[], None]],  # type: ignore[no-untyped-def]
             quiet_s: float, clock: Callable[[], float] = cpu) -> dict:
    """Run the inserts, then bring ``merged`` to one part: CPU seconds of ``clock`` for each,
    and the active parts left."""
    c0 = clock()
    for ins in inserts:
        ins()
    c1 = clock()
    parts = to_one_part(client, db, merged, quiet_s)
    c2 = clock()
    return {"stored_s": c1 - c0, "one_part_s": c2 - c0 if merged else None, "parts": parts,
            "load": os.getloadavg()[0]}  # fmt: skip


# --- inputs -------------------------------------------------------------------------------


class Inputs:
    """Blocks of one signal, as files in /dev/shm and as Arrow batches, prepared once."""

    def __init__(self, shm: Path, name: str) -> None:
        self.dir = shm / name
        self.dir.mkdir()
        self.batches: list[dict[str, pa.RecordBatch]] = []  # per block: table -> batch

    def path(self, fmt: str, table: str, i: int) -> Path:
        return self.dir / f"{table}.{i}.{fmt}"

    def write(self, session, table_cols: dict[str, dict[str, str]]) -> None:  # type: ignore[no-untyped-def]
        """Every block of every table in every file format, written by chdb."""
        for i, tables in enumerate(self.batches):
            for t, b in tables.items():
                cols = table_cols[t]
                sel = ", ".join(f"`{n}`" for n in cols)
                otelwax_batch = b  # noqa: F841  (chdb's Python() finds it by name)
                for fmt, types in (("native_lc", cols), ("native_plain", plain(cols)),
                                   ("rowbinary", plain(cols))):  # fmt: skip
                    struct = ", ".join(f"`{n}` {ty}" for n, ty in types.items())
                    ch_fmt = "Native" if fmt.startswith("native") else "RowBinary"
                    session.query(
                        f"INSERT INTO FUNCTION file('{self.path(fmt, t, i)}', '{ch_fmt}', "
                        f"'{struct}') SELECT {sel} FROM Python(otelwax_batch)"
                    )

    def file_source(self, fmt: str, table: str, first: int, count: int, cols: dict) -> str:
        """``file(...)`` over ``count`` block files from ``first`` (one sorted run each)."""
        blocks = str(first) if count == 1 else f"{{{first}..{first + count - 1}}}"
        p = self.dir / f"{table}.{blocks}.{fmt}"
        if fmt == "rowbinary":
            struct = ", ".join(f"`{n}` {ty}" for n, ty in plain(cols).items())
            return f"file('{p}', 'RowBinary', '{struct}')"
        return f"file('{p}', 'Native')"


def plain(cols: dict[str, str]) -> dict[str, str]:
    return {n: _LOW_CARD.sub(r"\1", t) for n, t in cols.items()}


def trace_blocks(spans: int, block: int) -> list[dict[str, pa.RecordBatch]]:
    from connectors.clickhouse_schema import TRACES_SORT_KEY
    from otelwax.codec import decode_traces
    from tests.otlpgen import trace_payloads

    payloads = trace_payloads(spans // 100, seed=11)
    per = block // 100
    keys = [(k, "ascending") for k in TRACES_SORT_KEY]
    out = []
    for i in range(0, len(payloads), per):
        b = decode_traces(payloads[i : i + per]).batch
        out.append({TRACES: b.take(pc.sort_indices(b, sort_keys=keys))})
    return out


def metric_blocks(points: int, block: int) -> list[dict[str, pa.RecordBatch]]:
    from metrics_bench import metric_payloads

    from otelwax.codec import decode_metrics

    payloads, _ = metric_payloads(points // 100, f"floor_{uuid.uuid4().hex[:6]}")
    per = block // 100
    out = []
    for i in range(0, len(payloads), per):
        tables = decode_metrics(payloads[i : i + per]).tables
        out.append({t: b for t, b in tables.items() if b.num_rows})
    return out


def concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


class Signal:
    """One signal's template schema, inputs and totals."""

    def __init__(self, name: str, unit: str, tmpl: str, inputs: Inputs, tables: list[str],
                 cols: dict[str, dict[str, str]], total: int, mt_total: int) -> None:  # fmt: skip
        self.name, self.unit, self.tmpl, self.inputs = name, unit, tmpl, inputs
        self.tables, self.cols, self.total, self.mt_total = tables, cols, total, mt_total
        self.block_rows = [sum(b.num_rows for b in tb.values()) for tb in inputs.batches]
        self._big: dict[tuple[int, int], dict[str, pa.RecordBatch]] = {}

    def groups(self, k: int, total: int) -> list[tuple[int, int]]:
        """(first block, rows) of each insert of ``k`` blocks until ``total`` rows."""
        pool = [(f, sum(self.block_rows[f : f + k])) for f in range(0, len(self.block_rows), k)]
        out, rows = [], 0
        while rows < total:
            g = pool[len(out) % len(pool)]
            out.append(g)
            rows += g[1]
        return out

    def arrow(self, first: int, k: int) -> dict[str, pa.RecordBatch]:
        if k == 1:
            return self.inputs.batches[first]
        if (first, k) not in self._big:
            blocks = self.inputs.batches[first : first + k]
            self._big[first, k] = {t: concat([b[t] for b in blocks]) for t in blocks[0]}
        return self._big[first, k]


def chdb_case(client, sig: Signal, op: str, variant: str, fmt: str, k: int,  # type: ignore[no-untyped-def]
              quiet_s: float) -> dict:
    """One run of a chdb case: ``op`` parse (FORMAT Null) or insert into ``variant``."""
    session = client._engine.session
    db = f"floor_{uuid.uuid4().hex[:8]}"
    merged = []
    if op != "parse":
        merged = copy_schema(client, sig.tmpl, db, VARIANTS[variant], sig.tables)
    total = sig.total if op == "parse" or variant.startswith("null") else sig.mt_total
    groups = sig.groups(k, total)
    inserts: list[Callable[[], None]] = []
    for first, _ in groups:
        for t in sig.inputs.batches[first]:
            cols = sig.cols[t]
            if fmt == "arrow":
                inserts.append(partial(client.insert_arrow, f"{db}.{t}", sig.arrow(first, k)[t],
                                       dedup_token=uuid.uuid4().hex, fresh=True))  # fmt: skip
                continue
            src = sig.inputs.file_source(fmt, t, first, k, cols)
            if op == "parse":
                sql = f"SELECT * FROM {src} FORMAT Null"
            else:
                collist = ", ".join(f"`{n}`" for n in cols)
                sql = (f"INSERT INTO {db}.{t} ({collist}) SETTINGS insert_deduplication_token = "
                       f"'{uuid.uuid4().hex}' SELECT * FROM {src}")  # fmt: skip
            inserts.append(partial(session.query, sql))
    try:
        res = run_case(client, db, merged, inserts, quiet_s)
    finally:
        if op != "parse":
            client.execute(f"DROP DATABASE {db} SYNC")
    return {**res, "rows": sum(r for _, r in groups), "inserts": len(inserts)}


# (op, variant, format, in the default set: the rest run with --all)
TRACE_CASES = [
    ("parse", "", "native_lc", True),
    ("parse", "", "native_plain", False),
    ("parse", "", "rowbinary", False),
    ("insert", "null", "native_lc", True),
    ("insert", "null", "native_plain", True),
    ("insert", "null", "rowbinary", False),
    ("insert", "null", "arrow", True),
    ("insert", "null_no_lc", "native_plain", False),
    ("insert", "default", "native_lc", True),
    ("insert", "default", "arrow", True),
    ("insert", "lz4", "native_lc", False),
    ("insert", "no_skip", "native_lc", False),
    ("insert", "no_lc", "native_plain", False),
    ("insert", "bare", "native_lc", True),
]
METRIC_CASES = [
    ("parse", "", "native_lc", True),
    ("insert", "null", "native_lc", True),
    ("insert", "null", "arrow", True),
    ("insert", "default", "native_lc", True),
    ("insert", "default", "arrow", True),
    ("insert", "lz4", "native_lc", False),
    ("insert", "no_skip", "native_lc", False),
    ("insert", "bare", "native_lc", True),
]


def case_name(signal: str, op: str, variant: str, fmt: str) -> str:
    return f"{signal} {op} {variant} {fmt}".replace("  ", " ")


# --- the server ---------------------------------------------------------------------------


class PrivateServer:
    """A ClickHouse server of our own (scripts/services/clickhouse.sh), so that its CPU is
    this benchmark's alone."""

    def __init__(self, tcp: int, http: int) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="otelwax-floor-ch-"))
        self.env = {**os.environ, "CH_TCP_PORT": str(tcp), "CH_HTTP_PORT": str(http),
                    "CH_DATA": str(self.data)}  # fmt: skip
        self.script = str(ROOT / "scripts" / "services" / "clickhouse.sh")

    def __enter__(self) -> int:
        subprocess.run([self.script, "start"], env=self.env, check=True, timeout=120)
        return int((self.data / "clickhouse.pid").read_text())

    def __exit__(self, *exc: object) -> None:
        subprocess.run([self.script, "stop"], env=self.env, check=False, timeout=120)
        shutil.rmtree(self.data, ignore_errors=True)


def server_case(admin, cfg, sig: Signal, variant: str, k: int, pid: int, quiet_s: float) -> dict:  # type: ignore[no-untyped-def]
    """The flow's Native body (``ServerClient.insert_arrow``) into a fresh database of the
    server: the server process's CPU."""
    from connectors.clickhouse import init_schema, open_client

    db = f"floor_{uuid.uuid4().hex[:8]}"
    dcfg = cfg.model_copy(update={"database": db})
    if variant == "null":  # a database of its own: no view reads the Null table
        admin.execute(f"CREATE DATABASE {db}")
        admin.execute(f"CREATE TABLE {db}.{TRACES} AS {cfg.database}.{TRACES} ENGINE = Null")
    else:
        init_schema(admin, dcfg)
    merged = [] if variant == "null" else [r[0] for r in admin.execute(
        f"SELECT name FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree' "
        "AND name != 'otel_logs'")]  # fmt: skip
    client = open_client(dcfg)
    total = sig.total if variant == "null" else sig.mt_total
    groups = sig.groups(k, total)
    inserts = [partial(client.insert_arrow, f"{db}.{TRACES}", sig.arrow(f, k)[TRACES],
                       dedup_token=uuid.uuid4().hex, fresh=True) for f, _ in groups]  # fmt: skip
    c0 = cpu()
    try:
        res = run_case(admin, db, merged, inserts, quiet_s, clock=lambda: proc_cpu(pid))
    finally:
        client.close()
        admin.execute(f"DROP DATABASE {db}")
    return {**res, "client_s": cpu() - c0, "rows": sum(r for _, r in groups),
            "inserts": len(inserts)}  # fmt: skip


# --- the driver ---------------------------------------------------------------------------


def summarize(name: str, unit: str, k_rows: int, runs: list[dict], key: str) -> dict | None:
    vals = [r[key] / r["rows"] * 1e6 for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return {"case": name, "block": k_rows, "measure": key, "unit": f"us/{unit}",
            "median": round(statistics.median(vals), 3), "min": round(min(vals), 3),
            "max": round(max(vals), 3), "runs": [round(v, 3) for v in vals],
            "rows": runs[0]["rows"], "inserts": runs[0]["inserts"],
            "load": [round(r["load"], 1) for r in runs],
            "parts_after": runs[0]["parts"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", type=int, default=0, help="core to pin this process to")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="every case (lz4, no_skip, no_lc, ...)")
    ap.add_argument("--spans", type=int, default=504_000, help="spans per parse / Null case")
    ap.add_argument("--mt-spans", type=int, default=432_000, help="spans per MergeTree case")
    ap.add_argument("--pool-spans", type=int, default=216_000, help="distinct spans prepared")
    ap.add_argument("--block", type=int, default=36_000, help="spans per block (one range)")
    ap.add_argument("--big", type=int, default=6, help="blocks per insert of the big size")
    ap.add_argument("--points", type=int, default=500_000, help="data points per Null case")
    ap.add_argument("--mt-points", type=int, default=480_000, help="per MergeTree case")
    ap.add_argument("--pool-points", type=int, default=160_000)
    ap.add_argument("--metric-block", type=int, default=40_000, help="data points per block")
    ap.add_argument("--metric-big", type=int, default=4)
    ap.add_argument("--merge-wait-mib", type=int, help="the arrow cases' client setting")
    ap.add_argument("--quiet-s", type=float, default=1.0, help="no merge this long = done")
    ap.add_argument("--only", default="", help="regex: cases to run (e.g. 'traces insert')")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--server-ports", default="31210,31211", help="TCP,HTTP of a private server")
    ap.add_argument("--server-http", type=int, help="a running server's HTTP port (shared)")
    ap.add_argument("--server-tcp", type=int, default=19000)
    ap.add_argument("--server-pid", type=int, help="that server's process id")
    ap.add_argument("--quick", action="store_true", help="seconds: small inputs, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.big, args.metric_big = 1, 2, 2
        args.spans = args.mt_spans = args.pool_spans = 72_000
        args.points = args.mt_points = args.pool_points = 80_000
    only = re.compile(args.only)
    os.sched_setaffinity(0, {args.cpu})  # before chdb starts its threads: they inherit it

    from connectors.clickhouse import ClickHouseConfig, init_schema, open_client
    from connectors.clickhouse_metrics_schema import metrics_ddl

    shm = Path(tempfile.mkdtemp(prefix="otelwax-floor-", dir="/dev/shm"))
    chdb_dir = tempfile.mkdtemp(prefix="otelwax-floor-chdb-")
    cfg = ClickHouseConfig(path=chdb_dir, database="tmpl_traces")
    if args.merge_wait_mib is not None:
        cfg = cfg.model_copy(update={"merge_wait_mib": args.merge_wait_mib})
    client = open_client(cfg)
    results: list[dict] = []
    try:
        t0 = time.monotonic()
        init_schema(client, cfg)
        for stmt in metrics_ddl("tmpl_metrics", opts=cfg.tables):
            client.execute(stmt)
        traces = Inputs(shm, "traces")
        traces.batches = trace_blocks(args.pool_spans, args.block)
        tcols = {TRACES: client.table_columns(f"tmpl_traces.{TRACES}")}
        traces.write(client._engine.session, tcols)
        sigs = [Signal("traces", "span", "tmpl_traces", traces, [TRACES], tcols,
                       args.spans, args.mt_spans)]  # fmt: skip
        metrics = Inputs(shm, "metrics")
        metrics.batches = metric_blocks(args.pool_points, args.metric_block)
        mtables = list(metrics.batches[0])
        mcols = {t: client.table_columns(f"tmpl_metrics.{t}") for t in mtables}
        metrics.write(client._engine.session, mcols)
        sigs.append(Signal("metrics", "point", "tmpl_metrics", metrics, mtables, mcols,
                           args.points, args.mt_points))  # fmt: skip
        print(f"inputs prepared in {time.monotonic() - t0:.0f} s in {shm} "
              f"({sum(f.stat().st_size for f in shm.rglob('*')) >> 20} MiB); "
              f"metrics tables {mtables}", flush=True)  # fmt: skip
        bigs = {"traces": args.big, "metrics": args.metric_big}
        plan = [(sig, c[:3], k) for sig, cases in zip(sigs, (TRACE_CASES, METRIC_CASES),
                                                      strict=True)
                for c in cases for k in (1, bigs[sig.name])
                if (c[3] or args.all) and only.search(case_name(sig.name, *c[:3]))]  # fmt: skip
        runs: dict[tuple[str, int], list[dict]] = {}
        for i in range(args.repeat):
            for sig, (op, variant, fmt), k in plan:
                r = chdb_case(client, sig, op, variant, fmt, k, args.quiet_s)
                name = case_name(sig.name, op, variant, fmt)
                runs.setdefault((name, k * sig.block_rows[0]), []).append(r)
                one = (f", one part {r['one_part_s'] / r['rows'] * 1e6:.2f}"
                       if r["one_part_s"] else "")  # fmt: skip
                print(f"[{i}] {name:<40} x{k}: {r['stored_s'] / r['rows'] * 1e6:.2f} us/"
                      f"{sig.unit} stored{one} ({r['rows']} rows, {r['inserts']} inserts, "
                      f"{r['parts']} parts, load {r['load']:.1f})", flush=True)  # fmt: skip
        if not args.no_server and only.search("server traces"):
            runs.update(server_runs(args, sigs[0]))
        for (name, rows), rs in runs.items():
            unit = "point" if name.startswith("metrics") else "span"
            for key in ("stored_s", "one_part_s"):
                s = summarize(name, unit, rows, rs, key)
                if s:
                    results.append(s)
    finally:
        client.close()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(chdb_dir, ignore_errors=True)
    print(f"\nmachine load average {os.getloadavg()[0]:.1f}; pinned to core {args.cpu}\n")
    print("| case | rows per insert | us per row, stored (median, range) | "
          "to one part (median, range) |")  # fmt: skip
    print("|---|---:|---:|---:|")
    by: dict[tuple[str, int], dict[str, dict]] = {}
    for s in results:
        by.setdefault((s["case"], s["block"]), {})[s["measure"]] = s
    for (name, rows), m in by.items():
        cells = [f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "-"
                 for s in (m.get("stored_s"), m.get("one_part_s"))]  # fmt: skip
        print(f"| {name} | {rows:,} | {cells[0]} | {cells[1]} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "clickhouse_floor.json"
    out.write_text(json.dumps({"time": time.time(), "args": vars(args), "results": results},
                              indent=1))  # fmt: skip
    print(f"wrote {out}")
    return 0


def server_runs(args: argparse.Namespace, sig: Signal) -> dict[tuple[str, int], list[dict]]:
    from connectors.clickhouse import ClickHouseConfig, init_schema, open_client

    def measure(pid: int, tcp: int, http: int) -> dict[tuple[str, int], list[dict]]:
        cfg = ClickHouseConfig(mode="server", port=tcp, http_port=http, database="floor_tmpl")
        admin = open_client(cfg)
        init_schema(admin, cfg)
        runs: dict[tuple[str, int], list[dict]] = {}
        try:
            for i in range(args.repeat):
                for variant in ("null", "default"):
                    for k in (1, args.big):
                        r = server_case(admin, cfg, sig, variant, k, pid, args.quiet_s)
                        name = f"server traces insert {variant} native_http"
                        runs.setdefault((name, k * sig.block_rows[0]), []).append(r)
                        one = (f", one part {r['one_part_s'] / r['rows'] * 1e6:.2f}"
                               if r["one_part_s"] else "")  # fmt: skip
                        per = {key: r[key] / r["rows"] * 1e6 for key in ("stored_s", "client_s")}
                        print(f"[{i}] {name:<40} x{k}: server {per['stored_s']:.2f} us/span "
                              f"stored{one}; client {per['client_s']:.2f} ({r['parts']} parts, "
                              f"load {r['load']:.1f})",
                              flush=True)  # fmt: skip
        finally:
            admin.execute("DROP DATABASE IF EXISTS floor_tmpl")
            admin.close()
        return runs

    if args.server_http:
        if not args.server_pid:
            raise SystemExit("--server-http needs --server-pid (the server's CPU is measured)")
        return measure(args.server_pid, args.server_tcp, args.server_http)
    tcp, http = (int(p) for p in args.server_ports.split(","))
    with PrivateServer(tcp, http) as pid:
        return measure(pid, tcp, http)


if __name__ == "__main__":
    sys.exit(main())
