"""otelwax: an OpenTelemetry stream-processing engine (OTLP → Kafka → Bytewax → ClickHouse)."""

__version__ = "0.1.0"
