"""Settings of the flows: one validated model each, loaded with no I/O beyond reading the
config file.

Every flow has one shape (``KafkaFlowSettings``): ``kafka``, ``source`` (the range source:
``topic``, ``stop_at_end``, ``batch``, ...), ``recovery``, the serving keys (``log_level``,
``health``, ``metrics_port``...), then its outputs. The traces and logs flows run the same steps
(``flows.pipeline``): ``FlowSettings`` adds ClickHouse, the sink, operators and the DLQ;
``TracesFlowSettings`` the Jaeger export; ``LogsFlowSettings`` has the logs defaults (topic
``otlp_logs``, table ``otel_logs``, intents namespace ``logs``, ``/metrics`` on 9466).
``MetricsFlowSettings`` (``flows.metrics``) and ``WindowFlowSettings`` (``flows.spanmetrics``,
``flows.logmetrics``) have the same source, recovery and serving keys. Keys of older versions
are refused with the key they moved to (``moved_keys``: ``topic: unknown key: moved to
source.topic``).

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
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_sink import ClickHouseSinkConfig
from connectors.dlq import DeadLetterConfig
from connectors.kafka import TOPIC_LOGS, TOPIC_METRICS, KafkaConfig
from connectors.kafka_source import KafkaSourceConfig, RangeCutConfig
from connectors.otlp_export import JaegerExporterConfig
from connectors.remote_write import RemoteWriteConfig
from flows import own_store
from operators.delta_cumulative import DeltaToCumulativeConfig
from otelwax.health import HealthConfig
from otelwax.settings import StrictModel, ValidationError, format_errors

log = logging.getLogger(__name__)

__all__ = [
    "FlowSettings",
    "KafkaFlowSettings",
    "LogsFlowSettings",
    "MetricsFlowSettings",
    "OperatorsOnError",
    "RecoverySettings",
    "TracesFlowSettings",
    "WindowFlowSettings",
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


def source_defaults(**defaults: Any) -> Any:
    """A model validator filling ``source`` keys the config leaves out with this flow's
    defaults (``topic``, ``group_id``): one source model, a default topic per flow.

    Use as ``_source_defaults = source_defaults(topic="x")`` in the settings class body.
    """

    def fill(cls: Any, data: Any) -> Any:
        if isinstance(data, dict):
            src = data.get("source")
            if src is None and "source" not in data:
                src = {}
            if isinstance(src, dict):
                data = {**data, "source": {**defaults, **src}}
        return data

    return model_validator(mode="before")(classmethod(fill))


_TAIL = "source.stop_at_end (tail: false is stop_at_end: true)"


class KafkaFlowSettings(ServingSettings):
    """What every flow has: Kafka, its range source, bytewax recovery, ``/metrics``."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    source: KafkaSourceConfig = Field(default_factory=KafkaSourceConfig)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source_is_settings(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                f"{v!r} is no longer a choice: every flow reads Kafka offset ranges, and "
                "source holds that source's settings (source.topic, source.stop_at_end, "
                "source.batch.max_records, ...)"
            )
        return v


SERVER_SOURCE_MEMORY: dict[str, int] = {"max_inflight_bytes": 32 << 20, "prefetch_bytes": 2 << 20}
"""``source`` defaults of a flow into a ClickHouse server: ~100 MiB less peak RSS for a few
percent more CPU per span. Into chdb a smaller budget cuts smaller ranges, i.e. more parts for
the flow's own process to merge (more CPU, merge memory spikes): there the defaults stay
(bench/README.md, "flow memory")."""


class FlowSettings(KafkaFlowSettings):
    """What a flow built by ``flows.pipeline`` needs (Kafka ranges → Arrow → ClickHouse)."""

    @model_validator(mode="before")
    @classmethod
    def _server_source_memory(cls, data: Any) -> Any:
        """Into a server, ``SERVER_SOURCE_MEMORY`` for the source keys the user left unset."""
        if not isinstance(data, dict):
            return data
        ch = data.get("clickhouse")
        mode = ch.get("mode") if isinstance(ch, dict) else getattr(ch, "mode", None)
        src = data.get("source", {})
        if mode != "server":
            return data
        if isinstance(src, KafkaSourceConfig):
            unset = {k: v for k, v in SERVER_SOURCE_MEMORY.items() if k not in src.model_fields_set}
            return {**data, "source": src.model_copy(update=unset)}
        if isinstance(src, dict):
            return {**data, "source": {**SERVER_SOURCE_MEMORY, **src}}
        return data

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


class MetricsSourceConfig(KafkaSourceConfig):
    """The Kafka source of the metrics flow: where it resumes after a restart."""

    resume: Literal["auto", "snapshot", "stored"] = Field(
        "auto",
        description="after a restart: snapshot = from bytewax's snapshot (keeps "
        "delta→cumulative exact; needs recovery); stored = past the ranges ClickHouse already "
        "has (like flows.traces; without recovery); auto = snapshot when the process runs with "
        "bytewax recovery (-r or $BYTEWAX_RECOVERY_DIRECTORY), else stored",
    )


class MetricsSinkConfig(ClickHouseSinkConfig):
    """Intents of the metrics flow; each table of a range is inserted under the token
    ``<range>/<table>``. The tables' ORDER BY starts with a Map (``Attributes``), which Arrow
    cannot sort by, so ClickHouse sorts (``presort`` has no effect)."""

    flow: str = Field("metrics", min_length=1, description="namespace of this flow's intents")
    dedup: Literal["token"] = Field(  # type: ignore[assignment]
        "token", description="insert tokens (the metrics tables need ClickHouse 20+)"
    )


class MetricsFlowSettings(KafkaFlowSettings):
    """Everything ``flows.metrics`` needs."""

    moved_keys: ClassVar[dict[str, str]] = {
        "topic": "source.topic",
        "tail": _TAIL,
        "ranges": "source.batch",
        "source_batch_size": "source.batch.max_records",
        "flow_id": "source.group_id",
        "resume": "source.resume",
        "intents_table": "sink.intents_table",
        "delta_shards": "delta_to_cumulative.shards",
        "delta_ttl_s": "delta_to_cumulative.ttl_s",
    }
    _source_defaults = source_defaults(topic=TOPIC_METRICS, group_id="otelwax_metrics")
    source: MetricsSourceConfig = Field(default_factory=MetricsSourceConfig)  # type: ignore[assignment]
    clickhouse: ClickHouseConfig | None = Field(
        default_factory=lambda: ClickHouseConfig(create_schema=True),
        description="the otel_metrics_* tables (ClickHouse 20+ or chdb); null: Prometheus only",
    )
    _own_store = own_store("metrics")
    sink: MetricsSinkConfig = Field(default_factory=MetricsSinkConfig)
    remote_write: RemoteWriteConfig | None = Field(
        None, description="Prometheus remote-write (off unless set here or in sinks.remote_write)"
    )
    dead_letters: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    delta_to_cumulative: DeltaToCumulativeConfig = Field(
        default_factory=DeltaToCumulativeConfig,
        description="remote-write branch: delta sums/histograms → cumulative series",
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics here")

    @property
    def flow_id(self) -> str:
        """The dataflow's name (its step ids' prefix): the consumer group."""
        return self.source.group_id or "otelwax_metrics"

    @model_validator(mode="after")
    def _has_output(self) -> MetricsFlowSettings:
        if self.clickhouse is None and self.remote_write is None:
            raise ValueError(
                "nothing to write to: set remote_write (here or sinks.remote_write) "
                "and/or clickhouse"
            )
        return self


class WindowSourceConfig(KafkaSourceConfig):
    """The source of an event-time window flow: small ranges, cut often (the watermark moves
    per range)."""

    batch: RangeCutConfig = Field(
        default_factory=lambda: RangeCutConfig(max_records=1000, max_delay_s=0.5)
    )


class WindowFlowSettings(KafkaFlowSettings):
    """Source, sinks and serving of a flow that counts records in event-time windows
    (``flows.windowed``); each flow sets its source defaults (``source_defaults``)."""

    moved_keys: ClassVar[dict[str, str]] = {
        "topic": "source.topic",
        "tail": _TAIL,
        "source_batch_size": "source.batch.max_records",
        "source_max_delay_s": "source.batch.max_delay_s",
        "flow_id": "source.group_id",
    }
    source: WindowSourceConfig = Field(default_factory=WindowSourceConfig)  # type: ignore[assignment]
    remote_write: RemoteWriteConfig | None = Field(
        None, description="Prometheus remote-write (off unless set here or in sinks.remote_write)"
    )
    clickhouse: ClickHouseConfig | None = None
    late_topic: str | None = Field(
        None, description="rejected records, reason in the otelwax.reason header (policy route)"
    )

    @property
    def flow_id(self) -> str:
        """The dataflow's name (its step ids' prefix): the consumer group."""
        return self.source.group_id or "otelwax_windows"


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
