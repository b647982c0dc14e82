"""``flows.traces`` into embedded chdb's MergeTree on one pinned core, merges included.

Issue 14, goal 3. One topic is filled once (``--spans``, ``tests.otlpgen`` requests of 100
spans, ``--pool`` distinct requests produced repeatedly), then each variant drains it from the
start with a fresh flow name and chdb folder, ``taskset -c --cpu`` (chdb's merge threads
inherit the pin), variants interleaved ``--repeat`` times. The flow runs inside this file
(``run`` sub-command, a wrapper around ``bytewax.run``) which, in the flow's process:

1. opens the store as the flow will (``create_schema``) and applies the variant's SQL
   (``ALTER TABLE ... MODIFY SETTING / DROP INDEX``, a Null engine);
2. runs the flow to the end of the backlog (``stop_at_end``): CPU "stored";
3. waits until no merge has run for ``--quiet-s`` seconds: CPU "quiet";
4. ``OPTIMIZE TABLE ... FINAL`` on the spans and the lookup table: CPU "one part", the
   headline: **spans per CPU-second** = spans / process CPU (utime + stime, every thread:
   worker, sink writer, chdb's insert and merge threads) from step 2's start to here, so every
   variant pays its whole merge bill (how far merges get during a run depends on timing);
5. measures queries on the one-part table: the Jaeger-style two-step lookup, ``WHERE TraceId
   = ?`` alone (1-step), one service's per-minute RED (``bench/query_bench.py``'s queries) and
   a search for one ``service.instance.id`` resource attribute (what the map bloom filters
   serve), one client, ``--query-s`` seconds each: CPU ms per query (in-process chdb: the
   process's CPU) and p50 ms.

    .venv/bin/python bench/mergetree_bench.py --spans 1000000 --repeat 3 \\
        --only base no_map_blooms compact_parts

Not a test: no thresholds. Writes ``bench/results/mergetree.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

BOOTSTRAP = os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092")
T = "otel.otel_traces"
MIB = 2**20
qb_kinds = ("lookup", "lookup1", "red")  # bench/query_bench.py's KINDS

# name -> flow config overrides (dotted keys) and SQL run on the fresh table before the flow.
_MAP_BLOOMS = ("idx_res_attr_key", "idx_res_attr_value", "idx_span_attr_key", "idx_span_attr_value")
VARIANTS: dict[str, dict] = {
    "base": {},
    # the pipeline alone (Kafka, decode, presort, chdb's Arrow conversion): no MergeTree
    "null_engine": {
        "cfg": {"clickhouse.tables.trace_lookup": False},
        "sql": [
            f"CREATE TABLE {T}_null AS {T} ENGINE = Null",
            f"DROP TABLE {T} SYNC",
            f"RENAME TABLE {T}_null TO {T}",
        ]
    },
    # the cheapest MergeTree with the same columns and key: no skip index, no MV, LZ4
    "bare": {
        "cfg": {
            "clickhouse.tables.skip_indexes": False,
            "clickhouse.tables.trace_lookup": False,
            "clickhouse.tables.codecs": False,
        }
    },
    # ClickHouse sorts each insert block by the key itself (the sink's Arrow take is skipped)
    "no_presort": {"cfg": {"sink.presort": False}},
    "ranges_8MiB": {"cfg": {"source.batch.max_bytes": 8 * MIB}},
    "ranges_32MiB": {
        "cfg": {"source.batch.max_bytes": 32 * MIB, "source.max_inflight_bytes": 96 * MIB}
    },
    "no_skip_indexes": {"cfg": {"clickhouse.tables.skip_indexes": False}},
    "no_map_blooms": {"sql": [f"ALTER TABLE {T} DROP INDEX {i}" for i in _MAP_BLOOMS]},
    "no_tokenbf": {"sql": [f"ALTER TABLE {T} DROP INDEX idx_lower_span_name"]},
    "no_trace_bloom": {"sql": [f"ALTER TABLE {T} DROP INDEX idx_trace_id"]},
    "no_lookup_mv": {"cfg": {"clickhouse.tables.trace_lookup": False}},
    "lz4": {"cfg": {"clickhouse.tables.codecs": False}},
    "projection": {"cfg": {"clickhouse.tables.trace_projection": True}},
    "wide_parts": {"sql": [f"ALTER TABLE {T} MODIFY SETTING min_bytes_for_wide_part = 0"]},
    "compact_parts": {
        "sql": [f"ALTER TABLE {T} MODIFY SETTING min_bytes_for_wide_part = {1024 * MIB}"]
    },
    "merge_block_1024": {"sql": [f"ALTER TABLE {T} MODIFY SETTING merge_max_block_size = 1024"]},
    "vertical_merges": {
        "sql": [
            f"ALTER TABLE {T} MODIFY SETTING vertical_merge_algorithm_min_rows_to_activate = 1, "
            "vertical_merge_algorithm_min_columns_to_activate = 1"
        ]
    },
    "max_merge_64MiB": {
        "sql": [
            f"ALTER TABLE {T} MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = {64 * MIB}"
        ]
    },
}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- inside the flow process ---------------------------------------------------------------


def _events(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """chdb's counters: merges, and where insert time goes (skip indexes, sorting)."""
    rows = client.execute(
        "SELECT event, value FROM system.events WHERE event IN ('Merge', 'MergedRows', "
        "'MergedUncompressedBytes', 'InsertedRows') OR event LIKE 'MergeTreeDataWriter%' "
        "OR event = 'MergeMutateBackgroundExecutorTaskExecuteStepMicroseconds'"
    )
    return {k: int(v) for k, v in rows}


def quiesce(client, quiet_s: float, limit_s: float) -> None:  # type: ignore[no-untyped-def]
    """Return once no merge has been running for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        if client.execute("SELECT count() FROM system.merges")[0][0]:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= quiet_s:
            return
        time.sleep(0.2)


def _queries(client, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    import query_bench as qb

    conn = qb.EmbeddedConn(client)
    tids = [r[0] for r in conn.rows(f"SELECT DISTINCT TraceId FROM {T} LIMIT 500")]
    svcs = [r[0] for r in conn.rows(f"SELECT DISTINCT ServiceName FROM {T}")]
    ((lo, hi),) = conn.rows(
        f"SELECT toUInt32(min(Timestamp)), toUInt32(max(Timestamp)) + 1 FROM {T}"
    )
    ctx = {"db": "otel", "cols": qb.COLS_MODERN, "lo": lo, "hi": hi}
    ctx["by_trace_table"] = "otel_traces"  # 1-step: WHERE TraceId = ? on the spans
    lookup_table = conn.rows("EXISTS TABLE otel.otel_traces_trace_id_ts")[0][0]
    nan = {"client_cpu_ms_per_q": float("nan"), "p50_ms": float("nan")}
    out: dict = {k: nan for k in (*qb_kinds, "attr")}
    if not tids:  # Null engine: nothing stored
        return {**out, "tables": {}}
    for kind in qb.KINDS if lookup_table else qb.KINDS[1:]:
        al = svcs if kind == "red" else tids
        qb.one_query(conn, kind, ctx, al[0])  # warm
        out[kind] = qb.run_threads([conn], kind, ctx, al, seconds, 5)
    out["attr"] = _attr_search(client, seconds)
    out["tables"] = qb.table_info(conn, "otel")
    return out


def _attr_search(client, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    """Spans of one service instance (a rare resource attribute value, what the
    ``mapValues(ResourceAttributes)`` bloom filter prunes for), back to back: CPU ms/query."""
    key = "ResourceAttributes['service.instance.id']"
    ids = [r[0] for r in client.execute(f"SELECT DISTINCT {key} FROM {T} LIMIT 200")]
    n, c0, t_end = 0, _cpu(), time.monotonic() + seconds
    while time.monotonic() < t_end or n < 5:
        client.execute(
            f"SELECT count() FROM {T} WHERE {key} = {{v:String}}",
            {"v": ids[n % len(ids)]},
        )
        n += 1
    return {"client_cpu_ms_per_q": round((_cpu() - c0) / n * 1000, 3), "n": n}


def run_in_flow(spec_path: str, argv: list[str]) -> None:
    """Prepare the store, run ``bytewax.run argv`` here, then measure (writes spec['out'])."""
    import runpy

    import yaml

    from connectors.clickhouse import ClickHouseConfig, open_client

    spec = json.loads(Path(spec_path).read_text())
    flow_cfg = yaml.safe_load(Path(spec["config"]).read_text())
    client = open_client(ClickHouseConfig(**flow_cfg["clickhouse"]))  # the flow shares it
    try:
        for sql in spec["sql"]:
            client.execute(sql)
        ev0, c0, t0 = _events(client), _cpu(), time.monotonic()
        sys.argv = ["bytewax.run", *argv]
        try:
            runpy.run_module("bytewax.run", run_name="__main__")
        except SystemExit as exc:
            if exc.code:
                raise
        c1, t1 = _cpu(), time.monotonic()
        quiesce(client, spec["quiet_s"], 300)
        c2, t2 = _cpu(), time.monotonic()
        # Merges during a run depend on timing (a slower run merges further), so every
        # variant is also brought to one part per partition: the whole merge bill.
        for (t,) in client.execute(
            "SELECT name FROM system.tables WHERE database = 'otel' AND engine LIKE '%MergeTree' "
            "AND name IN ('otel_traces', 'otel_traces_trace_id_ts')"
        ):
            client.execute(f"OPTIMIZE TABLE otel.{t} FINAL")
        c3 = _cpu()
        ev = {k: v - ev0.get(k, 0) for k, v in _events(client).items()}
        res = {
            "stored_s": t1 - t0,
            "cpu_stored_s": c1 - c0,
            "cpu_quiet_s": c2 - c0,
            "cpu_merged_s": c3 - c0,
            "quiesce_s": t2 - t1,
            "events": ev,
            "queries": _queries(client, spec["query_s"]),
        }
        Path(spec["out"]).write_text(json.dumps(res))
    finally:
        client.close()


# --- the driver ----------------------------------------------------------------------------


def _set(cfg: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        cfg = cfg.setdefault(k, {})
    cfg[keys[-1]] = value


def run_one(topic: str, variant: dict, args: argparse.Namespace, tmp: Path) -> dict:
    import yaml

    name = uuid.uuid4().hex[:8]
    cfg: dict = {
        "kafka": {"bootstrap_servers": BOOTSTRAP},
        "source": {"topic": topic, "stop_at_end": True, "group_id": f"mtbench-{name}"},
        "clickhouse": {
            "mode": "embedded",
            "path": str(tmp / f"chdb-{name}"),
            "create_schema": True,
        },
        "metrics_port": None,
        "dead_letters": {"topic": f"dlq_{topic}"},
        "sink": {"flow": f"mt{name}"},
    }
    for k, v in variant.get("cfg", {}).items():
        _set(cfg, k, v)
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    spec = {
        "config": str(tmp / f"{name}.yaml"),
        "sql": variant.get("sql", []),
        "out": str(tmp / f"{name}.json"),
        "quiet_s": args.quiet_s,
        "query_s": args.query_s,
    }
    (tmp / f"{name}.spec").write_text(json.dumps(spec))
    tree = variant.get("tree", str(ROOT))  # another checkout's code (before/after runs)
    flow = f"flows.traces:build({spec['config']!r})"
    cmd = ["taskset", "-c", str(args.cpu), sys.executable, str(Path(__file__).resolve()), "run",
           str(tmp / f"{name}.spec"), "--", flow, "-w", "1"]  # fmt: skip
    log = tmp / f"{name}.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": tree},
                             stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            rc = p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = -9
    shutil.rmtree(cfg["clickhouse"]["path"], ignore_errors=True)  # ~100 MB a run
    if rc:
        raise RuntimeError(f"flow exited with {rc}:\n{log.read_text(errors='replace')[-3000:]}")
    return json.loads(Path(spec["out"]).read_text())


def summarize(name: str, runs: list[dict], spans: int) -> dict:
    def med(f) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(f(r) for r in runs)

    tables = runs[-1]["queries"]["tables"] or {"-": {"parts": 0, "bytes": 0}}
    nan = float("nan")
    q = {k: (med(lambda r, k=k: r["queries"].get(k, {}).get("client_cpu_ms_per_q", nan)),
             med(lambda r, k=k: r["queries"].get(k, {}).get("p50_ms", nan)))
         for k in (*qb_kinds, "attr")}  # fmt: skip
    return {
        "variant": name,
        "spans_per_cpu_s": round(med(lambda r: spans / r["cpu_merged_s"])),
        "runs_per_cpu_s": [round(spans / r["cpu_merged_s"]) for r in runs],
        "spans_per_cpu_s_stored": round(med(lambda r: spans / r["cpu_stored_s"])),
        "spans_per_cpu_s_quiet": round(med(lambda r: spans / r["cpu_quiet_s"])),
        "spans_per_s_wall": round(med(lambda r: spans / r["stored_s"])),
        "merge_cpu_share": round(med(lambda r: 1 - r["cpu_stored_s"] / r["cpu_merged_s"]), 3),
        "merges": med(lambda r: r["events"].get("Merge", 0)),
        "merged_rows": med(lambda r: r["events"].get("MergedRows", 0)),
        "parts": {t: v["parts"] for t, v in tables.items()},
        "mib": round(sum(v["bytes"] for v in tables.values()) / MIB, 1),
        "query_cpu_ms": {k: v[0] for k, v in q.items()},
        "query_p50_ms": {k: v[1] for k, v in q.items()},
        "runs": runs,
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "run":
        sys.path[0] = os.getcwd()  # the checkout under test
        sep = sys.argv.index("--")
        run_in_flow(sys.argv[2], sys.argv[sep + 1 :])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--pool", type=int, default=2000, help="distinct requests (100 spans each)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--topic", help="reuse a filled topic (not deleted)")
    ap.add_argument("--keep-topic", action="store_true")
    ap.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--tree", action="append", default=[], help="NAME=path: base on that checkout")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=0, help="core to pin the flow to")
    ap.add_argument("--quiet-s", type=float, default=3.0, help="no merge for this long = done")
    ap.add_argument("--query-s", type=float, default=2.0, help="seconds per query kind")
    args = ap.parse_args()
    from flow_memory_bench import produce

    from connectors.kafka import create_topics, delete_topics

    variants = {n: VARIANTS[n] for n in args.only}
    for t in args.tree:
        n, _, path = t.partition("=")
        variants[n] = {"tree": path}
    topic = args.topic or f"mtbench_{uuid.uuid4().hex[:8]}"
    spans = args.spans
    if not args.topic:
        create_topics(BOOTSTRAP, [topic, f"dlq_{topic}"], partitions=args.partitions)
        t = time.monotonic()
        spans = produce(topic, args.spans, args.pool)
        print(f"produced {spans} spans into {topic} in {time.monotonic() - t:.0f} s", flush=True)
    runs: dict[str, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="otelwax-mt-bench-") as d:
            for i in range(args.repeat):
                for name, v in variants.items():
                    r = run_one(topic, v, args, Path(d))
                    runs.setdefault(name, []).append(r)
                    q = r["queries"]
                    print(
                        f"[{i}] {name:<18} {spans / r['cpu_merged_s']:>8.0f} sp/CPU-s "
                        f"(stored {spans / r['cpu_stored_s']:.0f}, "
                        f"quiet {spans / r['cpu_quiet_s']:.0f}, wall {spans / r['stored_s']:.0f}"
                        f"/s, quiesce {r['quiesce_s']:.1f} s) merges {r['events'].get('Merge')} "
                        f"parts {[v['parts'] for v in q['tables'].values()]} "
                        f"q CPU ms 2-step {q['lookup']['client_cpu_ms_per_q']} "
                        f"1-step {q['lookup1']['client_cpu_ms_per_q']} "
                        f"RED {q['red']['client_cpu_ms_per_q']} "
                        f"attr {q['attr']['client_cpu_ms_per_q']}",
                        flush=True,
                    )
    finally:
        if not args.topic and not args.keep_topic:
            delete_topics(BOOTSTRAP, [topic, f"dlq_{topic}"])
    summary = [summarize(n, rs, spans) for n, rs in runs.items()]
    print(
        "\n| variant | spans/CPU-s (one part) | runs | spans/CPU-s (stored) | (quiet) | "
        "wall spans/s | "
        "merge CPU share | merges | parts | MiB | 2-step ms CPU (p50) | 1-step | RED | attr |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for s in summary:
        qc, qp = s["query_cpu_ms"], s["query_p50_ms"]
        print(
            f"| {s['variant']} | {s['spans_per_cpu_s']} | {s['runs_per_cpu_s']} | "
            f"{s['spans_per_cpu_s_stored']} | {s['spans_per_cpu_s_quiet']} | "
            f"{s['spans_per_s_wall']} | {s['merge_cpu_share']} | "
            f"{s['merges']:.0f} | {list(s['parts'].values())} | {s['mib']} | "
            + " | ".join(f"{qc[k]:.1f} ({qp[k]:.1f})" for k in (*qb_kinds, "attr"))
            + " |"
        )
    out = ROOT / "bench" / "results" / "mergetree.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.time(), "spans": spans, "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
