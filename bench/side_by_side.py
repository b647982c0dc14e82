"""Side-by-side benchmark: otelwax vs an OpenTelemetry Collector, one run, same machine, same load.

Servers are pinned to core ``--core`` (``taskset``), load generators to ``--load-core``; CPU time
of a server is read from ``/proc/<pid>/stat`` (utime + stime, all threads, plus children), so
"spans/s per core" = spans / server CPU seconds. Kafka at $OTELWAX_TEST_KAFKA or 127.0.0.1:19092.

1. ``ingest``: telemetrygen (OTLP gRPC, ``--workers`` processes at once, fixed trace count,
   10 spans per trace, no rate limit, SDK queue sized to hold every span) → (a) ``otelwax
   ingest`` (shim) and (b) the Collector built by ``scripts/collector.sh`` (otlpreceiver →
   kafkaexporter, otlp_proto, split per trace id, lz4, acks=all, no sending queue, so both
   answer after Kafka acknowledged). Every record in each topic is read back and decoded to
   count the spans that really reached Kafka. ``--ingest-loads otlpgen`` sends realistic spans
   instead: ``tests.otlpgen`` requests of 100 spans (~420 B/span, 20 traces of 5 spans, 8
   attributes and an event each) from ``--workers`` gRPC clients, one request in flight each.
2. ``consume``: one preloaded topic (``tests.otlpgen`` 100-span requests) read by (a) the
   Collector (kafkareceiver → batch → debug exporter, verbosity basic), (b) otelwax without a
   sink (the flow's own source and decode step → a counting sink: Kafka → decode → Arrow
   batches), (b') the same with librdkafka's prefetch raised to 256 MiB, and (c) otelwax
   ``flows.traces`` into embedded chdb (``stop_at_end``; a fresh store and consumer group per
   run, stored rows counted afterwards).
3. ``e2e``: (c) above is otelwax's Kafka → ClickHouse (chdb) spans/s and peak RSS; plus
   event-to-queryable latency with records produced at a fixed rate while ``flows.traces``
   runs: the sink's ``event_to_stored`` histogram (Kafka record timestamp → chdb insert
   returned, after which the rows are queryable), p50/p99 estimated inside the buckets, for
   each ``--latency-delays`` value of ``source.batch.max_delay_s``.

4. ``null``: the same preloaded-topic setup into sinks that store nothing (Rotel's method, so
   only the pipeline is measured): (a) the Collector, kafkareceiver → batch → nop exporter
   (``bench/collector/null.yaml``; done when its batch processor has sent every span), (b)
   otelwax ``flows.traces`` into embedded chdb and (c) into the ClickHouse server at
   ``--ch-server`` (a fresh database per run), where ``otel_traces`` is pre-created with the
   production columns and ``ENGINE = Null`` (the flow runs without ``create_schema``; intents
   are still recorded, as in production). CPU of the flow process alone; the server's CPU in
   the notes. Spans per CPU-second and the ratio to the Collector's median.

Stages 1, 2 and 4 run ``--repeat`` times per system, interleaved; the median run is reported.

    scripts/collector.sh && .venv/bin/python bench/side_by_side.py
    .venv/bin/python bench/side_by_side.py --ingest-spans 100000 --consume-spans 100000

Prints a table and writes ``bench/results/side_by_side.json``. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BOOTSTRAP = os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092")
BIN = ROOT / ".cache" / "bin"
RESULTS = ROOT / "bench" / "results"
CLK = os.sysconf("SC_CLK_TCK")


# --- process helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for k in kids:
                out.append(int(k))
                out.extend(_children(int(k)))
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (all threads), from /proc/<pid>/stat."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK  # fields 14, 15 of stat
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    """Peak RSS and the latest CPU seconds of a process tree, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.cpu = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.05)

    def sample(self) -> None:
        r = rss_bytes(self.pid)
        if r:
            self.peak = max(self.peak, r)
            self.cpu = max(self.cpu, cpu_seconds(self.pid))


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not open port {port}; see {log}:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Kafka helpers -----------------------------------------------------------------------------


def create_topic(partitions: int) -> str:
    from connectors.kafka import create_topics

    topic = f"sbs_{uuid.uuid4().hex[:8]}"
    create_topics(BOOTSTRAP, [topic, f"dlq_{topic}"], partitions=partitions)
    return topic


def drop_topic(topic: str) -> None:
    from connectors.kafka import delete_topics

    delete_topics(BOOTSTRAP, [topic, f"dlq_{topic}"])


def count_in_kafka(topic: str) -> tuple[int, int]:
    """(records, spans) in ``topic``: every record read back and decoded by otelwax.codec."""
    from confluent_kafka import Consumer, TopicPartition

    from otelwax.codec import decode_traces

    c = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "sbs-count-" + uuid.uuid4().hex[:6],
            "enable.auto.commit": False,
        }
    )
    md = c.list_topics(topic, timeout=10)
    want, assign = 0, []
    for p in md.topics[topic].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        want += hi - lo
        assign.append(TopicPartition(topic, p, lo))
    c.assign(assign)
    records = spans = 0
    buf: list[bytes] = []
    deadline = time.monotonic() + 120
    while records < want and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1.0):
            if m.error():
                continue
            records += 1
            buf.append(m.value())
        if len(buf) >= 2000 or records >= want:
            spans += decode_traces(buf).batch.num_rows if buf else 0
            buf = []
    if buf:
        spans += decode_traces(buf).batch.num_rows
    c.close()
    return records, spans


def preload(topic: str, n_spans: int) -> tuple[int, int]:
    """Produce ``n_spans`` spans as 100-span otlpgen requests; returns (records, bytes)."""
    from confluent_kafka import Producer

    from tests import otlpgen

    payloads = otlpgen.trace_payloads(max(1, n_spans // 100), seed=11)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20, "compression.type": "lz4"})
    for i, v in enumerate(payloads):
        while True:
            try:
                p.produce(topic, value=v, key=b"%032x" % i)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    return len(payloads), sum(map(len, payloads))


# --- 1. ingest ---------------------------------------------------------------------------------


def start_shim(topic: str, core: int | None, log: Path) -> tuple[subprocess.Popen, int]:
    gp, hp, mp = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "otelwax", "--log-level", "WARNING", "ingest",
        "--host", "127.0.0.1", "--grpc-port", str(gp), "--http-port", str(hp),
        "--metrics-port", str(mp), "--kafka-bootstrap", BOOTSTRAP, "--topic-traces", topic,
        "--compression", "lz4", "--linger-ms", "5",
    ]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(pinned(cmd, core), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    wait_port(mp, proc, log)
    wait_port(gp, proc, log)
    return proc, gp


def start_collector(
    config: str, env: dict[str, str], core: int | None, log: Path
) -> tuple[subprocess.Popen, int]:
    mp = free_port()
    full = dict(os.environ, KAFKA_BROKERS=BOOTSTRAP, METRICS_PORT=str(mp), **env)
    cmd = [str(BIN / "otelcol-bench"), "--config", str(ROOT / "bench" / "collector" / config)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            pinned(cmd, core), cwd=ROOT, env=full, stdout=fh, stderr=subprocess.STDOUT
        )
    wait_port(mp, proc, log)
    return proc, mp


def telemetrygen(port: int, traces: int, procs: int, core: int | None, log: Path) -> float:
    """Send ``traces`` traces (10 spans each) from ``procs`` telemetrygen processes at once.

    One telemetrygen process exports through one batch span processor, i.e. one request in
    flight; several processes keep several requests in flight. The SDK queue is sized to hold
    every span (``OTEL_BSP_MAX_QUEUE_SIZE``) so none is dropped client-side. Returns wall
    seconds until the last process exited (all its requests answered).
    """
    per = max(1, traces // procs)
    env = dict(os.environ, OTEL_BSP_MAX_QUEUE_SIZE=str(per * 10 + 1024))
    cmd = [
        str(BIN / "telemetrygen"), "traces", "--otlp-insecure",
        "--otlp-endpoint", f"127.0.0.1:{port}", "--workers", "1",
        "--traces", str(per), "--child-spans", "9", "--rate", "0",
        "--batch-size", "500", "--timeout", "300s", "--service", "telemetrygen",
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        ps = [
            subprocess.Popen(pinned(cmd, core), env=env, stdout=fh, stderr=subprocess.STDOUT)
            for _ in range(procs)
        ]
        rcs = [p.wait() for p in ps]
    if any(rcs):
        raise RuntimeError(f"telemetrygen exited with {rcs}; see {log}")
    return time.perf_counter() - t0


def otlpgen_load(port: int, payloads: list[bytes], workers: int) -> float:
    """Send every payload (ExportTraceServiceRequest) over gRPC from ``workers`` threads, one
    request in flight each; returns wall seconds until the last was answered OK."""
    import grpc

    def send(part: list[bytes]) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=None,
                response_deserializer=None,
            )
            for p in part:
                call(p, timeout=60)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=send, args=(payloads[i::workers],)) for i in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


_OTLPGEN: dict[int, list[bytes]] = {}


def _otlpgen_payloads(n: int) -> list[bytes]:
    """``n`` 100-span requests (built once per size, reused by every run)."""
    if n not in _OTLPGEN:
        from tests import otlpgen

        _OTLPGEN[n] = otlpgen.trace_payloads(n, seed=13)
    return _OTLPGEN[n]


def run_ingest(name: str, args: argparse.Namespace, tmp: Path, load: str = "telemetrygen") -> dict:
    topic = create_topic(args.partitions)
    log = tmp / f"ingest-{name}.log"
    gen_log = tmp / f"telemetrygen-{name}.log"
    try:
        if name == "otelwax shim":
            proc, port = start_shim(topic, args.core, log)
        else:
            proc, port = start_collector(
                "ingest.yaml",
                {"OTLP_GRPC_PORT": str(free_port()), "KAFKA_TOPIC": topic},
                args.core,
                log,
            )
            port = int(_env_port(proc))
            wait_port(port, proc, log)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            if load == "otlpgen":
                payloads = _otlpgen_payloads(max(args.workers, args.ingest_spans // 100))
                warmup = payloads[: max(args.workers, len(payloads) // 10)]
                otlpgen_load(port, warmup, args.workers)
                warm = 100 * len(warmup)
                time.sleep(0.5)
                cpu0 = cpu_seconds(proc.pid)
                wall = otlpgen_load(port, payloads, args.workers)
                cpu = cpu_seconds(proc.pid) - cpu0
                sent = 100 * len(payloads)
            else:
                warm_traces = max(args.workers, args.ingest_spans // 10 // 10)
                telemetrygen(port, warm_traces, args.workers, args.load_core, gen_log)
                time.sleep(0.5)
                cpu0 = cpu_seconds(proc.pid)
                traces = args.ingest_spans // 10
                wall = telemetrygen(port, traces, args.workers, args.load_core, gen_log)
                cpu = cpu_seconds(proc.pid) - cpu0
                sent = (traces // args.workers) * args.workers * 10
                warm = (warm_traces // args.workers) * args.workers * 10
        finally:
            sampler.stop.set()
            stop(proc)
        records, spans_in_kafka = count_in_kafka(topic)
    finally:
        drop_topic(topic)
    measured = min(sent, max(0, spans_in_kafka - warm))
    return {
        "stage": "1 ingest: OTLP gRPC → Kafka acked"
        if load == "telemetrygen"
        else "1 ingest otlpgen: gRPC → Kafka acked",
        "system": name,
        "spans_sent": sent,
        "spans": measured,
        "kafka_records": records,
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "spans_per_s": round(measured / wall),
        "spans_per_core_s": round(measured / cpu) if cpu > 0 else None,
        "peak_rss_mib": round(sampler.peak / 2**20, 1),
    }


def _env_port(proc: subprocess.Popen) -> str:
    """The OTLP gRPC port handed to a collector process (from its environment)."""
    env = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    for kv in env:
        if kv.startswith(b"OTLP_GRPC_PORT="):
            return kv.split(b"=", 1)[1].decode()
    raise RuntimeError("collector has no OTLP_GRPC_PORT")


# --- 2. consume --------------------------------------------------------------------------------


def _metric_sum(text: str, name_re: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if re.match(name_re, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


COLLECTOR_CONSUME = {
    "consume.yaml": ("2 Kafka → decode → batch", "Collector: kafkareceiver → batch → debug"),
    "null.yaml": ("4 Kafka → Null sink", "Collector: kafkareceiver → batch → nop"),
}


def run_collector_consume(
    topic: str, spans: int, args: argparse.Namespace, tmp: Path, config: str = "consume.yaml"
) -> dict:
    """The Collector reads ``topic`` through ``config`` until its exporter got every span."""
    log = tmp / "consume-collector.log"
    t0 = time.perf_counter()
    proc, mp = start_collector(
        config,
        {"KAFKA_TOPIC": topic, "KAFKA_GROUP": "sbs-" + uuid.uuid4().hex[:6]},
        args.core,
        log,
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    done = 0.0
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics", timeout=5).read()
            except OSError:
                time.sleep(0.1)
                continue
            # The nop exporter has no exporter counters: count what the batch processor sent.
            done = _metric_sum(text.decode(), r"otelcol_exporter_sent_spans(_total)?\{") or (
                _metric_sum(text.decode(), r"otelcol_processor_batch_batch_send_size_sum\{")
            )
            if done >= spans:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"collector exited; see {log}")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid)
        sampler.sample()
    finally:
        sampler.stop.set()
        stop(proc)
    stage, system = COLLECTOR_CONSUME[config]
    return {
        "stage": stage,
        "system": system,
        "spans": int(done),
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "spans_per_s": round(done / wall),
        "spans_per_core_s": round(done / cpu) if cpu > 0 else None,
        "peak_rss_mib": round(sampler.peak / 2**20, 1),
        "note": "wall and CPU include process start (Go: ~0.1 s)",
    }


def _watch_flow(proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    """Wall/CPU from the first 'start at' log line to 'input finished'; peak RSS."""
    sampler = Sampler(proc.pid)
    cpu0 = cpu1 = None
    t0 = t1 = None
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"flow did not finish; see {log}")
        sampler.sample()
        text = log.read_text(errors="replace")
        if t0 is None and "start at" in text:
            t0, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
        if t1 is None and "input finished" in text:
            t1, cpu1 = time.perf_counter(), cpu_seconds(proc.pid)
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"flow exited with {proc.returncode}; see {log}")
    end = time.perf_counter()
    t0 = t0 or end
    return {
        "wall_s": (t1 or end) - t0,
        "cpu_s": (cpu1 if cpu1 is not None else sampler.cpu) - (cpu0 or 0.0),
        "peak_rss_mib": round(sampler.peak / 2**20, 1),
    }


NULL_DB = "otel"
SYSTEMS = {
    "nosink": ("2 Kafka → decode → batch", "otelwax source → decode (no sink)"),
    "nosink-prefetch": (
        "2 Kafka → decode → batch",
        "otelwax source → decode (no sink, 256 MiB prefetch)",
    ),
    "chdb": ("3 Kafka → ClickHouse", "otelwax flows.traces → chdb"),
    "chdb-null": ("4 Kafka → Null sink", "otelwax flows.traces → chdb (Null engine)"),
    "server-null": ("4 Kafka → Null sink", "otelwax flows.traces → 18.16 server (Null engine)"),
}


def null_table_ddl(database: str, legacy: bool) -> list[str]:
    """The traces table (the production columns, no skip indexes) as ``ENGINE = Null``: inserts
    are parsed and dropped, so only the pipeline up to ClickHouse's input is measured."""
    from connectors.clickhouse_schema import TableOptions, quote_ident, traces_ddl

    opts = TableOptions(skip_indexes=False, trace_lookup=False, trace_projection=False)
    main = traces_ddl(database, "otel_traces", opts, legacy=legacy)[0]
    return [
        f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}",
        main.rsplit(") ENGINE = ", 1)[0] + ") ENGINE = Null",
    ]


def stored_sql(database: str, null: bool) -> str:
    """Spans a traces flow stored: rows of otel_traces, or 100 per record of the ranges the
    sink marked stored (a Null table keeps no rows; every preloaded record holds 100 spans)."""
    if null:
        return f"SELECT 100 * sum(records) FROM {database}.otelwax_intents WHERE mark = 'stored'"
    return f"SELECT count() FROM {database}.otel_traces"


def run_statements(conn: dict, statements: list[str]) -> str:
    """Run ``statements`` on ``conn`` (a ClickHouseConfig dict) here; the last one's first cell."""
    from connectors.clickhouse import ClickHouseConfig, open_client

    c = open_client(ClickHouseConfig(**conn))
    try:
        rows: list[tuple] = []
        for sql in statements:
            rows = c.execute(sql)
        return str(rows[0][0]) if rows else ""
    finally:
        c.close()


def clickhouse_run(conn: dict, statements: list[str]) -> str:
    """:func:`run_statements`; embedded chdb in a child process, so the folder is free again
    for the flow once it exited."""
    if conn["mode"] != "embedded":
        return run_statements(conn, statements)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--clickhouse-run", json.dumps(conn),
         *statements],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return (out.stdout.strip().splitlines() or [""])[-1]


def clickhouse_server_pid(http_port: int) -> int | None:
    """The pid of the ClickHouse server answering on ``http_port`` (for its CPU), if visible."""
    want = f"{http_port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(":" + want) and f[3] == "0A":  # LISTEN
            inodes.add(f[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[")[:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def run_otelwax_consume(
    topic: str, spans: int, sink: str, args: argparse.Namespace, tmp: Path
) -> dict:
    """otelwax reads ``topic``: ``nosink*`` = source → decode → a counting sink; ``chdb`` =
    flows.traces into embedded chdb; ``chdb-null`` / ``server-null`` = flows.traces into an
    ``otel_traces`` pre-created with ``ENGINE = Null`` (chdb, or the server at ``--ch-server``)."""
    log = tmp / f"consume-otelwax-{sink}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OTELWAX_METRICS_PORT", None)
    stage, system = SYSTEMS[sink]
    conn: dict = {}
    server_pid = None
    if sink.startswith("nosink"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--nosink-flow", topic]
        if sink == "nosink-prefetch":
            cmd.append("--big-prefetch")
    else:
        import yaml

        run_id = uuid.uuid4().hex[:8]  # fresh store and group: a repeat must redo the work
        if sink == "server-null":
            host, native, http = args.ch_server.split(":")
            conn = {"mode": "server", "host": host, "port": int(native),
                    "http_port": int(http), "database": f"sbs_{run_id}"}  # fmt: skip
            server_pid = clickhouse_server_pid(int(http))
        else:
            conn = {"mode": "embedded", "path": str(tmp / f"chdb-{run_id}")}
        if sink.endswith("null"):  # the flow finds the table and leaves it as it is
            legacy = int(clickhouse_run(conn, ["SELECT version()"]).split(".")[0]) < 20
            clickhouse_run(conn, null_table_ddl(conn.get("database", NULL_DB), legacy))
        else:
            conn["create_schema"] = True
        cfg = tmp / f"traces-{run_id}.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "kafka": {"bootstrap_servers": BOOTSTRAP},
                    "source": {"topic": topic, "stop_at_end": True, "group_id": f"g{run_id}"},
                    "clickhouse": conn,
                    "metrics_port": None,
                    "dead_letters": {"topic": f"dlq_{topic}"},
                }
            )
        )
        cmd = [sys.executable, "-m", "bytewax.run", f"flows.traces:build({str(cfg)!r})"]
    server_cpu0 = cpu_seconds(server_pid) if server_pid else None
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            pinned(cmd, args.core), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    r = _watch_flow(proc, log, args.timeout)
    server_cpu = cpu_seconds(server_pid) - server_cpu0 if server_pid else None
    stored = None
    if sink.startswith("nosink"):
        m = re.search(r"NOSINK rows=(\d+)", log.read_text())
        stored = int(m.group(1)) if m else None
    else:  # count what the flow stored (a chdb folder is free once the flow exited)
        db = conn.get("database", NULL_DB)
        stored = int(float(clickhouse_run(conn, [stored_sql(db, sink.endswith("null"))])))
        if sink == "server-null":
            clickhouse_run(conn, [f"DROP DATABASE IF EXISTS {db}"])
    n = stored if stored is not None else spans
    note = "from the first partition's start to end of input (process start excluded)"
    if server_cpu is not None:
        note += f"; ClickHouse server CPU {server_cpu:.2f} s (includes others' queries)"
    return {
        "stage": stage,
        "system": system,
        "spans": n,
        "spans_expected": spans,
        "wall_s": round(r["wall_s"], 2),
        "server_cpu_s": round(r["cpu_s"], 2),
        "clickhouse_cpu_s": round(server_cpu, 2) if server_cpu is not None else None,
        "spans_per_s": round(n / r["wall_s"]) if r["wall_s"] > 0 else None,
        "spans_per_core_s": round(n / r["cpu_s"]) if r["cpu_s"] > 0 else None,
        "peak_rss_mib": r["peak_rss_mib"],
        "note": note,
    }


def nosink_flow(topic: str, big_prefetch: bool) -> int:
    """Run otelwax's Kafka source + decode step with a counting sink (no storage).

    ``big_prefetch`` raises librdkafka's ``queued.max.messages.kbytes`` (the source caps it at
    ``batch.max_bytes`` to bound RSS) to 256 MiB through ``source.extra``.
    """
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    from connectors.kafka_source import NoIntents, PartitionedKafkaSource
    from flows.pipeline import TRACES, _Decode
    from flows.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = load_settings(
        None,
        kafka__bootstrap_servers=BOOTSTRAP,
        source__topic=topic,
        source__stop_at_end=True,
        source__group_id=f"nosink-{uuid.uuid4().hex[:8]}",
        source__extra={"queued.max.messages.kbytes": 262144} if big_prefetch else {},
    )
    rows = [0]

    class _Count(StatelessSinkPartition):
        def write_batch(self, items: list) -> None:
            for d in items:
                rows[0] += d.batch.num_rows

        def close(self) -> None:
            logging.getLogger("nosink").info("input finished")

    class _Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count()

    flow = Dataflow("nosink")
    ranges = op.input("kafka", flow, PartitionedKafkaSource(s.kafka, s.source, NoIntents))
    op.output("count", op.map("decode", ranges, _Decode(TRACES)), _Sink())
    run_main(flow)
    print(f"NOSINK rows={rows[0]}", flush=True)
    return 0


# --- 3. latency --------------------------------------------------------------------------------


def histogram_quantile(text: str, q: float) -> tuple[float, float, float] | None:
    """(bucket upper bound, linear estimate, count) of quantile ``q`` of the sink's
    ``otelwax_latency_seconds{component="clickhouse_sink",operation="event_to_stored"}``."""
    pat = re.compile(r"otelwax_latency_seconds_bucket\{([^}]*)\} (\S+)")
    buckets = []
    for labels, v in pat.findall(text):
        if 'component="clickhouse_sink"' in labels and 'operation="event_to_stored"' in labels:
            le = re.search(r'le="([^"]+)"', labels).group(1)  # type: ignore[union-attr]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(v)))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= q * total:
            if le == float("inf"):
                return le, prev_le, total
            frac = (q * total - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return le, prev_le + frac * (le - prev_le), total
        prev_le, prev_c = le, c
    return None


def run_latency(args: argparse.Namespace, tmp: Path, max_delay: float) -> dict:
    """Produce at a fixed rate while flows.traces (chdb, pinned) runs; sink latency quantiles."""
    import yaml
    from confluent_kafka import Producer

    from tests import otlpgen

    topic = create_topic(args.partitions)
    port = free_port()
    cfg = tmp / f"latency-{max_delay}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": BOOTSTRAP},
                "source": {"topic": topic, "batch": {"max_delay_s": max_delay}},
                "clickhouse": {
                    "mode": "embedded",
                    "path": str(tmp / f"chdb-latency-{max_delay}"),
                    "create_schema": True,
                },
                "metrics_port": port,
                "metrics_addr": "127.0.0.1",
                "dead_letters": {"topic": f"dlq_{topic}"},
            }
        )
    )
    log = tmp / f"latency-{max_delay}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OTELWAX_METRICS_PORT", None)
    cmd = [sys.executable, "-m", "bytewax.run", f"flows.traces:build({str(cfg)!r})"]
    per_req = 20
    n_req = int(args.latency_rate * args.latency_seconds / per_req)
    payloads = otlpgen.trace_payloads(n_req, seed=7, n_resources=1, spans_per_resource=per_req)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            pinned(cmd, args.core), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + 60
        while "start at" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flow did not start; see {log}")
            time.sleep(0.1)
        time.sleep(1)
        prod = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
        t0 = time.monotonic()
        for i, v in enumerate(payloads):
            prod.produce(topic, value=v, key=b"%032x" % i)
            prod.poll(0)
            wait = t0 + (i + 1) * per_req / args.latency_rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        prod.flush(30)
        produced_s = time.monotonic() - t0
        text, q50, q99 = "", None, None
        end = time.monotonic() + 30
        while time.monotonic() < end:  # until every span is stored (or 30 s)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            q99 = histogram_quantile(text.decode(), 0.99)
            stored = _metric_sum(text.decode(), r'otelwax_sent_total\{component="clickhouse_sink"')
            if stored >= n_req * per_req:
                break
            time.sleep(0.5)
        q50 = histogram_quantile(text.decode(), 0.5)
    finally:
        sampler.stop.set()
        stop(proc)
        drop_topic(topic)
    return {
        "stage": "3 event → queryable latency",
        "system": f"otelwax flows.traces → chdb (max_delay_s={max_delay})",
        "spans": n_req * per_req,
        "spans_per_s": round(n_req * per_req / produced_s),
        "peak_rss_mib": round(sampler.peak / 2**20, 1),
        "p50_s": round(q50[1], 3) if q50 else None,
        "p99_s": round(q99[1], 3) if q99 else None,
        "p99_bucket_le_s": q99[0] if q99 else None,
        "latency_samples": int(q99[2]) if q99 else 0,
        "note": "fixed-rate produce; sink histogram Kafka record timestamp → chdb insert "
        "returned (rows queryable), linear estimate within the bucket",
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median spans per core-second; all runs' per-core numbers attached."""
    key = [r.get("spans_per_core_s") or 0 for r in runs]
    order = sorted(range(len(runs)), key=lambda i: key[i])
    best = dict(runs[order[len(order) // 2]])
    best["runs"] = len(runs)
    best["spans_per_core_s_all"] = key
    best["spans_per_s_all"] = [r.get("spans_per_s") for r in runs]
    return best


def with_ratio(row: dict, runs: dict[str, list[dict]]) -> dict:
    """``row`` with its spans per CPU-second over the Collector's median of the same stage."""
    base = [
        median_run(rs)["spans_per_core_s"]
        for name, rs in runs.items()
        if name.startswith("Collector") and rs[0]["stage"] == row["stage"]
    ]
    if base and base[0] and row.get("spans_per_core_s"):
        row["vs_collector"] = round(row["spans_per_core_s"] / base[0], 2)
    return row


# --- main --------------------------------------------------------------------------------------


COLS = [
    ("stage", 36), ("system", 52), ("spans", 9), ("spans_per_s", 11),
    ("spans_per_core_s", 16), ("peak_rss_mib", 12),
]  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [" ".join(f"{c:<{w}}" for c, w in COLS) + "  extra"]
    for r in rows:
        extra = ""
        if "p99_s" in r:
            extra = f"p50 {r['p50_s']} s, p99 {r['p99_s']} s (bucket ≤{r['p99_bucket_le_s']} s)"
        elif "vs_collector" in r:
            extra = f"{r['vs_collector']}x the Collector per CPU-second"
        elif "spans_sent" in r:
            extra = f"sent {r['spans_sent']}, Kafka records {r['kafka_records']}"
        lines.append(
            " ".join(
                f"{('' if r.get(c) is None else r.get(c))!s:<{w}}"[: max(w, 1)] for c, w in COLS
            )
            + "  "
            + extra
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ingest-spans", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=4, help="telemetrygen processes sending at once")
    ap.add_argument("--consume-spans", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--core", type=int, default=0, help="core for the servers")
    ap.add_argument("--load-core", type=int, default=1, help="core for load generators")
    ap.add_argument("--latency-rate", type=float, default=20_000, help="spans/s; 0 skips")
    ap.add_argument("--latency-seconds", type=float, default=10)
    ap.add_argument(
        "--latency-delays",
        type=float,
        nargs="+",
        default=[1.0, 0.25],
        help="source.batch.max_delay_s values (1.0 is the default config)",
    )
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--repeat", type=int, default=3, help="runs per system (median reported)")
    ap.add_argument("--only", nargs="+", choices=["ingest", "consume", "latency", "null"])
    ap.add_argument(
        "--null-sinks",
        nargs="+",
        choices=["chdb-null", "server-null"],
        default=["chdb-null", "server-null"],
        help="stage 4 targets: embedded chdb and/or the server at --ch-server",
    )
    ap.add_argument(
        "--ch-server",
        default=os.environ.get("OTELWAX_TEST_CLICKHOUSE", "127.0.0.1:19000:18123"),
        help="ClickHouse server host:native_port:http_port for stage 4 (a database per run)",
    )
    ap.add_argument(
        "--ingest-loads",
        nargs="+",
        choices=["telemetrygen", "otlpgen"],
        default=["telemetrygen", "otlpgen"],
        help="stage 1 loads: telemetrygen's small spans, otlpgen's realistic 100-span requests",
    )
    ap.add_argument("--nosink-flow", metavar="TOPIC", help=argparse.SUPPRESS)
    ap.add_argument("--big-prefetch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clickhouse-run", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nosink_flow:
        return nosink_flow(args.nosink_flow, args.big_prefetch)
    if args.clickhouse_run:
        conn, *statements = args.clickhouse_run
        print(run_statements(json.loads(conn), statements), flush=True)
        return 0
    for tool in ("telemetrygen", "otelcol-bench"):
        if not (BIN / tool).exists():
            raise SystemExit(
                f"{BIN / tool} missing: run scripts/go-tools.sh and scripts/collector.sh"
            )
    if args.load_core is not None:
        try:
            os.sched_setaffinity(0, {args.load_core})
        except OSError:
            pass
    only = set(args.only or ["ingest", "consume", "latency", "null"])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="otelwax-sbs-") as d:
        tmp = Path(d)
        if "ingest" in only:
            for load in args.ingest_loads:
                runs: dict[str, list[dict]] = {}
                for _ in range(args.repeat):  # interleaved, so machine noise hits both alike
                    for name in ("otelwax shim", "Collector otlp → kafka"):
                        r = run_ingest(name, args, tmp, load)
                        runs.setdefault(name, []).append(r)
                        print(table([r]), flush=True)
                rows.extend(median_run(rs) for rs in runs.values())
        if "consume" in only:
            topic = create_topic(args.partitions)
            try:
                n_rec, _bytes = preload(topic, args.consume_spans)
                spans = n_rec * 100
                runs = {}
                for _ in range(args.repeat):
                    r = run_collector_consume(topic, spans, args, tmp)
                    runs.setdefault(r["system"], []).append(r)
                    print(table([r]), flush=True)
                    for sink in ("nosink", "nosink-prefetch", "chdb"):
                        r = run_otelwax_consume(topic, spans, sink, args, tmp)
                        runs.setdefault(r["system"], []).append(r)
                        print(table([r]), flush=True)
                rows.extend(median_run(rs) for rs in runs.values())
            finally:
                drop_topic(topic)
        if "null" in only:
            topic = create_topic(args.partitions)
            try:
                spans = preload(topic, args.consume_spans)[0] * 100
                runs = {}
                for _ in range(args.repeat):  # interleaved: Collector, chdb, server, ...
                    r = run_collector_consume(topic, spans, args, tmp, "null.yaml")
                    runs.setdefault(r["system"], []).append(r)
                    print(table([r]), flush=True)
                    for sink in args.null_sinks:
                        r = run_otelwax_consume(topic, spans, sink, args, tmp)
                        runs.setdefault(r["system"], []).append(r)
                        print(table([r]), flush=True)
                rows.extend(with_ratio(median_run(rs), runs) for rs in runs.values())
            finally:
                drop_topic(topic)
        if "latency" in only and args.latency_rate:
            for delay in args.latency_delays:
                rows.append(run_latency(args, tmp, delay))
                print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "side_by_side",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "results": rows,
    }
    (RESULTS / "side_by_side.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'side_by_side.json'}")
    return 0


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": round(int(mem) / 2**20, 1)}


if __name__ == "__main__":
    sys.exit(main())
