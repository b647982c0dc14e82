"""A ClickHouse server: ``ServerClient``.

Queries go over the native protocol (clickhouse-driver); inserts are ``Native`` blocks POSTed to
the HTTP interface (``insert_format: native_http``), or Python column lists handed to
clickhouse-driver (``insert_format: driver``, the slower baseline). ClickHouse 18.16 (legacy
layout, no ``insert_deduplication_token``, no server-side parameters) is handled here.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import logging
import re
import threading
import urllib.parse
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.clickhouse_client import (
    ClickHouseError,
    InsertingClient,
    TableColumns,
    split_table,
    substitute_params,
    table_engine,
)
from connectors.clickhouse_config import ClickHouseConfig
from connectors.clickhouse_json_schema import JSON_INSERT_SETTINGS
from connectors.clickhouse_native import (
    TOKEN_COLUMN,
    InsertPlan,
    PlanColumn,
    StringArena,
    map_parts,
    nanoseconds,
    native_parts,
    plan_columns,
)
from connectors.clickhouse_schema import quote_ident, trace_copy_table
from connectors.clickhouse_types import parse_type

__all__ = ["ServerClient"]

log = logging.getLogger(__name__)


class ServerClient(InsertingClient):
    """A ClickHouse server: native protocol for queries, Native-over-HTTP (or driver) inserts."""

    def __init__(self, cfg: ClickHouseConfig) -> None:
        from clickhouse_driver import Client

        self.cfg = cfg
        self._driver = Client(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=cfg.password.get_secret_value(),
            database="default",
            secure=cfg.secure,
            verify=cfg.tls.verify,
            ca_certs=cfg.tls.ca_file,
            connect_timeout=cfg.connect_timeout_s,
            send_receive_timeout=cfg.timeout_s,
        )
        self._lock = threading.RLock()
        self._http: http.client.HTTPConnection | None = None
        self._strings = StringArena()  # the String columns of one insert at a time
        self.columns = TableColumns(self.table_columns)
        # Built from the column list it is keyed with: a changed list makes a new plan.
        self._plans: dict[tuple[str, pa.Schema], tuple[dict[str, str], InsertPlan]] = {}
        self._replicated: dict[str, bool] = {}
        self.version = ""
        self.legacy = False
        self._zookeeper_seen = False

    def connect(self) -> None:
        """Ask the server its version (raises when it cannot be reached)."""
        self.version = str(self.execute("SELECT version()")[0][0])
        self.legacy = int(self.version.split(".")[0]) < 20
        log.info(
            "ClickHouse server %s at %s:%d (%s)",
            self.version,
            self.cfg.host,
            self.cfg.port,
            "legacy layout" if self.legacy else "modern",
        )

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            if self.legacy and not self._zookeeper_seen and " ON CLUSTER " in sql:
                self._check_zookeeper()
            try:
                return list(self._driver.execute(substitute_params(sql, params)) or [])
            except Exception:
                self._driver.disconnect()
                raise
            finally:
                self.columns.after(sql)

    def _check_zookeeper(self) -> None:
        """Before the first ``ON CLUSTER`` query to 18.x: the server must reach ZooKeeper. Its
        DDL worker dereferences a session it has not got yet, so the query would crash the
        server (SIGSEGV) instead of failing."""
        try:
            self.execute("SELECT count() FROM system.zookeeper WHERE path = '/'")
        except Exception as exc:
            why = str(getattr(exc, "message", "") or exc).strip().splitlines()[0][:200]
            raise ClickHouseError(
                f"ClickHouse {self.version} at {self.cfg.host}:{self.cfg.port} cannot reach "
                f"ZooKeeper ({why}): not sending ON CLUSTER DDL, "
                "which crashes this server version without a session. Check its <zookeeper> "
                "config and that ZooKeeper is up, then run it again"
            ) from exc
        self._zookeeper_seen = True

    def table_columns(self, table: str) -> dict[str, str]:
        db, name = split_table(table, self.cfg.database)
        rows = self.execute(
            "SELECT name, type, default_kind FROM system.columns "
            "WHERE database = {db:String} AND table = {t:String}",
            {"db": db, "t": name},
        )
        return {str(n): str(t) for n, t, k in rows if k not in ("ALIAS", "MATERIALIZED")}

    def supports_dedup_token(self, table: str | None = None) -> bool:
        if not self.legacy:
            return True
        if table is None:
            return False
        db, name = split_table(table, self.cfg.database)
        return TOKEN_COLUMN in self.columns.get(f"{db}.{name}")

    def _plan(self, table: str, schema: pa.Schema) -> InsertPlan:
        cols = self.columns.get(table)
        hit = self._plans.get((table, schema))
        if hit is not None and hit[0] is cols:
            return hit[1]
        plan = plan_columns(schema, cols)
        if plan.problems:
            log.warning("%s: %s", table, "; ".join(plan.problems))
        self._plans[(table, schema)] = (cols, plan)
        return plan

    def _insert(
        self, db: str, name: str, batch: pa.RecordBatch, dedup_token: str | None, fresh: bool
    ) -> int:
        qt = f"{quote_ident(db)}.{quote_ident(name)}"
        plan = self._plan(f"{db}.{name}", batch.schema)
        complete_copy = False
        emulated = dedup_token is not None and self.legacy  # tokens kept in InsertToken
        if emulated and not plan.token_column:
            raise ClickHouseError(
                f"{db}.{name} has no {TOKEN_COLUMN} column: this server cannot deduplicate "
                "inserts (recreate the table with `otelwax clickhouse init`)",
                transient=False,
            )
        if emulated and not fresh:
            replicated = self._replica_synced(f"{db}.{name}", qt)
            seen = self._token_rows(db, name, dedup_token)
            if min(seen) >= batch.num_rows:
                log.info("%s: token %s already stored, insert skipped", qt, dedup_token)
                return 0
            if max(seen) and replicated:
                # A Replicated table skips the blocks of this insert it already holds (their
                # hashes are in ZooKeeper): inserting it again stores exactly the missing ones.
                # Deleting first would lose rows: the re-inserted blocks would be skipped.
                complete_copy = len(seen) > 1
                log.warning(
                    "%s: token %s partly stored (%s of %d rows); inserting the rest",
                    qt,
                    dedup_token,
                    "/".join(map(str, seen)),
                    batch.num_rows,
                )
            elif max(seen):
                # Part of an earlier try landed (a batch spanning partitions is written as one
                # part per partition; the copy's view may have failed after the table took
                # it). Remove it, then insert the whole batch again: a mutation only touches
                # parts that exist when it is created, never the new insert. The copy goes
                # first: rows left in it alone would not be looked for (see _token_rows).
                log.warning(
                    "%s: token %s partly stored (%s of %d rows); replacing it",
                    qt,
                    dedup_token,
                    "/".join(map(str, seen)),
                    batch.num_rows,
                )
                for target in reversed(self._holders(db, name)):
                    self.execute(
                        f"ALTER TABLE {quote_ident(db)}.{quote_ident(target)} DELETE "
                        f"WHERE {TOKEN_COLUMN} = {{tok:String}}",
                        {"tok": dedup_token},
                    )
        self._send(qt, batch, plan, dedup_token)
        if complete_copy:
            self._complete_copy(db, name, batch, dedup_token or "")
        return batch.num_rows

    def _replica_synced(self, key: str, qt: str) -> bool:
        """Whether ``key`` is a Replicated table; the first time, wait until this replica has
        every part the others have, so tokens stored through another replica are counted."""
        known = self._replicated.get(key)
        if known is None:
            db, name = split_table(key, self.cfg.database)
            known = table_engine(self, db, name).startswith("Replicated")
            if known:
                self.execute(f"SYSTEM SYNC REPLICA {qt}")
            self._replicated[key] = known
        return known

    def _send(
        self,
        qt: str,
        batch: pa.RecordBatch,
        plan: InsertPlan,
        token: str | None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if self.cfg.insert_format == "driver":
            self._insert_driver(qt, batch, plan, token, settings)
        else:
            self._insert_http(qt, batch, plan, token, settings)

    def _holders(self, db: str, name: str) -> list[str]:
        """``name`` and the tables its materialized views fill from each insert (the
        trace-ordered copy): where the rows of one insert end up."""
        copy = trace_copy_table(name)
        try:
            self.columns.get(f"{db}.{copy}")
        except ClickHouseError:
            return [name]
        return [name, copy]

    def _token_rows(self, db: str, name: str, token: str) -> list[int]:
        """Rows stored under ``token`` in each of ``_holders`` (just the table when it has
        none: its views write after it took the rows, so the copy cannot have them either)."""
        holders = [name]
        seen: list[int] = []
        while len(seen) < len(holders):
            qt = f"{quote_ident(db)}.{quote_ident(holders[len(seen)])}"
            self._replica_synced(f"{db}.{holders[len(seen)]}", qt)
            rows = self.execute(
                f"SELECT count() FROM {qt} WHERE {TOKEN_COLUMN} = {{tok:String}}", {"tok": token}
            )
            seen.append(int(rows[0][0]) if rows else 0)
            if seen == [0]:
                break
            if len(seen) == 1:
                holders = self._holders(db, name)
        return seen

    def _complete_copy(self, db: str, name: str, batch: pa.RecordBatch, token: str) -> None:
        """Insert into ``name``'s trace-ordered copy the spans of ``token`` it lacks. A
        Replicated table on 18.16 runs no views for an insert whose last part it skipped as a
        duplicate, so re-inserting a partly stored range can leave the copy short. Sent
        without block deduplication: the spans are missing, whatever their blocks' hashes."""
        copy = trace_copy_table(name)
        qc = f"{quote_ident(db)}.{quote_ident(copy)}"
        rows = self.execute(
            f"SELECT TraceId, SpanId FROM {qc} WHERE {TOKEN_COLUMN} = {{tok:String}}",
            {"tok": token},
        )
        have = pa.array([f"{t}:{s}" for t, s in rows], pa.string())
        keys = pc.binary_join_element_wise(batch.column("TraceId"), batch.column("SpanId"), ":")
        missing = batch.filter(pc.invert(pc.is_in(keys, value_set=have)))
        if missing.num_rows:
            log.warning(
                "%s: token %s: %d spans missing, inserting them", qc, token, missing.num_rows
            )
            plan = self._plan(f"{db}.{copy}", batch.schema)
            self._send(qc, missing, plan, token, {"insert_deduplicate": 0})

    def _http_conn(self) -> http.client.HTTPConnection:
        if self._http is None:
            c = self.cfg
            if c.secure:
                self._http = http.client.HTTPSConnection(
                    c.host, c.http_port, timeout=c.timeout_s, context=c.tls.ssl_context()
                )
            else:
                self._http = http.client.HTTPConnection(c.host, c.http_port, timeout=c.timeout_s)
        return self._http

    def _insert_http(
        self,
        qt: str,
        batch: pa.RecordBatch,
        plan: InsertPlan,
        token: str | None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        cols = ", ".join(f"`{c.name}`" for c in plan.cols)
        q = {"query": f"INSERT INTO {qt} ({cols}) FORMAT Native", **(settings or {})}
        if token is not None and not self.legacy:
            q["insert_deduplication_token"] = token
        if plan.json:
            q.update(JSON_INSERT_SETTINGS)
        with self._strings.block() as strings:  # the body's views of it live until sent
            self._post(qt, q, native_parts(batch, plan, token or "", strings))

    def _insert_json(self, qt: str, sql: str, body: str) -> None:
        """~0.7 ms of client CPU for one intent row, ~1.9 ms as a Native block (its column
        plan and encoders)."""
        self._post(qt, {"query": sql}, [body.encode()])

    def _post(self, qt: str, q: dict[str, Any], body: list[Any]) -> None:
        """POST an insert's ``body`` pieces (not joined) with the query and settings ``q``."""
        auth = f"{self.cfg.user}:{self.cfg.password.get_secret_value()}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(auth).decode(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(sum(memoryview(p).nbytes for p in body)),  # not chunked
        }
        url = "/?" + urllib.parse.urlencode(q)
        with self._lock:
            for attempt in (1, 2):  # a kept-alive connection may have been closed by the server
                conn = self._http_conn()
                try:
                    conn.request("POST", url, body=body, headers=headers)
                    resp = conn.getresponse()
                    text = resp.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    conn.close()
                    self._http = None
                    if attempt == 2:
                        raise
                except Exception:
                    conn.close()
                    self._http = None
                    raise
        if resp.status != 200:
            msg = text.decode(errors="replace").strip()
            m = re.search(r"Code: (\d+)", msg)
            code = int(m.group(1)) if m else 0
            raise ClickHouseError(f"insert into {qt} failed: {msg[:500]}", code)

    def _insert_driver(
        self,
        qt: str,
        batch: pa.RecordBatch,
        plan: InsertPlan,
        token: str | None,
        more: dict[str, Any] | None = None,
    ) -> None:
        columns = [_python_column(batch, c, token or "") for c in plan.cols]
        cols = ", ".join(f"`{c.name}`" for c in plan.cols)
        settings: dict[str, Any] = dict(more or {})
        if token and not self.legacy:
            settings["insert_deduplication_token"] = token
        if plan.json:
            settings.update(JSON_INSERT_SETTINGS)
        with self._lock:
            try:
                self._driver.execute(
                    f"INSERT INTO {qt} ({cols}) VALUES",
                    columns,
                    columnar=True,
                    settings=settings or None,
                )
            except Exception:
                self._driver.disconnect()
                raise

    def close(self) -> None:
        with self._lock:
            self._driver.disconnect()
            if self._http is not None:
                self._http.close()
                self._http = None


def _python_column(batch: pa.RecordBatch, c: PlanColumn, token: str) -> list[Any]:
    """Baseline conversion for clickhouse-driver: Arrow → Python lists (per-row objects)."""
    if not c.source:
        return [token] * batch.num_rows
    a = batch.column(c.source)
    base = parse_type(c.ch_type)
    if c.name.endswith((".keys", ".values")) and c.name != c.source:
        part = 0 if c.name.endswith(".keys") else 1
        return _python_parts(a, part)
    if pa.types.is_timestamp(a.type):
        if base.name == "DateTime":
            return pc.cast(a, pa.timestamp("s", tz="UTC"), safe=False).to_pylist()
        return nanoseconds(a).tolist()
    if pa.types.is_list(a.type) and pa.types.is_timestamp(a.type.value_type):
        return _relist(a, a.flatten().cast(pa.int64())).to_pylist()
    return a.to_pylist()


def _python_parts(a: pa.Array, part: int) -> list[Any]:
    if pa.types.is_map(a.type):
        return _relist(a, map_parts(a)[part]).to_pylist()
    inner = _python_parts(a.flatten(), part)
    offs = a.offsets.to_numpy(zero_copy_only=False)
    o0 = int(offs[0])
    return [inner[int(x) - o0 : int(y) - o0] for x, y in itertools.pairwise(offs)]


def _relist(a: pa.Array, values: pa.Array) -> pa.Array:
    """A list array with ``a``'s sizes over ``values`` (rebased offsets)."""
    offs = a.offsets.to_numpy(zero_copy_only=False).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offs - offs[0]), values)
