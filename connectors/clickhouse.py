"""ClickHouse storage for Arrow batches: embedded chdb or a ClickHouse server.

    cfg = ClickHouseConfig(mode="server", host="127.0.0.1", port=19000, http_port=18123)
    client = open_client(cfg)                 # I/O starts here, never in the config
    problems = check_table(client, cfg.traces_table, TRACES_SCHEMA)
    rows = client.insert_arrow(cfg.traces_table, batch, dedup_token="otlp_spans:3:100-199")

Embedded (``mode: embedded``, the default): chdb in-process, data under ``path``. chdb allows one
engine (one data path) per process, so every ``EmbeddedClient`` of a process shares one session
behind a lock (bytewax worker threads may insert concurrently). Arrow goes in through chdb's
``Python()`` table function, which reads the Arrow buffers (no per-row Python).

Server (``mode: server``): queries go over the native protocol (clickhouse-driver, port 9000);
inserts are encoded from the Arrow buffers straight into ClickHouse's ``Native`` format with
numpy (no Python objects per row) and POSTed to the HTTP interface (``insert_format:
native_http``), or handed to clickhouse-driver as Python column lists (``insert_format: driver``,
the slower baseline). Either way the sink writes exactly the columns the table has, by name,
converted to the table's types — including the legacy layout for ClickHouse 18.16 (see
``connectors.clickhouse_schema``: ``M.keys``/``M.values`` for maps, ``Timestamp DateTime`` +
``TimestampNs``, ``InsertToken`` for emulated token deduplication).

``execute(sql, params)`` takes ClickHouse's ``{name:Type}`` placeholders in both modes (the
server client substitutes escaped literals because 18.16 has no server-side parameters).
"""

from __future__ import annotations

import base64
import http.client
import itertools
import logging
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, SecretStr, field_validator

from connectors.clickhouse_schema import IDENT_RE, TableOptions, create_schema, quote_ident
from otelwax.resilience import BreakerConfig, RetryConfig
from otelwax.settings import StrictModel

__all__ = [
    "BatchSettings",
    "ClickHouseClient",
    "ClickHouseConfig",
    "ClickHouseError",
    "ClickHouseTlsConfig",
    "EmbeddedClient",
    "ServerClient",
    "check_table",
    "encode_native",
    "init_schema",
    "is_transient",
    "open_client",
]

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:/@=+,-]{1,512}$")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]+\}")
CHDB_MALLOC_CONF = "dirty_decay_ms:300,muzzy_decay_ms:0"
"""``JE_MALLOC_CONF`` for chdb's allocator unless set: return freed pages to the OS soon."""


# --- configuration -----------------------------------------------------------------------------


class BatchSettings(StrictModel):
    """When a sink flushes: whichever comes first."""

    max_rows: int = Field(100_000, gt=0, description="rows per insert (ClickHouse likes ≥10K)")
    max_seconds: float = Field(1.0, gt=0, description="longest a row waits before a flush")


class ClickHouseTlsConfig(StrictModel):
    """How a ``secure`` connection checks the server's certificate."""

    ca_file: str | None = Field(None, description="PEM roots to trust (None: the system's)")
    verify: bool = Field(
        True, description="check the certificate and host name (false only for tests)"
    )

    def ssl_context(self) -> ssl.SSLContext:
        """The client context (reads ``ca_file``: call it when connecting)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _password_from_env() -> SecretStr:
    return SecretStr(os.environ.get("OTELWAX_CLICKHOUSE_PASSWORD", ""))


class ClickHouseConfig(StrictModel):
    """Where and how rows are stored. Validation does no I/O; ``open_client`` connects."""

    mode: Literal["embedded", "server"] = "embedded"
    path: str = Field(
        ".data/chdb/{flow}",
        description="embedded: chdb data folder; {flow} is the flow's name (traces, logs, "
        "metrics, spanmetrics), so flows sharing this section each get a folder: chdb allows "
        "one process per folder",
    )
    host: str = "127.0.0.1"
    port: int = Field(9000, gt=0, lt=65536, description="server: native protocol port")
    http_port: int = Field(8123, gt=0, lt=65536, description="server: HTTP port (inserts)")
    user: str = "default"
    password: SecretStr = Field(
        default_factory=_password_from_env, description="default: $OTELWAX_CLICKHOUSE_PASSWORD"
    )
    secure: bool = Field(
        False,
        description="server: TLS on both ports (HTTPS inserts, native secure port): set port "
        "and http_port to the server's tcp_port_secure (9440) and https_port (8443)",
    )
    tls: ClickHouseTlsConfig = Field(default_factory=ClickHouseTlsConfig)
    database: str = "otel"
    traces_table: str = "otel_traces"
    logs_table: str = "otel_logs"
    create_schema: bool = Field(False, description="run the DDL when the sink starts")
    tables: TableOptions = Field(default_factory=TableOptions)
    insert_format: Literal["native_http", "driver"] = "native_http"
    connect_timeout_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(60.0, gt=0, description="send/receive timeout of one query")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("database", "traces_table", "logs_table")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not IDENT_RE.match(v):
            raise ValueError(f"must match {IDENT_RE.pattern}")
        return v

    def for_flow(self, flow: str) -> ClickHouseConfig:
        """This config with ``{flow}`` in ``path`` replaced by ``flow``."""
        if "{flow}" not in self.path:
            return self
        return self.model_copy(update={"path": self.path.replace("{flow}", flow)})


# --- errors ------------------------------------------------------------------------------------


class ClickHouseError(RuntimeError):
    """A ClickHouse error with its server error code (0 when the server did not answer)."""

    def __init__(self, message: str, code: int = 0, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


# Server error codes worth retrying: overload, timeouts, network, read-only replica, parts.
_TRANSIENT_CODES = {3, 159, 160, 164, 173, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999}


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
            return code in _TRANSIENT_CODES
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, ConnectionError | TimeoutError | http.client.HTTPException | OSError):
        return True
    if isinstance(exc, ClickHouseError):
        return code in _TRANSIENT_CODES or code == 0
    return False


# --- client protocol ---------------------------------------------------------------------------


@runtime_checkable
class ClickHouseClient(Protocol):
    """What flows and sinks use; both chdb and the server implement it."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one statement; ``{name:Type}`` placeholders are filled from ``params``."""
        ...

    def insert_arrow(
        self, table: str, batch: pa.RecordBatch, *, dedup_token: str | None = None
    ) -> int:
        """Insert the batch's columns the table has; returns rows written (0 if deduplicated)."""
        ...

    def table_columns(self, table: str) -> dict[str, str]:
        """Insertable columns of ``table`` (``name -> type``); {} when it does not exist."""
        ...

    def supports_dedup_token(self, table: str | None = None) -> bool:
        """True when a repeated ``dedup_token`` is skipped (natively or emulated)."""
        ...

    def close(self) -> None: ...


def _split_table(table: str, default_db: str) -> tuple[str, str]:
    db, _, name = table.rpartition(".")
    db = db or default_db
    quote_ident(db)
    quote_ident(name)
    return db, name


def _check_token(token: str | None) -> None:
    if token is not None and not TOKEN_RE.match(token):
        raise ValueError(f"dedup token {token!r} must match {TOKEN_RE.pattern}")


def _sql_literal(v: Any) -> str:
    """A ClickHouse literal for a parameter value (strings escaped)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_sql_literal(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def _substitute(sql: str, params: dict[str, Any] | None) -> str:
    """Replace ``{name:Type}`` placeholders with escaped literals (for servers without params)."""
    if not params:
        return sql

    def rep(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise KeyError(f"query parameter {name!r} not given")
        return _sql_literal(params[name])

    return _PARAM_RE.sub(rep, sql)


# --- embedded (chdb) ---------------------------------------------------------------------------


class _ChdbEngine:
    """The one chdb session of this process (chdb allows a single data path per process)."""

    _instance: _ChdbEngine | None = None
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        # chdb's jemalloc keeps freed pages for 10 s by default: a flow peaked at ~1 GiB RSS.
        # Decay 0 gave ~800 MiB but page faults cost a third of the flow's throughput and
        # doubled query CPU; 300 ms kept ~930 MiB at full speed (bench/traces_flow_bench.py).
        # Read once when chdb loads; a value set by the user wins.
        os.environ.setdefault("JE_MALLOC_CONF", CHDB_MALLOC_CONF)
        from chdb import session

        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.session = session.Session(path)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClickHouseError(
                f"cannot open embedded chdb at {path} ({first}); chdb allows one process per "
                "folder: if another flow runs on it, give each flow its own clickhouse.path "
                "(e.g. flows.logs.clickhouse.path: .data/chdb-logs) or use a ClickHouse "
                "server (clickhouse.mode: server)",
                transient=False,
            ) from exc
        self.lock = threading.RLock()
        self.refs = 0

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


def _chdb_error(exc: Exception) -> ClickHouseError:
    msg = str(exc)
    m = re.search(r"Code: (\d+)", msg)
    code = int(m.group(1)) if m else 0
    return ClickHouseError(msg, code, transient=code in _TRANSIENT_CODES)


class EmbeddedClient:
    """chdb-backed client; all instances of a process share one engine (thread-safe)."""

    def __init__(self, cfg: ClickHouseConfig) -> None:
        if "{flow}" in cfg.path:
            raise ValueError(
                f"clickhouse.path {cfg.path!r}: {{flow}} is resolved by a flow's settings; "
                "outside a flow use ClickHouseConfig.for_flow(name) or a path without it"
            )
        self.cfg = cfg
        self._engine = _ChdbEngine.acquire(cfg.path)
        self._closed = False
        self._columns: dict[str, dict[str, str]] = {}

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with self._engine.lock:
            try:
                res = self._engine.session.query(sql, "ArrowTable", params=params)
            except Exception as exc:
                raise _chdb_error(exc) from exc
        if not isinstance(res, pa.Table) or res.num_columns == 0:
            return []
        cols = [c.to_pylist() for c in res.columns]
        return list(zip(*cols, strict=True))

    def table_columns(self, table: str) -> dict[str, str]:
        db, name = _split_table(table, self.cfg.database)
        rows = self.execute(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {t:String} AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') "
            "ORDER BY position",
            {"db": db, "t": name},
        )
        return {str(n): str(t) for n, t in rows}

    def supports_dedup_token(self, table: str | None = None) -> bool:
        return True

    def insert_arrow(
        self, table: str, batch: pa.RecordBatch, *, dedup_token: str | None = None
    ) -> int:
        _check_token(dedup_token)
        if batch.num_rows == 0:
            return 0
        db, name = _split_table(table, self.cfg.database)
        key = f"{db}.{name}"
        cols = self._columns.get(key)
        if cols is None:
            cols = self._columns[key] = self.table_columns(key)
            if not cols:
                raise ClickHouseError(f"table {key} does not exist", 60, transient=False)
        names = [n for n in batch.schema.names if n in cols]
        if len(names) != batch.num_columns:
            batch = batch.select(names)
        collist = ", ".join(f"`{n}`" for n in names)
        settings = ""
        if dedup_token is not None:
            settings = f" SETTINGS insert_deduplication_token = '{dedup_token}'"
        # chdb's Python() table function finds ``otelwax_batch`` in this frame by name; it
        # reads the Arrow buffers directly (measured ~2x faster than an ArrowStream body at
        # 100K rows: bench/clickhouse_bench.py).
        otelwax_batch = batch  # noqa: F841
        sql = (
            f"INSERT INTO {quote_ident(db)}.{quote_ident(name)} ({collist}){settings} "
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


# --- Native format encoding (vectorized) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _T:
    """A parsed ClickHouse type: name and arguments (types or raw literals)."""

    name: str
    args: tuple[Any, ...] = ()

    def render(self, strip_lc: bool = True) -> str:
        if strip_lc and self.name == "LowCardinality":
            return self.args[0].render(strip_lc)
        if not self.args:
            return self.name
        parts = [a.render(strip_lc) if isinstance(a, _T) else str(a) for a in self.args]
        return f"{self.name}({', '.join(parts)})"


def parse_type(s: str) -> _T:
    """Parse a ClickHouse type string like ``Array(Map(LowCardinality(String), String))``."""
    pos = 0

    def ws() -> None:
        nonlocal pos
        while pos < len(s) and s[pos] == " ":
            pos += 1

    def node() -> Any:
        nonlocal pos
        ws()
        if pos < len(s) and s[pos] in "'\"":
            q = s[pos]
            end = s.index(q, pos + 1)
            lit = s[pos : end + 1]
            pos = end + 1
            return lit
        start = pos
        while pos < len(s) and (s[pos].isalnum() or s[pos] in "_."):
            pos += 1
        name = s[start:pos]
        ws()
        args: list[Any] = []
        if pos < len(s) and s[pos] == "(":
            pos += 1
            while True:
                args.append(node())
                ws()
                if s[pos] == ",":
                    pos += 1
                    continue
                if s[pos] == ")":
                    pos += 1
                    break
                raise ValueError(f"cannot parse ClickHouse type {s!r}")
        if name.isdigit():
            return int(name)
        return _T(name, tuple(args))

    t = node()
    if not isinstance(t, _T):
        raise ValueError(f"cannot parse ClickHouse type {s!r}")
    return t


class _Incompatible(TypeError):
    pass


_INT_TYPES = {
    "UInt8": np.uint8,
    "UInt16": np.uint16,
    "UInt32": np.uint32,
    "UInt64": np.uint64,
    "Int8": np.int8,
    "Int16": np.int16,
    "Int32": np.int32,
    "Int64": np.int64,
    "Float32": np.float32,
    "Float64": np.float64,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bstr(s: str) -> bytes:
    b = s.encode()
    return _varint(len(b)) + b


def _enc_strings(arr: pa.Array) -> Any:
    """String column: varint length + UTF-8 bytes per row.

    The varint prefixes are built with numpy (n small values), then Arrow's
    ``binary_join_element_wise`` glues prefix and string row by row in C++; the data buffer of
    that result is exactly the Native encoding. ~15 M strings/s, no Python per row.
    """
    n = len(arr)
    if n == 0:
        return b""
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    lens = np.diff(offs).astype(np.int64)
    vs = 1 + (lens >= 1 << 7) + (lens >= 1 << 14) + (lens >= 1 << 21) + (lens >= 1 << 28)
    if int(vs.max()) == 1:
        pdata = lens.astype(np.uint8)
        poffs = np.arange(n + 1, dtype=np.int32)
    else:
        grid = np.empty((n, 5), dtype=np.uint8)
        for k in range(5):
            grid[:, k] = ((lens >> (7 * k)) & 0x7F) | ((vs > k + 1).astype(np.int64) << 7)
        pdata = grid[np.arange(5) < vs[:, None]]
        poffs = np.concatenate([[0], np.cumsum(vs)]).astype(np.int32)
    prefix = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(poffs), pa.py_buffer(pdata)])
    joined = pc.binary_join_element_wise(prefix, arr.cast(pa.binary()), b"")
    jb = joined.buffers()
    jo = np.frombuffer(jb[1], dtype=np.int32, count=n + 1, offset=joined.offset * 4)
    return memoryview(jb[2])[int(jo[0]) : int(jo[-1])]


def _ns(arr: pa.Array) -> np.ndarray:
    a = arr.cast(pa.int64()) if not pa.types.is_int64(arr.type) else arr
    if a.null_count:
        a = pc.fill_null(a, 0)
    return a.to_numpy(zero_copy_only=False)


def _offsets(arr: pa.Array) -> bytes:
    """Array/Map column sizes: cumulative end offsets as UInt64 (works on sliced arrays)."""
    offs = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    return (offs[1:] - offs[0]).astype("<u8").tobytes()


def _map_parts(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Keys and values of the (possibly sliced) maps: MapArray.keys/items ignore the slice."""
    if len(arr) == 0:
        return arr.keys.slice(0, 0), arr.items.slice(0, 0)
    offs = arr.offsets
    o0 = offs[0].as_py()
    n = offs[len(offs) - 1].as_py() - o0
    return arr.keys.slice(o0, n), arr.items.slice(o0, n)


def _encoder(atype: pa.DataType, t: _T) -> Callable[[pa.Array], list[Any]]:
    """Function that encodes an Arrow array of ``atype`` as ClickHouse type ``t`` (Native)."""
    name = t.name
    if name == "LowCardinality":
        return _encoder(atype, t.args[0])
    if name == "Nullable":
        inner = _encoder(atype, t.args[0])
        return lambda a: [bytes(len(a)), *inner(a)]
    if name == "String":
        if pa.types.is_string(atype) or pa.types.is_large_string(atype):
            return lambda a: [_enc_strings(a)]
        raise _Incompatible(f"{atype} cannot be stored as String")
    if pa.types.is_timestamp(atype):
        if name == "DateTime":
            return lambda a: [
                np.clip(np.floor_divide(_ns(a), 1_000_000_000), 0, 2**32 - 1)
                .astype("<u4")
                .tobytes()
            ]
        if name == "DateTime64":
            scale = 10 ** (9 - int(t.args[0])) if t.args else 1000
            return lambda a: [np.floor_divide(_ns(a), scale).astype("<i8").tobytes()]
        if name in ("Int64", "UInt64"):
            return lambda a: [_ns(a).astype("<i8").tobytes()]
        raise _Incompatible(f"{atype} cannot be stored as {t.render(False)}")
    if name == "Bool" and (pa.types.is_boolean(atype) or pa.types.is_integer(atype)):
        # Native Bool is one byte per row, like UInt8
        def enc_bool(a: pa.Array) -> list[Any]:
            if a.null_count:
                a = pc.fill_null(a, False if pa.types.is_boolean(atype) else 0)
            return [a.to_numpy(zero_copy_only=False).astype("u1").tobytes()]

        return enc_bool
    if name in _INT_TYPES:
        if pa.types.is_integer(atype) or pa.types.is_floating(atype):
            dt = np.dtype(_INT_TYPES[name]).newbyteorder("<")

            def enc_num(a: pa.Array) -> list[Any]:
                if a.null_count:
                    a = pc.fill_null(a, 0)
                return [a.to_numpy(zero_copy_only=False).astype(dt).tobytes()]

            return enc_num
        raise _Incompatible(f"{atype} cannot be stored as {name}")
    if name == "Map" and pa.types.is_map(atype):
        kenc = _encoder(atype.key_type, t.args[0])
        venc = _encoder(atype.item_type, t.args[1])

        def enc_map(a: pa.Array) -> list[Any]:
            k, v = _map_parts(a)
            return [_offsets(a), *kenc(k), *venc(v)]

        return enc_map
    if name == "Array" and (pa.types.is_list(atype) or pa.types.is_large_list(atype)):
        inner = _encoder(atype.value_type, t.args[0])
        return lambda a: [_offsets(a), *inner(a.flatten())]
    raise _Incompatible(f"{atype} cannot be stored as {t.render(False)}")


def _part_encoder(atype: pa.DataType, t: _T, part: int) -> Callable[[pa.Array], list[Any]]:
    """Encoder for the keys (part 0) or values (part 1) of a map / list<map> as Array columns."""
    if t.name != "Array":
        raise _Incompatible(f"map {'keys' if part == 0 else 'values'} need an Array column")
    if pa.types.is_map(atype):
        inner = _encoder(atype.key_type if part == 0 else atype.item_type, t.args[0])
        return lambda a: [_offsets(a), *inner(_map_parts(a)[part])]
    if pa.types.is_list(atype) and pa.types.is_map(atype.value_type):
        sub = _part_encoder(atype.value_type, t.args[0], part)
        return lambda a: [_offsets(a), *sub(a.flatten())]
    raise _Incompatible(f"{atype} has no map keys/values")


@dataclass(frozen=True, slots=True)
class _Col:
    name: str  # table column
    ch_type: str  # type sent in the block header (LowCardinality stripped)
    source: str  # batch field name, or "" for the token column
    encode: Callable[[pa.Array], list[Any]] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    cols: tuple[_Col, ...]
    problems: tuple[str, ...]
    token_column: bool


TOKEN_COLUMN = "InsertToken"


def plan_columns(schema: pa.Schema, table_cols: dict[str, str]) -> _Plan:
    """Match a batch schema to a table: which table column gets what, and what cannot be written.

    A field F goes to column F when the types are compatible; a map (or list of maps) F may go to
    ``F.keys`` + ``F.values`` Array columns instead; a timestamp F also fills ``FNs``
    (nanoseconds) when the table has it; ``InsertToken`` receives the dedup token.
    """
    cols: list[_Col] = []
    problems: list[str] = []
    for f in schema:
        done = False
        if f.name in table_cols:
            t = parse_type(table_cols[f.name])
            try:
                cols.append(_Col(f.name, t.render(), f.name, _encoder(f.type, t)))
                done = True
            except _Incompatible as exc:
                problems.append(
                    f"column {f.name!r} has type {table_cols[f.name]}, "
                    f"incompatible with the {f.type} written: {exc}"
                )
                continue
        kn, vn = f"{f.name}.keys", f"{f.name}.values"
        if not done and kn in table_cols and vn in table_cols:
            try:
                for part, cn in ((0, kn), (1, vn)):
                    t = parse_type(table_cols[cn])
                    cols.append(_Col(cn, t.render(), f.name, _part_encoder(f.type, t, part)))
                done = True
            except _Incompatible as exc:
                problems.append(f"columns {kn!r}/{vn!r} cannot hold {f.name} ({f.type}): {exc}")
                continue
        if pa.types.is_timestamp(f.type) and f"{f.name}Ns" in table_cols:
            t = parse_type(table_cols[f"{f.name}Ns"])
            try:
                cols.append(_Col(f"{f.name}Ns", t.render(), f.name, _encoder(f.type, t)))
            except _Incompatible as exc:
                problems.append(f"column {f.name}Ns: {exc}")
        if not done:
            alt = ""
            if pa.types.is_map(f.type) or (
                pa.types.is_list(f.type) and pa.types.is_map(f.type.value_type)
            ):
                alt = f" (or {kn!r} + {vn!r} Array columns)"
            problems.append(f"column {f.name!r} ({f.type}) is missing{alt}")
    token = TOKEN_COLUMN in table_cols and TOKEN_COLUMN not in schema.names
    if token:
        cols.append(_Col(TOKEN_COLUMN, parse_type(table_cols[TOKEN_COLUMN]).render(), "", None))
    return _Plan(tuple(cols), tuple(problems), token)


def encode_native(batch: pa.RecordBatch, plan: _Plan, token: str = "") -> bytes:
    """One ClickHouse ``Native`` block (HTTP flavour: no block info) holding the planned columns."""
    n = batch.num_rows
    parts: list[Any] = [_varint(len(plan.cols)), _varint(n)]
    for c in plan.cols:
        parts.append(_bstr(c.name))
        parts.append(_bstr(c.ch_type))
        if c.encode is None:  # the InsertToken column: one constant string
            tok = token.encode()
            parts.append((_varint(len(tok)) + tok) * n)
        else:
            parts.extend(c.encode(batch.column(c.source)))
    return b"".join(parts)


# --- server ------------------------------------------------------------------------------------


class ServerClient:
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
        self._plans: dict[tuple[str, pa.Schema], _Plan] = {}
        self._columns: dict[str, dict[str, str]] = {}
        self.version = ""
        self.legacy = False

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
            try:
                return list(self._driver.execute(_substitute(sql, params)) or [])
            except Exception:
                self._driver.disconnect()
                raise

    def table_columns(self, table: str) -> dict[str, str]:
        db, name = _split_table(table, self.cfg.database)
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
        return TOKEN_COLUMN in self._table_cols(table)

    def _table_cols(self, table: str) -> dict[str, str]:
        db, name = _split_table(table, self.cfg.database)
        key = f"{db}.{name}"
        cols = self._columns.get(key)
        if cols is None:
            cols = self.table_columns(key)
            if not cols:
                raise ClickHouseError(f"table {key} does not exist", 60, transient=False)
            self._columns[key] = cols
        return cols

    def _plan(self, table: str, schema: pa.Schema) -> _Plan:
        db, name = _split_table(table, self.cfg.database)
        key = (f"{db}.{name}", schema)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_columns(schema, self._table_cols(key[0]))
            if plan.problems:
                log.warning("%s: %s", key[0], "; ".join(plan.problems))
            self._plans[key] = plan
        return plan

    def insert_arrow(
        self, table: str, batch: pa.RecordBatch, *, dedup_token: str | None = None
    ) -> int:
        _check_token(dedup_token)
        if batch.num_rows == 0:
            return 0
        db, name = _split_table(table, self.cfg.database)
        qt = f"{quote_ident(db)}.{quote_ident(name)}"
        plan = self._plan(f"{db}.{name}", batch.schema)
        if dedup_token is not None and self.legacy:
            if not plan.token_column:
                raise ClickHouseError(
                    f"{db}.{name} has no {TOKEN_COLUMN} column: this server cannot deduplicate "
                    "inserts (recreate the table with `otelwax clickhouse init`)",
                    transient=False,
                )
            seen = self._token_rows(qt, dedup_token)
            if seen >= batch.num_rows:
                log.info("%s: token %s already stored, insert skipped", qt, dedup_token)
                return 0
            if seen:
                # Part of an earlier try landed (a batch spanning partitions is written as one
                # part per partition). Remove it, then insert the whole batch again: a mutation
                # only touches parts that exist when it is created, never the new insert.
                log.warning(
                    "%s: token %s partly stored (%d of %d rows); replacing it",
                    qt,
                    dedup_token,
                    seen,
                    batch.num_rows,
                )
                self.execute(
                    f"ALTER TABLE {qt} DELETE WHERE {TOKEN_COLUMN} = {{tok:String}}",
                    {"tok": dedup_token},
                )
        if self.cfg.insert_format == "driver":
            self._insert_driver(qt, batch, plan, dedup_token)
        else:
            self._insert_http(qt, batch, plan, dedup_token)
        return batch.num_rows

    def _token_rows(self, qt: str, token: str) -> int:
        rows = self.execute(
            f"SELECT count() FROM {qt} WHERE {TOKEN_COLUMN} = {{tok:String}}", {"tok": token}
        )
        return int(rows[0][0]) if rows else 0

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

    def _insert_http(self, qt: str, batch: pa.RecordBatch, plan: _Plan, token: str | None) -> None:
        body = encode_native(batch, plan, token or "")
        cols = ", ".join(f"`{c.name}`" for c in plan.cols)
        q: dict[str, str] = {"query": f"INSERT INTO {qt} ({cols}) FORMAT Native"}
        if token is not None and not self.legacy:
            q["insert_deduplication_token"] = token
        auth = f"{self.cfg.user}:{self.cfg.password.get_secret_value()}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(auth).decode(),
            "Content-Type": "application/octet-stream",
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
        self, qt: str, batch: pa.RecordBatch, plan: _Plan, token: str | None
    ) -> None:
        columns = [_python_column(batch, c, token or "") for c in plan.cols]
        cols = ", ".join(f"`{c.name}`" for c in plan.cols)
        settings = {"insert_deduplication_token": token} if token and not self.legacy else None
        with self._lock:
            try:
                self._driver.execute(
                    f"INSERT INTO {qt} ({cols}) VALUES", columns, columnar=True, settings=settings
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


def _python_column(batch: pa.RecordBatch, c: _Col, token: str) -> list[Any]:
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
        return _ns(a).tolist()
    if pa.types.is_list(a.type) and pa.types.is_timestamp(a.type.value_type):
        return _relist(a, a.flatten().cast(pa.int64())).to_pylist()
    return a.to_pylist()


def _python_parts(a: pa.Array, part: int) -> list[Any]:
    if pa.types.is_map(a.type):
        return _relist(a, _map_parts(a)[part]).to_pylist()
    inner = _python_parts(a.flatten(), part)
    offs = a.offsets.to_numpy(zero_copy_only=False)
    o0 = int(offs[0])
    return [inner[int(x) - o0 : int(y) - o0] for x, y in itertools.pairwise(offs)]


def _relist(a: pa.Array, values: pa.Array) -> pa.Array:
    """A list array with ``a``'s sizes over ``values`` (rebased offsets)."""
    offs = a.offsets.to_numpy(zero_copy_only=False).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offs - offs[0]), values)


# --- factory, schema, health check -------------------------------------------------------------


def open_client(cfg: ClickHouseConfig) -> EmbeddedClient | ServerClient:
    """Open the configured client (I/O starts here). Runs the DDL if ``cfg.create_schema``."""
    client: EmbeddedClient | ServerClient
    if cfg.mode == "embedded":
        client = EmbeddedClient(cfg)
    else:
        client = ServerClient(cfg)
        try:
            client.connect()
        except Exception:
            client.close()
            raise
    if cfg.create_schema:
        init_schema(client, cfg)
    return client


def init_schema(client: ClickHouseClient, cfg: ClickHouseConfig) -> list[str]:
    """Create the database and tables of ``cfg`` (idempotent). Returns the statements run."""
    return create_schema(client, cfg.database, cfg.traces_table, cfg.logs_table, cfg.tables)


def check_table(client: ClickHouseClient, table: str, schema: pa.Schema) -> list[str]:
    """Problems that keep ``schema``'s batches from being stored in ``table`` (empty: all fine)."""
    cols = client.table_columns(table)
    if not cols:
        return [f"table {table} does not exist (create it with `otelwax clickhouse init`)"]
    plan = plan_columns(schema, cols)
    return [f"{table}: {p}" for p in plan.problems]
