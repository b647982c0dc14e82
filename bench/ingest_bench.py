"""Benchmark of the OTLP ingest shim, end to end: client → shim → Kafka acknowledgement.

Starts ``otelwax ingest`` pinned to one core (``taskset -c CORE``) against a real broker and a
fresh topic set, then drives it from this process (pinned to another core) with N concurrent
clients sending pre-built 100-span OTLP requests, over HTTP/protobuf (a minimal keep-alive
asyncio HTTP/1.1 client, so the client is not the bottleneck) and over gRPC (grpc.aio).
A request counts only when the shim answered 200/OK, which it does after Kafka acknowledged
every record of it.

    .venv/bin/python bench/ingest_bench.py --requests 3000 --clients 64
    .venv/bin/python bench/ingest_bench.py --protocol http --requests 500   # quick

Prints a table and writes ``bench/results/ingest.json``. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.kafka import create_topics, delete_topics  # noqa: E402
from tests.otlpgen import trace_payloads  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TRACE_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_shim(
    args: argparse.Namespace, topic: str, log_path: Path
) -> tuple[subprocess.Popen, int, int, int]:
    gp, hp, mp = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "otelwax", "--log-level", "WARNING", "ingest",
        "--host", "127.0.0.1", "--grpc-port", str(gp), "--http-port", str(hp),
        "--metrics-port", str(mp), "--kafka-bootstrap", args.kafka, "--topic-traces", topic,
        "--compression", args.compression, "--linger-ms", str(args.linger_ms),
    ]  # fmt: skip
    if args.no_validate:
        cmd.append("--no-validate")
    if args.core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(args.core), *cmd]
    fh = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", mp), timeout=0.5):
                time.sleep(0.3)
                return proc, gp, hp, mp
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"shim did not start; see {log_path}:\n{log_path.read_text()}")


class RssSampler(threading.Thread):
    """Peak resident set size of a process (and its children), sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    rss += c.memory_info().rss
                self.peak = max(self.peak, rss)
            except Exception:
                pass
            time.sleep(0.1)


async def http_load(
    port: int, payloads: list[bytes], n_requests: int, clients: int
) -> tuple[list[float], dict[int, int]]:
    """Minimal HTTP/1.1 keep-alive clients; returns latencies (s) of 200s and status counts."""
    heads = [
        (
            f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/x-protobuf\r\nContent-Length: {len(p)}\r\n\r\n"
        ).encode()
        + p
        for p in payloads
    ]
    lat: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n_requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                msg = heads[i % len(heads)]
                t0 = time.perf_counter()
                writer.write(msg)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                dt = time.perf_counter() - t0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    lat.append(dt)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return lat, statuses


async def grpc_load(
    port: int, payloads: list[bytes], n_requests: int, clients: int
) -> tuple[list[float], dict[int, int]]:
    from grpc import aio

    lat: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n_requests))
    channels = [aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, clients // 16))]

    async def worker(k: int) -> None:
        call = channels[k % len(channels)].unary_unary(TRACE_PATH)
        for i in counter:
            t0 = time.perf_counter()
            try:
                await call(payloads[i % len(payloads)], timeout=30)
                code = 0
            except aio.AioRpcError as exc:
                code = exc.code().value[0]
            dt = time.perf_counter() - t0
            statuses[code] = statuses.get(code, 0) + 1
            if code == 0:
                lat.append(dt)

    await asyncio.gather(*(worker(k) for k in range(clients)))
    for ch in channels:
        await ch.close()
    return lat, statuses


def _cpu(pid: int) -> float:
    """User + system CPU seconds of the shim process (all its threads)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def topic_records(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-" + uuid.uuid4().hex[:6]})
    md = c.list_topics(topic, timeout=10)
    total = 0
    for p in md.topics[topic].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += hi - lo
    c.close()
    return total


def run_one(args: argparse.Namespace, proto: str, payloads: list[bytes], spans: int) -> dict:
    topic = f"bench_spans_{uuid.uuid4().hex[:8]}"
    create_topics(args.kafka, [topic], partitions=args.partitions)
    log_path = RESULTS / f"ingest-shim-{proto}.log"
    proc, gp, hp, _mp = start_shim(args, topic, log_path)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        load = http_load if proto == "http" else grpc_load
        port = hp if proto == "http" else gp
        # Warm-up, then the measured run.
        asyncio.run(load(port, payloads, min(200, args.requests), args.clients))
        cpu0 = _cpu(proc.pid)
        t0 = time.perf_counter()
        lat, statuses = asyncio.run(load(port, payloads, args.requests, args.clients))
        wall = time.perf_counter() - t0
        cpu = _cpu(proc.pid) - cpu0
    finally:
        sampler.stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    records = topic_records(args.kafka, topic)
    delete_topics(args.kafka, [topic])
    ok = len(lat)
    return {
        "protocol": proto,
        "clients": args.clients,
        "requests": args.requests,
        "ok_requests": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "spans_per_request": spans,
        "wall_s": round(wall, 3),
        "spans_per_s": round(ok * spans / wall),
        "requests_per_s": round(ok / wall),
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "shim_peak_rss_mb": round(sampler.peak / 2**20, 1),
        "shim_cpu_s": round(cpu, 2),
        "spans_per_shim_cpu_s": round(ok * spans / cpu) if cpu > 0 else None,
        "kafka_records_in_topic": records,
        "shim_core": args.core,
        "validate": not args.no_validate,
        "compression": args.compression,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kafka", default=os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092"))
    p.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    p.add_argument("--requests", type=int, default=3000, help="measured requests per protocol")
    p.add_argument("--clients", type=int, default=64, help="concurrent requests in flight")
    p.add_argument("--core", type=int, default=0, help="CPU core for the shim (taskset)")
    p.add_argument("--client-core", type=int, default=1, help="CPU core for this load generator")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--compression", default="lz4")
    p.add_argument("--linger-ms", type=float, default=5.0)
    p.add_argument("--no-validate", action="store_true", help="shim skips the full parse")
    args = p.parse_args()
    if args.client_core is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {args.client_core})
        except OSError:
            pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    payloads = trace_payloads(64, seed=42)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans = sum(
        len(ss.spans)
        for rs in ExportTraceServiceRequest.FromString(payloads[0]).resource_spans
        for ss in rs.scope_spans
    )
    protos = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    rows = [run_one(args, proto, payloads, spans) for proto in protos]
    cols = [
        ("protocol", 8), ("clients", 7), ("ok_requests", 11), ("spans_per_s", 11),
        ("p50_ms", 8), ("p99_ms", 8), ("shim_peak_rss_mb", 16), ("shim_cpu_s", 10),
        ("spans_per_shim_cpu_s", 20),
        ("kafka_records_in_topic", 22),
    ]  # fmt: skip
    print(" ".join(f"{c:>{w}}" for c, w in cols))
    for r in rows:
        print(" ".join(f"{r[c]!s:>{w}}" for c, w in cols))
    out = {
        "benchmark": "ingest",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bytes_per_request": len(payloads[0]),
        "results": rows,
    }
    (RESULTS / "ingest.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'ingest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
