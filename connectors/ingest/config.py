"""Configuration of the OTLP ingest shim (``otelwax ingest``).

Self-contained and free of side effects on import, so the top-level otelwax config can embed
:class:`IngestConfig` under the key ``ingest``. Validation does no I/O (files named for TLS are
opened only when the server starts).
"""

from __future__ import annotations

import os

from pydantic import Field, SecretStr, model_validator

from connectors.kafka import TOPIC_LOGS, TOPIC_METRICS, TOPIC_SPANS, KafkaConfig
from connectors.kafka_producer import ProducerConfig
from otelwax.settings import StrictModel

MiB = 1024 * 1024
TOKEN_ENV = "OTELWAX_INGEST_TOKEN"


class EndpointConfig(StrictModel):
    """One listening socket; ``enabled: false`` turns the front door off."""

    enabled: bool = True
    host: str = Field("0.0.0.0", min_length=1)
    port: int = Field(0, ge=0, le=65535)


class GrpcEndpoint(EndpointConfig):
    """OTLP/gRPC listener."""

    port: int = Field(4317, ge=0, le=65535)
    threads: int = Field(
        16,
        ge=0,
        le=1024,
        description="Threads of the synchronous grpcio server (requests in flight at once); "
        "0 serves with grpc.aio on the event loop instead (~1.4x more CPU per request).",
    )
    max_concurrent_rpcs: int = Field(
        256,
        gt=0,
        description="RPCs accepted at once, running or queued for a thread; grpc refuses more "
        "with RESOURCE_EXHAUSTED (without RetryInfo, so keep it above the expected clients)",
    )
    event_engine_listener: bool = Field(
        False,
        description="Read the gRPC sockets on grpc's EventEngine threads (grpc's own default) "
        "instead of the server's polling thread. Off, each read skips a hand-off between "
        "threads: ~7 % less CPU per span under telemetrygen load (bench/README.md). Applied "
        "through $GRPC_EXPERIMENTS, which a value of the user's naming the listener overrides.",
    )

    def grpc_experiments(self, current: str | None) -> str | None:
        """The ``GRPC_EXPERIMENTS`` value the shim runs with, given the environment's
        (``current``); grpc reads it once, when it is imported."""
        if self.event_engine_listener or (current and "event_engine_listener" in current):
            return current
        return f"{current},-event_engine_listener" if current else "-event_engine_listener"


class HttpEndpoint(EndpointConfig):
    """OTLP/HTTP listener (also serves /healthz)."""

    port: int = Field(4318, ge=0, le=65535)
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A connection must send a request's headers within this"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A request's body must arrive within this"
    )


class MetricsEndpoint(EndpointConfig):
    """Prometheus /metrics and /healthz listener."""

    port: int = Field(8888, ge=0, le=65535)


class TLSConfig(StrictModel):
    """Server TLS for both front doors (PEM files). Off when ``cert_file`` is not set."""

    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _both(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class TopicsConfig(StrictModel):
    """Kafka topic per signal (Collector kafkaexporter defaults)."""

    traces: str = Field(TOPIC_SPANS, min_length=1)
    metrics: str = Field(TOPIC_METRICS, min_length=1)
    logs: str = Field(TOPIC_LOGS, min_length=1)


class IngestConfig(StrictModel):
    """Everything the shim needs. CLI flags override values loaded from YAML."""

    grpc: GrpcEndpoint = GrpcEndpoint()
    http: HttpEndpoint = HttpEndpoint()
    metrics: MetricsEndpoint = MetricsEndpoint()
    max_body_bytes: int = Field(
        16 * MiB, gt=0, description="Limit on the request body, compressed and decompressed"
    )
    max_inflight_bytes: int = Field(
        128 * MiB,
        gt=0,
        description="Request bytes held at once (bodies, decompressed; JSON times "
        "json_cost_factor); past it requests get 429 / RESOURCE_EXHAUSTED with Retry-After",
    )
    max_concurrent_requests: int = Field(
        1024, gt=0, description="Requests handled at once; past it 429 / RESOURCE_EXHAUSTED"
    )
    json_cost_factor: int = Field(
        8,
        ge=1,
        le=100,
        description="OTLP/JSON bodies count this many times their size in max_inflight_bytes "
        "(the decoded object tree is that much bigger)",
    )
    auth_token: SecretStr | None = Field(
        None, description=f"Bearer token clients must send; env {TOKEN_ENV} when unset"
    )
    tls: TLSConfig = TLSConfig()
    validate_payload: bool = Field(
        True,
        description="Fully parse every request with the OTLP schema before accepting it "
        "(rejects malformed nested data; costs ~1 us per span).",
    )
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    producer: ProducerConfig = ProducerConfig()
    shutdown_timeout_s: float = Field(30.0, gt=0)

    def resolved_token(self) -> str | None:
        """The bearer token: from config, else from ``$OTELWAX_INGEST_TOKEN``, else None."""
        if self.auth_token is not None:
            return self.auth_token.get_secret_value() or None
        return os.environ.get(TOKEN_ENV) or None
