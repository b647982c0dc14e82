"""The metrics dataflow: Kafka ``otlp_metrics`` → Arrow → ClickHouse + Prometheus remote-write.

    python -m bytewax.run flows.metrics                    # $OTELWAX_CONFIG or defaults
    python -m bytewax.run "flows.metrics:build('configs/metrics.yaml')"
    otelwax flow metrics -c configs/otelwax.yaml

Steps::

    kafka (connectors.kafka_source: offset ranges of otlp_metrics)
      → decode            one StoredRange per range, its rows per table {otel_metrics_*: batch};
                          undecodable records to the DLQ topic (waits for Kafka's ack)
      ├→ clickhouse       every data point as stored by the clickhouseexporter (delta as is),
                          through the exactly-once sink of the traces and logs flows
                          (connectors.clickhouse_sink, routed to the five metrics tables;
                          embedded chdb by default, or a ClickHouse 20+ server)
      └→ remote-write branch
           tables → operators.delta_cumulative (delta sums/histograms made cumulative per
                    series, state snapshotted by bytewax recovery)
           to_series      OTel → Prometheus names/labels (connectors.prom_translate)
           remote_write   connectors.remote_write sink, in series order

Settings (``flows.settings.MetricsFlowSettings``) have the shape of every flow: ``source``
(``topic``, ``stop_at_end``, ``batch``, ``resume``...), ``clickhouse``, ``sink``, ``recovery``
and the serving keys, plus ``dead_letters``, ``remote_write`` and ``delta_to_cumulative``.

Delivery: before inserting, the sink records each new range as an intent (``otelwax_intents``,
flow ``metrics``, target ``otel_metrics``) and inserts every table of the range with the token
``topic:partition:first:last/table``. After a crash the source resumes and re-cuts the
replayed records at the recorded boundaries, so ClickHouse skips the ranges it already has:
every data point is stored once. With bytewax recovery it never starts *past* the snapshot (as
the traces flow may), because the delta→cumulative state is restored from that snapshot and
must see every later range again; without recovery (no state to keep consistent) it skips the
ranges already stored (``source.resume: auto``). For the same reason inserts overlap the decode
of the next ranges (``sink.overlap``) only when there is no remote-write branch: the source's
snapshot then stays at the oldest range not yet stored, which the state must not see twice.
Remote-write replays are harmless: the restored state recomputes identical samples, which
Prometheus refuses (older) or ignores (newest duplicate).

Importing this module does no network I/O: ``flow`` is built from ``$OTELWAX_CONFIG``
(or defaults) with ``$OTELWAX_KAFKA_BOOTSTRAP``; Kafka, chdb and HTTP open when the flow runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_metrics_schema import prepare_metrics_tables
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from connectors.dlq import DeadLetter
from connectors.kafka_source import KafkaRange, NoIntents, PartitionedKafkaSource, RangeAcks
from connectors.prom_translate import tables_batch_to_series, translated_columns
from connectors.remote_write_order import write_in_order
from flows import exits_on_bad_config, lazy_flow
from flows.pipeline import DeadLetterOutbox
from flows.settings import MetricsFlowSettings, MetricsSinkConfig
from operators.delta_cumulative import READ_COLUMNS as DELTA_READ_COLUMNS
from operators.delta_cumulative import to_cumulative
from otelwax.logs import instrument
from otelwax.memory import freeze_startup_objects
from otelwax.metric_schemas import METRIC_SCHEMAS
from otelwax.telemetry import (
    ComponentMetrics,
    serve_flow_metrics,
    start_progress_log,
    stop_on_sigterm,
)

__all__ = [
    "METRICS_INTENTS_TARGET",
    "MetricsFlowSettings",
    "build",
    "build_from_settings",
    "load_settings",
    "metrics_sink",
]

log = logging.getLogger(__name__)

DEPRECATED_ENV_CONFIG = "OTELWAX_METRICS_CONFIG"  # read only when $OTELWAX_CONFIG is unset
METRICS_INTENTS_TARGET = "otel_metrics"
"""The intents' target of the metrics tables (one range goes to all five)."""
_EMPTY = pa.record_batch([])


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> MetricsFlowSettings:
    """Settings from ``config_path`` or ``$OTELWAX_CONFIG`` (this model, or a whole otelwax
    config: ``flows.metrics`` plus the shared ``kafka``/``clickhouse``), the environment
    (``OTELWAX_METRICS__source__topic=x``) and keyword overrides nested with ``__``
    (``flows.settings.load_flow_settings``)."""
    from flows.settings import load_flow_settings

    return load_flow_settings(
        MetricsFlowSettings,
        "metrics",
        config_path,
        env,
        deprecated_env=DEPRECATED_ENV_CONFIG,
        **overrides,
    )


def metrics_sink(
    clickhouse: ClickHouseConfig,
    config: ClickHouseSinkConfig | None = None,
    acks: RangeAcks | None = None,
) -> ClickHouseSink:
    """The exactly-once ClickHouse sink routed to the ``otel_metrics_*`` tables (refuses a
    server older than 20; with ``create_schema`` creates the tables)."""
    return ClickHouseSink(
        clickhouse,
        config or MetricsSinkConfig(),
        table=METRICS_INTENTS_TARGET,
        acks=acks,
        routes=dict(METRIC_SCHEMAS),
        prepare=prepare_metrics_tables,
    )


class _Decode:
    """map mapper: one Kafka range → one StoredRange holding its rows per metrics table;
    undecodable records go to the DLQ (``outbox``, waiting for Kafka's ack; logged with the
    step id; counted dropped when the DLQ is disabled)."""

    def __init__(self, outbox: DeadLetterOutbox) -> None:
        self.metrics = ComponentMetrics("metrics_decode", "datapoints")
        self.records = ComponentMetrics("metrics_decode", "records")
        self._outbox = outbox

    def __call__(self, r: KafkaRange) -> StoredRange:
        # The native core when built (same tables; $OTELWAX_CODEC=python forces pymetrics).
        from otelwax.codec import decode_metrics

        self.records.received(len(r.values))
        res = decode_metrics(r.values)
        if res.errors:
            self.records.failed(len(res.errors))
            self._outbox.reject([
                DeadLetter(r.topic, r.partition, r.offsets[i], r.values[i], why)
                for i, why in res.errors
            ])
        self.metrics.received(res.num_rows)
        return StoredRange(
            r.topic,
            r.partition,
            r.first,
            r.last,
            _EMPTY,
            len(r.values),
            r.replay,
            r.first_timestamp_ms,
            r.topic_id,
            tables=res.tables,
        )


class _FromSnapshot:
    """The sink's intents as the source reads them, never starting past bytewax's snapshot:
    the delta→cumulative state is restored from it, so every later range must flow again
    (ClickHouse skips the stored ones by token), re-cut at the recorded boundaries."""

    def __init__(self, intents: Any) -> None:
        self._intents = intents

    def __getattr__(self, name: str) -> Any:
        return getattr(self._intents, name)

    def pending_from(self, topic: str, partition: int) -> int | None:
        return None


def _runs_with_recovery() -> bool:
    """Whether this process was started by ``bytewax.run`` with a recovery directory."""
    import sys

    argv = sys.argv
    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(
        a in ("-r", "--recovery-directory") or a.startswith("--recovery-directory=") for a in argv
    )


def build_from_settings(settings: MetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    port, addr = settings.metrics_port, settings.metrics_addr

    def on_start() -> None:
        stop_on_sigterm()
        start_progress_log(settings.progress_s)
        freeze_startup_objects()
        if port:
            serve_flow_metrics(port, addr, settings.health)

    ch, rw = settings.clickhouse, settings.remote_write
    # Overlapped inserts move the source's snapshot back to the oldest unstored range: only
    # without the stateful remote-write branch (see the module doc).
    acks = RangeAcks() if ch is not None and rw is None else None
    sink = metrics_sink(ch, settings.sink, acks) if ch is not None else None
    src = settings.source
    skip = src.resume == "stored" or (src.resume == "auto" and not _runs_with_recovery())

    def intents() -> Any:
        assert sink is not None
        log_ = sink.intent_log(sink.client())
        return log_ if skip else _FromSnapshot(log_)

    cfg = src.model_copy(update={"group_id": settings.flow_id})
    source = PartitionedKafkaSource(
        settings.kafka, cfg, intents if sink is not None else NoIntents, on_start, acks
    )
    flow = Dataflow(settings.flow_id)
    ranges = op.input("kafka", flow, source)
    chunks = op.map("decode", ranges, _Decode(DeadLetterOutbox(settings)))
    if sink is not None:
        op.output("clickhouse", chunks, sink)
    if rw is not None:
        tables = op.map("tables", chunks,
                        lambda r: translated_columns(r.tables, DELTA_READ_COLUMNS))  # fmt: skip
        series = op.flat_map_batch("to_series",
                                   to_cumulative(tables, settings.delta_to_cumulative),
                                   tables_batch_to_series)  # fmt: skip
        write_in_order("remote_write", series, rw)
    # Logging is set up as the flow starts; records logged inside a step carry its step id.
    return instrument(flow, level=settings.log_level, fmt=settings.log_format)


@exits_on_bad_config("metrics")
def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build the flow from a YAML file (or ``$OTELWAX_CONFIG``/defaults) + overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


__getattr__ = lazy_flow("metrics", build)
