"""bytewax sink that stores decoded Kafka ranges in ClickHouse exactly once.

Protocol (per worker, items in the order their source emitted them):

1. **Intent.** Before inserting, the sink appends ``(flow, topic, topic id, partition, first,
   last, target table, group)`` for every new range of the batch to a small MergeTree table
   (``otelwax_intents``, see ``connectors.clickhouse_intents``) in one insert. Ranges the
   source re-cut from recorded intents (``replay=True``) are not recorded again.
2. **Insert** each range's rows with ``insert_deduplication_token =
   topic:partition:first:last[@topic id]`` into a MergeTree table with a deduplication window:
   if the same range was being stored at a crash, ClickHouse skips the block. The next intent
   group is recorded only after every insert of the previous group succeeded, so all ranges
   before the latest group of a partition are known to be stored (the source starts there when
   that is past its snapshot).
3. **Mark** the batch's ranges stored once their inserts returned: with overlap, in the
   insert of the next batch's intents (before any insert of that batch) when one comes within
   ``MARK_DELAY_S``, else in an insert of their own; at close in any case. A replayed range
   with a mark is not inserted again: the window counts inserts, not time, and a quiet
   partition's token is long forgotten when its range is replayed. The window only covers a
   crash between the insert and the mark, so it must exceed the inserts the table receives
   from all writers until a restarted flow replays (the default 1000 does for minutes of
   restart at a few inserts per second); the sink checks it at start (``min_dedup_window``).
4. On restart the source reads the intents at/after its resume offset and re-cuts the replayed
   records at exactly those boundaries, so the replay carries the same tokens.

Servers without insert tokens (ClickHouse < 22.2, e.g. Debian's 18.16), traces table only:
before inserting a replayed range, or retrying a failed insert, the sink asks which
``(TraceId, SpanId)`` of the batch are already in the table and inserts only the missing rows.
That is exact because the rows of one range are written by one INSERT, and it costs one query
per replayed range only. Other tables (logs have no unique row key) need insert tokens.

ClickHouse unavailable: every call retries with exponential backoff and a circuit breaker and
*blocks* the worker (which holds its Kafka partitions back); nothing is dropped.

Overlap (``overlap: true``, with a source sharing its ``RangeAcks``): a background thread per
worker runs steps 1 and 2 in order while the worker decodes the next ranges (chdb and the native
decoder both release the GIL); ``write_batch`` returns once the writer has taken the batch (one
being stored, one handed over). The source's snapshot then stays at the oldest range not yet
stored, so an epoch that closes before its inserts finished is replayed, under the same
tokens, after a crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import Field

from connectors.clickhouse_client import table_engine
from connectors.clickhouse_intents import Blocking, IntentLog, RangeRef, check_dedup_window
from connectors.clickhouse_migrate import MIGRATE_HINT
from connectors.clickhouse_writer import OrderedWriter
from connectors.kafka_source import range_token
from otelwax.logs import carry_step
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = [
    "ClickHouseSink",
    "ClickHouseSinkConfig",
    "IntentLog",
    "StoredRange",
    "StoredRows",
]

T = TypeVar("T")

class ClickHouseSinkConfig(StrictModel):
    """How the sink records intents and deduplicates (connection, retries and the circuit
    breaker come from ``connectors.clickhouse.ClickHouseConfig``)."""

    intents_table: str = Field("otelwax_intents", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    flow: str = Field("traces", min_length=1, description="namespace of this flow's intents")
    intents_ttl_days: int = Field(
        30, ge=0, description="drop intents after N days (>= Kafka retention; 0 = keep)"
    )
    dedup: Literal["auto", "token", "lookup"] = Field(
        "auto",
        description="token: insert tokens (native, or emulated by the client on 18.16 tables "
        "with InsertToken); lookup (traces only): skip rows whose (TraceId, SpanId) exist; "
        "auto: token when the table supports it, else lookup",
    )
    presort: bool = Field(
        True,
        description="sort each range by the table's ORDER BY key before the insert (on the "
        "worker thread, so ClickHouse skips its own sort)",
    )
    min_dedup_window: int = Field(
        100,
        ge=0,
        description="warn at start when a target table remembers fewer insert tokens (its "
        "non_replicated_/replicated_deduplication_window); a table with none is refused",
    )
    overlap: bool = Field(
        True,
        description="insert on a background thread while the worker decodes the next ranges "
        "(used when the flow's source tracks stored ranges; off: each batch is stored before "
        "the worker goes on)",
    )
    serve_queries: bool = Field(
        True,
        description="embedded chdb: answer `otelwax query --flow URL` (/query/NAME) on the "
        "flow's metrics port, since no other process can open the folder while the flow runs",
    )


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
    topic_id: str = ""
    tables: dict[str, pa.RecordBatch] | None = None
    """Rows per table for a sink with ``routes`` (the metrics tables); ``batch`` is unused."""
    row_times_ms: Any = None
    """Kafka timestamp of each row's record (numpy int64), for a stateful operator's clock;
    None once it has run (the sink ignores it)."""

    @property
    def token(self) -> str:
        return range_token(self.topic, self.partition, self.first, self.last, self.topic_id)

    @property
    def num_rows(self) -> int:
        if self.tables is None:
            return self.batch.num_rows
        return sum(b.num_rows for b in self.tables.values())


@dataclass(slots=True)
class StoredRows:
    """Rows not tied to one Kafka range (a closed event-time window), each table inserted
    under ``token/table``: the token identifies exactly these rows, so an identical replay is
    skipped by ClickHouse. No intents: what to replay is the flow's snapshot's business."""

    token: str
    tables: dict[str, pa.RecordBatch]


# Engines that keep no row order (a Null table only feeds its materialized views): presorting
# for them is wasted work.
UNORDERED_ENGINES = frozenset({"Null"})
# A batch's stored marks go with the next batch's intents (one insert, one MergeTree part per
# range instead of two) when it comes within this delay; else on their own. A crash before
# they are written replays ranges stored under tokens the dedup window still holds.
MARK_DELAY_S = 0.5
NOT_REACHABLE = "clickhouse not reachable (%s); retrying in %.1f s (is it up? see clickhouse.*)"


def _key(r: StoredRange) -> tuple[str, int, int, int]:
    return (r.topic, r.partition, r.first, r.last)


class _OneThreadClient:
    """Runs every call of a client on one dedicated thread (used for embedded chdb).

    chdb keeps per-session state that is not safe to drive from several bytewax worker
    threads (a GIL deadlock was observed with two workers calling it directly); funnelling
    the calls through one thread keeps ``-w N`` usable. Waiting callers release the GIL.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chdb")
        self._client = self._pool.submit(factory).result()
        self.legacy = getattr(self._client, "legacy", False)

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(carry_step(fn), *args, **kwargs).result()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._run(self._client.execute, sql, params)

    def insert_arrow(self, table: str, batch: pa.RecordBatch, **kw: Any) -> int:
        return self._run(self._client.insert_arrow, table, batch, **kw)

    def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        self._run(self._client.insert_rows, table, rows)

    def table_columns(self, table: str) -> dict[str, str]:
        return self._run(self._client.table_columns, table)

    def supports_dedup_token(self, table: str | None = None) -> bool:
        return self._run(self._client.supports_dedup_token, table)

    def close(self) -> None:
        try:
            self._run(self._client.close)
        finally:
            self._pool.shutdown(wait=True)


class _ClientHolder:
    """One client per process and connection, shared by the worker threads.

    Sink partitions hold references; the last one to close closes the client (chdb must be
    closed before the interpreter exits, or its exit handlers may crash the process).
    """

    _lock = threading.Lock()
    _clients: dict[str, Any] = {}
    _refs: dict[str, int] = {}

    @classmethod
    def get(cls, key: str, factory: Callable[[], Any], hold: bool = False) -> Any:
        with cls._lock:
            c = cls._clients.get(key)
            if c is None:
                c = cls._clients[key] = factory()
            if hold:
                cls._refs[key] = cls._refs.get(key, 0) + 1
            return c

    @classmethod
    def release(cls, key: str) -> None:
        with cls._lock:
            cls._refs[key] = cls._refs.get(key, 0) - 1
            if cls._refs[key] <= 0 and key in cls._clients:
                cls._clients.pop(key).close()


class _SinkPartition(StatelessSinkPartition[StoredRange | StoredRows]):
    def __init__(self, sink: ClickHouseSink, worker_index: int) -> None:
        from connectors.clickhouse_schema import quote_ident

        conn = sink.connection
        self._cfg = sink.config
        self._db = conn.database
        self._name = sink.table_name
        self._table = f"{conn.database}.{self._name}"
        self._qt = f"{quote_ident(conn.database)}.{quote_ident(self._name)}"
        self._key = sink.client_key()
        self._client = sink.client(hold=True)
        self._intents = sink.intent_log(self._client)
        self._metrics = ComponentMetrics("clickhouse_sink", "rows")
        self._latency = self._metrics.latency("insert")
        self._e2e = self._metrics.latency("event_to_stored")
        self._blocking = Blocking(conn, f"clickhouse insert ({self._table})", self._metrics)
        mode = self._cfg.dedup
        if not sink.lookup_dedup:
            if mode == "lookup":
                raise ValueError(f"{self._table}: dedup by lookup works for the traces table only")
            mode = "token"  # client() checked that the table supports insert tokens
        elif mode == "auto":
            supported = self._blocking.call(lambda: self._client.supports_dedup_token(self._table))
            mode = "token" if supported else "lookup"
        self._mode = mode
        self._sort_keys, presort = [], ""
        if self._cfg.presort and sink.sort_key and sink.routes is None:
            engine = self._blocking.call(lambda: table_engine(self._client, self._db, self._name))
            if engine in UNORDERED_ENGINES:  # the sort copies every row: ~40 % of the CPU
                presort = f"; {self._table} is a {engine} table: rows are not presorted"
            else:
                self._sort_keys = [(k, "ascending") for k in sink.sort_key]
        self._acks = sink.acks
        self._writer = None
        self._unmarked: list[RangeRef] = []  # stored, marked with the next intents (overlap)
        if self._acks is not None and self._cfg.overlap:
            name = f"clickhouse-writer-{worker_index}"
            self._writer = OrderedWriter(
                self._write, name, self._acks.fail, self._mark_stored, MARK_DELAY_S
            )
        log.info(
            "clickhouse sink (worker %d): %s, dedup by %s%s%s",
            worker_index,
            ", ".join(sink.routes) if sink.routes else self._table,
            mode,
            ", inserts overlapped with decode" if self._writer else "",
            presort,
        )

    def _missing_rows(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Rows of ``batch`` whose (TraceId, SpanId) is not in the table yet (lookup mode)."""
        span_ids = pc.unique(batch.column("SpanId")).to_pylist()
        # IN a subquery's set: 18.16 refuses an array literal on the right of IN.
        rows = self._client.execute(
            f"SELECT TraceId, SpanId FROM {self._qt} "
            "WHERE SpanId IN (SELECT arrayJoin({ids:Array(String)}))",
            {"ids": span_ids},
        )
        if not rows:
            return batch
        have = pa.array([f"{t}:{s}" for t, s in rows], pa.string())
        keys = pc.binary_join_element_wise(batch.column("TraceId"), batch.column("SpanId"), ":")
        return batch.filter(pc.invert(pc.is_in(keys, value_set=have)))

    def _insert_tables(self, token: str, tables: dict[str, pa.RecordBatch]) -> None:
        """Each non-empty table under ``token/table`` (routed rows: one insert per table)."""
        for name, batch in tables.items():
            if batch.num_rows:
                table, tok = f"{self._db}.{name}", f"{token}/{name}"
                with self._latency.time():
                    self._blocking.call(
                        lambda t=table, b=batch, k=tok: self._client.insert_arrow(
                            t, b, dedup_token=k
                        )
                    )

    def _insert(self, r: StoredRange) -> None:
        if r.tables is not None:
            self._insert_tables(r.token, r.tables)
            return
        batch = r.batch
        if batch.num_rows == 0:
            return
        state = {"check": r.replay}

        def attempt() -> int:
            if self._mode == "token":  # fresh: a new range's intent was just recorded
                kw = {"dedup_token": r.token, "fresh": not state["check"]}
                return int(self._client.insert_arrow(self._table, batch, **kw))
            b = batch
            if state["check"]:
                b = self._missing_rows(b)
                if b.num_rows < batch.num_rows:
                    log.info(
                        "range %s: %d of %d rows already stored, inserting the rest",
                        r.token,
                        batch.num_rows - b.num_rows,
                        batch.num_rows,
                    )
            return int(self._client.insert_arrow(self._table, b)) if b.num_rows else 0

        def failed() -> None:
            state["check"] = True  # a failed insert may still have been applied

        with self._latency.time():
            self._blocking.call(attempt, failed)

    def write_batch(self, items: list[StoredRange | StoredRows]) -> None:
        if self._sort_keys:
            for r in items:
                if isinstance(r, StoredRange) and r.tables is None and r.batch.num_rows > 1:
                    r.batch = r.batch.take(pc.sort_indices(r.batch, sort_keys=self._sort_keys))
        if self._writer is not None:
            self._writer.submit(items)
        else:
            self._write(items)

    def _write(self, all_items: list[StoredRange | StoredRows]) -> None:
        # Items arrive in the order the sources emitted them. A run of new ranges gets its
        # intents in one insert, written only after every earlier item (replays included) is
        # stored: so everything before a partition's latest intent group is known stored.
        # Once the batch is stored its ranges are marked so, which is what a replay of a
        # quiet partition's range relies on (its token may have left the dedup window).
        items: list[StoredRange] = []
        for r in all_items:
            if isinstance(r, StoredRows):
                n = sum(b.num_rows for b in r.tables.values())
                self._metrics.received(n)
                self._insert_tables(r.token, r.tables)
                self._metrics.sent(n)
            else:
                items.append(r)
        stored = self._stored_replays(items)
        i = 0
        while i < len(items):
            j = i
            while j < len(items) and not items[j].replay:
                j += 1
            if j > i:
                self._intents.record(items[i:j], stored=self._unmarked)
                self._unmarked = []
            else:
                j = i + 1  # a replayed range: its intent is already recorded
            for r in items[i:j]:
                self._store(r, _key(r) in stored)
            i = j
        self._unmarked += [RangeRef.of(r) for r in items if _key(r) not in stored]
        if self._writer is None:
            self._mark_stored()

    def _mark_stored(self) -> None:
        """Write the stored marks no intents took along (the writer: when no batch followed
        within MARK_DELAY_S, and at close)."""
        self._intents.confirm(self._unmarked)
        self._unmarked = []

    def _stored_replays(self, items: list[StoredRange]) -> set[tuple[str, int, int, int]]:
        """Replayed ranges of ``items`` whose insert returned before (one query per partition;
        replays happen after a restart only)."""
        firsts: dict[tuple[str, int], int] = {}
        for r in items:
            if r.replay:
                key = (r.topic, r.partition)
                firsts[key] = min(firsts.get(key, r.first), r.first)
        return {
            (topic, p, a, b)
            for (topic, p), lo in firsts.items()
            for a, b in self._intents.stored_from(topic, p, lo)
        }

    def _store(self, r: StoredRange, already: bool = False) -> None:
        rows = r.num_rows
        self._metrics.received(rows)
        self._metrics.batch(rows)
        if already:
            log.info("range %s: stored before, not inserted again", r.token)
        else:
            self._insert(r)
        # Rows ClickHouse skipped as duplicates were stored by an earlier attempt.
        self._metrics.sent(rows)
        if self._acks is not None:
            self._acks.stored(r.topic, r.partition, r.first)
        if r.first_timestamp_ms > 0:
            self._e2e.observe(max(0.0, time.time() - r.first_timestamp_ms / 1000))

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()  # everything queued is stored before the flow ends
            log.info("clickhouse sink: input finished, closing")
        finally:
            _ClientHolder.release(self._key)


@dataclass
class ClickHouseSink(DynamicSink[StoredRange | StoredRows]):
    """Exactly-once ClickHouse sink for :class:`StoredRange` items (one per Kafka range).

    ``connection`` is ``connectors.clickhouse.ClickHouseConfig``; rows go to its
    ``database.<table>`` (default: its ``traces_table``) and are checked against ``schema``.
    The client is opened in ``build`` and shared by the worker threads of the process; the
    target table (with ``create_schema``) and the intent table are created at start if missing.
    Deduplication by ``(TraceId, SpanId)`` lookup (servers without insert tokens) is for the
    traces schema only; other tables must support insert tokens. ``acks`` is the registry the
    flow's source shares (``connectors.kafka_source.RangeAcks``): the sink confirms each stored
    range there, which is what lets it overlap inserts with decoding (``config.overlap``).
    ``sort_key``: the columns the table is ordered by (``config.presort``; not for a table
    whose engine keeps no order, see ``UNORDERED_ENGINES``).

    ``routes`` (table → schema) makes it a multi-table sink: each range's ``tables`` go to
    those tables of the database, each under the token ``<range token>/<table>``, and ``table``
    names the group in the intents; ``prepare(client, connection)`` then checks the server and
    creates the tables (with ``create_schema``). :class:`StoredRows` items (no Kafka range)
    are inserted under their own token, without intents.
    """

    connection: Any
    config: ClickHouseSinkConfig = field(default_factory=ClickHouseSinkConfig)
    table: str | None = None
    schema: pa.Schema = TRACES_SCHEMA
    acks: Any = None
    sort_key: tuple[str, ...] = ()
    routes: dict[str, pa.Schema] | None = None
    prepare: Callable[[Any, Any], None] | None = None

    @property
    def table_name(self) -> str:
        """The target table (without the database), or the intents' name of ``routes``."""
        return self.table or self.connection.traces_table

    @property
    def lookup_dedup(self) -> bool:
        """Whether rows can be deduplicated by ``(TraceId, SpanId)`` lookup (traces only)."""
        return self.routes is None and self.schema.equals(TRACES_SCHEMA)

    def targets(self) -> dict[str, pa.Schema]:
        """Table (without the database) → schema of every table the sink writes."""
        return dict(self.routes) if self.routes is not None else {self.table_name: self.schema}

    def client_key(self) -> str:
        return f"{self.connection!r}:{self.table_name}"

    def _create_table(self, client: Any) -> None:
        """Create the target table (traces or logs layout) when ``create_schema`` is set."""
        from connectors.clickhouse_schema import create_schema

        if self.prepare is not None:
            self.prepare(client, self.connection)
            return
        if not self.connection.create_schema:
            return
        name, db, opts = self.table_name, self.connection.database, self.connection.schema_options
        if self.schema.equals(TRACES_SCHEMA):
            create_schema(client, db, name, None, opts)
        elif self.schema.equals(LOGS_SCHEMA):
            create_schema(client, db, None, name, opts)

    def _check(self, c: Any) -> None:
        """Refuse tables the sink cannot write exactly once (raises; warns on fixable ones)."""
        from connectors import clickhouse

        db = self.connection.database
        for name, schema in self.targets().items():
            table = f"{db}.{name}"
            for p in clickhouse.check_table(c, table, schema):
                if "does not exist" in p:
                    raise RuntimeError(f"clickhouse health check: {p}")
                log.warning("clickhouse health check: %s; %s", p, MIGRATE_HINT)
            if not self.lookup_dedup and not c.supports_dedup_token(table):
                raise RuntimeError(
                    f"clickhouse health check: {table} cannot deduplicate replays (no insert "
                    "tokens and no InsertToken column); `otelwax clickhouse migrate --apply` "
                    "adds the column"
                )
            if self.config.dedup != "lookup":
                check_dedup_window(c, db, name, self.config.min_dedup_window)

    def client(self, hold: bool = False) -> Any:
        """The process's client for ``connection`` (opened and prepared on first use)."""
        from connectors import clickhouse

        conn = self.connection.model_copy(update={"create_schema": False})  # DDL: _create_table

        def _open() -> Any:
            delay = self.connection.retry.initial_backoff_s or 0.2
            while True:  # ClickHouse down at start: wait for it, holding the input back
                try:
                    if conn.mode == "embedded":
                        c = _OneThreadClient(lambda: clickhouse.open_client(conn))
                    else:
                        c = clickhouse.open_client(conn)
                    try:
                        self._create_table(c)
                    except Exception:
                        c.close()
                        raise
                    break
                except Exception as exc:
                    if not clickhouse.is_transient(exc):
                        raise
                    log.warning(NOT_REACHABLE, exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self.connection.retry.max_backoff_s or 5.0)
            try:
                self.intent_log(c).create()
                self._check(c)
            except Exception:
                c.close()
                raise
            if conn.mode == "embedded" and self.config.serve_queries:
                from connectors.clickhouse_query import Tables, serve_queries

                serve_queries(c, Tables.of(self.connection))
            return c

        return _ClientHolder.get(self.client_key(), _open, hold)

    def intent_log(self, client: Any) -> IntentLog:
        """The intents of this flow and target table (``routes``: of the group ``table``)."""
        target = self.table_name
        if self.routes is None:
            target = f"{self.connection.database}.{target}"
        return IntentLog(client, self.connection, self.config, target)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(self, worker_index)
