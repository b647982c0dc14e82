"""Settings of the traces and logs flows (``flows.traces``, ``flows.logs``): one validated
model each, loaded with no I/O beyond reading the config file.

Both flows run the same steps (``flows.pipeline``): ``FlowSettings`` holds what they share;
``TracesFlowSettings`` adds the Jaeger export; ``LogsFlowSettings`` has the logs defaults (topic
``otlp_logs``, table ``otel_logs``, intents namespace ``logs``, ``/metrics`` on 9466).

Sources, later ones winning:

1. defaults (embedded chdb in ``.data/chdb``, Kafka ``127.0.0.1:9092``, topic ``otlp_spans``
   or ``otlp_logs``);
2. a YAML file: ``build("configs/x.yaml")`` or ``$OTELWAX_CONFIG``. The file is either this
   model itself or a whole otelwax config (``otelwax.cli.config``: ``flows.traces`` or
   ``flows.logs`` plus the shared top-level ``kafka``/``clickhouse``, ``${env:VAR}`` substitution);
3. environment: ``OTELWAX_KAFKA_BOOTSTRAP``, ``OTELWAX_METRICS_PORT``, ``OTELWAX_LOG_LEVEL``,
   ``OTELWAX_LOG_FORMAT`` (text|json), and any nested key as
   ``OTELWAX_TRACES__source__batch__max_delay_s=0.5`` (``OTELWAX_LOGS__...`` for the logs
   flow; value parsed as YAML);
4. keyword overrides of ``build(...)``, nested with ``__`` (``source__topic="x"``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_sink import ClickHouseSinkConfig
from connectors.dlq import DeadLetterConfig
from connectors.kafka import TOPIC_LOGS, KafkaConfig
from connectors.kafka_source import KafkaSourceConfig
from connectors.otlp_export import JaegerExporterConfig
from flows import own_store
from otelwax.health import HealthConfig
from otelwax.settings import StrictModel, ValidationError, format_errors

log = logging.getLogger(__name__)

__all__ = [
    "FlowSettings",
    "LogsFlowSettings",
    "OperatorsOnError",
    "RecoverySettings",
    "TracesFlowSettings",
    "load_flow_settings",
    "load_logs_settings",
    "load_settings",
]

ENV_CONFIG = "OTELWAX_CONFIG"
ENV_PREFIX = "OTELWAX_TRACES__"


class RecoverySettings(StrictModel):
    """bytewax recovery, passed as ``-r/-s/-b`` by ``otelwax flow traces|logs``.

    ``python -m bytewax.run`` itself takes these only from its command line (or the
    ``BYTEWAX_RECOVERY_DIRECTORY`` / ``BYTEWAX_SNAPSHOT_INTERVAL`` /
    ``BYTEWAX_RECOVERY_BACKUP_INTERVAL`` variables).
    """

    directory: str | None = Field(None, description="recovery partitions (None: no recovery)")
    partitions: int = Field(1, gt=0, description="recovery partitions to initialise")
    snapshot_interval_s: float = Field(10.0, gt=0, description="-s: epoch / snapshot length")
    backup_interval_s: float = Field(0.0, ge=0, description="-b: keep older snapshots this long")


class OperatorsOnError(StrictModel):
    """What the flow does with a range an operator raises on (``flows.pipeline``).

    The operator is called ``attempts`` times on the range's rows (retrying a transient
    error); if it still raises, ``dlq`` bisects the rows to find those it fails on alone,
    sends them to the dead-letter topic and passes the others on, while ``fail`` stops the
    flow (which then restarts at the same range).
    """

    attempts: int = Field(3, ge=1, le=100, description="calls on the whole batch before acting")
    action: Literal["dlq", "fail"] = Field(
        "dlq", description="dlq: failing rows to dead_letters.topic; fail: stop the flow"
    )


class ServingSettings(StrictModel):
    """How every flow logs and where it serves ``/metrics`` (each sets its ``metrics_port``)."""

    metrics_addr: str = "0.0.0.0"
    log_level: str = Field(
        "INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
        description="logging level set up when the flow starts (if nothing configured it)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines: text, or json (one object per line, with step ids)"
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig,
        description="when /readyz and /livez on the metrics port turn 503 (otelwax.health)",
    )
    progress_s: float | None = Field(
        30.0, ge=0, description="log a progress line this often (records/s, rows, lag); 0: off"
    )


class FlowSettings(ServingSettings):
    """What a flow built by ``flows.pipeline`` needs (Kafka ranges → Arrow → ClickHouse)."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    source: KafkaSourceConfig = Field(default_factory=KafkaSourceConfig)
    dead_letters: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    clickhouse: ClickHouseConfig = Field(
        default_factory=lambda: ClickHouseConfig(create_schema=True),
        description="connection + table; the flow's default creates the schema in chdb",
    )
    sink: ClickHouseSinkConfig = Field(default_factory=ClickHouseSinkConfig)
    operators: list[dict[str, Any]] = Field(
        default_factory=list,
        description="batch operators applied between decode and the sink, in order "
        "(resolved by operators.registry)",
    )
    operators_on_error: OperatorsOnError = Field(default_factory=OperatorsOnError)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )


class TracesFlowSettings(FlowSettings):
    """Everything ``flows.traces`` needs."""

    _own_store = own_store("traces")

    jaeger: JaegerExporterConfig = Field(
        default_factory=JaegerExporterConfig,
        description="also export spans to Jaeger over OTLP/gRPC (off unless enabled: true)",
    )


class LogsSourceConfig(KafkaSourceConfig):
    """The Kafka source of the logs flow (topic ``otlp_logs`` by default)."""

    topic: str = Field(TOPIC_LOGS, min_length=1)


class LogsSinkConfig(ClickHouseSinkConfig):
    """Intents of the logs flow; rows are deduplicated by insert token only (log records have
    no unique key a lookup could use)."""

    flow: str = Field("logs", min_length=1, description="namespace of this flow's intents")
    dedup: Literal["token"] = Field(  # type: ignore[assignment]
        "token", description="insert tokens (native, or InsertToken on legacy servers)"
    )


class LogsFlowSettings(FlowSettings):
    """Everything ``flows.logs`` needs: the shared flow settings with logs defaults.

    ``topic: x`` is accepted as a shorthand for ``source: {topic: x}``.
    """

    _own_store = own_store("logs")
    source: LogsSourceConfig = Field(default_factory=LogsSourceConfig)  # type: ignore[assignment]
    sink: LogsSinkConfig = Field(default_factory=LogsSinkConfig)  # type: ignore[assignment]
    metrics_port: int | None = Field(
        9466, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )

    @model_validator(mode="before")
    @classmethod
    def _topic_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "topic" not in data:
            return data
        data = dict(data)
        topic = data.pop("topic")
        source = data.get("source")
        if source is None:
            source = {}
        if isinstance(source, dict):
            if "topic" in source and source["topic"] != topic:
                raise ValueError("topic: set either topic or source.topic, not both")
            data["source"] = {**source, "topic": topic}
        return data


S = TypeVar("S", bound=StrictModel)


def _set_nested(d: dict[str, Any], path: list[str], value: Any) -> None:
    cur = d
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[path[-1]] = value


def _env_overrides(
    env: dict[str, str], prefix: str = ENV_PREFIX, log_level: bool = True
) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    if env.get("OTELWAX_KAFKA_BOOTSTRAP"):
        _set_nested(out, ["kafka", "bootstrap_servers"], env["OTELWAX_KAFKA_BOOTSTRAP"])
    if log_level and env.get("OTELWAX_LOG_LEVEL"):
        _set_nested(out, ["log_level"], env["OTELWAX_LOG_LEVEL"].upper())
    if log_level and env.get("OTELWAX_LOG_FORMAT"):
        _set_nested(out, ["log_format"], env["OTELWAX_LOG_FORMAT"].strip().lower())
    if env.get("OTELWAX_METRICS_PORT"):
        port = env["OTELWAX_METRICS_PORT"]
        _set_nested(out, ["metrics_port"], None if port.lower() == "none" else int(port))
    for key, raw in env.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            _set_nested(out, key[len(prefix) :].split("__"), yaml.safe_load(raw))
    return out


def env_origins(env: dict[str, str], section: str) -> dict[str, str]:
    """Dotted key path (inside flow ``section``) → the ``OTELWAX_<SECTION>__a__b`` variable
    that sets it, so a bad value is blamed on the variable, not on the file."""
    prefix = f"OTELWAX_{section.upper()}__"
    return {
        key[len(prefix) :].replace("__", "."): key
        for key in env
        if key.startswith(prefix) and len(key) > len(prefix)
    }


def blame_env(lines: list[str], origins: dict[str, str]) -> list[str]:
    """``lines`` (``key.path: message``) with ``(from $VAR)`` where the key came from ``VAR``."""
    out = []
    for line in lines:
        key = line.split(":", 1)[0].strip()
        var = next(
            (v for k, v in origins.items() if key == k or key.endswith("." + k)), None
        )  # the key may carry the section's own prefix (flows.traces.source...)
        out.append(f"{line} (from ${var})" if var else line)
    return out


def env_hints(env: dict[str, str], sections: tuple[str, ...]) -> list[str]:
    """Variables that look like flow overrides but are not read: the prefix is case-sensitive
    and names a flow (``OTELWAX_TRACES__source__topic``)."""
    wanted = {f"OTELWAX_{s.upper()}__" for s in sections}
    hints = []
    for key in sorted(env):
        if "__" not in key or not key.upper().startswith("OTELWAX_"):
            continue
        head = key.split("__", 1)[0] + "__"
        if head in wanted:
            continue
        if head.upper() in wanted:
            fix = head.upper() + key.split("__", 1)[1]
            hints.append(f"${key} is not read: the prefix is case-sensitive; write ${fix}")
        else:
            flows = ", ".join(sorted(w[:-2] for w in wanted))
            hints.append(f"${key} is not read: no flow {head[8:-2]!r}; prefixes: {flows}")
    return hints


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_flow_settings(
    model: type[S],
    section: str,
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    *,
    deprecated_env: str | None = None,
    **overrides: Any,
) -> S:
    """Load and validate the settings of flow ``section`` as ``model``.

    ``deprecated_env`` names an older per-flow variable read only when ``$OTELWAX_CONFIG`` is
    unset; ``$OTELWAX_LOG_LEVEL`` and ``$OTELWAX_LOG_FORMAT`` apply only to models with a
    ``log_level`` field (``log_format`` next to it). Raises
    ``ValueError`` listing every problem as ``key.path: msg``.
    """
    import yaml

    env = dict(os.environ if env is None else env)
    path = config_path or env.get(ENV_CONFIG)
    if not path and deprecated_env and env.get(deprecated_env):
        path = env[deprecated_env]
        log.warning("$%s is deprecated: use $%s", deprecated_env, ENV_CONFIG)
    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        if any(k in loaded for k in ("flows", "ingest", "sinks")):
            # A whole otelwax config: its loader substitutes ${env:...} and shares the
            # top-level kafka/clickhouse sections with flows.<section>.
            from otelwax.cli.config import load_config

            loaded = load_config(path, env).flow_settings(section).model_dump(exclude_unset=True)
        data = loaded
    prefix = f"OTELWAX_{section.upper()}__"
    data = _merge(data, _env_overrides(env, prefix, log_level="log_level" in model.model_fields))
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        _set_nested(nested, key.split("__"), value)
    data = _merge(data, nested)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = blame_env(format_errors(exc, model=model), env_origins(env, section))
        where = f"{path}: " if path else ""
        raise ValueError(
            where + f"invalid {section} flow settings:\n  " + "\n  ".join(lines)
        ) from exc


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> TracesFlowSettings:
    """The traces flow's settings (see the module docstring for the sources)."""
    return load_flow_settings(TracesFlowSettings, "traces", config_path, env, **overrides)


def load_logs_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> LogsFlowSettings:
    """The logs flow's settings (see the module docstring for the sources)."""
    return load_flow_settings(LogsFlowSettings, "logs", config_path, env, **overrides)
