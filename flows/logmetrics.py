"""Log metrics flow: Kafka ``otlp_logs`` → record counts in event-time windows → Prometheus
(+ ClickHouse).

    python -m bytewax.run flows.logmetrics          # $OTELWAX_CONFIG (flows.logmetrics) or defaults
    otelwax flow logmetrics -c configs/otelwax.yaml

Counts log records per window by service, severity and configured dimensions, on the record's
timestamp (``operators.log_counts``), and writes cumulative counters
``otelwax_log_records_total{service_name,severity,...}``: unlike the Collector's count
connector, which counts at arrival, a backlog read after an outage lands in the windows the
records belong to, and a restart continues the totals from the snapshot.

Why a flow of its own rather than a step of ``flows.logs``: ``flows.logs`` stores every record
exactly once through intents, and after a crash it may resume *past* bytewax's snapshot (at the
first range ClickHouse does not have yet), which would skip records for a window state restored
from that snapshot; its steps are 1:1 maps over offset ranges so that a replay re-cuts them.
Window state must see every record after its snapshot exactly once, so this flow resumes at the
snapshot, never past it, with its own consumer offsets: it can lag, restart or run with another
parallelism without holding up log storage. The counting is an operator over any log batch
stream, so it can be wired elsewhere.

Steps: kafka → decode (``otelwax.codec.decode_logs``, one batch per offset range) →
``log_counts`` → remote-write in series order and/or ``otel_metrics_sum`` (``clickhouse``,
off by default); rejected records (``late``, ``future``, ``too_old``) are counted in
``otelwax_dropped_total{component="log_metrics"}`` or, with ``late_policy: route``, written to
``late_topic``. What is exactly once: see ``flows.windowed``. ``/metrics`` on ``metrics_port``
(9468); environment overrides as ``OTELWAX_LOGMETRICS__logmetrics__window_s=30``.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
from bytewax.dataflow import Dataflow, Stream
from pydantic import Field

from connectors.kafka import TOPIC_LOGS
from flows import exits_on_bad_config, lazy_flow, own_store
from flows.settings import WindowFlowSettings, load_flow_settings, source_defaults
from flows.windowed import window_dataflow
from operators.log_counts import COLUMNS, LogCountsConfig, log_counts
from operators.windows import WindowStreams

__all__ = ["LogMetricsFlowSettings", "build", "build_from_settings", "load_settings"]


class LogMetricsFlowSettings(WindowFlowSettings):
    """Everything ``flows.logmetrics`` needs."""

    _source_defaults = source_defaults(topic=TOPIC_LOGS, group_id="otelwax_logmetrics")
    logmetrics: LogCountsConfig = Field(default_factory=LogCountsConfig)
    _own_store = own_store("logmetrics")
    metrics_port: int | None = Field(
        9468, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> LogMetricsFlowSettings:
    """Settings from ``config_path`` or ``$OTELWAX_CONFIG`` (this model, or a whole otelwax
    config: ``flows.logmetrics`` plus the shared ``kafka``), the environment
    (``OTELWAX_LOGMETRICS__a__b``) and keyword overrides nested with ``__``."""
    return load_flow_settings(LogMetricsFlowSettings, "logmetrics", config_path, env, **overrides)


def build_from_settings(settings: LogMetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    cfg = settings.logmetrics

    def count(logs: Stream[pa.RecordBatch]) -> WindowStreams:
        return log_counts("log_counts", logs, cfg)

    return window_dataflow(settings, "logs", COLUMNS, count, cfg, "logmetrics", "late_logs")


@exits_on_bad_config("logmetrics")
def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build from YAML (or ``$OTELWAX_CONFIG``/defaults) plus overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


__getattr__ = lazy_flow("logmetrics", build)
