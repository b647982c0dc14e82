"""What a parsed condition (:mod:`operators.expr_syntax`) means over an Arrow batch, compiled
once per schema into vectorised ``pyarrow.compute`` calls (never ``eval``).

Semantics (same as the Collector's OTTL for missing values): a missing attribute is ``null``;
``null == x`` is false, ``null != x`` is true, ``null in [...]`` is false, ``null not in [...]``
is true, ordering comparisons and string predicates on ``null`` are false, ``x == null`` tests
for absence. An attribute value (always a string) compared with a number is read as a number;
values that are not numbers compare false. Every compiled expression returns a boolean array
without nulls.

``compile_expr(node, schema)`` checks column names and types and returns a vectorised
``(pa.RecordBatch) -> pa.BooleanArray`` function.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from operators.arrow_kernels import map_get
from operators.expr_syntax import (
    BoolOp,
    Column,
    Compare,
    Exists,
    ExprError,
    InList,
    Literal,
    MapLookup,
    Node,
    Not,
    StrPred,
    literal_kind,
    parse,
)

__all__ = ["BoolFn", "compile_expr"]

BoolFn = Callable[[pa.RecordBatch], pa.Array]
_NUM_RE = r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$"


@dataclass(frozen=True, slots=True)
class _Val:
    """A compiled operand: its kind (string/number/timestamp/bool/null) and an evaluator."""

    kind: str
    fn: Callable[[pa.RecordBatch], Any]  # returns pa.Array or pa.Scalar
    is_literal: bool = False


def _kind_of(t: pa.DataType) -> str | None:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_boolean(t):
        return "bool"
    return None


def _as_number(arr: Any) -> Any:
    """String values that look like numbers → float64; others → null (vectorised)."""
    ok = pc.match_substring_regex(arr, _NUM_RE)
    return pc.cast(pc.if_else(ok, arr, pa.scalar(None, pa.string())), pa.float64())


def _compile_operand(node: Node, schema: pa.Schema) -> _Val:
    if isinstance(node, Literal):
        v = node.value
        kind = "null" if v is None else literal_kind(v)
        scalar = pa.scalar(v) if v is not None else pa.scalar(None, pa.string())
        return _Val(kind, lambda _b, s=scalar: s, True)
    if isinstance(node, Column):
        idx, t = _field(schema, node.name, node.pos)
        kind = _kind_of(t)
        if kind is None:
            raise ExprError(
                f"column {node.name!r} of type {t} cannot be compared"
                + (f"; use {node.name}['key']" if pa.types.is_map(t) else ""),
                node.pos,
            )
        if kind == "timestamp":
            return _Val("number", lambda b, i=idx: pc.cast(b.column(i), pa.int64()))
        return _Val(kind, lambda b, i=idx: b.column(i))
    if isinstance(node, MapLookup):
        idx, t = _field(schema, node.column, node.pos)
        if not (pa.types.is_map(t) and _kind_of(t.item_type) == "string"):
            raise ExprError(f"column {node.column!r} is not an attribute map", node.pos)
        return _Val("string", lambda b, i=idx, k=node.key: map_get(b.column(i), k))
    raise ExprError("expected a value", getattr(node, "pos", None))


def _field(schema: pa.Schema, name: str, pos: int) -> tuple[int, pa.DataType]:
    """Index and type of column ``name``; an unknown name is an error naming the closest one."""
    idx = schema.get_field_index(name)
    if idx < 0:
        match = difflib.get_close_matches(name, schema.names, n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ExprError(f"unknown column {name!r}{hint}", pos)
    return idx, schema.field(idx).type


_CMP = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _full(n: int, value: bool) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.bool_()), n)


def _broadcast(batch: pa.RecordBatch, result: Any) -> pa.Array:
    """Turn a scalar result (literal-only expressions) into an array of the batch length."""
    if isinstance(result, pa.Scalar):
        return _full(batch.num_rows, bool(result.as_py()))
    return result


def _compile_compare(node: Compare, schema: pa.Schema) -> BoolFn:
    left, right = _compile_operand(node.left, schema), _compile_operand(node.right, schema)
    op = node.op
    if left.is_literal and not right.is_literal:
        left, right, op = right, left, _FLIP[op]
    if right.kind == "null":
        if op not in ("==", "!="):
            raise ExprError("null can only be compared with == or !=", node.pos)
        test = pc.is_null if op == "==" else pc.is_valid
        return lambda b: _broadcast(b, test(left.fn(b)))
    lk, rk = left.kind, right.kind
    if lk == "string" and rk == "number":
        lfn = left.fn
        left = _Val("number", lambda b: _as_number(lfn(b)))
    elif lk == "number" and rk == "string" and not right.is_literal:
        rfn = right.fn
        right = _Val("number", lambda b: _as_number(rfn(b)))
    elif lk != rk:
        raise ExprError(f"cannot compare a {lk} with a {rk}", node.pos)
    if lk == "string" and rk == "string" and op not in ("==", "!="):
        pass  # lexicographic ordering is fine for strings
    fn = _CMP[op]
    fill = op == "!="
    lf, rf = left.fn, right.fn
    return lambda b: pc.fill_null(_broadcast(b, fn(lf(b), rf(b))), fill)


def _compile(node: Node, schema: pa.Schema) -> BoolFn:
    if isinstance(node, BoolOp):
        parts = [_compile(item, schema) for item in node.items]
        kernel = pc.and_ if node.op == "and" else pc.or_

        def run(b: pa.RecordBatch) -> pa.Array:
            acc = parts[0](b)
            for p in parts[1:]:
                acc = kernel(acc, p(b))
            return acc

        return run
    if isinstance(node, Not):
        inner = _compile(node.item, schema)
        return lambda b: pc.invert(inner(b))
    if isinstance(node, Literal):
        if not isinstance(node.value, bool):
            raise ExprError("expected a condition, found a bare value", node.pos)
        return lambda b, v=node.value: _full(b.num_rows, v)
    if isinstance(node, Compare):
        return _compile_compare(node, schema)
    if isinstance(node, Exists):
        val = _compile_operand(node.operand, schema)
        return lambda b: pc.is_valid(val.fn(b))
    if isinstance(node, InList):
        val = _compile_operand(node.operand, schema)
        lits = [v for v in node.values if v is not None]
        has_null = len(lits) < len(node.values)
        kind = literal_kind(lits[0]) if lits else val.kind
        fn = val.fn
        if val.kind == "string" and kind == "number":
            value_set = pa.array([float(v) for v in lits], pa.float64())
            fn = lambda b, f=val.fn: _as_number(f(b))  # noqa: E731
        elif val.kind != kind and lits:
            raise ExprError(f"cannot test a {val.kind} against a list of {kind}s", node.pos)
        elif val.kind == "number":
            value_set = pa.array([float(v) for v in lits], pa.float64())
            fn = lambda b, f=val.fn: pc.cast(f(b), pa.float64())  # noqa: E731
        else:
            value_set = pa.array(lits, pa.string() if val.kind == "string" else None)

        def run_in(b: pa.RecordBatch) -> pa.Array:
            arr = fn(b)
            res = pc.is_in(arr, value_set=value_set) if len(value_set) else _full(len(arr), False)
            if has_null:
                res = pc.or_(res, pc.is_null(arr))
            return pc.invert(res) if node.negate else res

        return run_in
    if isinstance(node, StrPred):
        val = _compile_operand(node.operand, schema)
        if val.kind != "string":
            raise ExprError(f"{node.op} needs a string value, not a {val.kind}", node.pos)
        kernel = {
            "matches": pc.match_substring_regex,
            "contains": pc.match_substring,
            "startswith": pc.starts_with,
            "endswith": pc.ends_with,
        }[node.op]
        return lambda b: pc.fill_null(_broadcast(b, kernel(val.fn(b), node.arg)), False)
    raise ExprError("expected a condition", getattr(node, "pos", None))


def compile_expr(node: Node | str, schema: pa.Schema) -> BoolFn:
    """Compile a parsed (or textual) expression against ``schema``.

    Raises ExprError for unknown columns or type mismatches. The returned function maps a batch
    with that schema to a boolean array of the same length, without nulls.
    """
    if isinstance(node, str):
        node = parse(node)
    return _compile(node, schema)
