"""What the event-time metrics flows share (``flows.spanmetrics``, ``flows.logmetrics``).

    settings   flows.settings.WindowFlowSettings: Kafka source (topic, range cuts), remote-write,
               optional ClickHouse, late topic, /metrics port
    source     connectors.kafka_source (one bytewax partition per Kafka partition, no intents)
    decode     WindowDecode: one Arrow batch per offset range, in order, with the Kafka
               timestamp of the range's first record as ``otelwax.ingest_time_ms`` (the
               watermark never passes it, see operators.windows), its partition and the
               records left behind it (operators.watermark)
    outputs    write_windows: cumulative tables → remote-write in series order
               (connectors.remote_write_order) and/or the ``otel_metrics_*`` tables
               (flows.metrics' sink); rejected rows → ``late_topic`` (Arrow IPC, reason header)

Delivery. The window state, the source offsets and the remote-write reorder buffer are in
bytewax's snapshot, so after a crash the flow resumes from one consistent point and replays
the records read since: totals continue, nothing is counted twice. Samples and rows emitted
after that snapshot are emitted again:

- Prometheus (at-least-once, no visible duplicate): a replayed sample has the same timestamp
  (window end) and, when the replay closes the window with the same records, the same value;
  Prometheus keeps one (a newest-sample duplicate is ignored, an older one refused, counted as
  ``http_400`` by the sink).
- ClickHouse (exactly once for identical replays): each closed window is one insert whose
  deduplication token is a hash of its rows (``window_chunk``), so a replayed window with the
  same totals is skipped. A replay can differ when the ranges it re-cuts move the watermark
  differently around a late record, or when it accepts a record the first run rejected as
  ``future``; such a window is stored again with its new totals (at-least-once), as Prometheus
  keeps the first sample at that timestamp.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors.clickhouse_sink import StoredRows
from connectors.kafka_source import KafkaRange, NoIntents, PartitionedKafkaSource
from connectors.prom_translate import tables_batch_to_series
from connectors.remote_write_order import write_in_order
from flows.metrics import metrics_sink
from flows.settings import WindowFlowSettings
from operators.watermark import INGEST_TIME_KEY, LAG_KEY, PARTITION_KEY
from operators.windows import REASON_KEY, WindowConfig, WindowStreams
from otelwax.logs import instrument
from otelwax.telemetry import (
    ComponentMetrics,
    serve_flow_metrics,
    start_progress_log,
    stop_on_sigterm,
)

__all__ = [
    "WindowDecode",
    "WindowFlowSettings",
    "late_to_kafka",
    "window_chunk",
    "window_dataflow",
    "window_source",
    "write_windows",
]

log = logging.getLogger(__name__)


class WindowDecode:
    """flat_map_batch mapper: Kafka ranges → one batch of ``columns`` per range, in offset
    order, stamped with the range's first Kafka timestamp (``otelwax.ingest_time_ms``)."""

    def __init__(
        self, decode: Callable[[list[bytes]], Any], columns: list[str], component: str
    ) -> None:
        self.decode = decode
        self.columns = columns
        self.metrics = ComponentMetrics(component, "records")

    def __call__(self, ranges: list[KafkaRange]) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        for r in ranges:
            self.metrics.received(len(r.values))
            res = self.decode(r.values)
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
            # Also a range with no decodable record: it tells the windows how far its
            # partition is read (operators.watermark).
            meta = {
                PARTITION_KEY: f"{r.topic}:{r.partition}".encode(),
                LAG_KEY: str(r.lag).encode(),
            }
            if r.values:  # not the empty range a partition starts with
                meta[INGEST_TIME_KEY] = str(r.first_timestamp_ms).encode()
            out.append(res.batch.select(self.columns).replace_schema_metadata(meta))
        return out


def window_source(settings: WindowFlowSettings) -> PartitionedKafkaSource:
    """``connectors.kafka_source`` over ``topic`` (no intents: the window state is replayed
    from bytewax's snapshot, never past it); serves ``/metrics`` when it builds its first
    partition, so an idle flow is observable and answers the ``/healthz`` probe."""
    cfg = settings.source.model_copy(update={"group_id": settings.flow_id})
    port, addr = settings.metrics_port, settings.metrics_addr

    def on_start() -> None:
        stop_on_sigterm()
        start_progress_log(settings.progress_s)
        if port is not None:
            serve_flow_metrics(port, addr, settings.health)

    return PartitionedKafkaSource(settings.kafka, cfg, NoIntents, on_start, announce=True)


def late_to_kafka(batch: pa.RecordBatch | pa.Table) -> Any:
    """A rejected batch as one Kafka message: Arrow IPC stream, ``otelwax.reason`` header."""
    from bytewax.connectors.kafka import KafkaSinkMessage

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write(batch)
    reason = (batch.schema.metadata or {}).get(REASON_KEY, b"late")
    return KafkaSinkMessage(
        key=None, value=sink.getvalue().to_pybytes(), headers=[("otelwax.reason", reason)]
    )


def window_chunk(flow_id: str, tables: dict[str, pa.RecordBatch]) -> StoredRows:
    """One closed window's tables as a chunk inserted alone, its token a hash of its rows (a
    replay that closes the window with the same totals carries the same token)."""
    digest = hashlib.sha1()
    for name in sorted(tables):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tables[name].schema) as w:
            w.write(tables[name])
        digest.update(name.encode())
        digest.update(sink.getvalue())
    return StoredRows(f"{flow_id}:{digest.hexdigest()}", tables)


def write_windows(
    settings: WindowFlowSettings,
    out: WindowStreams,
    windows: WindowConfig,
    component: str,
    late_step: str,
) -> None:
    """Wire the window outputs to remote-write (``component`` counts its samples), ClickHouse
    and, with ``late_policy: route`` and a ``late_topic``, the rejected rows (step
    ``late_step``)."""
    from bytewax.connectors.kafka import KafkaSink

    if settings.remote_write is not None:
        series = op.flat_map_batch("to_series", out.metrics, tables_batch_to_series)
        write_in_order("remote_write", series, settings.remote_write, component)
    if settings.clickhouse is not None:
        flow_id = settings.flow_id
        chunks = op.map("to_chunk", out.metrics, lambda t: window_chunk(flow_id, t))
        op.output("clickhouse", chunks, metrics_sink(settings.clickhouse))
    if windows.late_policy == "route" and settings.late_topic:
        late: Stream[Any] = op.map("late_to_kafka", out.late, late_to_kafka)
        conf = settings.kafka.client_conf()
        op.output(
            late_step,
            late,
            KafkaSink(
                [settings.kafka.bootstrap_servers],
                settings.late_topic,
                add_config={k: str(v) for k, v in conf.items() if k != "bootstrap.servers"},
            ),
        )


def window_dataflow(
    settings: WindowFlowSettings,
    signal: str,
    columns: list[str],
    count: Callable[[Stream[pa.RecordBatch]], WindowStreams],
    windows: WindowConfig,
    name: str,
    late_step: str,
) -> Dataflow:
    """The whole flow (no I/O): kafka → decode (``otelwax.codec.decode_<signal>``, keeping
    ``columns``) → ``count`` (a window operator) → :func:`write_windows`; ``name`` prefixes
    the decode component and names the remote-write component."""
    from otelwax import codec

    if settings.clickhouse is None and settings.remote_write is None:
        # Checked here, not in the settings: a config file that does not run this flow
        # (no output configured for it) still validates.
        raise ValueError(
            f"nothing to write to: set flows.{name}.clickhouse and/or a remote_write "
            f"(flows.{name}.remote_write or sinks.remote_write)"
        )
    decoder = getattr(codec, f"decode_{signal}")
    flow = Dataflow(settings.flow_id)
    ranges = op.input("kafka", flow, window_source(settings))
    batches = op.flat_map_batch("decode", ranges, WindowDecode(decoder, columns, f"{name}_decode"))
    write_windows(settings, count(batches), windows, name, late_step)
    # Logging is set up as the flow starts; records logged inside a step carry its step id.
    return instrument(flow, level=settings.log_level, fmt=settings.log_format)
