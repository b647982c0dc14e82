"""TEMPORARY stand-in for connectors.clickhouse / clickhouse_schema until they land."""

from __future__ import annotations

import re
import threading
from typing import Any

import pyarrow as pa
from pydantic import Field

from otelwax.settings import StrictModel


class ClickHouseConfig(StrictModel):
    mode: str = "embedded"
    path: str = ".data/chdb"
    host: str = "127.0.0.1"
    port: int = 9000
    database: str = "default"


def _lit(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_lit(x) for x in v) + ")" if v else "('')"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(int(v))


class _Chdb:
    _lock = threading.RLock()

    def __init__(self, cfg: ClickHouseConfig) -> None:
        import chdb.session as cs

        self._s = cs.Session(cfg.path)

    def execute(self, sql: str, params: dict | None = None):
        if params:
            sql = re.sub(r"%\((\w+)\)s", lambda m: _lit(params[m.group(1)]), sql)
        with self._lock:
            r = self._s.query(sql, "ArrowTable")
        try:
            t = r
            if t is None or not hasattr(t, "num_rows"):
                return []
            cols = [c.to_pylist() for c in t.columns]
            return list(zip(*cols, strict=False))
        except Exception:
            return []

    def insert_arrow(
        self, table: str, batch: pa.RecordBatch, *, dedup_token: str | None = None
    ) -> int:
        tbl = pa.Table.from_batches([batch])  # noqa: F841
        cols = ",".join(f"`{c}`" for c in batch.schema.names)
        st = f" SETTINGS insert_deduplication_token='{dedup_token}'" if dedup_token else ""
        with self._lock:
            self._s.query(f"INSERT INTO `{table}` ({cols}){st} SELECT * FROM Python(tbl)")
        return batch.num_rows

    def table_columns(self, table: str):
        return self.execute(f"SELECT name, type FROM system.columns WHERE table = '{table}'")

    def supports_dedup_token(self) -> bool:
        return True

    def close(self) -> None:
        pass


def open_client(cfg: ClickHouseConfig):
    return _Chdb(cfg)


def ensure_traces_table(client, cfg, table):
    client.execute(
        f"CREATE TABLE IF NOT EXISTS `{table}` (Timestamp DateTime64(9), TraceId String, SpanId String, "
        "ParentSpanId String, TraceState String, SpanName String, SpanKind String, ServiceName String, "
        "ResourceAttributes Map(String,String), ScopeName String, ScopeVersion String, "
        "SpanAttributes Map(String,String), Duration UInt64, StatusCode String, StatusMessage String, "
        "`Events.Timestamp` Array(DateTime64(9)), `Events.Name` Array(String), "
        "`Events.Attributes` Array(Map(String,String)), `Links.TraceId` Array(String), "
        "`Links.SpanId` Array(String), `Links.TraceState` Array(String), "
        "`Links.Attributes` Array(Map(String,String))) ENGINE = MergeTree ORDER BY (ServiceName, Timestamp) "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
