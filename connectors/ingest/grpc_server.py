"""OTLP/gRPC front door: TraceService, MetricsService and LogsService ``Export``.

Methods are registered as generic handlers without a request deserializer, so the handler gets
the raw request bytes (grpc decompresses gzip itself and enforces the size limit after
decompression) and never builds a message it does not need. Errors map to gRPC codes:
INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED (queue full, with
``google.rpc.RetryInfo``) and UNAVAILABLE (Kafka unreachable, with RetryInfo).

Two servers: by default a synchronous grpcio server whose threads split, produce and wait
for Kafka themselves (``RequestHandler.export_blocking``; handing each request to the asyncio
loop instead cost ~300 us of CPU per request, as much as the gRPC call itself), or grpc.aio
on the loop (``threads: 0``; ~1.4x dearer per request than the threaded server).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from connectors.ingest.handler import SIGNALS, IngestError, RequestHandler, Signal, rpc_status

log = logging.getLogger(__name__)


def _identity(b: bytes) -> bytes:
    return b


class OtlpGrpcService:
    """Builds the generic handlers for the three OTLP services."""

    def __init__(
        self,
        handler: RequestHandler,
        token: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.handler = handler
        self._auth = f"Bearer {token}" if token else None
        self.loop = loop  # set: synchronous grpcio server (its threads export themselves)

    def _method(self, signal: Signal) -> Any:
        handler = self.handler

        async def export(request: bytes, context: aio.ServicerContext) -> bytes:
            if self._auth is not None:
                auth = ""
                for k, v in context.invocation_metadata() or ():
                    if k == "authorization":
                        auth = v if isinstance(v, str) else v.decode()
                        break
                if not hmac.compare_digest(auth.encode(), self._auth.encode()):
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token"
                    )
            try:
                result = await handler.export_bounded(signal, request)
            except IngestError as exc:
                trailing: tuple[tuple[str, bytes], ...] = ()
                if exc.retry_after is not None:
                    status = rpc_status(exc.grpc_code.value[0], exc.message, exc.retry_after)
                    trailing = (("grpc-status-details-bin", status),)
                if exc.grpc_code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    log.warning("ingest grpc: %s %s", exc.grpc_code.name, exc.message)
                await context.abort(exc.grpc_code, exc.message, trailing_metadata=trailing)
            return handler.response_bytes(signal, result)

        if self.loop is None:
            return grpc.unary_unary_rpc_method_handler(
                export, request_deserializer=None, response_serializer=None
            )
        auth_expected = self._auth.encode() if self._auth is not None else None

        def export_threaded(request: bytes, context: grpc.ServicerContext) -> bytes:
            if auth_expected is not None:
                auth = b""
                for k, v in context.invocation_metadata() or ():
                    if k == "authorization":
                        auth = v.encode() if isinstance(v, str) else v
                        break
                if not hmac.compare_digest(auth, auth_expected):
                    context.abort(
                        grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token"
                    )
            try:
                result = handler.export_blocking(signal, request)
            except IngestError as exc:
                if exc.retry_after is not None:
                    status = rpc_status(exc.grpc_code.value[0], exc.message, exc.retry_after)
                    context.set_trailing_metadata((("grpc-status-details-bin", status),))
                if exc.grpc_code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    log.warning("ingest grpc: %s %s", exc.grpc_code.name, exc.message)
                context.abort(exc.grpc_code, exc.message)
            return handler.response_bytes(signal, result)

        return grpc.unary_unary_rpc_method_handler(
            export_threaded, request_deserializer=None, response_serializer=None
        )

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler(sig.grpc_service, {"Export": self._method(sig)})
            for sig in SIGNALS.values()
        ]


class _ThreadedServer:
    """A synchronous grpcio server behind the same async start/stop API as grpc.aio's."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: list[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_insecure_port(self, addr: str) -> int:
        return self._server.add_insecure_port(addr)

    def add_secure_port(self, addr: str, creds: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(addr, creds)

    async def start(self) -> None:
        self._server.start()

    async def stop(self, grace: float | None) -> None:
        done = self._server.stop(grace)
        await asyncio.to_thread(done.wait)


def build_server(
    handler: RequestHandler,
    host: str,
    port: int,
    token: str | None,
    cert_file: str | None,
    key_file: str | None,
    threads: int = 0,
) -> tuple[Any, int]:
    """Create (not start) the gRPC server; returns it and the bound port.

    ``threads > 0``: a synchronous grpcio server with that many threads, each exporting its
    request itself (cheaper per request than grpc.aio); ``0``: grpc.aio.
    Must be called from the event loop.
    """
    limit = handler.config.max_body_bytes
    max_rpcs = handler.config.grpc.max_concurrent_rpcs
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]
    server: Any
    if threads > 0:
        from concurrent.futures import ThreadPoolExecutor

        server = _ThreadedServer(
            grpc.server(
                ThreadPoolExecutor(threads, thread_name_prefix="grpc"),
                options=options,
                maximum_concurrent_rpcs=max_rpcs,
            )
        )
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    else:
        server = aio.server(options=options, maximum_concurrent_rpcs=max_rpcs)
        loop = None
    server.add_generic_rpc_handlers(OtlpGrpcService(handler, token, loop).generic_handlers())
    addr = f"{host}:{port}"
    try:
        if cert_file and key_file:
            creds = grpc.ssl_server_credentials(
                [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())]
            )
            bound = server.add_secure_port(addr, creds)
        else:
            bound = server.add_insecure_port(addr)
    except RuntimeError as exc:  # grpc says only "Failed to bind": the usual cause is named
        raise OSError(
            f"OTLP/gRPC port {addr} is not available (in use?): set ingest.grpc.port "
            "(--grpc-port) to a free port, or stop the process that holds it"
        ) from exc
    return server, bound
