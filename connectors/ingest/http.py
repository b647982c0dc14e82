"""OTLP/HTTP front door: a raw ASGI app (served by uvicorn + httptools).

``POST /v1/{traces,metrics,logs}`` with ``application/x-protobuf`` or ``application/json``,
optionally ``Content-Encoding: gzip``. The response uses the request's content type, as the
OTLP spec requires: 200 with an Export*ServiceResponse (``partial_success`` when some items
were rejected), or an error status with a ``google.rpc.Status`` body (JSON for JSON requests).

Statuses: 400 malformed, 401 missing/wrong bearer token, 404 unknown path, 405 wrong method,
408 body not received within ``http.body_timeout_s`` (the connection is closed), 413 body over
``max_body_bytes`` (compressed or decompressed), 415 unsupported content type or encoding, 429
producer queue full or too many requests / request bytes in flight (``max_concurrent_requests``,
``max_inflight_bytes``; JSON counts ``json_cost_factor`` times its size) and 503 Kafka
unavailable or the topic missing (both with ``Retry-After``). A connection that does not send
its headers within ``http.header_timeout_s`` is closed. ``GET /livez`` (``/healthz``) answers
200 while the process serves; ``GET /readyz`` answers 503 while Kafka is down (requests would be
refused) and 200 otherwise. Both bodies say whether Kafka is up; the metrics port answers the
same paths.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from connectors.ingest.handler import (
    SIGNALS,
    Hold,
    IngestError,
    InvalidArgument,
    PayloadTooLarge,
    RequestHandler,
    RequestTimeout,
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
    """Decompress gzip (or zlib) ``body``, refusing to produce more than ``limit`` bytes.

    A gzip body may hold several members (RFC 1952 2.2, what concatenated ``.gz`` files are):
    every member is decoded and the limit bounds their total.
    """
    wbits = 16 + zlib.MAX_WBITS if body[:2] == b"\x1f\x8b" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise InvalidArgument(f"invalid gzip body: {exc}") from exc
        size += len(out)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
        if not d.eof:
            raise InvalidArgument("invalid gzip body: truncated")
        parts.append(out)
        rest = d.unused_data
        if not rest or wbits == zlib.MAX_WBITS:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def slow_header_protocol(timeout: float, on_timeout: Callable[[], object]) -> type[Any]:
    """uvicorn's httptools protocol closing a connection that does not send a request's
    headers within ``timeout`` seconds of connecting or of the request's first byte
    (slowloris); idle keep-alive connections are uvicorn's ``timeout_keep_alive``."""

    class SlowHeaderProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("ingest: closing %s: no request headers within %gs", self.client, timeout)
                on_timeout()
                self.transport.close()

    return SlowHeaderProtocol


def _json_status(code: int, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class OtlpHttpApp:
    """The ASGI application; one instance per server."""

    def __init__(self, handler: RequestHandler, token: str | None = None) -> None:
        self.handler = handler
        self.max_body = handler.config.max_body_bytes
        self.body_timeout = handler.config.http.body_timeout_s
        self.json_factor = handler.config.json_cost_factor
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
            with self.handler.admit(max(length, 0)) as hold:
                body = await self._read(receive, hold if length < 0 else None)
                if encoding in (b"gzip", b"deflate"):
                    size = len(body)
                    body = gunzip(body, self.max_body)
                    self.handler.grow(hold, len(body) - size)
                if is_json:
                    self.handler.grow(hold, len(body) * (self.json_factor - 1))
                    payload = self.handler.decode_json(signal, body)
                    del body
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

    async def _read(self, receive: Any, hold: Hold | None) -> bytes:
        """The whole body, within ``body_timeout_s``; chunks grow ``hold`` when it is set
        (no Content-Length)."""
        parts = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.body_timeout):
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        raise InvalidArgument("client disconnected")
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        raise PayloadTooLarge(f"body exceeds {self.max_body} bytes")
                    if hold is not None:
                        self.handler.grow(hold, len(chunk))
                    parts.append(chunk)
                    more = msg.get("more_body", False)
        except TimeoutError:
            log.info("ingest: request body not received within %gs", self.body_timeout)
            raise self.handler.refuse(
                RequestTimeout(f"request body not received within {self.body_timeout:g}s")
            ) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _error(self, send: Any, exc: IngestError, is_json: bool) -> None:
        headers = []
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        if exc.http_status == 408:
            headers.append((b"connection", b"close"))
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
