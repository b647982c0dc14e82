"""The traces dataflow: Kafka ``otlp_spans`` → Arrow → operators → ClickHouse, exactly once.

    python -m bytewax.run flows.traces                       # config from $OTELWAX_CONFIG
    python -m bytewax.run "flows.traces:build('configs/traces.yaml')" -w 2
    otelwax flow traces -c configs/traces.yaml               # adds recovery/cluster args

Steps (one item = one Kafka offset range of one partition, see ``connectors.kafka_source``):

    kafka (PartitionedKafkaSource) → decode (OTLP → pa.RecordBatch, bad payloads set aside)
      → dead_letters (bad payloads to the DLQ topic, waits for Kafka's ack)
      → op_<i> (batch operators, Arrow in/out) → clickhouse (intent, then deduplicated insert)

Importing this module does no network I/O: ``flow`` is built from the config file named by
``$OTELWAX_CONFIG`` (or defaults); clients are opened when bytewax builds the steps.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors.clickhouse_sink import ClickHouseSink, StoredRange
from connectors.dlq import DeadLetter, DeadLetterProducer
from connectors.kafka_source import KafkaRange, PartitionedKafkaSource
from flows.settings import TracesFlowSettings, load_settings
from otelwax.telemetry import ComponentMetrics, serve_metrics

log = logging.getLogger(__name__)

__all__ = ["BatchOperator", "build", "build_from_settings", "flow"]

BatchOperator = Callable[[pa.RecordBatch], pa.RecordBatch]


class _Decoded:
    """A range after decode: its rows and the payloads that failed."""

    __slots__ = ("batch", "letters", "rng")

    def __init__(self, rng: KafkaRange, batch: pa.RecordBatch, letters: list[DeadLetter]) -> None:
        self.rng = rng
        self.batch = batch
        self.letters = letters


class _Decode:
    def __init__(self) -> None:
        self._spans = ComponentMetrics("decode", "spans")
        self._records = ComponentMetrics("decode", "records")

    def __call__(self, rng: KafkaRange) -> _Decoded:
        from otelwax.codec import decode_traces

        self._records.received(len(rng.values))
        res = decode_traces(rng.values)
        letters = [
            DeadLetter(rng.topic, rng.partition, rng.offsets[i], rng.values[i], reason)
            for i, reason in res.errors
        ]
        if letters:
            self._records.failed(len(letters))
        self._records.sent(len(rng.values) - len(letters))
        self._spans.sent(res.batch.num_rows)
        return _Decoded(rng, res.batch, letters)


class _DeadLetters:
    """Sends a range's bad payloads to the DLQ and waits; one producer per process, lazily."""

    def __init__(self, settings: TracesFlowSettings) -> None:
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


def resolve_operators(specs: Sequence[dict[str, Any]]) -> list[tuple[str, BatchOperator]]:
    """Turn ``operators:`` config entries into callables via ``operators.registry``.

    Only stateless operators are allowed here: a stateful one (tail sampling) would move rows
    between Kafka ranges, so a replayed range could no longer reproduce its insert.
    """
    if not specs:
        return []
    from operators import registry  # owned by the operators component

    ops = registry.build_pipeline(registry.parse_specs(list(specs)), "traces")
    stateful = [o.name for o in ops if getattr(o, "stateful", False)]
    if stateful:
        raise ValueError(
            f"operators {stateful}: stateful operators are not supported in flows.traces "
            "(exactly-once needs each Kafka range's rows to stay in that range)"
        )
    return [(o.name, o) for o in ops]


def build_from_settings(
    settings: TracesFlowSettings,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    port = settings.metrics_port
    addr = settings.metrics_addr

    def on_start() -> None:
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=settings.log_level,
                format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
            )
        if port is not None:
            serve_metrics(port, addr)

    sink = ClickHouseSink(settings.clickhouse, settings.sink)

    def intents() -> Any:
        return sink.intent_log(sink.client())

    flow = Dataflow(settings.sink.flow)
    source = PartitionedKafkaSource(settings.kafka, settings.source, intents, on_start)
    ranges = op.input("kafka", flow, source)
    decoded = op.map("decode", ranges, _Decode())
    stored = op.map("dead_letters", decoded, _DeadLetters(settings))
    ops: list[tuple[str, BatchOperator]] = resolve_operators(settings.operators)
    for item in batch_operators or []:
        ops.append(item if isinstance(item, tuple) else (getattr(item, "__name__", "op"), item))
    for i, (name, fn) in enumerate(ops):
        step = re.sub(r"[^A-Za-z0-9_]", "_", f"op_{i}_{name}")
        stored = op.map(step, stored, _ApplyOperator(name, fn))
    if settings.jaeger.enabled:
        from connectors.otlp_export import JaegerSink

        op.output("jaeger", stored, JaegerSink(settings.jaeger))
    op.output("clickhouse", stored, sink)
    return flow


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
