"""Bad requests get the exact status the OTLP spec asks for, and the shim keeps serving."""

from __future__ import annotations

import gzip
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from connectors.ingest.wire import validates
from tests.otlpgen import trace_request

from .conftest import Shim, consume, start_shim
from .test_wire import unparsable_requests

MAX_BODY = 1024 * 1024
PROTO = "application/x-protobuf"
JSON = "application/json"
GOOD = trace_request(1, 3, seed=7).SerializeToString()


@pytest.fixture(scope="module")
def small_shim(
    kafka_bootstrap: str, module_topics: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shim]:
    s = start_shim(
        kafka_bootstrap,
        module_topics,
        tmp_path_factory.mktemp("shim"),
        ["--max-body-bytes", str(MAX_BODY)],
    )
    yield s
    assert s.stop() == 0, s.log()


# (id, method, path, content-type, content-encoding, body, expected status)
CASES = [
    ("ok-proto", "POST", "/v1/traces", PROTO, None, GOOD, 200),
    ("ok-empty-proto", "POST", "/v1/traces", PROTO, None, b"", 200),
    ("ok-empty-json", "POST", "/v1/logs", JSON, None, b"{}", 200),
    ("ok-gzip", "POST", "/v1/traces", PROTO, "gzip", gzip.compress(GOOD), 200),
    ("ok-charset", "POST", "/v1/traces", PROTO + "; charset=binary", None, GOOD, 200),
    ("garbage-proto", "POST", "/v1/traces", PROTO, None, b"\xff\xff\xff\xff", 400),
    ("truncated-proto", "POST", "/v1/traces", PROTO, None, GOOD[:-7], 400),
    ("wrong-wire-type", "POST", "/v1/metrics", PROTO, None, b"\x08\x01", 400),
    ("garbage-json", "POST", "/v1/traces", JSON, None, b"{not json", 400),
    ("json-wrong-shape", "POST", "/v1/traces", JSON, None, b'{"resourceSpans": "x"}', 400),
    (
        "json-bad-hex-id",
        "POST",
        "/v1/traces",
        JSON,
        None,
        b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","name":"a"}]}]}]}',
        400,
    ),
    (
        "json-bad-int",
        "POST",
        "/v1/logs",
        JSON,
        None,
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}',
        400,
    ),
    ("bad-gzip", "POST", "/v1/traces", PROTO, "gzip", b"not gzip at all", 400),
    ("truncated-gzip", "POST", "/v1/traces", PROTO, "gzip", gzip.compress(GOOD)[:-12], 400),
    ("too-large", "POST", "/v1/traces", PROTO, None, b"\x0a" * (MAX_BODY + 1), 413),
    ("gzip-bomb", "POST", "/v1/traces", PROTO, "gzip", gzip.compress(b"\0" * (8 * MAX_BODY)), 413),
    ("text-plain", "POST", "/v1/traces", "text/plain", None, GOOD, 415),
    ("no-content-type", "POST", "/v1/traces", None, None, GOOD, 415),
    ("brotli", "POST", "/v1/traces", PROTO, "br", GOOD, 415),
    ("unknown-path", "POST", "/v1/profiles", PROTO, None, GOOD, 404),
    ("root-path", "GET", "/", None, None, b"", 404),
    ("get-traces", "GET", "/v1/traces", None, None, b"", 405),
    ("put-logs", "PUT", "/v1/logs", PROTO, None, GOOD, 405),
]


@pytest.mark.parametrize(
    ("method", "path", "ctype", "encoding", "body", "status"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_http_bad_input_status(
    small_shim: Shim,
    method: str,
    path: str,
    ctype: str | None,
    encoding: str | None,
    body: bytes,
    status: int,
) -> None:
    headers = {}
    if ctype:
        headers["content-type"] = ctype
    if encoding:
        headers["content-encoding"] = encoding
    r = httpx.request(method, small_shim.http_url + path, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    if status in (400, 413, 415) and ctype == PROTO:
        st = status_pb2.Status.FromString(r.content)
        assert st.message, "a google.rpc.Status with a useful message"
        assert r.headers["content-type"] == PROTO
    if status == 400 and ctype == JSON:
        assert r.headers["content-type"] == JSON
        assert "malformed" in orjson.loads(r.content)["message"]
    if status == 200 and ctype and ctype.startswith(PROTO):
        ExportTraceServiceResponse.FromString(r.content)
    health = httpx.get(small_shim.http_url + "/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_malformed_message_names_the_problem(small_shim: Shim) -> None:
    r = httpx.post(
        small_shim.http_url + "/v1/traces",
        content=b"\xff\xff\xff\xff",
        headers={"content-type": PROTO},
    )
    assert r.status_code == 400
    assert "malformed protobuf traces request" in status_pb2.Status.FromString(r.content).message


def _grpc_export(target: str, service: str, payload: bytes, **kw) -> bytes:
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            f"/{service}/Export",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        return call(payload, timeout=10, **kw)


TRACE_SVC = "opentelemetry.proto.collector.trace.v1.TraceService"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
        (GOOD[:-7], grpc.StatusCode.INVALID_ARGUMENT),
        (b"\x0a" * (MAX_BODY + 10), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=["garbage", "truncated", "too-large"],
)
def test_grpc_bad_input_status(small_shim: Shim, payload: bytes, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        _grpc_export(small_shim.grpc_target, TRACE_SVC, payload)
    assert ei.value.code() == code
    # still serving, both doors
    out = _grpc_export(small_shim.grpc_target, TRACE_SVC, GOOD)
    assert ExportTraceServiceResponse.FromString(out) == ExportTraceServiceResponse()
    assert httpx.get(small_shim.http_url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("name", "payload"), unparsable_requests(), ids=[n for n, _ in unparsable_requests()]
)
def test_unparsable_inside_a_span_is_refused(small_shim: Shim, name: str, payload: bytes) -> None:
    """A request whose framing is fine but whose content a protobuf parser refuses (bad UTF-8,
    a truncated attribute) gets 400 / INVALID_ARGUMENT on both doors, with a message naming
    the flaw when the native split checked it."""
    url = small_shim.http_url + "/v1/traces"
    r = httpx.post(url, content=payload, headers={"content-type": PROTO})
    assert r.status_code == 400
    http_msg = status_pb2.Status.FromString(r.content).message
    with pytest.raises(grpc.RpcError) as ei:
        _grpc_export(small_shim.grpc_target, TRACE_SVC, payload)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for msg in (http_msg, ei.value.details()):
        assert msg.startswith("malformed protobuf traces request: "), msg
        if validates("traces") and name == "span-name-utf8":
            assert "invalid UTF-8 in Span.name" in msg


def test_grpc_unknown_method(small_shim: Shim) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        _grpc_export(small_shim.grpc_target, "opentelemetry.proto.collector.foo.v1.X", GOOD)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_and_bearer_token(
    kafka_bootstrap: str, module_topics: dict[str, str], tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    s = start_shim(
        kafka_bootstrap,
        module_topics,
        tmp_path,
        ["--tls-cert", str(cert), "--tls-key", str(key)],
        env={"OTELWAX_INGEST_TOKEN": "s3cret"},
        scheme="https",
    )
    try:
        url = s.http_url + "/v1/traces"
        h = {"content-type": PROTO}
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as c:
            assert c.post(url, content=GOOD, headers=h).status_code == 401
            bad = dict(h, authorization="Bearer nope")
            assert c.post(url, content=GOOD, headers=bad).status_code == 401
            ok = dict(h, authorization="Bearer s3cret")
            assert c.post(url, content=GOOD, headers=ok).status_code == 200
            assert c.get(s.http_url + "/healthz").status_code == 200
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(s.grpc_target, creds) as ch:
            call = ch.unary_unary(
                f"/{TRACE_SVC}/Export",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as ei:
                call(GOOD, timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call(GOOD, timeout=10, metadata=[("authorization", "Bearer s3cret")])
        # The token never appears in the logs.
        assert "s3cret" not in s.log()
    finally:
        assert s.stop() == 0


def test_grpc_gzip_bomb_is_refused(small_shim: Shim) -> None:
    bomb = b"\x0a\x00" * (4 * MAX_BODY)  # 8 MiB of empty resources, gzips to a few KB
    with grpc.insecure_channel(small_shim.grpc_target, compression=grpc.Compression.Gzip) as ch:
        call = ch.unary_unary(f"/{TRACE_SVC}/Export")
        with pytest.raises(grpc.RpcError) as ei:
            call(bomb, timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call(GOOD, timeout=10) == b""


def _span_ids(recs) -> set[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return {
        sp.span_id
        for rec in recs
        for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans
        for ss in rs.scope_spans
        for sp in ss.spans
    }


def test_gzip_with_several_members_is_decoded_whole(small_shim: Shim) -> None:
    # RFC 1952 allows a gzip file of several members (what `cat a.gz b.gz` makes); a
    # protobuf request is valid when cut at a message boundary, so the concatenation of two
    # serialized requests is one request holding both halves.
    a, b = trace_request(1, 5, seed=61), trace_request(1, 5, seed=62)
    body = gzip.compress(a.SerializeToString()) + gzip.compress(b.SerializeToString())
    r = httpx.post(
        small_shim.http_url + "/v1/traces",
        content=body,
        headers={"content-type": PROTO, "content-encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    want = {sp.span_id for req in (a, b) for sp in req.resource_spans[0].scope_spans[0].spans}
    recs = consume(
        small_shim.bootstrap, small_shim.topics["traces"], until=lambda rs: want <= _span_ids(rs)
    )
    assert want <= _span_ids(recs), "all 10 spans of both gzip members reached Kafka"


def test_gzip_members_share_the_decompressed_limit(small_shim: Shim) -> None:
    # Each member is below the limit, together they are above it: refused, not cut.
    half = b"\x0a\x00" * (MAX_BODY // 4 + 1)
    body = gzip.compress(half) + gzip.compress(half) + gzip.compress(half)
    r = httpx.post(
        small_shim.http_url + "/v1/traces",
        content=body,
        headers={"content-type": PROTO, "content-encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
