"""Embedded ClickHouse (chdb) in this process: ``EmbeddedClient``.

chdb allows one engine (one data path) per process, so every ``EmbeddedClient`` of a process
shares one session behind a lock (bytewax worker threads may insert concurrently). Arrow goes
in through chdb's ``Python()`` table function, reading the buffers directly.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyarrow as pa

from connectors.clickhouse_client import (
    TRANSIENT_CODES,
    ClickHouseError,
    InsertingClient,
    TableColumns,
    split_table,
    sql_literal,
)
from connectors.clickhouse_config import ClickHouseConfig
from connectors.clickhouse_json_schema import JSON_INSERT_SETTINGS, has_json_columns
from connectors.clickhouse_schema import quote_ident
from otelwax.memory import page_out_file

__all__ = ["CHDB_MALLOC_CONF", "CHDB_SERVER_SETTINGS", "EmbeddedClient"]

log = logging.getLogger(__name__)

CHDB_MALLOC_CONF = "dirty_decay_ms:300,muzzy_decay_ms:0,oversize_threshold:1048576"
"""``JE_MALLOC_CONF`` for chdb's allocator unless set: return freed pages to the OS soon, and
those of allocations of 1 MiB and more (an insert's column data) at once."""

CHDB_SERVER_SETTINGS: dict[str, int] = {
    # chdb sizes these caches for a server of its own (5 GiB each); a flow inserts and runs
    # small look-ups, so a cap keeps a long-running process's memory bounded.
    "mark_cache_size": 64 << 20,
    "index_mark_cache_size": 32 << 20,
    "primary_index_cache_size": 64 << 20,
    "query_condition_cache_size": 16 << 20,
    # No new merge starts while running merges hold more than this (one may still exceed it).
    "merges_mutations_memory_usage_soft_limit": 256 << 20,
}
"""Server settings of the embedded engine: every chdb setting otelwax changes, in one place."""

# ``ClickHouseConfig.merge_wait_mib``: an insert of at least MERGE_WAIT_MIN_INSERT bytes of
# Arrow takes ~80-100 MiB in chdb of its own; beside a merge it made a flow's memory peaks
# (bench/README.md, "flow memory, round 4").
MERGE_WAIT_MIN_INSERT = 4 << 20
MERGE_WAIT_MAX_S = 5.0


class _ChdbEngine:
    """The one chdb session of this process (chdb allows a single data path per process)."""

    _instance: _ChdbEngine | None = None
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        # chdb's jemalloc keeps freed pages for 10 s by default: a flow peaked at ~1 GiB RSS.
        # Decay 0 gave ~800 MiB but page faults cost a third of the flow's throughput and
        # doubled query CPU; 300 ms kept ~930 MiB at full speed (bench/traces_flow_bench.py).
        # Allocations of 1 MiB and more go to jemalloc's "oversize" arena, which purges on free
        # (chdb's build sets 64 MiB): ~40-50 MiB of an insert's buffers no longer stay resident
        # until the next insert; CPU per span within the noise (bench/README.md, memory round 5).
        # Read once when chdb loads; a value set by the user wins.
        os.environ.setdefault("JE_MALLOC_CONF", CHDB_MALLOC_CONF)
        from chdb import _chdb, session

        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.session = session.Session(f"{path}?{urlencode(CHDB_SERVER_SETTINGS)}")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClickHouseError(
                f"cannot open embedded chdb at {path} ({first}); chdb allows one process per "
                "folder: if another flow runs on it, give each flow its own clickhouse.path "
                "(e.g. flows.logs.clickhouse.path: .data/chdb-logs) or use a ClickHouse "
                "server (clickhouse.mode: server)",
                transient=False,
            ) from exc
        # Loading touched ~230 MiB of the library that are clean file pages from then on: hand
        # them back (RSS as ps shows it); the code inserts run is read back when first used.
        page_out_file(_chdb.__file__)
        self.lock = threading.RLock()
        self.refs = 0
        # On the engine, not the client: a table changed through any client of the process
        # is read again by all of them.
        self.columns = TableColumns(self.read_columns)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table | None:
        """Run one statement; a statement that may change a table resets the column lists."""
        with self.lock:
            try:
                return self.session.query(sql, "ArrowTable", params=_chdb_params(params))
            except Exception as exc:
                raise _chdb_error(exc) from exc
            finally:
                self.columns.after(sql)

    def wait_for_merges(self, limit: int) -> None:
        """Return once running merges hold at most ``limit`` bytes (or after
        ``MERGE_WAIT_MAX_S``)."""
        deadline = time.monotonic() + MERGE_WAIT_MAX_S
        while time.monotonic() < deadline:
            res = self.query("SELECT toUInt64(sum(memory_usage)) AS m FROM system.merges")
            used = _pylists(res)[0][0] if res is not None and res.num_rows else 0
            if used <= limit:
                return
            time.sleep(0.2)  # a look at system.merges costs ~3 ms of CPU

    def read_columns(self, table: str) -> dict[str, str]:
        db, _, name = table.rpartition(".")
        res = self.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {t:String} AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') "
            "ORDER BY position",
            {"db": db, "t": name},
        )
        return dict(zip(*_pylists(res), strict=True))

    @classmethod
    def acquire(cls, path: str) -> _ChdbEngine:
        real = str(Path(path).resolve())
        with cls._guard:
            inst = cls._instance
            if inst is not None and inst.path != real:
                raise ClickHouseError(
                    f"chdb is already open on {inst.path!r} in this process; "
                    f"cannot open {real!r} too (one embedded data path per process)",
                    transient=False,
                )
            if inst is None:
                inst = cls._instance = _ChdbEngine(real)
                log.info("chdb: opened embedded ClickHouse at %s", real)
            inst.refs += 1
            return inst

    def release(self) -> None:
        with _ChdbEngine._guard:
            self.refs -= 1
            if self.refs <= 0 and _ChdbEngine._instance is self:
                with self.lock:
                    self.session.close()
                _ChdbEngine._instance = None
                log.info("chdb: closed %s", self.path)


def _chdb_params(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """chdb hands a parameter's text to ClickHouse, which parses it with escapes (as an HTTP
    ``param_``): a string goes escaped (a backslash, tab or newline as given would be misread
    or refused). A list would go as its Python ``str`` (``[a,b]``), which no
    ``Array(String)`` parses: it goes as its escaped literal text, which ClickHouse parses as
    the parameter's type (still a value, never SQL)."""
    if not params:
        return params
    return {k: _param_text(v) for k, v in params.items()}


def _param_text(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return sql_literal(v)
    if isinstance(v, str):
        return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return v


def _chdb_error(exc: Exception) -> ClickHouseError:
    msg = str(exc)
    m = re.search(r"Code: (\d+)", msg)
    code = int(m.group(1)) if m else 0
    return ClickHouseError(msg, code, transient=code in TRANSIENT_CODES)


def _pylists(res: pa.Table | None) -> list[list]:
    """A query result's columns as Python lists (none for a statement without a result)."""
    if not isinstance(res, pa.Table) or res.num_columns == 0:
        return []
    return [c.to_pylist() for c in res.columns]



class _ArrowStream:
    """A batch as an Arrow C stream only. chdb's ``Python()`` reads such an object through
    the stream interface, as fast as a pyarrow object (40K-span batches), but a pyarrow
    object it reads through ``pyarrow.dataset``, which it imports on the first insert
    (~12 MiB of RSS, the parquet libraries)."""

    __slots__ = ("batch",)

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.batch.__arrow_c_stream__(requested_schema)


class EmbeddedClient(InsertingClient):
    """chdb-backed client; all instances of a process share one engine (thread-safe)."""

    def __init__(self, cfg: ClickHouseConfig) -> None:
        if "{flow}" in cfg.path:
            raise ValueError(
                f"clickhouse.path {cfg.path!r}: {{flow}} is resolved by a flow's settings; "
                "outside a flow use ClickHouseConfig.for_flow(name) or a path without it"
            )
        self.cfg = cfg
        self._engine = _ChdbEngine.acquire(cfg.path)
        self.columns = self._engine.columns
        self._closed = False

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return list(zip(*_pylists(self._engine.query(sql, params)), strict=True))

    def table_columns(self, table: str) -> dict[str, str]:
        db, name = split_table(table, self.cfg.database)
        return self._engine.read_columns(f"{db}.{name}")

    def supports_dedup_token(self, table: str | None = None) -> bool:
        return True

    # Not an async insert (chdb's default): that would batch it with others behind a timer.
    JSON_INSERT_CLAUSE = "async_insert = 0"

    def _insert_json(self, qt: str, sql: str, body: str) -> None:
        """One intent row costs ~5 ms of CPU as an inline body, ~9 ms through ``Python()``
        (its set-up, not the row)."""
        with self._engine.lock:
            try:
                self._engine.session.query(f"{sql}\n{body}")
            except Exception as exc:
                raise _chdb_error(exc) from exc

    def _insert(
        self, db: str, name: str, batch: pa.RecordBatch, token: str | None, fresh: bool
    ) -> int:
        cols = self.columns.get(f"{db}.{name}")
        names = [n for n in batch.schema.names if n in cols]
        if len(names) != batch.num_columns:
            batch = batch.select(names)
        collist = ", ".join(f"`{n}`" for n in names)
        settings = [f"insert_deduplication_token = '{token}'"] if token is not None else []
        if has_json_columns(cols):
            settings += [f"{k} = {v}" for k, v in JSON_INSERT_SETTINGS.items()]
        # chdb's Python() table function finds ``otelwax_batch`` in this frame by name; it
        # reads the Arrow buffers directly (measured ~2x faster than an ArrowStream body at
        # 100K rows: bench/clickhouse_bench.py).
        otelwax_batch = _ArrowStream(batch)  # noqa: F841
        wait = self.cfg.merge_wait_mib << 20
        if wait and batch.get_total_buffer_size() >= MERGE_WAIT_MIN_INSERT:
            self._engine.wait_for_merges(wait)
        sql = (
            f"INSERT INTO {quote_ident(db)}.{quote_ident(name)} ({collist})"
            f"{' SETTINGS ' + ', '.join(settings) if settings else ''} "
            "SELECT * FROM Python(otelwax_batch)"
        )
        with self._engine.lock:
            try:
                self._engine.session.query(sql)
            except Exception as exc:
                raise _chdb_error(exc) from exc
        # chdb cannot tell a deduplicated insert apart: report the rows handed over.
        return batch.num_rows

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.release()
