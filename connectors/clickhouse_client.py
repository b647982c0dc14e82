"""What every ClickHouse client shares: the ``ClickHouseClient`` protocol, ``ClickHouseError``
and which errors are transient, table names and ``{name:Type}`` query parameters."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from connectors.clickhouse_config import ClickHouseConfig
from connectors.clickhouse_json_schema import with_attribute_keys
from connectors.clickhouse_schema import quote_ident

__all__ = ["ClickHouseClient", "ClickHouseError", "is_transient"]

TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:/@=+,-]{1,512}$")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]+\}")


class ClickHouseError(RuntimeError):
    """A ClickHouse error with its server error code (0 when the server did not answer)."""

    def __init__(self, message: str, code: int = 0, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


# Server error codes worth retrying: overload, timeouts, network, read-only replica, parts.
TRANSIENT_CODES = {3, 159, 160, 164, 173, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999}


def is_transient(exc: BaseException) -> bool:
    """True for errors that may pass on retry (connection refused, timeouts, overload)."""
    if isinstance(exc, ClickHouseError) and exc.transient is not None:
        return exc.transient
    code = getattr(exc, "code", None)
    try:
        from clickhouse_driver import errors as cd_errors

        if isinstance(exc, cd_errors.NetworkError | cd_errors.SocketTimeoutError):
            return True
        if isinstance(exc, cd_errors.ServerException):
            return code in TRANSIENT_CODES
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, ConnectionError | TimeoutError | http.client.HTTPException | OSError):
        return True
    if isinstance(exc, ClickHouseError):
        return code in TRANSIENT_CODES or code == 0
    return False


@runtime_checkable
class ClickHouseClient(Protocol):
    """What flows and sinks use; both chdb and the server implement it."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one statement; ``{name:Type}`` placeholders are filled from ``params``."""
        ...

    def insert_arrow(
        self,
        table: str,
        batch: pa.RecordBatch,
        *,
        dedup_token: str | None = None,
        fresh: bool = False,
    ) -> int:
        """Insert the batch's columns the table has; returns rows written (0 if deduplicated).

        ``fresh``: no earlier attempt can have stored anything under ``dedup_token`` (a range
        first cut by this process, not retried); a server without insert tokens then skips
        the count of the rows stored under it, which reads the whole token column."""
        ...

    def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert a few rows (dicts with the same keys: the columns) as one block, returning
        once they are stored: small bookkeeping inserts (the intents), which ``insert_arrow``
        would slow down with its per-insert set-up."""
        ...

    def table_columns(self, table: str) -> dict[str, str]:
        """Insertable columns of ``table`` (``name -> type``); {} when it does not exist."""
        ...

    def supports_dedup_token(self, table: str | None = None) -> bool:
        """True when a repeated ``dedup_token`` is skipped (natively or emulated)."""
        ...

    def close(self) -> None: ...


def split_table(table: str, default_db: str) -> tuple[str, str]:
    db, _, name = table.rpartition(".")
    db = db or default_db
    quote_ident(db)
    quote_ident(name)
    return db, name


def table_engine(client: Any, database: str, table: str) -> str:
    """The engine of ``database.table`` as ``system.tables`` names it ("" when none)."""
    rows = client.execute(
        "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    return str(rows[0][0]) if rows else ""


def check_token(token: str | None) -> None:
    if token is not None and not TOKEN_RE.match(token):
        raise ValueError(f"dedup token {token!r} must match {TOKEN_RE.pattern}")


COLUMNS_MAX_AGE_S = 10.0
"""How long a table's column list is trusted: a column that another process adds
(``otelwax clickhouse migrate --apply`` while a flow runs) is written from then on."""

_READ_ONLY = re.compile(r"\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)


class TableColumns:
    """Insertable columns of each ``db.table``, read again when older than COLUMNS_MAX_AGE_S,
    after a statement that may change a table (anything but a read) and after a failed insert.

    A stale list would leave a newly added column empty, or name a column that is gone.
    """

    def __init__(self, read: Callable[[str], dict[str, str]]) -> None:
        self._read = read
        self._cols: dict[str, tuple[float, dict[str, str]]] = {}

    def get(self, table: str) -> dict[str, str]:
        """``name -> type`` of ``table``; raises when the table does not exist.

        The same dict comes back while the columns stay the same, so what is built from it
        may be cached by its identity.
        """
        now = time.monotonic()
        hit = self._cols.get(table)
        if hit is not None and now - hit[0] < COLUMNS_MAX_AGE_S:
            return hit[1]
        cols = self._read(table)
        if not cols:
            self._cols.pop(table, None)
            raise ClickHouseError(f"table {table} does not exist", 60, transient=False)
        if hit is not None and hit[1] == cols:
            cols = hit[1]
        self._cols[table] = (now, cols)
        return cols

    def after(self, sql: str) -> None:
        """Forget every table when ``sql`` may have changed one."""
        if not _READ_ONLY.match(sql):
            self._cols.clear()

    def forget(self, table: str) -> None:
        self._cols.pop(table, None)


def sql_literal(v: Any) -> str:
    """A ClickHouse literal for a parameter value (strings escaped)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(sql_literal(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def substitute_params(sql: str, params: dict[str, Any] | None) -> str:
    """Replace ``{name:Type}`` placeholders with escaped literals (for servers without params)."""
    if not params:
        return sql

    def rep(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise KeyError(f"query parameter {name!r} not given")
        return sql_literal(params[name])

    return _PARAM_RE.sub(rep, sql)


class InsertingClient:
    """What both clients do around an insert: check the token, skip an empty batch, resolve the
    table, and forget its column list when the insert fails (the table may have changed)."""

    cfg: ClickHouseConfig
    columns: TableColumns

    def insert_arrow(
        self,
        table: str,
        batch: pa.RecordBatch,
        *,
        dedup_token: str | None = None,
        fresh: bool = False,
    ) -> int:
        """Insert the batch's columns the table has; returns rows written (0 if deduplicated).
        ``fresh``: see ``ClickHouseClient.insert_arrow``."""
        check_token(dedup_token)
        if batch.num_rows == 0:
            return 0
        db, name = split_table(table, self.cfg.database)
        try:
            # JSON tables (tables.json) have a *AttributesKeys column beside each attribute map.
            batch = with_attribute_keys(batch, self.columns.get(f"{db}.{name}"))
            return self._insert(db, name, batch, dedup_token, fresh)
        except Exception:
            self.columns.forget(f"{db}.{name}")
            raise

    def _insert(
        self, db: str, name: str, batch: pa.RecordBatch, token: str | None, fresh: bool
    ) -> int:
        raise NotImplementedError

    JSON_INSERT_CLAUSE = ""
    """An inline ``SETTINGS`` clause for :meth:`insert_rows`' statement ("" = none)."""

    def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert a few rows (dicts with the same keys: the columns) as one ``JSONEachRow``
        body: small bookkeeping inserts (the intents), which ``insert_arrow`` would slow down
        with its per-insert set-up. The values are data after ``FORMAT``, never SQL
        (``json.dumps`` escapes them)."""
        if not rows:
            return
        db, name = split_table(table, self.cfg.database)
        cols = ", ".join(quote_ident(c) for c in rows[0])
        clause = f" SETTINGS {self.JSON_INSERT_CLAUSE}" if self.JSON_INSERT_CLAUSE else ""
        qt = f"{quote_ident(db)}.{quote_ident(name)}"
        sql = f"INSERT INTO {qt} ({cols}){clause} FORMAT JSONEachRow"
        self._insert_json(qt, sql, "\n".join(json.dumps(r) for r in rows))

    def _insert_json(self, qt: str, sql: str, body: str) -> None:
        raise NotImplementedError
