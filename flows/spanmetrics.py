"""Span metrics (RED) flow: Kafka ``otlp_spans`` → event-time windows → Prometheus (+ chdb).

    python -m bytewax.run flows.spanmetrics          # $OTELWAX_CONFIG or defaults

Why a flow of its own rather than a branch of ``flows.traces``: the trace flow's job is to store
every span exactly once, and its batching is driven by that (offset ranges, intents, inserts);
span metrics need event-time state that must not be replayed into ClickHouse semantics, can run
with a different parallelism, and can be restarted (or lag) without holding up span storage. Both
read the same topic with their own offsets, so neither waits for the other. The windowing itself
lives in ``operators.windows.span_metrics`` and takes any span batch stream, so it can be wired
into ``flows.traces`` too, if one consumer is preferred.

Steps: kafka → decode (``otelwax.codec.decode_traces``, one batch per poll) → ``span_metrics``
(tumbling windows on span end time, cumulative totals, cardinality limit, late spans counted)
→ Prometheus remote-write (and, optionally, the ``otel_metrics_sum/histogram`` tables in chdb);
late spans are dropped (counted) or, with ``late_policy: route``, written to ``late_topic`` as
Arrow IPC streams.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from pydantic import Field

from connectors.kafka import TOPIC_SPANS, KafkaConfig
from connectors.prom_translate import tables_to_series
from connectors.remote_write import RemoteWriteConfig, RemoteWriteSink
from flows.metrics import (
    MetricChunk,
    MetricsClickHouseConfig,
    MetricsClickHouseSink,
    kafka_source,
    load_flow_settings,
)
from operators.windows import SpanMetricsConfig, span_metrics
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

__all__ = ["SpanMetricsFlowSettings", "build", "build_from_settings", "flow", "load_settings"]

log = logging.getLogger(__name__)

ENV_CONFIG = "OTELWAX_CONFIG"
DEPRECATED_ENV_CONFIG = "OTELWAX_SPANMETRICS_CONFIG"  # read only when $OTELWAX_CONFIG is unset


class SpanMetricsFlowSettings(StrictModel):
    """Everything ``flows.spanmetrics`` needs."""

    flow_id: str = Field("otelwax_spanmetrics", min_length=1)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topic: str = Field(TOPIC_SPANS, min_length=1)
    tail: bool = True
    source_batch_size: int = Field(1000, gt=0)
    spanmetrics: SpanMetricsConfig = Field(default_factory=SpanMetricsConfig)
    remote_write: RemoteWriteConfig | None = Field(default_factory=RemoteWriteConfig)
    clickhouse: MetricsClickHouseConfig | None = None
    late_topic: str | None = Field(None, description="late spans (late_policy: route)")
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
        SpanMetricsFlowSettings, "spanmetrics", config_path, env, overrides, DEPRECATED_ENV_CONFIG
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


class _Decode:
    def __init__(self) -> None:
        self.metrics = ComponentMetrics("spanmetrics_decode", "records")

    def __call__(self, msgs: list[Any]) -> list[pa.RecordBatch]:
        from otelwax.codec import decode_traces

        values = [m.value for m in msgs if m.value is not None]
        self.metrics.received(len(msgs))
        if not values:
            return []
        res = decode_traces(values)
        if res.errors:
            self.metrics.dropped(len(res.errors), "decode_error")
        batch = res.batch
        if batch.num_rows == 0:
            return []
        return [batch.select(_SPAN_COLUMNS)]


def _late_to_kafka(batch: pa.RecordBatch | pa.Table) -> Any:
    from bytewax.connectors.kafka import KafkaSinkMessage

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write(batch)
    return KafkaSinkMessage(key=None, value=sink.getvalue().to_pybytes())


def build_from_settings(settings: SpanMetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    from bytewax.connectors.kafka import KafkaSink

    flow = Dataflow(settings.flow_id)
    source = kafka_source(
        settings.kafka,
        settings.topic,
        settings.tail,
        settings.source_batch_size,
        settings.metrics_port,
    )
    msgs = op.input("kafka", flow, source)
    spans = op.flat_map_batch("decode", msgs, _Decode())
    out = span_metrics("span_metrics", spans, settings.spanmetrics)
    if settings.remote_write is not None:
        series = op.map("to_series", out.metrics, tables_to_series)
        op.output("remote_write", series, RemoteWriteSink(settings.remote_write, "spanmetrics"))
    if settings.clickhouse is not None:
        chunks = op.map("to_chunk", out.metrics, lambda t: MetricChunk(t))
        op.output("clickhouse", chunks, MetricsClickHouseSink(settings.clickhouse))
    if settings.spanmetrics.late_policy == "route" and settings.late_topic:
        late = op.map("late_to_kafka", out.late, _late_to_kafka)
        op.output(
            "late_spans",
            late,
            KafkaSink(
                [settings.kafka.bootstrap_servers],
                settings.late_topic,
                add_config={
                    k: str(v)
                    for k, v in settings.kafka.client_conf().items()
                    if k != "bootstrap.servers"
                },
            ),
        )
    return flow


def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build from YAML (or ``$OTELWAX_CONFIG``/defaults) plus overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


flow = build()
