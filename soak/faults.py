"""Faults injected at seeded random moments while the load runs, and the Jaeger gate.

Every fault is a function ``(ctx) -> detail`` that returns when the system is back in its
normal configuration (a stopped service started again, a burst over). :class:`FaultRunner`
runs a seeded schedule of them, kinds overlapping, and records when each ran and what it saw
(the moments are seeded; the random choices inside faults of different kinds interleave).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from soak.load import Ledger, SdkLoad, Telemetrygen
from soak.stack import FLOWS, Stack

log = logging.getLogger(__name__)

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class JaegerGate:
    """An OTLP/gRPC trace endpoint in front of Jaeger: forwards every Export, or answers
    INVALID_ARGUMENT while ``reject_for`` is in force (a receiver refusing a batch for good).
    Remembers the trace ids it rejected so the Jaeger check leaves them out."""

    def __init__(self, port: int, upstream: str) -> None:
        self.port, self.upstream = port, upstream
        self.reject_until = 0.0
        self.rejected_traces: set[str] = set()
        self.stats = {"forwarded": 0, "rejected": 0, "upstream_errors": 0}
        self._server: grpc.Server | None = None

    def reject_for(self, seconds: float) -> None:
        self.reject_until = time.time() + seconds

    def _handle(self, body: bytes, ctx: grpc.ServicerContext) -> bytes:
        if time.time() < self.reject_until:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    self.rejected_traces.update(s.trace_id.hex() for s in ss.spans)
            self.stats["rejected"] += 1
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "soak gate: batch rejected")
        try:
            out = self._forward(body, timeout=max(1.0, (ctx.time_remaining() or 10) - 0.5))
        except grpc.RpcError as exc:
            self.stats["upstream_errors"] += 1
            ctx.abort(exc.code(), exc.details() or "upstream error")
        self.stats["forwarded"] += 1
        return out

    def start(self) -> None:
        channel = grpc.insecure_channel(self.upstream)
        self._forward = channel.unary_unary(EXPORT)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._handle)
        service = EXPORT.split("/")[1]
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {"Export": handler})]
        )
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(1)


@dataclass
class Context:
    """What the faults act on."""

    stack: Stack
    load: SdkLoad
    ledger: Ledger
    tgen: Telemetrygen
    gate: JaegerGate
    rng: random.Random
    outage_s: float = 15.0
    events: list[dict[str, Any]] = field(default_factory=list)
    poison_records: list[tuple[str, int, int]] = field(default_factory=list)
    """(topic, partition, offset) of every undecodable record produced straight to Kafka."""
    hostile: list[dict[str, Any]] = field(default_factory=list)
    jaeger_started_at: float = 0.0


# --- the faults ----------------------------------------------------------------------------


def kill_flows(ctx: Context) -> str:
    for name in FLOWS:
        ctx.stack.procs[name].kill()
    time.sleep(ctx.rng.uniform(1, 3))
    for name in FLOWS:
        ctx.stack.restart(name)
    return "SIGKILL " + ", ".join(FLOWS)


def _outage(service: str) -> Callable[[Context], str]:
    def fault(ctx: Context) -> str:
        ctx.stack.service(service, "stop")
        down = ctx.outage_s if service != "kafka" else ctx.rng.uniform(2, 8)
        time.sleep(down)
        ctx.stack.service(service, "start")
        if service == "jaeger":
            ctx.jaeger_started_at = time.time()
        return f"{service} down {down:.0f}s"

    fault.__name__ = f"{service}_restart"
    return fault


def jaeger_reject(ctx: Context) -> str:
    ctx.gate.reject_for(ctx.outage_s)
    time.sleep(ctx.outage_s)
    return f"gate answered INVALID_ARGUMENT for {ctx.outage_s:.0f}s"


def burst(ctx: Context) -> str:
    seconds = ctx.outage_s
    ctx.load.multiplier = 10.0
    ctx.tgen.run("traces", seconds, 250, "--service", "tgen-burst", "--child-spans", "3")
    time.sleep(seconds)
    ctx.load.multiplier = 1.0
    return f"10x SDK load + telemetrygen burst for {seconds:.0f}s"


def poison_records(ctx: Context) -> str:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": f"127.0.0.1:{ctx.stack.ports.kafka}", "acks": "all"})
    got: list[tuple[str, int, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            got.append((msg.topic(), msg.partition(), msg.offset()))

    for topic in ("otlp_spans", "otlp_logs", "otlp_metrics"):
        for i in range(3):
            value = b"\xff\xff\xff\xffsoak poison " + os.urandom(ctx.rng.randint(4, 64))
            p.produce(topic, value=value, key=f"soak-poison-{i}".encode(), on_delivery=on_delivery)
    p.flush(30)
    ctx.poison_records += got
    return f"{len(got)} undecodable records produced"


def poison_batch(ctx: Context) -> str:
    ctx.load.poison_span()
    return "one span named soak.poison (the user operator raises on it)"


def skewed_spans(ctx: Context) -> str:
    ctx.load.skewed("future")
    ctx.load.skewed("past")
    return "5 traces dated +1 year, 5 dated -1 year"


def hostile_http(ctx: Context) -> str:
    from soak.hostile import run_hostile

    results = run_hostile(ctx.stack.ports.shim_http, ctx.ledger, ctx.rng)
    ctx.hostile += results
    return ", ".join(f"{r['case']}={r['status']}" for r in results)


FAULTS: dict[str, Callable[[Context], str]] = {
    "kill_flows": kill_flows,
    "kafka_restart": _outage("kafka"),
    "clickhouse_restart": _outage("clickhouse"),
    "prometheus_down": _outage("prometheus"),
    "jaeger_down": _outage("jaeger"),
    "jaeger_reject": jaeger_reject,
    "burst": burst,
    "poison_records": poison_records,
    "poison_batch": poison_batch,
    "skewed_spans": skewed_spans,
    "hostile_http": hostile_http,
}


def schedule(
    rng: random.Random, names: list[str], duration_s: float, each: int
) -> list[tuple[float, str]]:
    """``each`` moments per fault, uniform over the middle of the run, in time order."""
    lo, hi = 0.08 * duration_s, 0.8 * duration_s
    return sorted((rng.uniform(lo, hi), n) for n in names for _ in range(each))


class FaultRunner(threading.Thread):
    """Runs a schedule (seconds after ``t0``), recording each fault. Faults of one kind run
    one at a time, faults of different kinds overlap (one thread per kind), as production
    faults do: a broker restart while a flow is killed, a sink down during a burst."""

    def __init__(self, ctx: Context, plan: list[tuple[float, str]], t0: float) -> None:
        super().__init__(name="faults", daemon=True)
        self.ctx, self.plan, self.t0 = ctx, plan, t0
        self.stopping = threading.Event()

    def run(self) -> None:
        kinds = sorted({name for _, name in self.plan})
        threads = [
            threading.Thread(
                target=self._run_kind,
                args=([at for at, n in self.plan if n == kind], kind),
                name=f"fault-{kind}",
                daemon=True,
            )
            for kind in kinds
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _run_kind(self, moments: list[float], name: str) -> None:
        for at in moments:
            if self.stopping.wait(max(0.0, self.t0 + at - time.time())):
                return
            start = time.time()
            event: dict[str, Any] = {"fault": name, "t": round(start - self.t0, 1)}
            log.info("fault %s at t=%.0fs", name, start - self.t0)
            try:
                event["detail"] = FAULTS[name](self.ctx)
            except Exception as exc:  # a fault that fails is reported, the soak goes on
                log.exception("fault %s failed", name)
                event["error"] = repr(exc)
            event["seconds"] = round(time.time() - start, 1)
            self.ctx.events.append(event)


def raw_gzip_members(parts: list[bytes]) -> bytes:
    """Concatenated gzip members, one per part (RFC 1952 allows several in one stream)."""
    return b"".join(gzip.compress(p) for p in parts)


def http_post(
    port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 15.0
) -> int:
    """POST ``body``; the status code, or -1 when the connection failed (refused, reset)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return -1
    finally:
        conn.close()


def slow_sockets(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request line and then nothing (slowloris)."""
    out = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
            out.append(s)
        except OSError:
            break
    return out
