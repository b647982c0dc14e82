"""Settings of the traces flow (``flows.traces``): one validated model, loaded with no I/O
beyond reading the config file.

Sources, later ones winning:

1. defaults (embedded chdb in ``.data/chdb``, Kafka ``127.0.0.1:9092``, topic ``otlp_spans``);
2. a YAML file: ``build("configs/x.yaml")`` or ``$OTELWAX_CONFIG``. The file is either this
   model itself or a whole otelwax config (``otelwax.config``: ``flows.traces`` plus the
   shared top-level ``kafka``/``clickhouse``, ``${env:VAR}`` substitution);
3. environment: ``OTELWAX_KAFKA_BOOTSTRAP``, ``OTELWAX_METRICS_PORT``, and any nested key as
   ``OTELWAX_TRACES__source__batch__max_delay_s=0.5`` (value parsed as YAML);
4. keyword overrides of ``build(...)``, nested with ``__`` (``source__topic="x"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_sink import ClickHouseSinkConfig
from connectors.dlq import DeadLetterConfig
from connectors.kafka import KafkaConfig
from connectors.kafka_source import KafkaSourceConfig
from connectors.otlp_export import JaegerExporterConfig
from otelwax.settings import StrictModel, ValidationError, format_errors

__all__ = ["RecoverySettings", "TracesFlowSettings", "load_settings"]

ENV_CONFIG = "OTELWAX_CONFIG"
ENV_PREFIX = "OTELWAX_TRACES__"


class RecoverySettings(StrictModel):
    """bytewax recovery, passed as ``-r/-s/-b`` by ``otelwax flow traces``.

    ``python -m bytewax.run`` itself takes these only from its command line (or the
    ``BYTEWAX_RECOVERY_DIRECTORY`` / ``BYTEWAX_SNAPSHOT_INTERVAL`` /
    ``BYTEWAX_RECOVERY_BACKUP_INTERVAL`` variables).
    """

    directory: str | None = Field(None, description="recovery partitions (None: no recovery)")
    partitions: int = Field(1, gt=0, description="recovery partitions to initialise")
    snapshot_interval_s: float = Field(10.0, gt=0, description="-s: epoch / snapshot length")
    backup_interval_s: float = Field(0.0, ge=0, description="-b: keep older snapshots this long")


class TracesFlowSettings(StrictModel):
    """Everything ``flows.traces`` needs."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    source: KafkaSourceConfig = Field(default_factory=KafkaSourceConfig)
    dead_letters: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    clickhouse: ClickHouseConfig = Field(
        default_factory=lambda: ClickHouseConfig(create_schema=True),
        description="connection + table; the flow's default creates the schema in chdb",
    )
    sink: ClickHouseSinkConfig = Field(default_factory=ClickHouseSinkConfig)
    jaeger: JaegerExporterConfig = Field(
        default_factory=JaegerExporterConfig,
        description="also export spans to Jaeger over OTLP/gRPC (off unless enabled: true)",
    )
    operators: list[dict[str, Any]] = Field(
        default_factory=list,
        description="batch operators applied between decode and the sink, in order "
        "(resolved by operators.registry)",
    )
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )
    metrics_addr: str = "0.0.0.0"
    log_level: str = Field(
        "INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
        description="logging level set up when the flow starts (if nothing configured it)",
    )


def _set_nested(d: dict[str, Any], path: list[str], value: Any) -> None:
    cur = d
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[path[-1]] = value


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    if env.get("OTELWAX_KAFKA_BOOTSTRAP"):
        _set_nested(out, ["kafka", "bootstrap_servers"], env["OTELWAX_KAFKA_BOOTSTRAP"])
    if env.get("OTELWAX_LOG_LEVEL"):
        _set_nested(out, ["log_level"], env["OTELWAX_LOG_LEVEL"].upper())
    if env.get("OTELWAX_METRICS_PORT"):
        port = env["OTELWAX_METRICS_PORT"]
        _set_nested(out, ["metrics_port"], None if port.lower() == "none" else int(port))
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            _set_nested(out, key[len(ENV_PREFIX) :].split("__"), yaml.safe_load(raw))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> TracesFlowSettings:
    """Load and validate; raises ``ValueError`` listing every problem as ``key.path: msg``."""
    import yaml

    env = dict(os.environ if env is None else env)
    path = config_path or env.get(ENV_CONFIG)
    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        if any(k in loaded for k in ("flows", "ingest", "sinks")):
            # A whole otelwax config: its loader substitutes ${env:...} and shares the
            # top-level kafka/clickhouse sections with flows.traces.
            from otelwax.config import load_config

            traces = load_config(path, env).flows.traces
            loaded = traces.model_dump(exclude_unset=True)
        data = loaded
    data = _merge(data, _env_overrides(env))
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        _set_nested(nested, key.split("__"), value)
    data = _merge(data, nested)
    try:
        return TracesFlowSettings.model_validate(data)
    except ValidationError as exc:
        lines = format_errors(exc, model=TracesFlowSettings)
        where = f"{path}: " if path else ""
        raise ValueError(where + "invalid traces flow settings:\n  " + "\n  ".join(lines)) from exc
