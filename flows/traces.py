"""The traces dataflow: Kafka ``otlp_spans`` → Arrow → operators → ClickHouse, exactly once.

    python -m bytewax.run flows.traces                       # config from $OTELWAX_CONFIG
    python -m bytewax.run "flows.traces:build('configs/traces.yaml')" -w 2
    otelwax flow traces -c configs/traces.yaml               # adds recovery/cluster args

Steps (``flows.pipeline``, shared with ``flows.logs``; one item = one Kafka offset range of
one partition, see ``connectors.kafka_source``):

    kafka (PartitionedKafkaSource) → decode (OTLP → pa.RecordBatch, bad payloads set aside)
      → dead_letters (bad payloads to the DLQ topic, waits for Kafka's ack)
      [→ tail_sampling (per partition, by event time, state in bytewax snapshots)]
      → op_<i> (batch operators, Arrow in/out) → clickhouse (intent, then deduplicated insert)

Importing this module does no network I/O: ``flow`` is built from the config file named by
``$OTELWAX_CONFIG`` (or defaults); clients are opened when bytewax builds the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bytewax.dataflow import Dataflow

from flows import lazy_flow, pipeline, pipeline_build
from flows.pipeline import TRACES, BatchOperator
from flows.settings import TracesFlowSettings, load_settings

__all__ = ["BatchOperator", "build", "build_from_settings", "load_settings"]


def resolve_operators(specs: Sequence[dict[str, Any]]) -> list[tuple[str, BatchOperator]]:
    """``operators:`` config entries as callables (see ``flows.pipeline``)."""
    return pipeline.resolve_operators(specs, TRACES)


def build_from_settings(
    settings: TracesFlowSettings,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O).

    With ``jaeger.enabled`` the rows after the operators also go to Jaeger (OTLP/gRPC).
    """
    outputs: list[tuple[str, Any]] = []
    if settings.jaeger.enabled:
        from connectors.otlp_export import JaegerSink

        outputs.append(("jaeger", JaegerSink(settings.jaeger)))
    return pipeline.build_dataflow(settings, TRACES, batch_operators, outputs)


build = pipeline_build("traces", load_settings, build_from_settings)
__getattr__ = lazy_flow("traces", build)
