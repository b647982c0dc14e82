"""Span metrics (RED) flow: Kafka ``otlp_spans`` → event-time windows → Prometheus (+ chdb).

    python -m bytewax.run flows.spanmetrics          # $OTELWAX_CONFIG or defaults

Why a flow of its own rather than a branch of ``flows.traces``: the trace flow's job is to store
every span exactly once, and its batching is driven by that (offset ranges, intents, inserts);
span metrics need event-time state that must not be replayed into ClickHouse semantics, can run
with a different parallelism, and can be restarted (or lag) without holding up span storage. Both
read the same topic with their own offsets, so neither waits for the other. The windowing itself
lives in ``operators.red_metrics.span_metrics`` and takes any span batch stream, so it can be wired
into ``flows.traces`` too, if one consumer is preferred.

Steps: kafka (``connectors.kafka_source``: one bytewax partition per Kafka partition, exports
``otelwax_kafka_consumer_lag``) → decode (``otelwax.codec.decode_traces``, one batch per offset
range, in order) → ``span_metrics``
(tumbling windows on span end time, watermark bounded by each range's Kafka timestamp,
cumulative totals, cardinality limit, idle series evicted, rejected spans counted)
→ Prometheus remote-write (and, optionally, the ``otel_metrics_sum/histogram`` tables in chdb);
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

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from pydantic import Field

from connectors.kafka import TOPIC_SPANS, KafkaConfig
from connectors.kafka_source import (
    KafkaRange,
    KafkaSourceConfig,
    PartitionedKafkaSource,
    RangeCutConfig,
)
from connectors.prom_translate import tables_to_series
from connectors.remote_write import RemoteWriteConfig
from connectors.remote_write_order import write_in_order
from flows import exits_on_bad_config, lazy_flow
from flows.metrics import (
    MetricChunk,
    MetricsClickHouseConfig,
    MetricsClickHouseSink,
    _NoIntents,
    load_flow_settings,
)
from flows.settings import ServingSettings
from operators.red_metrics import SpanMetricsConfig, span_metrics
from operators.windows import INGEST_TIME_KEY, REASON_KEY
from otelwax.logs import instrument
from otelwax.telemetry import ComponentMetrics, serve_metrics

__all__ = [
    "SpanMetricsFlowSettings",
    "build",
    "build_from_settings",
    "kafka_source",
    "load_settings",
]

log = logging.getLogger(__name__)

ENV_CONFIG = "OTELWAX_CONFIG"
DEPRECATED_ENV_CONFIG = "OTELWAX_SPANMETRICS_CONFIG"  # read only when $OTELWAX_CONFIG is unset


class SpanMetricsFlowSettings(ServingSettings):
    """Everything ``flows.spanmetrics`` needs."""

    flow_id: str = Field("otelwax_spanmetrics", min_length=1)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topic: str = Field(TOPIC_SPANS, min_length=1)
    tail: bool = Field(True, description="keep waiting for records at the end of the topic")
    source_batch_size: int = Field(1000, gt=0, description="Kafka records per offset range")
    source_max_delay_s: float = Field(
        0.5, gt=0, le=60, description="cut a partition's range when its oldest record is this old"
    )
    spanmetrics: SpanMetricsConfig = Field(default_factory=SpanMetricsConfig)
    remote_write: RemoteWriteConfig | None = Field(default_factory=RemoteWriteConfig)
    clickhouse: MetricsClickHouseConfig | None = None
    late_topic: str | None = Field(
        None, description="rejected spans, reason in the otelwax.reason header (late_policy: route)"
    )
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
    """flat_map_batch mapper: Kafka ranges → one span batch per range, in offset order."""

    def __init__(self) -> None:
        self.metrics = ComponentMetrics("spanmetrics_decode", "records")

    def __call__(self, ranges: list[KafkaRange]) -> list[pa.RecordBatch]:
        from otelwax.codec import decode_traces

        out: list[pa.RecordBatch] = []
        for r in ranges:
            self.metrics.received(len(r.values))
            if not r.values:
                continue
            res = decode_traces(r.values)
            if res.errors:
                self.metrics.dropped(len(res.errors), "decode_error")
                for i, reason in res.errors[:5]:
                    log.warning(
                        "%s[%d]@%d: undecodable record dropped: %s",
                        r.topic,
                        r.partition,
                        r.offsets[i],
                        reason,
                        extra={
                            "topic": r.topic,
                            "partition": r.partition,
                            "offset": r.offsets[i],
                            "reason": reason,
                        },
                    )
            if res.batch.num_rows:
                # the watermark never passes the ingest time (see operators.windows)
                meta = {INGEST_TIME_KEY: str(r.first_timestamp_ms).encode()}
                out.append(res.batch.select(_SPAN_COLUMNS).replace_schema_metadata(meta))
        return out


def kafka_source(settings: SpanMetricsFlowSettings) -> PartitionedKafkaSource:
    """``connectors.kafka_source`` over ``topic`` (no intents: nothing here is replayed into
    ClickHouse); serves ``/metrics`` when it builds its first partition, so an idle flow is
    observable and answers the ``/healthz`` probe."""
    cfg = KafkaSourceConfig(
        topic=settings.topic,
        batch=RangeCutConfig(
            max_records=settings.source_batch_size, max_delay_s=settings.source_max_delay_s
        ),
        stop_at_end=not settings.tail,
        group_id=settings.flow_id,
    )
    port, addr = settings.metrics_port, settings.metrics_addr

    def on_start() -> None:
        if port is not None:
            serve_metrics(port, addr)

    return PartitionedKafkaSource(settings.kafka, cfg, _NoIntents, on_start)


def _late_to_kafka(batch: pa.RecordBatch | pa.Table) -> Any:
    from bytewax.connectors.kafka import KafkaSinkMessage

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write(batch)
    reason = (batch.schema.metadata or {}).get(REASON_KEY, b"late")
    return KafkaSinkMessage(
        key=None, value=sink.getvalue().to_pybytes(), headers=[("otelwax.reason", reason)]
    )


def build_from_settings(settings: SpanMetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    from bytewax.connectors.kafka import KafkaSink

    flow = Dataflow(settings.flow_id)
    ranges = op.input("kafka", flow, kafka_source(settings))
    spans = op.flat_map_batch("decode", ranges, _Decode())
    out = span_metrics("span_metrics", spans, settings.spanmetrics)
    if settings.remote_write is not None:
        series = op.map("to_series", out.metrics, tables_to_series)
        write_in_order("remote_write", series, settings.remote_write, "spanmetrics")
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
    # Logging is set up as the flow starts; records logged inside a step carry its step id.
    return instrument(flow, level=settings.log_level, fmt=settings.log_format)


@exits_on_bad_config("spanmetrics")
def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build from YAML (or ``$OTELWAX_CONFIG``/defaults) plus overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


__getattr__ = lazy_flow("spanmetrics", build)
