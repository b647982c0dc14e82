"""What the exactly-once ClickHouse sinks know about each Kafka range: the intent log.

One MergeTree table (``otelwax_intents``) holds a row per event, keyed by ``(flow, target
table, topic, partition)``:

- an **intent** (``mark = ''``): the range ``first..last`` is about to be inserted into
  ``target``; written before the insert, in groups (see ``connectors.clickhouse_sink``);
- a **stored mark** (``mark = 'stored'``): the range's insert returned. This, not ClickHouse's
  deduplication window, answers "was this range stored?" on a restart: a window counts
  inserts, not time, so a quiet partition's last token is forgotten once the table took
  ``window`` newer inserts. The window only has to cover the inserts between a range's insert
  and its mark (one batch) plus a restart's replay;
- a **reset** (``mark = 'reset'``): the operator started the partition afresh (the topic was
  recreated, or the flow moved to another cluster). Rows written before it are ignored.

``topic_id`` is the Kafka topic's id (its UUID; empty for rows of older versions, or brokers
that do not say): intents of another topic id mean the topic was recreated, and the source
refuses to start from them. Tables of older versions get the new columns added (never dropped).

``check_dedup_window`` is the start-up check that a target table deduplicates replays at all.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from connectors.clickhouse import is_transient
from connectors.clickhouse_schema import quote_ident
from otelwax.resilience import CircuitBreaker, CircuitOpenError, RetryPolicy
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = [
    "Blocking",
    "IntentLog",
    "RangeRef",
    "check_dedup_window",
    "dedup_window_problem",
    "intents_ddl",
]

T = TypeVar("T")

MARK_STORED = "stored"
MARK_RESET = "reset"

ADDED_COLUMNS = {"topic_id": "String DEFAULT ''", "mark": "String DEFAULT ''"}
"""Columns newer than the first intent table, added in place to existing tables."""


@dataclass(frozen=True, slots=True)
class RangeRef:
    """What the intents note of a range (a ``StoredRange`` without its rows)."""

    topic: str
    partition: int
    first: int
    last: int
    records: int = 0
    topic_id: str = ""

    @classmethod
    def of(cls, r: Any) -> RangeRef:
        return cls(r.topic, r.partition, r.first, r.last, r.records, r.topic_id)


class Blocking:
    """Call until it succeeds: ``RetryPolicy`` tries, the ``CircuitBreaker`` paces rounds.

    Transient errors are retried forever (the worker blocks, holding its partitions back);
    permanent ones (bad SQL, missing table) are raised so the flow stops with a clear error
    and, after a fix, resumes from its snapshot/intents: nothing is dropped either way.
    """

    def __init__(self, conn: Any, what: str, metrics: ComponentMetrics) -> None:
        self._policy = RetryPolicy(conn.retry, retry_on=is_transient)
        self._breaker = CircuitBreaker(conn.breaker, name=what)
        self._what = what
        self._metrics = metrics

    def call(self, fn: Callable[[], T], on_failure: Callable[[], None] | None = None) -> T:
        def once() -> T:
            try:
                return fn()
            except Exception:
                self._metrics.failed()
                if on_failure is not None:
                    on_failure()
                raise

        while True:
            try:
                return self._policy.call(once, breaker=self._breaker)
            except CircuitOpenError as exc:
                wait = max(0.05, min(exc.retry_after, 5.0))
                log.warning("%s: circuit open, holding input for %.1f s", self._what, wait)
                time.sleep(wait)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("%s: still failing (%s), retrying", self._what, exc)
                time.sleep(self._policy.cfg.max_backoff_s)


def intents_ddl(
    qualified_table: str, ttl_days: int = 0, opts: Any = None, database: str = "", table: str = ""
) -> str:
    """DDL of the intent table (works on ClickHouse 18.16 and current versions).

    ``ttl_days`` > 0 adds a TTL (servers >= 19.6, chdb); old intents are only needed for
    ranges Kafka could still replay, so anything older than the topic's retention can go.
    ``opts`` (``TableOptions``) places it like the data tables: ``ON CLUSTER`` and the same
    engine, so a flow restarting against another replica sees its intents and marks.
    """
    ttl = f" TTL written_at + INTERVAL {int(ttl_days)} DAY" if ttl_days > 0 else ""
    added = "".join(f"{name} {ddl}, " for name, ddl in ADDED_COLUMNS.items())
    engine = opts.engine(database, table) if opts is not None else "MergeTree"
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified_table}{opts.on_cluster if opts else ''} ("
        "flow String, topic String, "
        "kafka_partition UInt32, first_offset UInt64, last_offset UInt64, target String, "
        f"group_id UInt64, records UInt32, {added}written_at DateTime DEFAULT now()) "
        f"ENGINE = {engine}{'()' if engine == 'MergeTree' else ''} "
        "PARTITION BY toYYYYMM(written_at) "
        f"ORDER BY (flow, topic, kafka_partition, first_offset){ttl}"
    )


_SCOPE = (
    "flow = {flow:String} AND target = {target:String} AND topic = {topic:String} "
    "AND kafka_partition = {p:UInt32}"
)


class IntentLog:
    """The intents of one flow and target table (``database.intents_table`` of ``conn``).

    ``cfg`` carries ``intents_table``, ``flow`` and ``intents_ttl_days``
    (``connectors.clickhouse_sink.ClickHouseSinkConfig``); ``target`` names the table the
    ranges go to: two flows of one name writing two tables keep separate histories.
    """

    def __init__(self, client: Any, conn: Any, cfg: Any, target: str) -> None:
        self.client = client
        self.table = f"{conn.database}.{cfg.intents_table}"
        self._qt = f"{quote_ident(conn.database)}.{quote_ident(cfg.intents_table)}"
        self._qdb = quote_ident(conn.database)
        self._db, self._name = conn.database, cfg.intents_table
        self.flow = cfg.flow
        self.target = target
        self._ttl_days = cfg.intents_ttl_days
        self._opts = conn.tables
        self.metrics = ComponentMetrics("intents", "ranges")
        self._blocking = Blocking(conn, f"clickhouse intents ({self.table})", self.metrics)
        # Rows since the partition's latest reset (max() of no rows is 0: all of them).
        self._since = (
            f"{_SCOPE} AND group_id >= (SELECT max(group_id) FROM {self._qt} "
            f"WHERE {_SCOPE} AND mark = '{MARK_RESET}')"
        )

    def create(self) -> None:
        """Create the database and the intent table if missing, or add its newer columns."""
        on = self._opts.on_cluster
        self._blocking.call(
            lambda: self.client.execute(f"CREATE DATABASE IF NOT EXISTS {self._qdb}{on}")
        )
        ttl = 0 if getattr(self.client, "legacy", False) else self._ttl_days
        ddl = intents_ddl(self._qt, ttl, self._opts, self._db, self._name)
        self._blocking.call(lambda: self.client.execute(ddl))
        self._sync_replica()
        for _ in range(3):  # another process may add a column at the same time
            have = {
                str(r[0])
                for r in self._rows(
                    "SELECT name FROM system.columns WHERE database = {db:String} "
                    "AND table = {t:String}",
                    {"db": self._db, "t": self._name},
                )
            }
            missing = [n for n in ADDED_COLUMNS if n not in have]
            if not missing:
                return
            try:
                for name in missing:  # 18.16 has no ADD COLUMN IF NOT EXISTS
                    log.info("%s: adding column %s (intents of this version)", self.table, name)
                    self.client.execute(
                        f"ALTER TABLE {self._qt} ADD COLUMN {name} {ADDED_COLUMNS[name]}"
                    )
            except Exception as exc:
                log.warning("%s: adding columns %s: %s", self.table, missing, exc)
        raise RuntimeError(f"{self.table}: could not add the columns {list(ADDED_COLUMNS)}")

    def _sync_replica(self) -> None:
        """On a Replicated intent table, wait until this replica has every row the others
        have (the intents and marks a flow wrote through another replica before it stopped);
        otherwise a restart against this replica would replay stored ranges as unknown."""
        rows = self._rows(
            "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": self._db, "t": self._name},
        )
        if rows and str(rows[0][0]).startswith("Replicated"):
            self._blocking.call(lambda: self.client.execute(f"SYSTEM SYNC REPLICA {self._qt}"))

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self._blocking.call(lambda: self.client.execute(sql, params)) or [])

    def _params(self, topic: str, partition: int, **more: Any) -> dict[str, Any]:
        return {"flow": self.flow, "target": self.target, "topic": topic, "p": partition, **more}

    def ranges_from(
        self, topic: str, partition: int, offset: int
    ) -> list[tuple[int, int, str]]:
        """Recorded ranges ``(first, last, topic_id)`` with ``last >= offset``, sorted."""
        rows = self._rows(
            f"SELECT first_offset, last_offset, any(topic_id) FROM {self._qt} "
            f"WHERE {self._since} AND mark = '' AND last_offset >= {{off:UInt64}} "
            "GROUP BY first_offset, last_offset ORDER BY first_offset, last_offset",
            self._params(topic, partition, off=max(offset, 0)),
        )
        return [(int(a), int(b), str(t)) for a, b, t in rows]

    def stored_from(self, topic: str, partition: int, offset: int) -> set[tuple[int, int]]:
        """Ranges ``(first, last)`` with ``last >= offset`` whose insert returned."""
        rows = self._rows(
            f"SELECT DISTINCT first_offset, last_offset FROM {self._qt} "
            f"WHERE {self._since} AND mark = '{MARK_STORED}' AND last_offset >= {{off:UInt64}}",
            self._params(topic, partition, off=max(offset, 0)),
        )
        return {(int(a), int(b)) for a, b in rows}

    def pending_from(self, topic: str, partition: int) -> int | None:
        """Where the partition's ranges that may not be stored begin (None: no intents).

        Everything before the latest intent group is stored (a group is recorded only after
        the previous one is stored); of that group, the stored marks say which ranges are.
        """
        rows = self._rows(
            f"SELECT first_offset, last_offset FROM {self._qt} WHERE {self._since} "
            f"AND mark = '' AND group_id = (SELECT argMax(group_id, first_offset) "
            f"FROM {self._qt} WHERE {self._since} AND mark = '')",
            self._params(topic, partition),
        )
        if not rows:
            return None
        group = sorted((int(a), int(b)) for a, b in rows)
        stored = self.stored_from(topic, partition, group[0][0])
        open_ = [first for first, last in group if (first, last) not in stored]
        return min(open_) if open_ else max(last for _, last in group) + 1

    def latest(self, topic: str, partition: int) -> tuple[str, int | None] | None:
        """``(topic_id, last recorded offset)`` of the partition since its latest reset."""
        rows = self._rows(
            "SELECT argMax(topic_id, group_id), maxIf(last_offset, mark = ''), "
            f"countIf(mark = '') FROM {self._qt} WHERE {self._since} AND mark != '{MARK_STORED}'",
            self._params(topic, partition),
        )
        if not rows or (not int(rows[0][2]) and not rows[0][0]):
            return None
        return str(rows[0][0]), int(rows[0][1]) if int(rows[0][2]) else None

    def record(
        self,
        ranges: Sequence[Any],
        target: str | None = None,
        mark: str = "",
        stored: Sequence[Any] = (),
    ) -> None:
        """Durably note that these ranges are about to be inserted into ``target`` (or, with
        ``mark``, that they were stored), and in the same insert mark ``stored`` stored.
        Ranges have ``topic``, ``partition``, ``first``, ``last``, ``records`` and
        ``topic_id`` (``StoredRange``, ``RangeRef``). One insert (one MergeTree part, its
        cost whatever the rows) for all of them, as a small JSON body."""
        if not ranges and not stored:
            return
        group = time.time_ns()
        rows = [self._row(r, group, target, mark) for r in ranges]
        rows += [self._row(r, group, None, MARK_STORED) for r in stored]
        self._blocking.call(lambda: self.client.insert_rows(self.table, rows))
        if not mark:
            self.metrics.sent(len(ranges))

    def _row(self, r: Any, group: int, target: str | None, mark: str) -> dict[str, Any]:
        return {
            "flow": self.flow, "topic": r.topic, "kafka_partition": r.partition,
            "first_offset": r.first, "last_offset": r.last, "target": target or self.target,
            "group_id": group, "records": r.records, "topic_id": r.topic_id, "mark": mark,
        }  # fmt: skip

    def confirm(self, ranges: Sequence[Any]) -> None:
        """Mark ranges whose insert returned as stored."""
        self.record((), stored=ranges)

    def reset(self, topic: str, partition: int, topic_id: str, offset: int) -> None:
        """Start the partition afresh at ``offset``: earlier rows no longer count."""
        self.record([RangeRef(topic, partition, offset, offset, 0, topic_id)], mark=MARK_RESET)


# --- the deduplication window ---------------------------------------------------------------

_WINDOW_SETTINGS = (
    "non_replicated_deduplication_window",
    "replicated_deduplication_window",
    "replicated_deduplication_window_seconds",
)


def dedup_window_problem(
    table: str, engine: str, settings: dict[str, int], min_window: int, min_seconds: int
) -> tuple[int, str] | None:
    """``(log level, message)`` when ``table`` (``engine``, effective ``settings``) cannot skip
    a replayed insert token, or forgets tokens soon; None when it is fine.

    A MergeTree remembers ``non_replicated_deduplication_window`` tokens (0 = none); a
    Replicated*MergeTree remembers ``replicated_deduplication_window`` tokens, each for at most
    ``replicated_deduplication_window_seconds``.
    """
    fix = "ALTER TABLE {t} MODIFY SETTING {s} = {v}"
    if "MergeTree" not in engine:
        return logging.WARNING, (
            f"{table} is a {engine} table: insert tokens are deduplicated by the MergeTree "
            "tables it writes to; give those a deduplication window"
        )
    name = _WINDOW_SETTINGS[1] if engine.startswith("Replicated") else _WINDOW_SETTINGS[0]
    window = settings.get(name, 0)
    if window <= 0:
        return logging.ERROR, (
            f"{table} has no {name}: replays after a crash would insert duplicates; "
            f"run `otelwax clickhouse migrate --apply` or "
            + fix.format(t=table, s=name, v=max(min_window, 1000))
        )
    if window < min_window:
        return logging.WARNING, (
            f"{table}: {name} = {window} is below {min_window}: a range inserted just before a "
            "crash is only deduplicated if fewer inserts reach the table until its replay; "
            "run `otelwax clickhouse migrate --apply` or "
            + fix.format(t=table, s=name, v=min_window)
        )
    seconds = settings.get(_WINDOW_SETTINGS[2], 0)
    if engine.startswith("Replicated") and 0 < seconds < min_seconds:
        return logging.WARNING, (
            f"{table}: {_WINDOW_SETTINGS[2]} = {seconds} s is below {min_seconds} s: a flow "
            "down longer than that duplicates its in-flight ranges; "
            + fix.format(t=table, s=_WINDOW_SETTINGS[2], v=min_seconds)
        )
    return None


def check_dedup_window(
    client: Any, database: str, table: str, min_window: int, min_seconds: int = 3600
) -> None:
    """Start-up check of ``database.table``'s deduplication window: raise when it has none,
    log a warning when it is small. Servers without insert tokens (18.16: the ``InsertToken``
    emulation looks tokens up in the whole table) and missing tables are skipped."""
    if getattr(client, "legacy", False):
        return
    rows = client.execute(
        "SELECT engine, engine_full FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    if not rows:
        return
    engine, full = str(rows[0][0]), str(rows[0][1])
    defaults = client.execute(
        "SELECT name, value FROM system.merge_tree_settings "
        "WHERE name LIKE '%deduplication_window%'"
    )
    settings = {str(n): int(v) for n, v in defaults if str(n) in _WINDOW_SETTINGS}
    for name in _WINDOW_SETTINGS:
        m = re.search(rf"\b{name}\s*=\s*(\d+)", full)
        if m:
            settings[name] = int(m.group(1))
    problem = dedup_window_problem(f"{database}.{table}", engine, settings, min_window, min_seconds)
    if problem is None:
        return
    level, msg = problem
    if level >= logging.ERROR:
        raise RuntimeError(f"clickhouse health check: {msg}")
    log.warning("clickhouse health check: %s", msg)
