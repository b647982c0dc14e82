"""The logs dataflow: Kafka ``otlp_logs`` → Arrow → operators → ClickHouse ``otel_logs``.

    python -m bytewax.run flows.logs                         # config from $OTELWAX_CONFIG
    python -m bytewax.run "flows.logs:build('configs/otelwax.yaml')" -w 2
    otelwax flow logs -c configs/otelwax.yaml

The same steps as ``flows.traces`` (``flows.pipeline``) with the logs decoder
(``otelwax.codec.decode_logs`` → ``LOGS_SCHEMA``) and the clickhouseexporter-compatible
``otel_logs`` table: each Kafka range is recorded as an intent, then inserted with its
deduplication token, so a replay after a crash stores nothing twice; undecodable records go to
the DLQ topic. Operators come from ``flows.logs.operators`` (``operators.registry``, signal
``logs``: filter by severity, redact bodies, ...).

The config file is either these settings themselves or a whole otelwax config (its
``flows.logs`` section plus the shared ``kafka``/``clickhouse``). Environment: as for the
traces flow, with nested keys as ``OTELWAX_LOGS__source__batch__max_delay_s=0.5``.

Importing this module does no network I/O: ``flow`` is built from ``$OTELWAX_CONFIG`` (or
defaults); clients are opened when bytewax builds the steps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from bytewax.dataflow import Dataflow
from pydantic import Field, model_validator

from connectors.clickhouse_sink import ClickHouseSinkConfig
from connectors.kafka import TOPIC_LOGS
from connectors.kafka_source import KafkaSourceConfig
from flows import settings as _settings
from flows.pipeline import LOGS, BatchOperator, build_dataflow
from flows.settings import TracesFlowSettings
from otelwax.settings import ValidationError, format_errors

__all__ = [
    "ENV_CONFIG",
    "LogsFlowSettings",
    "build",
    "build_from_settings",
    "flow",
    "load_settings",
]

ENV_CONFIG = "OTELWAX_CONFIG"
ENV_PREFIX = "OTELWAX_LOGS__"


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


class LogsFlowSettings(TracesFlowSettings):
    """Everything ``flows.logs`` needs: the traces flow's settings with logs defaults.

    ``topic: x`` is accepted as a shorthand for ``source: {topic: x}``.
    """

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


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    import yaml

    shared = {k: v for k, v in env.items() if not k.startswith(_settings.ENV_PREFIX)}
    out = _settings._env_overrides(shared)
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            _settings._set_nested(out, key[len(ENV_PREFIX) :].split("__"), yaml.safe_load(raw))
    return out


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> LogsFlowSettings:
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
            # top-level kafka/clickhouse sections with flows.logs.
            from otelwax.config import load_config

            section = load_config(path, env).flow_settings("logs")
            loaded = section.model_dump(exclude_unset=True)
        data = loaded
    data = _settings._merge(data, _env_overrides(env))
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        _settings._set_nested(nested, key.split("__"), value)
    data = _settings._merge(data, nested)
    try:
        return LogsFlowSettings.model_validate(data)
    except ValidationError as exc:
        lines = format_errors(exc, model=LogsFlowSettings)
        where = f"{path}: " if path else ""
        raise ValueError(where + "invalid logs flow settings:\n  " + "\n  ".join(lines)) from exc


def build_from_settings(
    settings: LogsFlowSettings,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
) -> Dataflow:
    """Wire the logs dataflow from validated settings (no I/O)."""
    return build_dataflow(settings, LOGS, batch_operators)


def build(
    config_path: str | None = None,
    *,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
    **overrides: Any,
) -> Dataflow:
    """Build the flow from a YAML file (or ``$OTELWAX_CONFIG``/defaults) plus overrides.

    ``overrides`` use ``__`` for nesting: ``build(source__stop_at_end=True)``.
    """
    return build_from_settings(load_settings(config_path, **overrides), batch_operators)


flow = build()
