"""The OTLP ingest shim: OTLP/gRPC and OTLP/HTTP in, Kafka records (Collector conventions) out.

Importing this package only loads the configuration model; servers are imported on use::

    from connectors.ingest import IngestConfig
    from connectors.ingest.server import IngestServer
"""

from connectors.ingest.config import IngestConfig

__all__ = ["IngestConfig"]
