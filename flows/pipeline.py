"""The steps every "OTLP on Kafka → Arrow → operators → ClickHouse" flow shares.

``flows.traces`` and ``flows.logs`` are the same dataflow with a different :class:`Signal`
(decoder, Arrow schema, target table, counter unit)::

    kafka (PartitionedKafkaSource) → decode (OTLP → pa.RecordBatch, bad payloads set aside)
      → dead_letters (bad payloads to the DLQ topic, waits for Kafka's ack)
      → op_<i> (batch operators, Arrow in/out) → clickhouse (intent, then deduplicated insert)

One item is one Kafka offset range of one partition (``connectors.kafka_source``); decode and
the operators keep a range's rows in that range, so a replay after a crash re-inserts the
same rows under the same deduplication token (``connectors.clickhouse_sink``).

Building the dataflow does no I/O: clients are opened when bytewax builds the steps.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink

from connectors.clickhouse_schema import LOGS_SORT_KEY, TRACES_SORT_KEY
from connectors.clickhouse_sink import ClickHouseSink, StoredRange
from connectors.dlq import DeadLetter, DeadLetterProducer
from connectors.kafka_source import KafkaRange, PartitionedKafkaSource, RangeAcks
from otelwax.logs import instrument
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from otelwax.telemetry import ComponentMetrics, serve_metrics

log = logging.getLogger(__name__)

__all__ = [
    "LOGS",
    "TRACES",
    "BatchOperator",
    "Signal",
    "build_dataflow",
    "clickhouse_sink",
    "resolve_operators",
]

BatchOperator = Callable[[pa.RecordBatch], pa.RecordBatch]


@dataclass(frozen=True)
class Signal:
    """What differs between the flows: how payloads decode and where rows go."""

    name: str
    """Operator registry signal (``operators.registry.SIGNAL_SCHEMAS``) and flow name."""
    unit: str
    """Counter unit of decoded rows (``decode`` component)."""
    decoder: str
    """Function of ``otelwax.codec`` turning payloads into a ``DecodeResult``."""
    table_field: str
    """``ClickHouseConfig`` field naming the target table."""
    schema: pa.Schema
    """Arrow schema of the decoded batches (= the table's columns)."""
    sort_key: tuple[str, ...]
    """Columns the table is ordered by (the sink presorts each range by them)."""

    def decode_fn(self) -> Callable[[Sequence[bytes]], Any]:
        """The decoder (imported lazily: the native codec loads on first use)."""
        import otelwax.codec

        return getattr(otelwax.codec, self.decoder)


TRACES = Signal("traces", "spans", "decode_traces", "traces_table", TRACES_SCHEMA, TRACES_SORT_KEY)
LOGS = Signal("logs", "logs", "decode_logs", "logs_table", LOGS_SCHEMA, LOGS_SORT_KEY)


class FlowSettings(Protocol):
    """The settings a flow built here needs (``flows.settings.TracesFlowSettings`` shape)."""

    kafka: Any
    source: Any
    dead_letters: Any
    clickhouse: Any
    sink: Any
    operators: list[dict[str, Any]]
    metrics_port: int | None
    metrics_addr: str
    health: Any
    log_level: str
    log_format: str


# --- steps ------------------------------------------------------------------------------------


class _Decoded:
    """A range after decode: its rows and the payloads that failed."""

    __slots__ = ("batch", "letters", "rng")

    def __init__(self, rng: KafkaRange, batch: pa.RecordBatch, letters: list[DeadLetter]) -> None:
        self.rng = rng
        self.batch = batch
        self.letters = letters


class _Decode:
    """OTLP payloads of one range → one Arrow batch; undecodable payloads become letters."""

    def __init__(self, signal: Signal) -> None:
        self._signal = signal
        self._fn: Callable[[Sequence[bytes]], Any] | None = None
        self._rows = ComponentMetrics("decode", signal.unit)
        self._records = ComponentMetrics("decode", "records")

    def __call__(self, rng: KafkaRange) -> _Decoded:
        if self._fn is None:
            self._fn = self._signal.decode_fn()
        self._records.received(len(rng.values))
        res = self._fn(rng.values)
        letters = [
            DeadLetter(rng.topic, rng.partition, rng.offsets[i], rng.values[i], reason)
            for i, reason in res.errors
        ]
        if letters:
            self._records.failed(len(letters))
        self._records.sent(len(rng.values) - len(letters))
        self._rows.sent(res.batch.num_rows)
        self._rows.batch(res.batch.num_rows)
        return _Decoded(rng, res.batch, letters)


class _DeadLetters:
    """Sends a range's bad payloads to the DLQ and waits; one producer per process, lazily."""

    def __init__(self, settings: FlowSettings) -> None:
        self._kafka = settings.kafka
        self._cfg = settings.dead_letters
        self._producer: DeadLetterProducer | None = None
        self._lock = threading.Lock()
        self._dropped = ComponentMetrics("dlq", "records")

    def __call__(self, d: _Decoded) -> StoredRange:
        if d.letters:
            for letter in d.letters:
                log.warning(
                    "%s[%d]@%d: undecodable record: %s",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.reason,
                    extra={
                        "topic": letter.topic,
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "reason": letter.reason,
                    },
                )
            if self._cfg.enabled:
                with self._lock:
                    if self._producer is None:
                        self._producer = DeadLetterProducer(self._kafka, self._cfg)
                    self._producer.send_and_wait(d.letters)
            else:
                self._dropped.dropped(len(d.letters), "undecodable")
        r = d.rng
        return StoredRange(
            r.topic,
            r.partition,
            r.first,
            r.last,
            d.batch,
            len(r.values),
            r.replay,
            r.first_timestamp_ms,
        )


class _ApplyOperator:
    """One batch operator on a range's rows. Registry operators count themselves
    (``operator.<name>``); plain callables are counted here under the same name."""

    def __init__(self, name: str, fn: BatchOperator) -> None:
        self._fn = fn
        counted = hasattr(fn, "kind")  # operators.registry.BatchOperator
        self._metrics = None if counted else ComponentMetrics(f"operator.{name}", "rows")

    def __call__(self, r: StoredRange) -> StoredRange:
        n = r.batch.num_rows
        out = self._fn(r.batch)
        if isinstance(out, pa.Table):
            batches = out.combine_chunks().to_batches()
            out = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=out.schema)
        if self._metrics is not None:
            self._metrics.received(n)
            self._metrics.sent(out.num_rows)
            if out.num_rows < n:
                self._metrics.dropped(n - out.num_rows, "filtered")
        r.batch = out
        return r


def resolve_operators(
    specs: Sequence[dict[str, Any]], signal: Signal = TRACES
) -> list[tuple[str, BatchOperator]]:
    """Turn ``operators:`` config entries into callables via ``operators.registry``.

    Only stateless operators are allowed here: a stateful one (tail sampling) would move rows
    between Kafka ranges, so a replayed range could no longer reproduce its insert.
    """
    if not specs:
        return []
    from operators import registry  # owned by the operators component

    ops = registry.build_pipeline(registry.parse_specs(list(specs)), signal.name)
    stateful = [o.name for o in ops if getattr(o, "stateful", False)]
    if stateful:
        raise ValueError(
            f"operators {stateful}: stateful operators are not supported in flows.{signal.name} "
            "(exactly-once needs each Kafka range's rows to stay in that range)"
        )
    return [(o.name, o) for o in ops]


def clickhouse_sink(
    settings: FlowSettings, signal: Signal, acks: RangeAcks | None = None
) -> ClickHouseSink:
    """The exactly-once sink writing ``signal``'s table of ``settings.clickhouse``; ``acks``
    is shared with the flow's source (stored ranges are confirmed there)."""
    conn = settings.clickhouse
    return ClickHouseSink(
        conn,
        settings.sink,
        table=getattr(conn, signal.table_field),
        schema=signal.schema,
        acks=acks,
        sort_key=signal.sort_key,
    )


# --- the dataflow -----------------------------------------------------------------------------


def build_dataflow(
    settings: FlowSettings,
    signal: Signal,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
    outputs: Sequence[tuple[str, DynamicSink[StoredRange]]] = (),
) -> Dataflow:
    """Wire the dataflow of ``signal`` from validated settings (no I/O).

    ``batch_operators`` (callables or ``(name, callable)``) run after the configured ones;
    ``outputs`` are further ``(step_id, sink)`` outputs of the operators' result (e.g. the
    traces flow's Jaeger export), wired before the ClickHouse sink.
    """
    port = settings.metrics_port
    addr = settings.metrics_addr

    def on_start() -> None:
        if port is not None:
            serve_metrics(port, addr, settings.health)

    acks = RangeAcks()  # every range reaches the sink: the steps below are all 1:1 maps
    sink = clickhouse_sink(settings, signal, acks)

    def intents() -> Any:
        return sink.intent_log(sink.client())

    flow = Dataflow(settings.sink.flow)
    source = PartitionedKafkaSource(settings.kafka, settings.source, intents, on_start, acks)
    ranges = op.input("kafka", flow, source)
    decoded = op.map("decode", ranges, _Decode(signal))
    stored = op.map("dead_letters", decoded, _DeadLetters(settings))
    ops = resolve_operators(settings.operators, signal)
    for item in batch_operators or []:
        ops.append(item if isinstance(item, tuple) else (getattr(item, "__name__", "op"), item))
    for i, (name, fn) in enumerate(ops):
        step = re.sub(r"[^A-Za-z0-9_]", "_", f"op_{i}_{name}")
        stored = op.map(step, stored, _ApplyOperator(name, fn))
    for step_id, extra in outputs:
        op.output(step_id, stored, extra)
    op.output("clickhouse", stored, sink)
    # Logging is set up as the flow starts; records logged inside a step carry its step id.
    return instrument(flow, level=settings.log_level, fmt=settings.log_format)
