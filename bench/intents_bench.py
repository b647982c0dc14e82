"""What the exactly-once intents cost per Kafka range, on chdb and a ClickHouse server.

The sink (``connectors.clickhouse_sink``, overlapped writer as in a flow) stores ``--ranges``
ranges of one span each into an ``otel_traces`` with ``ENGINE = Null``, one range per
``write_batch`` (a backlog: the next batch is handed over while one is stored), so what is
left of each range's cost is the intents' inserts into the ``otelwax_intents`` MergeTree plus a
one-row Null insert. ``--warmup`` ranges are stored first (chdb's first inserts page its code
back in: one-time costs, reported apart as ``warmup_cpu_s``). CPU = this process (all threads:
chdb's inserts and merges run here) from the first measured ``write_batch`` until ``--settle``
seconds later no merge of the database runs, and ``close``; on a server also the server
process's CPU over the same window (``/proc``; a shared server counts others' queries).

``--mode log`` times ``IntentLog.record`` + ``confirm`` per range alone (what the sink did per
range before its marks went with the next intents), the sink's data inserts left out.

Trees are compared by running this script under each (``--trees A,B``: one child process per
run, A B A B ..., ``--rounds`` each), printing the median CPU ms per range of each tree.

    python bench/intents_bench.py --target chdb --trees /tmp/base,. --rounds 5
    python bench/intents_bench.py --target server --ch-server 127.0.0.1:19000:18123
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

HERE = Path(__file__).resolve()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all threads) in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def settle(client, db: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Wait ``seconds``, then until no merge of ``db`` runs (at most 20 s more): the merges of
    the intents' small parts are part of their cost."""
    time.sleep(seconds)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not client.execute(f"SELECT count() FROM system.merges WHERE database = '{db}'")[0][0]:
            return
        time.sleep(0.2)


def one_run(args: argparse.Namespace) -> dict:
    """Store ``args.ranges`` one-span ranges through the sink; CPU of this process (and of the
    server) per range."""
    sys.path.insert(0, str(HERE.parent))
    from side_by_side import clickhouse_server_pid, null_table_ddl

    from connectors.clickhouse import ClickHouseConfig, open_client
    from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
    from connectors.kafka_source import RangeAcks
    from otelwax.codec import decode_traces
    from tests.otlpgen import trace_payloads

    db = f"bench_intents_{uuid.uuid4().hex[:8]}"
    tmp = tempfile.mkdtemp(prefix="intents-bench-")
    if args.target == "chdb":
        conn = ClickHouseConfig(mode="embedded", path=f"{tmp}/chdb", database=db)
        server_pid = None
    else:
        host, port, http = args.ch_server.split(":")
        conn = ClickHouseConfig(
            mode="server", host=host, port=int(port), http_port=int(http), database=db
        )
        server_pid = clickhouse_server_pid(int(http))
    setup = open_client(conn)
    legacy = bool(getattr(setup, "legacy", False))
    for sql in null_table_ddl(db, legacy):
        setup.execute(sql)
    if args.target == "chdb":
        setup.close()  # the sink opens the process's one chdb engine again
    acks = RangeAcks()
    sink = ClickHouseSink(conn, ClickHouseSinkConfig(), acks=acks)
    part = sink.build("clickhouse", 0, 1)
    span = decode_traces(trace_payloads(1, seed=3)).batch.slice(0, 1)
    ranges = []
    for i in range(args.warmup + args.ranges):
        acks.emitted("spans", 0, i, 100)
        ranges.append(StoredRange("spans", 0, i, i, span, 1))
    intents = sink.intent_log(sink.client())
    warm0 = time.process_time()
    for r in ranges[: args.warmup]:  # chdb's first inserts page its code back in (one-time)
        part.write_batch([r])
    while acks.oldest("spans", 0) is not None and acks.oldest("spans", 0) < args.warmup:
        time.sleep(0.01)
    settle(intents.client, db, args.settle)
    ranges = ranges[args.warmup :]
    cpu0 = time.process_time()
    warm = cpu0 - warm0
    srv0 = proc_cpu_s(server_pid) if server_pid else 0.0
    t0 = time.perf_counter()
    for r in ranges:
        if args.mode == "sink":
            part.write_batch([r])
        else:  # the intent log alone: an intent and a stored mark per range
            intents.record([r])
            intents.confirm([r])
    wall = time.perf_counter() - t0
    settle(intents.client, db, args.settle)  # the writer's idle marks, the merges
    part.close()
    cpu = time.process_time() - cpu0
    srv = proc_cpu_s(server_pid) - srv0 if server_pid else 0.0
    check = sink.client()
    stored = check.execute(
        f"SELECT count() FROM {db}.otelwax_intents WHERE mark = 'stored'"
    )[0][0]
    inserts = check.execute(f"SELECT uniqExact(group_id) FROM {db}.otelwax_intents")[0][0]
    if args.target != "chdb":
        check.execute(f"DROP DATABASE {db}")
        setup.close()
    check.close()
    return {
        "ranges": args.ranges,
        "warmup_cpu_s": warm,
        "marked": int(stored),
        "intent_inserts": int(inserts),
        "cpu_ms_per_range": 1000 * cpu / args.ranges,
        "server_cpu_ms_per_range": 1000 * srv / args.ranges,
        "wall_ms_per_range": 1000 * wall / args.ranges,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["chdb", "server"], default="chdb")
    ap.add_argument("--ch-server", default="127.0.0.1:19000:18123", help="host:native:http")
    ap.add_argument("--ranges", type=int, default=100)
    ap.add_argument(
        "--mode", choices=["sink", "log"], default="sink",
        help="sink: ranges through the sink; log: IntentLog.record + confirm per range alone",
    )  # fmt: skip
    ap.add_argument("--warmup", type=int, default=2, help="ranges stored before measuring")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds counted after close")
    ap.add_argument("--trees", default="", help="comma-separated trees to alternate")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not args.trees:
        print(json.dumps(one_run(args)))
        return 0
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    child = [a for a in sys.argv[1:] if not a.startswith(("--trees", "--rounds"))]
    child = [a for a in child if a not in (args.trees, str(args.rounds))]
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, str(Path(tree) / "bench" / "intents_bench.py"), *child],
                cwd=tree, env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(tree, runs[tree][-1], flush=True)
    print("| tree | CPU ms/range runs | median | server CPU ms/range | inserts | marked |")
    print("|---|---|---:|---:|---:|---:|")
    for tree, rs in runs.items():
        cpu = [r["cpu_ms_per_range"] for r in rs]
        srv = statistics.median(r["server_cpu_ms_per_range"] for r in rs)
        print(
            f"| {tree} | {' / '.join(f'{c:.1f}' for c in cpu)} | {statistics.median(cpu):.1f} "
            f"| {srv:.1f} | {rs[-1]['intent_inserts']} | {rs[-1]['marked']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
