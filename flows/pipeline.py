"""The steps every "OTLP on Kafka → Arrow → operators → ClickHouse" flow shares.

``flows.traces`` and ``flows.logs`` are the same dataflow with a different :class:`Signal`
(decoder, Arrow schema, target table, counter unit)::

    kafka (PartitionedKafkaSource) → decode (OTLP → pa.RecordBatch, bad payloads set aside)
      → dead_letters (bad payloads to the DLQ topic, waits for Kafka's ack)
      → op_<i> (batch operators, Arrow in/out) → clickhouse (intent, then deduplicated insert)

One item is one Kafka offset range of one partition (``connectors.kafka_source``); decode and
the operators keep a range's rows in that range, so a replay after a crash re-inserts the
same rows under the same deduplication token (``connectors.clickhouse_sink``).

With ``tail_sampling`` (the first operator) a ``tail_sampling`` step keyed by partition sits
before the other operators: a range leaves it with the spans its records made decided. Its
state is snapshotted with the source's offset; the sink then stores synchronously and the
source resumes exactly at the snapshot (see :class:`_TailSampling`).

An operator that raises (``operators_on_error``) is called again on the range's rows, up to
``attempts`` times; then (``action: dlq``) the rows are bisected, each half tried once, down to
the single rows it fails on, which go to the DLQ with the error and the step id while the
others go on: the range still reaches the sink, so its offsets are confirmed. The bisection
is deterministic, so when the operator is (same rows → same exception), a replay after a crash
splits the range the same way and inserts the same rows under the same token. A transient
error that outlasts the attempts is not: its rows go to the DLQ, and a replay of a range not
yet stored may then keep them, so such rows can be both in the DLQ and in ClickHouse (never
in neither).

Building the dataflow does no I/O: clients are opened when bytewax builds the steps.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink

from connectors.clickhouse_schema import LOGS_SORT_KEY, TRACES_SORT_KEY
from connectors.clickhouse_sink import ClickHouseSink, StoredRange
from connectors.dlq import DeadLetter, DeadLetterError, DeadLetterProducer, row_letters
from connectors.kafka_source import KafkaRange, PartitionedKafkaSource, RangeAcks
from otelwax.logs import current_step, instrument
from otelwax.memory import (
    MMAP_THRESHOLD,
    SERVER_MMAP_THRESHOLD,
    freeze_startup_objects,
    start_release,
)
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from otelwax.telemetry import (
    ComponentMetrics,
    serve_flow_metrics,
    start_progress_log,
    stop_on_sigterm,
)

log = logging.getLogger(__name__)

__all__ = [
    "LOGS",
    "TRACES",
    "BatchOperator",
    "DeadLetterOutbox",
    "Signal",
    "build_dataflow",
    "clickhouse_sink",
    "range_steps",
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
    operators_on_error: Any
    metrics_port: int | None
    metrics_addr: str
    health: Any
    progress_s: float | None
    log_level: str
    log_format: str


# --- steps ------------------------------------------------------------------------------------


class _Decoded:
    """A range after decode: its rows and the payloads that failed."""

    __slots__ = ("batch", "letters", "records", "rng", "row_times_ms")

    def __init__(
        self,
        rng: KafkaRange,
        batch: pa.RecordBatch,
        letters: list[DeadLetter],
        row_times_ms: np.ndarray | None = None,
    ) -> None:
        self.rng = rng
        self.records = len(rng.values)
        self.batch = batch
        self.letters = letters
        self.row_times_ms = row_times_ms


class _Decode:
    """OTLP payloads of one range → one Arrow batch; undecodable payloads become letters.
    ``row_times``: also each row's Kafka record timestamp (for a stateful operator)."""

    def __init__(self, signal: Signal, row_times: bool = False) -> None:
        self._signal = signal
        self._row_times = row_times
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
        times = None
        if self._row_times:
            times = np.repeat(np.asarray(rng.timestamps, np.int64), res.rows_per_payload)
        out = _Decoded(rng, res.batch, letters, times)
        # bytewax runs each step on a whole batch of ranges: free the payloads now, not when
        # the next step has run on every range of it (letters keep the bad ones)
        rng.values = []
        return out


class DeadLetterOutbox:
    """The process's one DLQ producer, opened on first use and shared by every step.
    ``settings``: a flow's settings with ``kafka`` and ``dead_letters``."""

    def __init__(self, settings: Any) -> None:
        self._kafka = settings.kafka
        self.cfg = settings.dead_letters
        self._producer: DeadLetterProducer | None = None
        self._lock = threading.Lock()
        self._dropped = ComponentMetrics("dlq", "records")

    def send(self, letters: Sequence[DeadLetter], drop_reason: str) -> None:
        """Send ``letters`` and wait for Kafka's acks (or count them dropped when the DLQ is
        disabled); a DLQ that refuses them for good is logged once and stops the flow."""
        if not letters:
            return
        if not self.cfg.enabled:
            self._dropped.dropped(len(letters), drop_reason)
            return
        try:
            with self._lock:
                if self._producer is None:
                    self._producer = DeadLetterProducer(self._kafka, self.cfg)
                self._producer.send_and_wait(letters)
        except DeadLetterError as exc:
            log.error("dead letters cannot be written, stopping the flow: %s", exc)
            raise

    def reject(self, letters: Sequence[DeadLetter]) -> None:
        """Log each undecodable record (in the current step) and ``send`` them."""
        for letter in letters:
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
        self.send(letters, "undecodable")


class _DeadLetters:
    """Sends a range's bad payloads to the DLQ and waits."""

    def __init__(self, outbox: DeadLetterOutbox) -> None:
        self._outbox = outbox

    def __call__(self, d: _Decoded) -> StoredRange:
        self._outbox.reject(d.letters)
        r = d.rng
        return StoredRange(
            r.topic,
            r.partition,
            r.first,
            r.last,
            d.batch,
            d.records,
            r.replay,
            r.first_timestamp_ms,
            r.topic_id,
            row_times_ms=d.row_times_ms,
        )


class _TailSampling:
    """``stateful_map`` mapper of the tail sampler (one per Kafka partition, the key): each
    range leaves with the spans its records made decided (see ``operators.tail_sampling``),
    under its own token. The sampler is the step's state, snapshotted by bytewax with the
    source's offset; the source resumes exactly there (``stateful``), so a replay feeds the
    same ranges to the same state and re-creates each range's insert."""

    def __init__(self, op: Any) -> None:
        self._op = op  # operators.registry.BatchOperator (a fresh kernel per partition)
        self._metrics = op.metrics
        self._traces = ComponentMetrics(f"operator.{op.name}", "traces")
        self._early = ComponentMetrics(f"operator.{op.name}", "traces_decided_early")

    def __call__(self, state: Any, r: StoredRange) -> tuple[Any, StoredRange]:
        if state is None:
            state = self._op.new_kernel()
        elif state.cfg != self._op.kernel.cfg:  # restored from a run with another config
            state.configure(self._op.kernel.cfg)
        n = r.batch.num_rows
        self._metrics.received(n)
        out = state.process(r.batch, r.row_times_ms)
        r.batch = _one_batch(out.to_batches(), r.batch.schema)
        r.row_times_ms = None
        self._metrics.sent(r.batch.num_rows)
        self._metrics.dropped(state.dropped_rows, "sampled")
        self._metrics.dropped(state.overflow_rows, "tail_overflow")
        st = state.stats
        self._traces.sent(st["kept"])
        self._traces.dropped(st["sampled"], "sampled")
        self._traces.dropped(st["overflow"], "tail_overflow")
        self._early.sent(st["early"])  # also counted kept or sampled out above
        return state, r


class _ApplyOperator:
    """One batch operator on a range's rows, counted once per range as ``operator.<name>``
    (rows it fails on: failed and dropped{operator_error}); a failure is retried, then
    bisected to the poison rows (see the module doc)."""

    def __init__(
        self, name: str, step: str, fn: BatchOperator, policy: Any, outbox: DeadLetterOutbox
    ) -> None:
        self._name = name
        self._step = step
        self._fn = getattr(fn, "apply", fn)  # operators.registry.BatchOperator: uncounted
        self._metrics = getattr(fn, "metrics", None) or ComponentMetrics(f"operator.{name}", "rows")
        self._drop_reason = getattr(fn, "drop_reason", "filtered")
        self._policy = policy
        self._outbox = outbox

    def _call(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        out = self._fn(batch)
        if isinstance(out, pa.Table):
            out = _one_batch([out], out.schema)
        return out

    def _bisect(
        self,
        batch: pa.RecordBatch,
        exc: Exception,
        good: list[pa.RecordBatch],
        bad: list[tuple[pa.RecordBatch, Exception]],
    ) -> None:
        """``batch`` failed with ``exc``: keep the outputs of the halves that pass, recurse
        into those that fail, down to single rows (in row order)."""
        if batch.num_rows <= 1:
            bad.append((batch, exc))
            return
        half = batch.num_rows // 2
        for part in (batch.slice(0, half), batch.slice(half)):
            try:
                good.append(self._call(part))
            except Exception as e:
                self._bisect(part, e, good, bad)

    def __call__(self, r: StoredRange) -> StoredRange:
        n = r.batch.num_rows
        self._metrics.received(n)
        errors: list[Exception] = []
        out = None
        while out is None and len(errors) < self._policy.attempts:
            try:
                out = self._call(r.batch)
            except Exception as exc:
                errors.append(exc)
        if out is None and self._policy.action == "fail":
            self._metrics.failed(n)
            raise errors[-1]
        n_bad = 0
        if out is None:
            good: list[pa.RecordBatch] = []
            bad: list[tuple[pa.RecordBatch, Exception]] = []
            self._bisect(r.batch, errors[-1], good, bad)
            out = _one_batch(good, good[0].schema if good else r.batch.schema)
            n_bad = self._set_aside(r, bad, len(errors))
        elif errors:
            log.warning(
                "%s[%d]@%d-%d: operator %s succeeded on attempt %d after: %s",
                r.topic, r.partition, r.first, r.last, self._name, len(errors) + 1, errors[-1],
            )  # fmt: skip
        self._metrics.sent(out.num_rows)
        self._metrics.dropped(max(n - n_bad - out.num_rows, 0), self._drop_reason)
        r.batch = out
        return r

    def _set_aside(
        self, r: StoredRange, bad: list[tuple[pa.RecordBatch, Exception]], attempts: int
    ) -> int:
        """Log, count and dead-letter the rows the operator failed on; returns their count."""
        n_bad = sum(b.num_rows for b, _ in bad)
        if not n_bad:
            return 0
        step = current_step() or self._step
        by_error: dict[str, list[pa.RecordBatch]] = {}
        for rows, exc in bad:
            by_error.setdefault(str(exc), []).append(rows)
        letters = []
        for error, parts in by_error.items():
            rows = _one_batch(parts, parts[0].schema)
            letters += row_letters(
                r.topic, r.partition, r.first, r.last, rows, error, step,
                self._outbox.cfg.max_message_bytes,
            )  # fmt: skip
        where = "sent to the DLQ" if self._outbox.cfg.enabled else "dropped (DLQ disabled)"
        first_error = next(iter(by_error))
        log.warning(
            "%s[%d]@%d-%d: operator %s failed on %d of %d row(s) after %d attempt(s), %s: %s",
            r.topic, r.partition, r.first, r.last, self._name, n_bad, r.batch.num_rows,
            attempts, where, first_error,
            extra={"topic": r.topic, "partition": r.partition, "offset": r.first,
                   "reason": "operator_error"},
        )  # fmt: skip
        self._outbox.send(letters, "operator_error")
        self._metrics.failed(n_bad)
        self._metrics.dropped(n_bad, "operator_error")
        return n_bad


def _one_batch(parts: Sequence[pa.RecordBatch | pa.Table], schema: pa.Schema) -> pa.RecordBatch:
    """Concatenate batches (or tables) into one record batch of ``schema``."""
    table = pa.Table.from_batches([], schema=schema)
    if parts:
        tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
        table = pa.concat_tables(tables)
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=schema)


def resolve_operators(
    specs: Sequence[dict[str, Any]], signal: Signal = TRACES
) -> list[tuple[str, BatchOperator]]:
    """Turn ``operators:`` config entries into callables via ``operators.registry``.

    A stateful operator (``tail_sampling``, first when present) is returned too; the
    dataflow runs it as a snapshotted per-partition step (:class:`_TailSampling`).
    """
    if not specs:
        return []
    from operators import registry  # owned by the operators component

    ops = registry.build_pipeline(registry.parse_specs(list(specs)), signal.name)
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


def range_steps(
    settings: FlowSettings,
    signal: Signal,
    batch_operators: Sequence[BatchOperator | tuple[str, BatchOperator]] | None = None,
    ops: list[tuple[str, Any]] | None = None,
    row_times: bool = False,
) -> list[tuple[str, Callable[[Any], Any]]]:
    """The 1:1 steps from a :class:`KafkaRange` to the :class:`StoredRange` the sink takes,
    as ``(step_id, fn)``: decode, dead letters, then each operator (``ops``, default the
    configured ones, then ``batch_operators``). The flow maps them one by one (a stateful
    tail_sampling step goes after the first two); ``otelwax replay`` composes them, and
    refuses a flow with a stateful operator (its output depends on what came before)."""
    outbox = DeadLetterOutbox(settings)
    steps: list[tuple[str, Callable[[Any], Any]]] = [
        ("decode", _Decode(signal, row_times=row_times)),
        ("dead_letters", _DeadLetters(outbox)),
    ]
    if ops is None:
        ops = resolve_operators(settings.operators, signal)
        if any(getattr(fn, "stateful", False) for _, fn in ops):
            raise ValueError(
                f"{signal.name} has a stateful operator (tail_sampling), whose output depends "
                "on the records before a range: it cannot be replayed range by range"
            )
    ops = list(ops)
    for item in batch_operators or []:
        ops.append(item if isinstance(item, tuple) else (getattr(item, "__name__", "op"), item))
    policy = settings.operators_on_error
    for i, (name, fn) in enumerate(ops):
        step = re.sub(r"[^A-Za-z0-9_]", "_", f"op_{i}_{name}")
        steps.append((step, _ApplyOperator(name, step, fn, policy, outbox)))
    return steps


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
        stop_on_sigterm()
        start_progress_log(settings.progress_s)
        server = settings.clickhouse.mode == "server"
        start_release(
            settings.source.release_memory_s, SERVER_MMAP_THRESHOLD if server else MMAP_THRESHOLD
        )
        freeze_startup_objects()
        if port is not None:
            serve_flow_metrics(port, addr, settings.health)

    ops = resolve_operators(settings.operators, signal)
    tail = ops.pop(0)[1] if ops and getattr(ops[0][1], "stateful", False) else None
    # Every range reaches the sink: the steps below are all 1:1 maps. With a stateful step the
    # sink stores each batch before the epoch can close (no overlap), so a snapshot's offset
    # and the step's state agree and nothing before the offset is unstored.
    acks = None if tail is not None else RangeAcks()
    sink = clickhouse_sink(settings, signal, acks)

    def intents() -> Any:
        return sink.intent_log(sink.client())

    flow = Dataflow(settings.sink.flow)
    src = settings.source
    if src.group_id is None:  # offsets are committed for lag tools under the flow's name
        src = src.model_copy(update={"group_id": settings.sink.flow})
    source = PartitionedKafkaSource(
        settings.kafka, src, intents, on_start, acks, stateful=tail is not None
    )
    ranges = op.input("kafka", flow, source)
    steps = range_steps(settings, signal, batch_operators, ops, row_times=tail is not None)
    stored: Any = ranges
    for i, (step, fn) in enumerate(steps):
        stored = op.map(step, stored, fn)
        if i == 1 and tail is not None:  # after decode and dead letters: the first operator
            keyed = op.key_on("by_partition", stored, lambda r: f"{r.topic}:{r.partition}")
            sampled = op.stateful_map("tail_sampling", keyed, _TailSampling(tail))
            stored = op.key_rm("tail_sampled", sampled)
    for step_id, extra in outputs:
        op.output(step_id, stored, extra)
    op.output("clickhouse", stored, sink)
    # Logging is set up as the flow starts; records logged inside a step carry its step id.
    return instrument(flow, level=settings.log_level, fmt=settings.log_format)
