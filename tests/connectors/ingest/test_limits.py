"""Limits that keep one shim serving under abusive or overwhelming clients: slow clients are
cut off, requests and request bytes in flight are bounded (429 / RESOURCE_EXHAUSTED with a
retry hint), JSON counts for the bigger object tree it becomes."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.otlpgen import trace_request

from .conftest import Shim, start_shim
from .test_json import to_otlp_json

PROTO = {"content-type": "application/x-protobuf"}
TRACE_SVC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
BUDGET = 64 * 1024
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def tight_shim(
    kafka_bootstrap: str, module_topics: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shim]:
    tmp = tmp_path_factory.mktemp("shim")
    cfg = tmp / "ingest.yaml"
    cfg.write_text(
        f"max_inflight_bytes: {BUDGET}\n"
        "max_concurrent_requests: 3\n"
        "json_cost_factor: 8\n"
        f"http: {{header_timeout_s: {HEADER_TIMEOUT}, body_timeout_s: {BODY_TIMEOUT}}}\n"
        "grpc: {max_concurrent_rpcs: 2}\n"
    )
    s = start_shim(kafka_bootstrap, module_topics, tmp, ["--config", str(cfg)])
    yield s
    assert s.stop() == 0, s.log()


def _slow_request(shim: Shim, length: int) -> socket.socket:
    """A request whose headers are complete but whose body never comes."""
    sock = socket.create_connection(("127.0.0.1", shim.http_port), timeout=10)
    sock.sendall(
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n"
        + f"content-length: {length}\r\n\r\n".encode()
        + b"\x0a"
    )
    return sock


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes) -> tuple[float, bytes]:
    """Trickle a byte every 0.2 s until the server closes; (elapsed, what it answered)."""
    t0 = time.monotonic()
    got = b""
    sock.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            sock.sendall(trickle)
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return time.monotonic() - t0, got


def _count(shim: Shim, reason: str) -> float:
    key = (
        "otelwax_dropped_total",
        (("component", "ingest"), ("reason", reason), ("unit", "requests")),
    )
    return shim.metrics().get(key, 0.0)


def _ok(shim: Shim, seed: int) -> int:
    body = trace_request(1, 2, seed=seed).SerializeToString()
    return httpx.post(shim.http_url + "/v1/traces", content=body, headers=PROTO).status_code


def test_slowloris_headers_are_cut_off_others_served(tight_shim: Shim) -> None:
    before = _count(tight_shim, "slow_client")
    sock = socket.create_connection(("127.0.0.1", tight_shim.http_port), timeout=10)
    sock.sendall(b"POST /v1/traces HTTP/1.1\r\n")
    with cf.ThreadPoolExecutor(1) as pool:
        cut = pool.submit(_closed_within, sock, 10 * HEADER_TIMEOUT, b"x")
        assert _ok(tight_shim, 81) == 200, "served while a client trickles its headers"
        elapsed, _ = cut.result()
    sock.close()
    assert elapsed < HEADER_TIMEOUT + 1.5, f"cut off after {elapsed:.1f}s"
    assert _count(tight_shim, "slow_client") == before + 1


def test_slow_body_is_cut_off(tight_shim: Shim) -> None:
    before = _count(tight_shim, "slow_client")
    sock = _slow_request(tight_shim, 5000)
    elapsed, answer = _closed_within(sock, 10 * BODY_TIMEOUT, b"\x00")
    sock.close()
    assert elapsed < BODY_TIMEOUT + 1.5, f"cut off after {elapsed:.1f}s"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert _count(tight_shim, "slow_client") == before + 1
    assert _ok(tight_shim, 82) == 200


def test_request_bytes_in_flight_are_bounded(tight_shim: Shim) -> None:
    before = _count(tight_shim, "overloaded")
    held = _slow_request(tight_shim, 40_000)  # holds 40 KB of the 64 KB budget
    try:
        time.sleep(0.3)
        big = b"\x0a\x00" * 15_000  # 30 KB: does not fit next to it
        r = httpx.post(tight_shim.http_url + "/v1/traces", content=big, headers=PROTO)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        # JSON counts 8 times its size: 4 KB of JSON does not fit either ...
        req = trace_request(1, 8, seed=83)
        js = to_otlp_json(req)
        assert 3000 < len(js) < 24_000 // 8 * 8
        r = httpx.post(
            tight_shim.http_url + "/v1/traces",
            content=js,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 429, r.text
        # ... while the same request as protobuf does.
        r = httpx.post(
            tight_shim.http_url + "/v1/traces", content=req.SerializeToString(), headers=PROTO
        )
        assert r.status_code == 200, r.text
    finally:
        held.close()
    assert _count(tight_shim, "overloaded") == before + 2


def test_concurrent_requests_are_bounded(tight_shim: Shim) -> None:
    holders = [_slow_request(tight_shim, 100) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert _ok(tight_shim, 84) == 429
        with grpc.insecure_channel(tight_shim.grpc_target) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                ch.unary_unary(TRACE_SVC)(trace_request(1, 2, seed=85).SerializeToString())
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = dict(ei.value.trailing_metadata())["grpc-status-details-bin"]
        assert details, "RetryInfo tells clients to retry"
    finally:
        for s in holders:
            s.close()
    time.sleep(0.3)
    assert _ok(tight_shim, 86) == 200


def test_grpc_concurrent_rpcs_are_capped(
    kafka_bootstrap: str, fresh_topics: dict[str, str], tmp_path: Path
) -> None:
    # A long linger keeps each RPC waiting for Kafka: 6 at once against a cap of 2.
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("grpc: {max_concurrent_rpcs: 2}\nproducer: {linger_ms: 1500}\n")
    shim = start_shim(kafka_bootstrap, fresh_topics, tmp_path, ["--config", str(cfg)])
    try:
        with grpc.insecure_channel(shim.grpc_target) as ch:
            call = ch.unary_unary(TRACE_SVC)

            def export(i: int) -> grpc.StatusCode:
                try:
                    call(trace_request(1, 2, seed=90 + i).SerializeToString(), timeout=20)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            with cf.ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(export, range(6)))
        assert codes.count(grpc.StatusCode.OK) >= 2, codes
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    finally:
        assert shim.stop() == 0, shim.log()
