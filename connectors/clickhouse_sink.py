"""bytewax sink that stores decoded Kafka ranges in ClickHouse exactly once.

Protocol (per worker, items in the order their source emitted them):

1. **Intent.** Before inserting, the sink appends ``(flow, topic, partition, first, last,
   target table, group)`` for every new range of the batch to a small MergeTree table
   (``otelwax_intents``) in one insert. Ranges the source re-cut from recorded intents
   (``replay=True``) are not recorded again.
2. **Insert** each range's rows with ``insert_deduplication_token = topic:partition:first:last``
   into a MergeTree table with ``non_replicated_deduplication_window``: if the same range was
   stored before a crash, ClickHouse skips the block. The next intent group is recorded only
   after every insert of the previous group succeeded, so all ranges before the latest group
   of a partition are known to be stored (the source starts there when that is past its
   snapshot).
3. On restart the source reads the intents at/after its resume offset and re-cuts the replayed
   records at exactly those boundaries, so the replay carries the same tokens.

Servers without insert tokens (ClickHouse < 22.2, e.g. Debian's 18.16): before inserting a
replayed range, or retrying a failed insert, the sink asks which ``(TraceId, SpanId)`` of the
batch are already in the table and inserts only the missing rows. That is exact because the
rows of one range are written by one INSERT, and it costs one query per replayed range only.

ClickHouse unavailable: every call retries with exponential backoff and a circuit breaker and
*blocks* the worker (which holds its Kafka partitions back); nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import Field

from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = [
    "ClickHouseSink",
    "ClickHouseSinkConfig",
    "IntentLog",
    "RetryConfig",
    "StoredRange",
]

T = TypeVar("T")

INTENT_SCHEMA = pa.schema(
    [
        pa.field("flow", pa.string(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.uint32(), nullable=False),
        pa.field("first_offset", pa.uint64(), nullable=False),
        pa.field("last_offset", pa.uint64(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("group_id", pa.uint64(), nullable=False),
        pa.field("records", pa.uint32(), nullable=False),
    ]
)


class RetryConfig(StrictModel):
    """Backoff between attempts and a circuit breaker; the sink never gives up on a batch."""

    attempts: int = Field(3, gt=0, description="tries per round before the breaker counts")
    initial_backoff_s: float = Field(0.2, gt=0, le=60)
    max_backoff_s: float = Field(5.0, gt=0, le=300)
    breaker_failures: int = Field(5, gt=0, description="failed rounds that open the breaker")
    breaker_open_s: float = Field(30.0, gt=0, le=3600, description="how long it stays open")


class ClickHouseSinkConfig(StrictModel):
    """What the traces sink writes and how it records intents."""

    table: str = Field("otel_traces", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    intents_table: str = Field("otelwax_intents", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    flow: str = Field("traces", min_length=1, description="namespace of this flow's intents")
    create_tables: bool = Field(
        True, description="create the data table (and its lookup view) if missing at start"
    )
    dedup: str = Field(
        "auto",
        pattern=r"^(auto|token|lookup)$",
        description="auto: tokens when the server has them, else look up existing rows",
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)


# --- retries ----------------------------------------------------------------------------------


class _Blocking:
    """Retry a call until it succeeds: backoff inside a round, breaker between rounds."""

    def __init__(self, cfg: RetryConfig, what: str, metrics: ComponentMetrics) -> None:
        self._cfg = cfg
        self._what = what
        self._metrics = metrics
        self._failed_rounds = 0

    def call(self, fn: Callable[[], T], on_failure: Callable[[], None] | None = None) -> T:
        cfg = self._cfg
        delay = cfg.initial_backoff_s
        attempt = 0
        while True:
            try:
                out = fn()
                self._failed_rounds = 0
                return out
            except Exception as exc:
                attempt += 1
                self._metrics.failed()
                if on_failure is not None:
                    on_failure()
                if attempt % cfg.attempts == 0:
                    self._failed_rounds += 1
                    if self._failed_rounds >= cfg.breaker_failures:
                        log.error(
                            "%s failed %d times (%s); circuit open for %.0f s, holding input",
                            self._what,
                            attempt,
                            exc,
                            cfg.breaker_open_s,
                        )
                        time.sleep(cfg.breaker_open_s)
                        self._failed_rounds = cfg.breaker_failures - 1  # half-open: one round
                        delay = cfg.initial_backoff_s
                        continue
                log.warning(
                    "%s failed (attempt %d): %s; retry in %.2f s", self._what, attempt, exc, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, cfg.max_backoff_s)


# --- intents ----------------------------------------------------------------------------------


def _q(name: str) -> str:
    return "`" + name.replace("`", "") + "`"


def intents_ddl(table: str) -> str:
    """DDL of the intent table (works on ClickHouse 18.16 and current versions)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_q(table)} (flow String, topic String, "
        "kafka_partition UInt32, first_offset UInt64, last_offset UInt64, target String, "
        "group_id UInt64, records UInt32, written_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree() PARTITION BY toYYYYMM(written_at) "
        "ORDER BY (flow, topic, kafka_partition, first_offset)"
    )


@dataclass
class IntentLog:
    """Read/write access to the intent table for one flow (thread-safe via the client)."""

    client: Any
    table: str
    flow: str
    retry: RetryConfig
    metrics: ComponentMetrics = field(default_factory=lambda: ComponentMetrics("intents", "ranges"))

    def __post_init__(self) -> None:
        self._blocking = _Blocking(self.retry, f"clickhouse intents ({self.table})", self.metrics)

    def create(self) -> None:
        self._blocking.call(lambda: self.client.execute(intents_ddl(self.table)))

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self._blocking.call(lambda: self.client.execute(sql, params)) or [])

    def ranges_from(self, topic: str, partition: int, offset: int) -> list[tuple[int, int]]:
        rows = self._rows(
            f"SELECT first_offset, last_offset FROM {_q(self.table)} "
            "WHERE flow = %(flow)s AND topic = %(topic)s AND kafka_partition = %(p)s "
            "AND last_offset >= %(off)s GROUP BY first_offset, last_offset "
            "ORDER BY first_offset, last_offset",
            {"flow": self.flow, "topic": topic, "p": partition, "off": max(offset, 0)},
        )
        return [(int(a), int(b)) for a, b in rows]

    def pending_from(self, topic: str, partition: int) -> int | None:
        rows = self._rows(
            f"SELECT count(), min(first_offset) FROM {_q(self.table)} "
            "WHERE flow = %(flow)s AND topic = %(topic)s AND kafka_partition = %(p)s "
            f"AND group_id = (SELECT argMax(group_id, first_offset) FROM {_q(self.table)} "
            "WHERE flow = %(flow)s AND topic = %(topic)s AND kafka_partition = %(p)s)",
            {"flow": self.flow, "topic": topic, "p": partition},
        )
        if not rows or not int(rows[0][0]):
            return None
        return int(rows[0][1])

    def record(self, ranges: Sequence[StoredRange], target: str) -> None:
        if not ranges:
            return
        group = time.time_ns()
        batch = pa.record_batch(
            [
                pa.array([self.flow] * len(ranges), pa.string()),
                pa.array([r.topic for r in ranges], pa.string()),
                pa.array([r.partition for r in ranges], pa.uint32()),
                pa.array([r.first for r in ranges], pa.uint64()),
                pa.array([r.last for r in ranges], pa.uint64()),
                pa.array([target] * len(ranges), pa.string()),
                pa.array([group] * len(ranges), pa.uint64()),
                pa.array([r.records for r in ranges], pa.uint32()),
            ],
            schema=INTENT_SCHEMA,
        )
        self._blocking.call(lambda: self.client.insert_arrow(self.table, batch))
        self.metrics.sent(len(ranges))


# --- the sink ---------------------------------------------------------------------------------


@dataclass(slots=True)
class StoredRange:
    """What reaches the sink: one Kafka range's rows after decode and operators."""

    topic: str
    partition: int
    first: int
    last: int
    batch: pa.RecordBatch
    records: int = 0
    replay: bool = False
    first_timestamp_ms: int = 0

    @property
    def token(self) -> str:
        return f"{self.topic}:{self.partition}:{self.first}:{self.last}"


class _ClientHolder:
    """One client per process, shared by all worker threads (chdb allows one session)."""

    _lock = threading.Lock()
    _clients: dict[str, Any] = {}

    @classmethod
    def get(cls, key: str, factory: Callable[[], Any]) -> Any:
        with cls._lock:
            c = cls._clients.get(key)
            if c is None:
                c = cls._clients[key] = factory()
            return c


class _SinkPartition(StatelessSinkPartition[StoredRange]):
    def __init__(self, sink: ClickHouseSink, worker_index: int) -> None:
        self._cfg = sink.config
        self._client = sink.client()
        self._intents = sink.intent_log(self._client)
        self._metrics = ComponentMetrics("clickhouse_sink", "rows")
        self._latency = self._metrics.latency("insert")
        self._e2e = self._metrics.latency("event_to_stored")
        self._blocking = _Blocking(
            self._cfg.retry, f"clickhouse insert ({self._cfg.table})", self._metrics
        )
        mode = self._cfg.dedup
        if mode == "auto":
            mode = "token" if self._client.supports_dedup_token() else "lookup"
        self._mode = mode
        self._columns: list[str] | None = None
        self._worker = worker_index

    def _table_columns(self) -> list[str]:
        if self._columns is None:
            cols = self._blocking.call(lambda: self._client.table_columns(self._cfg.table))
            self._columns = [c[0] if isinstance(c, tuple | list) else c for c in cols]
        return self._columns

    def _missing_rows(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Rows of ``batch`` whose (TraceId, SpanId) is not in the table yet (lookup mode)."""
        span_ids = pc.unique(batch.column("SpanId")).to_pylist()
        rows = self._client.execute(
            f"SELECT TraceId, SpanId FROM {_q(self._cfg.table)} WHERE SpanId IN %(ids)s",
            {"ids": tuple(span_ids)},
        )
        if not rows:
            return batch
        have = pa.array([f"{t}:{s}" for t, s in rows], pa.string())
        keys = pc.binary_join_element_wise(batch.column("TraceId"), batch.column("SpanId"), ":")
        keep = pc.invert(pc.is_in(keys, value_set=have))
        return batch.filter(keep)

    def _insert(self, r: StoredRange) -> int:
        batch = r.batch
        if batch.num_rows == 0:
            return 0
        state = {"check": r.replay}

        def attempt() -> int:
            b = batch
            if self._mode == "token":
                return int(self._client.insert_arrow(self._cfg.table, b, dedup_token=r.token))
            if state["check"]:
                b = self._missing_rows(b)
                if b.num_rows < batch.num_rows:
                    log.info(
                        "range %s: %d of %d rows already stored, inserting the rest",
                        r.token,
                        batch.num_rows - b.num_rows,
                        batch.num_rows,
                    )
                if b.num_rows == 0:
                    return 0
            return int(self._client.insert_arrow(self._cfg.table, b))

        def failed() -> None:
            state["check"] = True  # a failed insert may still have been applied

        with self._latency.time():
            n = self._blocking.call(attempt, failed)
        return n

    def write_batch(self, items: list[StoredRange]) -> None:
        new = [r for r in items if not r.replay]
        self._intents.record(new, self._cfg.table)
        for r in items:
            rows = r.batch.num_rows
            self._metrics.received(rows)
            self._insert(r)
            # Rows skipped by ClickHouse's dedup are stored (by the earlier attempt).
            self._metrics.sent(rows)
            if r.first_timestamp_ms > 0:
                self._e2e.observe(max(0.0, time.time() - r.first_timestamp_ms / 1000))

    def close(self) -> None:
        return


@dataclass
class ClickHouseSink(DynamicSink[StoredRange]):
    """Exactly-once ClickHouse sink for :class:`StoredRange` items (one per Kafka range).

    ``connection`` is ``connectors.clickhouse.ClickHouseConfig``; the client is opened in
    ``build`` and shared by the worker threads of the process.
    """

    connection: Any
    config: ClickHouseSinkConfig = field(default_factory=ClickHouseSinkConfig)

    def client(self) -> Any:
        from connectors import clickhouse

        key = repr(self.connection)

        def _open() -> Any:
            c = clickhouse.open_client(self.connection)
            self._prepare(c)
            return c

        return _ClientHolder.get(key, _open)

    def _prepare(self, client: Any) -> None:
        """Create the intent table (and the data table when configured); check the columns."""
        log_ = self.intent_log(client)
        log_.create()
        if self.config.create_tables:
            from connectors import clickhouse_schema

            clickhouse_schema.ensure_traces_table(client, self.connection, self.config.table)

    def intent_log(self, client: Any) -> IntentLog:
        return IntentLog(client, self.config.intents_table, self.config.flow, self.config.retry)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(self, worker_index)
