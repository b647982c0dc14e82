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
from typing import Any

from bytewax.dataflow import Dataflow

from flows import lazy_flow, pipeline_build
from flows.pipeline import LOGS, BatchOperator, build_dataflow
from flows.settings import ENV_CONFIG, LogsFlowSettings, load_logs_settings

__all__ = [
    "ENV_CONFIG",
    "LogsFlowSettings",
    "build",
    "build_from_settings",
    "load_settings",
]


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> LogsFlowSettings:
    """Load and validate (``flows.settings.load_logs_settings``); raises ``ValueError``
    listing every problem as ``key.path: msg``."""
    return load_logs_settings(config_path, env, **overrides)


def build_from_settings(
    settings: LogsFlowSettings,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
) -> Dataflow:
    """Wire the logs dataflow from validated settings (no I/O)."""
    return build_dataflow(settings, LOGS, batch_operators)


build = pipeline_build("logs", load_settings, build_from_settings)
__getattr__ = lazy_flow("logs", build)
