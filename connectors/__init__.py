"""I/O connectors: Kafka, ClickHouse, Prometheus remote-write, OTLP/Jaeger, the ingest shim."""
