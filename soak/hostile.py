"""Hostile OTLP/HTTP inputs at the shim, each with the answers a correct server may give.

The multi-member gzip request carries real spans: when the shim says 200 they are in the
ledger like any acknowledged span, so a shim that reads only the first member loses them
visibly. A slowloris holds connections open while a normal request must still be served.
A valid request answered 503 (retryable: another fault has the broker down) is sent again,
as a client would, for up to ``RETRY_503_S``.
"""

from __future__ import annotations

import gzip
import os
import random
import time
from typing import Any

from soak.faults import http_post, raw_gzip_members, slow_sockets
from soak.load import Ledger

PROTO = {"Content-Type": "application/x-protobuf"}
MiB = 1 << 20
RETRY_503_S = 90.0


def _post_valid(port: int, body: bytes, headers: dict[str, str], timeout: float = 15.0) -> int:
    """POST a valid request; a 503 is retried (a second apart) for up to ``RETRY_503_S``."""
    deadline = time.monotonic() + RETRY_503_S
    while True:
        status = http_post(port, "/v1/traces", body, headers, timeout=timeout)
        if status != 503 or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def _request(rng: random.Random, n_spans: int) -> Any:
    """An ExportTraceServiceRequest of one resource (service ``soak-http``), fresh ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "soak-http"
    ss = rs.scope_spans.add()
    now = time.time_ns()
    trace_id = rng.randbytes(16)
    for i in range(n_spans):
        s = ss.spans.add()
        s.trace_id, s.span_id = trace_id, rng.randbytes(8)
        s.name = f"soak.http span{i}"
        s.start_time_unix_nano, s.end_time_unix_nano = now, now + 1_000_000
    return req


def run_hostile(port: int, ledger: Ledger, rng: random.Random) -> list[dict[str, Any]]:
    """Send every hostile case once; each result has ``ok`` (answer as allowed) and status."""
    out: list[dict[str, Any]] = []

    def case(name: str, status: int, allowed: set[int], **extra: Any) -> None:
        out.append({"case": name, "status": status, "ok": status in allowed, **extra})

    # Two gzip members, each a request of its own: together one valid request.
    a, b = _request(rng, 3), _request(rng, 3)
    body = raw_gzip_members([a.SerializeToString(), b.SerializeToString()])
    status = _post_valid(port, body, {**PROTO, "Content-Encoding": "gzip"})
    merged = type(a)()
    merged.MergeFrom(a)
    merged.MergeFrom(b)
    ledger.record("traces", merged, 1, status == 200, "ok" if status == 200 else "failed")
    # 200 (both members read) or a clear 400; either way nothing acknowledged may be lost.
    case("gzip_multi_member", status, {200, 400})

    over = os.urandom(16 * MiB + 4096)
    case("oversized", http_post(port, "/v1/traces", over, PROTO), {413})
    bomb = gzip.compress(b"\0" * (40 * MiB), compresslevel=1)
    case("gzip_bomb", http_post(port, "/v1/traces", bomb, {**PROTO, "Content-Encoding": "gzip"}),
         {413})
    case("garbage", http_post(port, "/v1/traces", os.urandom(2048), PROTO), {400})
    case("not_gzip", http_post(port, "/v1/traces", b"plain", {**PROTO, "Content-Encoding": "gzip"}),
         {400})
    case("content_type", http_post(port, "/v1/traces", b"x", {"Content-Type": "text/plain"}),
         {415})

    socks = slow_sockets(port, 50)
    try:
        time.sleep(2)
        req = _request(rng, 2)
        t0 = time.monotonic()
        status = http_post(port, "/v1/traces", req.SerializeToString(), PROTO, timeout=10)
        took = time.monotonic() - t0
        if status == 503:  # the broker is down (another fault): retried, still while held
            t0 = time.monotonic()
            status = _post_valid(port, req.SerializeToString(), PROTO, timeout=10)
            took = 0.0 if status == 200 else time.monotonic() - t0
        ledger.record("traces", req, 1, status == 200, "ok" if status == 200 else "failed")
        case("slowloris_served", status if took < 5 else -2, {200}, seconds=round(took, 2),
             held=len(socks))
    finally:
        for s in socks:
            s.close()
    return out
