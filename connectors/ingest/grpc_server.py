"""OTLP/gRPC front door (grpc.aio): TraceService, MetricsService and LogsService ``Export``.

Methods are registered as generic handlers without a request deserializer, so the handler gets
the raw request bytes (grpc decompresses gzip itself) and never builds a message it does not
need. Errors map to gRPC codes: INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED (queue
full, with ``google.rpc.RetryInfo``) and UNAVAILABLE (Kafka unreachable, with RetryInfo).
"""

from __future__ import annotations

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

    def __init__(self, handler: RequestHandler, token: str | None = None) -> None:
        self.handler = handler
        self._auth = f"Bearer {token}" if token else None

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
                result = await handler.export(signal, request)
            except IngestError as exc:
                trailing: tuple[tuple[str, bytes], ...] = ()
                if exc.retry_after is not None:
                    status = rpc_status(exc.grpc_code.value[0], exc.message, exc.retry_after)
                    trailing = (("grpc-status-details-bin", status),)
                if exc.grpc_code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    log.warning("ingest grpc: %s %s", exc.grpc_code.name, exc.message)
                await context.abort(exc.grpc_code, exc.message, trailing_metadata=trailing)
            return handler.response_message(signal, result).SerializeToString()

        return grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=None, response_serializer=None
        )

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler(sig.grpc_service, {"Export": self._method(sig)})
            for sig in SIGNALS.values()
        ]


def build_server(
    handler: RequestHandler,
    host: str,
    port: int,
    token: str | None,
    cert_file: str | None,
    key_file: str | None,
) -> tuple[aio.Server, int]:
    """Create (not start) the grpc.aio server; returns it and the bound port."""
    limit = handler.config.max_body_bytes
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(OtlpGrpcService(handler, token).generic_handlers())
    addr = f"{host}:{port}"
    if cert_file and key_file:
        creds = grpc.ssl_server_credentials(
            [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())]
        )
        bound = server.add_secure_port(addr, creds)
    else:
        bound = server.add_insecure_port(addr)
    return server, bound
