"""The OTLP ingest shim: OTLP/gRPC and OTLP/HTTP in, Kafka records (Collector conventions) out.

Importing this package only loads the configuration model; servers are imported on use::

    from connectors.ingest import IngestConfig
    from connectors.ingest.server import IngestServer   # start() / stop(), or server.run(cfg)

Run it with ``otelwax ingest [--config FILE] [flags]`` (``connectors.ingest.cli``).

Modules
    config       IngestConfig (embeddable under the ``ingest:`` key of the otelwax config)
    handler      the request handler both front doors share; error → HTTP / gRPC status
    http         raw ASGI app for OTLP/HTTP (uvicorn + httptools) and the metrics-port app
    grpc_server  grpc.aio generic handlers for the three OTLP services (raw bytes in/out)
    wire         lazy split of requests on the protobuf wire format (no span is decoded)
    otlp_json    OTLP/JSON → protobuf with orjson (no json_format)
    server       one asyncio loop for gRPC, HTTP and metrics; graceful shutdown

Kafka records (Collector ``kafkaexporter`` ``otlp_proto`` compatible)
    value    serialized Export{Trace,Metrics,Logs}ServiceRequest
    key      traces: 32-hex lowercase trace id (one record per trace id per request);
             metrics/logs: one record per Resource*, key = 32-hex BLAKE2b-128 of the resource's
             attribute KeyValue encodings sorted by key
    headers  ``content-type: application/x-protobuf``, ``otelwax-ingest-time-ns: <decimal ns>``
    size     records stay below ``producer.max_message_bytes`` (minus 512 B headroom); bigger
             requests are split at item granularity with the same key; an item that cannot fit
             on its own is rejected as a partial success (HTTP 200 / gRPC OK with
             ``partial_success.rejected_*`` and an error message) — the rest is accepted.

A client gets its answer only after Kafka acknowledged every record of its request
(``acks=all``, idempotent producer).
"""

from connectors.ingest.config import IngestConfig

__all__ = ["IngestConfig"]
