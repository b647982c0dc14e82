"""Span metrics (RED) flow: Kafka ``otlp_spans`` → event-time windows → Prometheus (+ chdb).

    python -m bytewax.run flows.spanmetrics          # $OTELWAX_CONFIG or defaults

Why a flow of its own rather than a branch of ``flows.traces``: the trace flow's job is to store
every span exactly once, and its batching is driven by that (offset ranges, intents, inserts);
span metrics need event-time state that must not be replayed into ClickHouse semantics, can run
with a different parallelism, and can be restarted (or lag) without holding up span storage. Both
read the same topic with their own offsets, so neither waits for the other. The windowing itself
lives in ``operators.red_metrics.span_metrics`` and takes any span batch stream, so it can be wired
into ``flows.traces`` too, if one consumer is preferred.

Steps (source, decode and outputs are ``flows.windowed``'s, shared with ``flows.logmetrics``,
which also says what is exactly once): kafka (``connectors.kafka_source``: one bytewax
partition per Kafka partition, exports ``otelwax_kafka_consumer_lag``) → decode
(``otelwax.codec.decode_traces``, one batch per offset range, in order) → ``span_metrics``
(``operators.red_metrics``: tumbling windows on span end time, watermark bounded by each
range's Kafka timestamp, cumulative totals, cardinality limit, idle series evicted, rejected
spans counted) → Prometheus remote-write (and, optionally, the ``otel_metrics_sum/histogram``
tables in chdb);
rejected spans (late, too far in the future or past) are dropped (counted) or, with
``late_policy: route``, written to ``late_topic`` as Arrow IPC streams with the reason in the
``otelwax.reason`` header.

``/metrics`` (and so the image's ``/healthz`` probe, any path answers) is served on
``metrics_port`` from the moment the flow builds its first Kafka partition. Undecodable records
are dropped (``otelwax_dropped_total{component="spanmetrics_decode",reason="decode_error"}``)
and logged with their offset and the step id.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bytewax.dataflow import Dataflow
from pydantic import Field

from connectors.kafka import TOPIC_SPANS
from flows import exits_on_bad_config, lazy_flow, own_store
from flows.settings import WindowFlowSettings, load_flow_settings, source_defaults
from flows.windowed import window_dataflow
from operators.red_metrics import SpanMetricsConfig, span_metrics

__all__ = [
    "SpanMetricsFlowSettings",
    "build",
    "build_from_settings",
    "load_settings",
]

log = logging.getLogger(__name__)

ENV_CONFIG = "OTELWAX_CONFIG"
DEPRECATED_ENV_CONFIG = "OTELWAX_SPANMETRICS_CONFIG"  # read only when $OTELWAX_CONFIG is unset


class SpanMetricsFlowSettings(WindowFlowSettings):
    """Everything ``flows.spanmetrics`` needs."""

    _source_defaults = source_defaults(topic=TOPIC_SPANS, group_id="otelwax_spanmetrics")
    spanmetrics: SpanMetricsConfig = Field(default_factory=SpanMetricsConfig)
    _own_store = own_store("spanmetrics")
    metrics_port: int | None = Field(
        9467, ge=0, le=65535, description="serve /metrics here (None: do not serve)"
    )


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> SpanMetricsFlowSettings:
    """Settings from ``config_path`` or ``$OTELWAX_CONFIG`` (this model, or a whole otelwax
    config: ``flows.spanmetrics`` plus the shared ``kafka``), the environment
    (``OTELWAX_SPANMETRICS__a__b``) and keyword overrides nested with ``__``."""
    return load_flow_settings(
        SpanMetricsFlowSettings,
        "spanmetrics",
        config_path,
        env,
        deprecated_env=DEPRECATED_ENV_CONFIG,
        **overrides,
    )


_SPAN_COLUMNS = [
    "Timestamp",
    "Duration",
    "ServiceName",
    "SpanName",
    "SpanKind",
    "StatusCode",
    "SpanAttributes",
    "ResourceAttributes",
]


def build_from_settings(settings: SpanMetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    cfg = settings.spanmetrics
    return window_dataflow(
        settings,
        "traces",
        _SPAN_COLUMNS,
        lambda spans: span_metrics("span_metrics", spans, cfg),
        cfg,
        "spanmetrics",
        "late_spans",
    )


@exits_on_bad_config("spanmetrics")
def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build from YAML (or ``$OTELWAX_CONFIG``/defaults) plus overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


__getattr__ = lazy_flow("spanmetrics", build)
