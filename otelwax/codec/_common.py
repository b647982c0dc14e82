"""Parts shared by the pure-Python decoders (``pydecode`` for traces/logs, ``pymetrics``).

- AnyValue rendering (the rules in ``otelwax.codec``), attribute lists and hex ids;
- ``Envelope``: the per-resource and per-scope columns every OTLP signal has (ServiceName,
  ResourceAttributes, Scope*), filled once per resource / scope while walking a request;
- Arrow assembly (maps, lists, timestamps, one ``take`` per spread column, schema order);
- the per-payload error handling (rollback of half-decoded rows, error reasons, GC off).

Nothing here runs per span or per data point except ``render_attrs`` and ``hex_id``, which the
decoders already called there: the hot loops stay in the decoders (see PERF_FACTS).
"""

from __future__ import annotations

import base64
import gc
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

STR = pa.string()
TS = pa.timestamp("ns")
Z16 = bytes(16)
Z8 = bytes(8)

_R = TypeVar("_R")


class _Invalid(ValueError):
    """A payload breaks a contract rule (bad id length, ...): the whole payload is an error.

    Its class name is part of ``pymetrics``' error reasons ("_Invalid: ..."): keep it.
    """


# --- AnyValue rendering ------------------------------------------------------------------------


def render_double(x: float) -> str:
    """Shortest round-trip digits, positional, no exponent, no trailing ".0"; NaN/±Inf named."""
    if x != x:
        return "NaN"
    if x == math.inf:
        return "+Inf"
    if x == -math.inf:
        return "-Inf"
    r = repr(x)
    if "e" in r:
        r = format(Decimal(r), "f")
        if "." in r:
            r = r.rstrip("0").rstrip(".")
        return r
    if r.endswith(".0"):
        return r[:-2]
    return r


def _json_double(x: float) -> str:
    if x != x or x in (math.inf, -math.inf):
        return "null"
    a = abs(x)
    if a == 0 or 1e-6 <= a < 1e21:
        return render_double(x)
    r = repr(x)  # e.g. '1e-07', '1.5e+300' (Python always writes the exponent sign)
    mant, _, exp = r.partition("e")
    sign, digits = exp[0], exp[1:].lstrip("0") or "0"
    if sign == "+" and len(digits) < 2:
        digits = digits.rjust(2, "0")  # Go keeps at least two exponent digits for "+"
    return f"{mant}e{sign}{digits}"


_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        '"': '\\"',
        "\\": "\\\\",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
_ESC_RE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')


def _esc(m: re.Match[str]) -> str:
    return _ESCAPES[m.group()]


def _json_str(s: str) -> str:
    return '"' + _ESC_RE.sub(_esc, s) + '"'


def render_json(v: Any) -> str:
    """Compact Go-encoding/json rendering of an AnyValue's raw value (kvlist keys sorted)."""
    w = v.WhichOneof("value")
    if w == "string_value":
        return _json_str(v.string_value)
    if w == "int_value":
        return str(v.int_value)
    if w == "bool_value":
        return "true" if v.bool_value else "false"
    if w == "double_value":
        return _json_double(v.double_value)
    if w == "bytes_value":
        return '"' + base64.b64encode(v.bytes_value).decode("ascii") + '"'
    if w == "array_value":
        return "[" + ",".join([render_json(x) for x in v.array_value.values]) + "]"
    if w == "kvlist_value":
        d = {kv.key: kv.value for kv in v.kvlist_value.values}  # later duplicate keys win
        return "{" + ",".join([_json_str(k) + ":" + render_json(d[k]) for k in sorted(d)]) + "}"
    return "null"  # unset, or string_value_strindex (no dictionary here)


def render_any_value(v: Any) -> str:
    """An AnyValue as a string, like pdata ``Value.AsString`` (see the rules in otelwax.codec)."""
    w = v.WhichOneof("value")
    if w == "string_value":
        return v.string_value
    if w == "int_value":
        return str(v.int_value)
    if w == "bool_value":
        return "true" if v.bool_value else "false"
    if w == "double_value":
        return render_double(v.double_value)
    if w == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if w == "array_value" or w == "kvlist_value":
        return render_json(v)
    return ""


def render_attrs(attrs: Any, keys: list[str], vals: list[str]) -> None:
    """Append each attribute's key and rendered value (input order, duplicates kept).

    Plain ``keys.append`` measured faster than pre-bound appends here (CPython 3.11).
    """
    for a in attrs:
        keys.append(a.key)
        v = a.value
        s = v.string_value
        vals.append(s if s else render_any_value(v))


def hex_id(b: bytes, size: int, zero: bytes, what: str) -> str:
    """A trace/span id as lowercase hex; "" when empty or all zero; wrong length → ``_Invalid``."""
    n = len(b)
    if n == size:
        return "" if b == zero else b.hex()
    if n == 0:
        return ""
    raise _Invalid(f"{what} has {n} bytes, want 0 or {size}")


# --- per-resource and per-scope columns --------------------------------------------------------


class Envelope:
    """Resource and scope columns of one batch, one entry per resource / scope (not per row).

    ``walk`` records each resource and scope of a request as it goes and yields each scope's
    items (spans, log records, metrics) with the resource and scope indexes. Rows refer to them
    by index (``row_index`` when rows come scope by scope), and ``resource_columns`` /
    ``scope_columns`` give the Arrow arrays to spread with ``take``.
    """

    __slots__ = (
        "lists",
        "r_keys",
        "r_off",
        "r_schema",
        "r_service",
        "r_vals",
        "sc_dropped",
        "sc_keys",
        "sc_name",
        "sc_off",
        "sc_res",
        "sc_rows",
        "sc_schema",
        "sc_vals",
        "sc_version",
    )

    def __init__(self) -> None:
        self.r_service: list[str] = []
        self.r_schema: list[str] = []
        self.r_off: list[int] = [0]
        self.r_keys: list[str] = []
        self.r_vals: list[str] = []
        self.sc_res: list[int] = []
        self.sc_schema: list[str] = []
        self.sc_name: list[str] = []
        self.sc_version: list[str] = []
        self.sc_dropped: list[int] = []
        self.sc_off: list[int] = [0]
        self.sc_keys: list[str] = []
        self.sc_vals: list[str] = []
        self.sc_rows: list[int] = []
        self.lists: tuple[list[Any], ...] = (
            self.r_service, self.r_schema, self.r_off, self.r_keys, self.r_vals,
            self.sc_res, self.sc_schema, self.sc_name, self.sc_version, self.sc_dropped,
            self.sc_off, self.sc_keys, self.sc_vals, self.sc_rows,
        )  # fmt: skip

    def walk(
        self, resources: Iterable[Any], scopes_field: str, items_field: str
    ) -> Iterator[tuple[int, int, Any]]:
        """Record every resource and scope; yield ``(resource index, scope index, items)``.

        ``resources`` is e.g. ``req.resource_spans``; ``scopes_field`` / ``items_field`` name
        the repeated fields below it (``"scope_spans"`` / ``"spans"``).
        """
        r_service = self.r_service
        r_schema = self.r_schema
        r_off = self.r_off
        r_keys = self.r_keys
        r_vals = self.r_vals
        sc_res = self.sc_res
        sc_schema = self.sc_schema
        sc_name = self.sc_name
        sc_version = self.sc_version
        sc_dropped = self.sc_dropped
        sc_off = self.sc_off
        sc_keys = self.sc_keys
        sc_vals = self.sc_vals
        sc_rows = self.sc_rows
        for rx in resources:
            ri = len(r_service)
            svc = None
            for a in rx.resource.attributes:
                r_keys.append(a.key)
                v = a.value
                s = v.string_value
                rv = s if s else render_any_value(v)
                r_vals.append(rv)
                # The first service.name wins (like pcommon.Map.Get), even when it renders as "".
                if svc is None and a.key == "service.name":
                    svc = rv
            r_service.append(svc or "")
            r_schema.append(rx.schema_url)
            r_off.append(len(r_keys))
            for sx in getattr(rx, scopes_field):
                items = getattr(sx, items_field)
                scope = sx.scope
                si = len(sc_name)
                sc_res.append(ri)
                sc_schema.append(sx.schema_url)
                sc_name.append(scope.name)
                sc_version.append(scope.version)
                sc_dropped.append(scope.dropped_attributes_count)
                render_attrs(scope.attributes, sc_keys, sc_vals)
                sc_off.append(len(sc_keys))
                sc_rows.append(len(items))
                yield ri, si, items

    def row_index(self) -> tuple[pa.Array, pa.Array]:
        """(resource index, scope index) of each row, for rows appended scope after scope."""
        row_scope = np.repeat(np.arange(len(self.sc_rows), dtype=np.int64), self.sc_rows)
        row_res = pa.array(np.asarray(self.sc_res, dtype=np.int64)[row_scope])
        return row_res, pa.array(row_scope)

    def resource_columns(self) -> dict[str, pa.Array]:
        """One value per resource, by column name (spread with the resource index)."""
        return {
            "ServiceName": pa.array(self.r_service, STR),
            "ResourceSchemaUrl": pa.array(self.r_schema, STR),
            "ResourceAttributes": map_array(self.r_off, self.r_keys, self.r_vals),
        }

    def scope_columns(self) -> dict[str, pa.Array]:
        """One value per scope, by column name (spread with the scope index)."""
        return {
            "ScopeSchemaUrl": pa.array(self.sc_schema, STR),
            "ScopeName": pa.array(self.sc_name, STR),
            "ScopeVersion": pa.array(self.sc_version, STR),
            "ScopeAttributes": map_array(self.sc_off, self.sc_keys, self.sc_vals),
            "ScopeDroppedAttrCount": pa.array(self.sc_dropped, pa.uint32()),
        }


# --- Arrow assembly ----------------------------------------------------------------------------


def map_array(off: list[int], keys: list[str], vals: list[str]) -> pa.Array:
    """A ``map<string, string>`` array from offsets and flat key / value lists."""
    return pa.MapArray.from_arrays(
        pa.array(off, pa.int32()), pa.array(keys, STR), pa.array(vals, STR)
    )


def list_array(off: list[int], values: pa.Array) -> pa.Array:
    """A list array from offsets and the flat values."""
    return pa.ListArray.from_arrays(pa.array(off, pa.int32()), values)


def ts_ns(values: list[int]) -> np.ndarray:
    """fixed64 nanoseconds → int64 (values ≥ 2^63 wrap like Go's int64(ts))."""
    return np.array(values, dtype=np.uint64).view(np.int64)


def ts_array(values: list[int]) -> pa.Array:
    """fixed64 nanoseconds → ``timestamp[ns]`` array."""
    return pa.array(ts_ns(values), TS)


def record_batch(
    schema: pa.Schema,
    columns: dict[str, pa.Array],
    *spread: tuple[dict[str, pa.Array], pa.Array],
) -> pa.RecordBatch:
    """The batch in ``schema`` order: a column from ``columns`` as is, else from the first
    ``(per-entity columns, row index)`` pair that has it, taken per row (only columns the
    schema has are taken)."""
    arrays = []
    for name in schema.names:
        a = columns.get(name)
        if a is None:
            for per, index in spread:
                a = per.get(name)
                if a is not None:
                    a = a.take(index)
                    break
        arrays.append(a)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- payload errors ----------------------------------------------------------------------------


def run_without_gc(fn: Callable[[Sequence[bytes]], _R], payloads: Sequence[bytes]) -> _R:
    """``fn(payloads)`` with the cyclic GC off: millions of short-lived protobuf wrappers would
    trigger needless GC passes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(payloads)
    finally:
        if enabled:
            gc.enable()


def mark(lists: Sequence[list[Any]]) -> list[int]:
    """The lengths of ``lists`` before a payload, for ``rollback``."""
    return [len(x) for x in lists]


def rollback(lists: Sequence[list[Any]], marks: list[int]) -> None:
    """Forget what a payload that failed half-way appended to ``lists``."""
    for lst, n in zip(lists, marks, strict=True):
        del lst[n:]


def error_reason(exc: Exception) -> str:
    """Why a payload did not decode, as reported in ``DecodeResult.errors``."""
    if isinstance(exc, DecodeError):
        return f"invalid protobuf: {exc}"
    if isinstance(exc, _Invalid):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
