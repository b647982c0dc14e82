"""OTLP/HTTP front door: a raw ASGI app (served by uvicorn + httptools).

``POST /v1/{traces,metrics,logs}`` with ``application/x-protobuf`` or ``application/json``,
optionally ``Content-Encoding: gzip``. The response uses the request's content type, as the
OTLP spec requires: 200 with an Export*ServiceResponse (``partial_success`` when some items
were rejected), or an error status with a ``google.rpc.Status`` body (JSON for JSON requests).

Statuses: 400 malformed, 401 missing/wrong bearer token, 404 unknown path, 405 wrong method,
413 body over ``max_body_bytes`` (compressed or decompressed), 415 unsupported content type or
encoding, 429 producer queue full and 503 Kafka unavailable (both with ``Retry-After``).
``GET /livez`` (``/healthz``) answers 200 while the process serves; ``GET /readyz`` answers 503
while Kafka is down (requests would be refused) and 200 otherwise. Both bodies say whether Kafka
is up; the metrics port answers the same paths.
"""

from __future__ import annotations

import hmac
import logging
import zlib
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict

from connectors.ingest.handler import (
    SIGNALS,
    IngestError,
    InvalidArgument,
    PayloadTooLarge,
    RequestHandler,
    Signal,
    Unauthenticated,
    UnsupportedMediaType,
    rpc_status,
)

log = logging.getLogger(__name__)

CT_PROTO = b"application/x-protobuf"
CT_JSON = b"application/json"
_PATHS: dict[str, Signal] = {s.http_path: s for s in SIGNALS.values()}


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress gzip (or zlib) ``body``, refusing to produce more than ``limit`` bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if body[:2] == b"\x1f\x8b" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"invalid gzip body: {exc}") from exc
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    if not d.eof:
        raise InvalidArgument("invalid gzip body: truncated")
    return out


def _json_status(code: int, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class OtlpHttpApp:
    """The ASGI application; one instance per server."""

    def __init__(self, handler: RequestHandler, token: str | None = None) -> None:
        self.handler = handler
        self.max_body = handler.config.max_body_bytes
        self._auth = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        signal = _PATHS.get(path)
        if signal is None:
            health = health_answer(self.handler, path)
            if health is not None:
                await _send(send, health[0], CT_JSON, health[1])
                return
            await _send(send, 404, b"text/plain", b"not found")
            return
        if scope["method"] != "POST":
            await _send(send, 405, b"text/plain", b"method not allowed", [(b"allow", b"POST")])
            return
        ctype = b""
        encoding = b""
        auth = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.split(b";", 1)[0].strip().lower()
            elif name == b"content-encoding":
                encoding = value.strip().lower()
            elif name == b"authorization":
                auth = value
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
        is_json = ctype == CT_JSON
        try:
            if self._auth is not None and not hmac.compare_digest(auth, self._auth):
                raise Unauthenticated("missing or invalid bearer token")
            if not is_json and ctype != CT_PROTO:
                raise UnsupportedMediaType(
                    f"unsupported content type {ctype.decode(errors='replace')!r}; "
                    "use application/x-protobuf or application/json"
                )
            if encoding not in (b"", b"identity", b"gzip", b"deflate"):
                raise UnsupportedMediaType(
                    f"unsupported content encoding {encoding.decode(errors='replace')!r}"
                )
            if length > self.max_body:
                raise PayloadTooLarge(f"body exceeds {self.max_body} bytes")
            body = await self._read(receive)
            if encoding in (b"gzip", b"deflate"):
                body = gunzip(body, self.max_body)
            if is_json:
                payload = self.handler.decode_json(signal, body)
                result = await self.handler.export(signal, payload, validated=True)
            else:
                result = await self.handler.export(signal, body)
        except IngestError as exc:
            await self._error(send, exc, is_json)
            return
        except Exception as exc:  # never let one request take the server down
            log.exception("ingest: unexpected error on %s", path)
            await self._error(send, IngestError(f"internal error: {exc}"), is_json)
            return
        resp = self.handler.response_message(signal, result)
        if is_json:
            body_out = orjson.dumps(MessageToDict(resp)) if result.rejected else b"{}"
            await _send(send, 200, CT_JSON, body_out)
        else:
            await _send(send, 200, CT_PROTO, resp.SerializeToString())

    async def _read(self, receive: Any) -> bytes:
        msg = await receive()
        body = msg.get("body", b"")
        if not msg.get("more_body"):
            if len(body) > self.max_body:
                raise PayloadTooLarge(f"body exceeds {self.max_body} bytes")
            return body
        parts = [body]
        size = len(body)
        while msg.get("more_body"):
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise InvalidArgument("client disconnected")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"body exceeds {self.max_body} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _error(self, send: Any, exc: IngestError, is_json: bool) -> None:
        headers = []
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        if exc.http_status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if exc.http_status >= 500:
            log.warning("ingest: %d %s", exc.http_status, exc.message)
        code = exc.grpc_code.value[0]
        if is_json:
            await _send(send, exc.http_status, CT_JSON, _json_status(code, exc.message), headers)
        else:
            body = rpc_status(code, exc.message, exc.retry_after)
            await _send(send, exc.http_status, CT_PROTO, body, headers)



def health_answer(handler: RequestHandler, path: str) -> tuple[int, bytes] | None:
    """(status, JSON body) for ``/livez``, ``/healthz`` (alive: always 200 while serving) and
    ``/readyz`` (503 while Kafka is down); None for other paths."""
    if path not in ("/livez", "/healthz", "/readyz"):
        return None
    up = handler.producer.available
    if path == "/readyz" and not up:
        return 503, orjson.dumps({"status": "unready", "kafka": "down"})
    return 200, orjson.dumps({"status": "ok", "kafka": "up" if up else "down"})


async def _send(
    send: Any,
    status: int,
    ctype: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MetricsApp:
    """ASGI app for the metrics port: ``/metrics`` (Prometheus text) and the health paths."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            await _send(send, 200, CONTENT_TYPE_LATEST.encode(), generate_latest(REGISTRY))
        elif (health := health_answer(self.handler, path)) is not None:
            await _send(send, health[0], CT_JSON, health[1])
        else:
            await _send(send, 404, b"text/plain", b"not found")
