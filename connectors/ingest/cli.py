"""``otelwax ingest``: run the OTLP ingest shim.

Configuration comes from ``--config FILE``, else ``$OTELWAX_CONFIG`` (YAML; either an
IngestConfig mapping or a full otelwax config with an ``ingest:`` section), then command-line
flags override single values.
The bearer token is read from ``$OTELWAX_INGEST_TOKEN`` unless the file sets ``auth_token``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otelwax.settings import ValidationError, format_errors

log = logging.getLogger(__name__)

ENV_VARS = {
    "OTELWAX_KAFKA_BOOTSTRAP": "Kafka bootstrap (beats the file; --kafka-bootstrap beats it)",
    "OTELWAX_INGEST_TOKEN": "bearer token clients must send (unless the file sets auth_token)",
}

# flag dest -> dotted key in IngestConfig
_OVERRIDES = {
    "host": ("grpc.host", "http.host"),
    "grpc_port": ("grpc.port",),
    "grpc_threads": ("grpc.threads",),
    "http_port": ("http.port",),
    "metrics_port": ("metrics.port",),
    "kafka_bootstrap": ("kafka.bootstrap_servers",),
    "topic_traces": ("topics.traces",),
    "topic_metrics": ("topics.metrics",),
    "topic_logs": ("topics.logs",),
    "max_body_bytes": ("max_body_bytes",),
    "max_message_bytes": ("producer.max_message_bytes",),
    "compression": ("producer.compression",),
    "linger_ms": ("producer.linger_ms",),
    "delivery_timeout": ("producer.delivery_timeout_s",),
    "tls_cert": ("tls.cert_file",),
    "tls_key": ("tls.key_file",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``otelwax ingest``."""
    a = parser.add_argument
    a(
        "-c",
        "--config",
        type=Path,
        help="YAML file (IngestConfig, or a config with an ingest: key); "
        "default: $OTELWAX_CONFIG when set",
    )
    a("--host", help="listen address for gRPC and HTTP (default 0.0.0.0)")
    a("--grpc-port", type=int, help="OTLP/gRPC port (default 4317)")
    a("--grpc-threads", type=int, help="grpcio server threads (default 16; 0 = grpc.aio)")
    a("--http-port", type=int, help="OTLP/HTTP port (default 4318)")
    a("--metrics-port", type=int, help="/metrics and /healthz port (default 8888)")
    a("--no-grpc", action="store_true", help="do not serve OTLP/gRPC")
    a("--no-http", action="store_true", help="do not serve OTLP/HTTP")
    a("--no-metrics", action="store_true", help="do not serve the metrics port")
    a("--kafka-bootstrap", help="Kafka bootstrap servers")
    a("--topic-traces", help="Kafka topic for spans (default otlp_spans)")
    a("--topic-metrics", help="Kafka topic for metrics (default otlp_metrics)")
    a("--topic-logs", help="Kafka topic for logs (default otlp_logs)")
    a("--max-body-bytes", type=int, help="request size limit, also after decompression")
    a("--max-message-bytes", type=int, help="largest Kafka record; bigger requests are split")
    a("--compression", help="Kafka compression: none, gzip, snappy, lz4, zstd")
    a("--linger-ms", type=float, help="Kafka producer linger.ms")
    a("--delivery-timeout", type=float, help="seconds before an unacknowledged record fails")
    a("--tls-cert", help="PEM certificate for both front doors")
    a("--tls-key", help="PEM private key for both front doors")
    a("--no-validate", action="store_true", help="skip the full protobuf parse of requests")


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = value


def load_section(path: Path) -> dict[str, Any]:
    """The ingest settings from a YAML file, as raw data.

    A full otelwax config (an ``ingest``, ``flows``, ``sinks`` or ``clickhouse`` section) gets
    the same treatment as
    ``otelwax validate`` gives it: ``${env:VAR}`` substitution and the top-level ``kafka``
    section copied into ``ingest`` unless it sets its own. Any other mapping is read as an
    IngestConfig (with ``${env:VAR}`` substitution too). Raises ValueError listing problems.
    """
    from connectors.ingest.config import IngestConfig
    from otelwax.configfile import ConfigError, read_yaml, share_sections, substitute_env

    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    problems: list[str] = []
    full = any(k in raw for k in ("ingest", "flows", "sinks", "clickhouse"))
    subset = {k: raw[k] for k in ("kafka", "ingest") if k in raw} if full else raw
    data = substitute_env(subset, os.environ, "" if full else "ingest", problems)
    if problems:
        raise ValueError("; ".join(problems))
    if full:
        data, _copied = share_sections(data, {"ingest": IngestConfig}.get)
        data = data.get("ingest") or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the ingest section must be a mapping")
    return dict(data)


def config_path(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Path | None:
    """``--config``, else ``$OTELWAX_CONFIG`` (None: defaults and flags only)."""
    if args.config is not None:
        return Path(args.config)
    value = (os.environ if env is None else env).get("OTELWAX_CONFIG")
    return Path(value) if value else None


def build_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Any:
    """IngestConfig from the YAML file (``--config`` or ``$OTELWAX_CONFIG``) and flags;
    raises ValidationError/ValueError."""
    from connectors.ingest.config import IngestConfig

    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = config_path(args, env)
    if path is not None:
        data = load_section(path)
    if env.get("OTELWAX_KAFKA_BOOTSTRAP"):  # as for the flows: the environment beats the file
        _set(data, "kafka.bootstrap_servers", env["OTELWAX_KAFKA_BOOTSTRAP"])
    for dest, keys in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            for k in keys:
                _set(data, k, value)
    for flag, key in (("no_grpc", "grpc"), ("no_http", "http"), ("no_metrics", "metrics")):
        if getattr(args, flag, False):
            _set(data, f"{key}.enabled", False)
    if getattr(args, "no_validate", False):
        data["validate_payload"] = False
    return IngestConfig.model_validate(data)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``otelwax ingest``."""
    from connectors.ingest.config import IngestConfig

    try:
        cfg = build_config(args)
    except ValidationError as exc:
        for line in format_errors(exc, "ingest", IngestConfig):
            print(f"config error: {line}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    experiments = cfg.grpc.grpc_experiments(os.environ.get("GRPC_EXPERIMENTS"))
    if experiments is not None:  # before grpc is imported (the server module imports it)
        os.environ["GRPC_EXPERIMENTS"] = experiments
    from connectors.ingest.server import run as run_server

    return run_server(cfg)
