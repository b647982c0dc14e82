"""Arrow batches encoded as ClickHouse ``Native`` blocks, vectorized (numpy and Arrow compute,
no Python objects per row): ``plan_columns`` matches a batch schema to a table's columns,
``encode_native`` writes one block for the HTTP interface; a ``StringArena`` holds its String
columns from one block to the next."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.clickhouse_json_schema import has_json_columns
from connectors.clickhouse_types import ChType, parse_type
from otelwax.arrowbufs import values_view
from otelwax.codec import codec_name, native

__all__ = ["TOKEN_COLUMN", "InsertPlan", "StringArena", "encode_native", "plan_columns"]


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
    """String column: varint length + UTF-8 bytes per row (the native codec writes it in one
    pass; ``enc_strings_arrow`` is the reference it must equal)."""
    if native.NATIVE_STRINGS and codec_name() == "native":  # OTELWAX_CODEC=python: reference
        return native.native_strings(arr)
    return enc_strings_arrow(arr)


def enc_strings_arrow(arr: pa.Array) -> Any:
    """:func:`_enc_strings` with numpy and Arrow compute.

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


def nanoseconds(arr: pa.Array) -> np.ndarray:
    a = arr.cast(pa.int64()) if not pa.types.is_int64(arr.type) else arr
    if a.null_count:
        a = pc.fill_null(a, 0)
    return values_view(a)


def _offsets(arr: pa.Array) -> bytes:
    """Array/Map column sizes: cumulative end offsets as UInt64 (works on sliced arrays)."""
    offs = values_view(arr.offsets).astype(np.int64)
    return (offs[1:] - offs[0]).astype("<u8").tobytes()


def map_parts(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Keys and values of the (possibly sliced) maps: MapArray.keys/items ignore the slice."""
    if len(arr) == 0:
        return arr.keys.slice(0, 0), arr.items.slice(0, 0)
    offs = arr.offsets
    o0 = offs[0].as_py()
    n = offs[len(offs) - 1].as_py() - o0
    return arr.keys.slice(o0, n), arr.items.slice(o0, n)


def _encoder(atype: pa.DataType, t: ChType) -> Callable[[pa.Array], list[Any]]:
    """Function that encodes an Arrow array of ``atype`` as ClickHouse type ``t`` (Native): its
    pieces, bytes-like except a String column's, which stays the Arrow array for
    ``native_parts`` to encode (into a ``StringArena`` when it has one)."""
    name = t.name
    if name == "LowCardinality":
        return _encoder(atype, t.args[0])
    if name == "Nullable":
        inner = _encoder(atype, t.args[0])
        return lambda a: [bytes(len(a)), *inner(a)]
    if name == "String":
        if pa.types.is_string(atype) or pa.types.is_large_string(atype):
            return lambda a: [a]
        raise _Incompatible(f"{atype} cannot be stored as String")
    if pa.types.is_timestamp(atype):
        if name == "DateTime":
            return lambda a: [
                np.clip(np.floor_divide(nanoseconds(a), 1_000_000_000), 0, 2**32 - 1)
                .astype("<u4")
                .tobytes()
            ]
        if name == "DateTime64":
            scale = 10 ** (9 - int(t.args[0])) if t.args else 1000
            return lambda a: [np.floor_divide(nanoseconds(a), scale).astype("<i8").tobytes()]
        if name in ("Int64", "UInt64"):
            return lambda a: [nanoseconds(a).astype("<i8").tobytes()]
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
                return [values_view(a).astype(dt).tobytes()]

            return enc_num
        raise _Incompatible(f"{atype} cannot be stored as {name}")
    if name == "Map" and pa.types.is_map(atype):
        kenc = _encoder(atype.key_type, t.args[0])
        venc = _encoder(atype.item_type, t.args[1])

        def enc_map(a: pa.Array) -> list[Any]:
            k, v = map_parts(a)
            return [_offsets(a), *kenc(k), *venc(v)]

        return enc_map
    if name == "Array" and (pa.types.is_list(atype) or pa.types.is_large_list(atype)):
        inner = _encoder(atype.value_type, t.args[0])
        return lambda a: [_offsets(a), *inner(a.flatten())]
    raise _Incompatible(f"{atype} cannot be stored as {t.render(False)}")


def _part_encoder(atype: pa.DataType, t: ChType, part: int) -> Callable[[pa.Array], list[Any]]:
    """Encoder for the keys (part 0) or values (part 1) of a map / list<map> as Array columns."""
    if t.name != "Array":
        raise _Incompatible(f"map {'keys' if part == 0 else 'values'} need an Array column")
    if pa.types.is_map(atype):
        inner = _encoder(atype.key_type if part == 0 else atype.item_type, t.args[0])
        return lambda a: [_offsets(a), *inner(map_parts(a)[part])]
    if pa.types.is_list(atype) and pa.types.is_map(atype.value_type):
        sub = _part_encoder(atype.value_type, t.args[0], part)
        return lambda a: [_offsets(a), *sub(a.flatten())]
    raise _Incompatible(f"{atype} has no map keys/values")


_STR = ChType("String")


def _sent_type(t: ChType) -> ChType:
    """``t`` with every ``JSON`` replaced by ``Map(String, String)``: a JSON column (tables.json)
    is sent the maps the batch holds, and the server converts them on input
    (``input_format_native_allow_types_conversion``, on by default)."""
    if t.name == "JSON":
        return ChType("Map", (_STR, _STR))
    if not t.args:
        return t
    return ChType(t.name, tuple(_sent_type(a) if isinstance(a, ChType) else a for a in t.args))


@dataclass(frozen=True, slots=True)
class PlanColumn:
    name: str  # table column
    ch_type: str  # type sent in the block header (LowCardinality stripped)
    source: str  # batch field name, or "" for the token column
    encode: Callable[[pa.Array], list[Any]] | None


@dataclass(frozen=True, slots=True)
class InsertPlan:
    cols: tuple[PlanColumn, ...]
    problems: tuple[str, ...]
    token_column: bool
    json: bool = False  # some column is sent to a JSON column


TOKEN_COLUMN = "InsertToken"


def plan_columns(schema: pa.Schema, table_cols: dict[str, str]) -> InsertPlan:
    """Match a batch schema to a table: which table column gets what, and what cannot be written.

    A field F goes to column F when the types are compatible; a map (or list of maps) F may go to
    ``F.keys`` + ``F.values`` Array columns instead; a timestamp F also fills ``FNs``
    (nanoseconds) when the table has it; ``InsertToken`` receives the dedup token.
    """
    cols: list[PlanColumn] = []
    problems: list[str] = []
    for f in schema:
        done = False
        if f.name in table_cols:
            t = _sent_type(parse_type(table_cols[f.name]))
            try:
                cols.append(PlanColumn(f.name, t.render(), f.name, _encoder(f.type, t)))
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
                    cols.append(PlanColumn(cn, t.render(), f.name, _part_encoder(f.type, t, part)))
                done = True
            except _Incompatible as exc:
                problems.append(f"columns {kn!r}/{vn!r} cannot hold {f.name} ({f.type}): {exc}")
                continue
        if pa.types.is_timestamp(f.type) and f"{f.name}Ns" in table_cols:
            t = parse_type(table_cols[f"{f.name}Ns"])
            try:
                cols.append(PlanColumn(f"{f.name}Ns", t.render(), f.name, _encoder(f.type, t)))
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
        ch_type = parse_type(table_cols[TOKEN_COLUMN]).render()
        cols.append(PlanColumn(TOKEN_COLUMN, ch_type, "", None))
    json = has_json_columns({c.name: table_cols[c.name] for c in cols})
    return InsertPlan(tuple(cols), tuple(problems), token, json)


class StringArena:
    """One buffer, reused block after block, that the native codec writes a block's String
    columns into (most of a block's bytes). A fresh ``bytes`` per column cost a zero-fill and,
    at or above glibc's mmap threshold (``otelwax.memory``: 1 MiB, 2 MiB in a flow into a
    server), a new mapping: a page fault per 4 KiB on first write, then an unmap. The buffer
    grows to the largest block seen; a column that does not fit yet gets its own ``bytes``.
    One block at a time: the pieces of a block are views of the buffer, valid until the next
    ``block()``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._want = 0
        self._lock = threading.Lock()

    @contextmanager
    def block(self) -> Iterator[Callable[[pa.Array], Any] | None]:
        """The String encoder for one block whose pieces are used (sent) inside the ``with``;
        None when the arena is in use by another thread or the reference encoder runs."""
        if not (native.NATIVE_STRINGS_INTO and codec_name() == "native"):
            yield None
            return
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._want > len(self._buf):  # a new object: views of the old one stay valid
                self._buf = bytearray(self._want)
            buf, at, total = self._buf, 0, 0

            def strings(arr: pa.Array) -> Any:
                nonlocal at, total
                size = native.native_strings_into(arr, buf, at)
                total += size
                if at + size > len(buf):
                    return native.native_strings(arr)
                at += size
                return memoryview(buf)[at - size : at]

            yield strings
            # the next block fits if it is up to 1/8 bigger than the largest so far
            self._want = max(self._want, total + total // 8)
        finally:
            self._lock.release()


def encode_native(batch: pa.RecordBatch, plan: InsertPlan, token: str = "") -> bytes:
    """One ClickHouse ``Native`` block (HTTP flavour: no block info) holding the planned columns."""
    return b"".join(native_parts(batch, plan, token))


def native_parts(
    batch: pa.RecordBatch,
    plan: InsertPlan,
    token: str = "",
    strings: Callable[[pa.Array], Any] | None = None,
) -> list[Any]:
    """``encode_native``'s block as the bytes-like pieces it is made of, in order (a request
    body sent piece by piece needs no copy of the whole block); String columns written by
    ``strings`` (a ``StringArena.block()``) when given."""
    strings = strings or _enc_strings
    n = batch.num_rows
    parts: list[Any] = [_varint(len(plan.cols)), _varint(n)]
    for c in plan.cols:
        parts.append(_bstr(c.name))
        parts.append(_bstr(c.ch_type))
        if c.encode is None:  # the InsertToken column: one constant string
            tok = token.encode()
            parts.append((_varint(len(tok)) + tok) * n)
        else:
            for p in c.encode(batch.column(c.source)):
                parts.append(strings(p) if isinstance(p, pa.Array) else p)
    return parts
