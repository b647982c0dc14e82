"""The ingest shim process: gRPC, HTTP and metrics servers in one asyncio loop.

Lifecycle: ``IngestServer(config)`` does no I/O; ``await start()`` opens the producer and the
listening sockets; ``await stop()`` stops accepting, lets in-flight requests finish (their
Kafka acknowledgements included), then flushes the producer. ``stop`` is safe to call twice.
``run(config)`` does all of it and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from connectors.ingest.config import IngestConfig
from connectors.ingest.grpc_server import build_server
from connectors.ingest.handler import RequestHandler, RequestTimeout
from connectors.ingest.http import MetricsApp, OtlpHttpApp, slow_header_protocol
from connectors.kafka_producer import AsyncProducer
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn server that leaves signal handling to us (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class IngestServer:
    """The OTLP ingest shim."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        self.producer = AsyncProducer(
            config.kafka, config.producer, ComponentMetrics("ingest_kafka", "records")
        )
        self.handler = RequestHandler(config, self.producer)
        self._grpc = None
        self._uvicorns: list[tuple[_Uvicorn, asyncio.Task[None]]] = []
        self._stopped = False
        self.grpc_port: int | None = None

    def _uvicorn(self, app: object, host: str, port: int, tls: bool) -> _Uvicorn:
        cfg = self.config
        kw: dict[str, object] = {}
        if tls:
            kw = {"ssl_certfile": cfg.tls.cert_file, "ssl_keyfile": cfg.tls.key_file}
        ucfg = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=slow_header_protocol(
                cfg.http.header_timeout_s,
                lambda: self.handler.refuse(RequestTimeout("headers not received in time")),
            ),
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            backlog=2048,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=int(cfg.shutdown_timeout_s),
            **kw,  # type: ignore[arg-type]
        )
        return _Uvicorn(ucfg)

    async def start(self) -> None:
        """Start the producer and every enabled front door."""
        cfg = self.config
        token = cfg.resolved_token()
        self.producer.start(list(self.handler.topics.values()))
        asyncio.get_running_loop().run_in_executor(None, self._health_check)
        if cfg.grpc.enabled:
            self._grpc, self.grpc_port = build_server(
                self.handler,
                cfg.grpc.host,
                cfg.grpc.port,
                token,
                cfg.tls.cert_file,
                cfg.tls.key_file,
                cfg.grpc.threads,
            )
            await self._grpc.start()
            log.info("ingest: OTLP/gRPC on %s:%d", cfg.grpc.host, self.grpc_port)
        servers = []
        if cfg.http.enabled:
            app = OtlpHttpApp(self.handler, token)
            servers.append(
                (self._uvicorn(app, cfg.http.host, cfg.http.port, cfg.tls.enabled), "OTLP/HTTP")
            )
        if cfg.metrics.enabled:
            mapp = MetricsApp(self.handler)
            servers.append(
                (self._uvicorn(mapp, cfg.metrics.host, cfg.metrics.port, False), "metrics")
            )
        for srv, what in servers:
            task = asyncio.create_task(srv.serve(), name=f"uvicorn-{what}")
            self._uvicorns.append((srv, task))
            while not srv.started:
                if task.done():
                    task.result()
                    raise RuntimeError(f"{what} server did not start")
                await asyncio.sleep(0.02)
            log.info("ingest: %s on %s:%d", what, srv.config.host, srv.config.port)

    def _health_check(self) -> None:
        """Say clearly at startup when Kafka is unreachable or a topic is missing."""
        topics = list(self.handler.topics.values())
        try:
            missing = self.producer.check_topics(topics)
        except Exception as exc:
            log.error(
                "ingest: Kafka at %s does not answer (%s); requests get 503 until it does",
                self.config.kafka.bootstrap_servers,
                exc,
            )
            return
        if missing:
            log.error(
                "ingest: topic(s) %s do not exist on %s; their requests will fail with 503",
                ", ".join(missing),
                self.config.kafka.bootstrap_servers,
            )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, flush the producer (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_timeout_s
        log.info("ingest: shutting down (grace %.0fs)", grace)
        waits = []
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace))
        for srv, _task in self._uvicorns:
            srv.should_exit = True
        waits.extend(task for _srv, task in self._uvicorns)
        results = await asyncio.gather(*waits, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.warning("ingest: error while stopping: %s", r)
        left = await asyncio.to_thread(self.producer.close, grace)
        log.info("ingest: stopped (%d records unflushed)", left)


async def serve(config: IngestConfig, ready: asyncio.Event | None = None) -> None:
    """Run the shim until SIGTERM/SIGINT."""
    server = IngestServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        log.info("ingest: ready")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await server.stop()


def run(config: IngestConfig) -> int:
    """Blocking entry point used by the CLI."""
    asyncio.run(serve(config))
    return 0
