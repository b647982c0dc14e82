"""A small, safe boolean expression language over Arrow batches (never ``eval``).

Grammar (keywords are case-insensitive)::

    expr     := or
    or       := and ("or" and)*
    and      := unary ("and" unary)*
    unary    := "not" unary | "(" expr ")" | predicate
    predicate:= "exists" "(" operand ")"
              | operand cmp operand                    cmp: == != < <= > >=
              | operand ["not"] "in" "[" literal ("," literal)* "]"
              | operand ("matches" | "contains" | "startswith" | "endswith") STRING
              | BOOL
    operand  := COLUMN | COLUMN "[" STRING "]" | literal
    literal  := STRING | NUMBER [unit] | true | false | null
    unit     := ns | us | ms | s | m | h        (a duration, converted to nanoseconds)

Examples::

    SpanAttributes['http.route'] in ['/health', '/ready']
    ServiceName in ['cart', 'checkout'] and Duration > 1.5s
    SeverityNumber < 9 or Body matches '(?i)heartbeat'
    not exists(SpanAttributes['user.id']) and StatusCode == 'STATUS_CODE_ERROR'

Semantics (same as the Collector's OTTL for missing values): a missing attribute is ``null``;
``null == x`` is false, ``null != x`` is true, ``null in [...]`` is false, ``null not in [...]``
is true, ordering comparisons and string predicates on ``null`` are false, ``x == null`` tests
for absence. An attribute value (always a string) compared with a number is read as a number;
values that are not numbers compare false. Every compiled expression returns a boolean array
without nulls. Regexes use RE2 syntax (the engine of ``pyarrow.compute``).

``parse(text)`` checks syntax and regexes (no schema needed; used by config validation);
``compile_expr(node, schema)`` checks column names and types and returns a vectorised
``(pa.RecordBatch) -> pa.BooleanArray`` function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ExprError",
    "Node",
    "check_regex",
    "columns_of",
    "compile_expr",
    "filter_batch",
    "map_get",
    "parse",
]


class ExprError(ValueError):
    """A syntax or type error in an expression, with the 1-based column where it was found."""

    def __init__(self, message: str, pos: int | None = None) -> None:
        self.message = message
        self.pos = pos
        super().__init__(message if pos is None else f"{message} at column {pos + 1}")


def check_regex(pattern: str) -> None:
    """Raise ValueError when ``pattern`` is not a valid RE2 regex (what pyarrow.compute runs)."""
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = str(exc).replace("Invalid regular expression: ", "")
        raise ValueError(f"invalid regular expression {pattern!r}: {msg}") from None


# --- tokens -----------------------------------------------------------------------------------

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_KEYWORDS = {
    "and",
    "or",
    "not",
    "in",
    "true",
    "false",
    "null",
    "matches",
    "contains",
    "startswith",
    "endswith",
    "exists",
}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:ns|us|µs|ms|s|m|h)?(?![A-Za-z_]))
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|-)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, op, ident, kw, end
    text: str
    pos: int
    value: Any = None


def _unescape(body: str, pos: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            # Unknown escapes keep the backslash, so regexes like '\d' can be written as is.
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(text: str, pos: int) -> int | float:
    m = re.fullmatch(r"([0-9.eE+-]+?)(ns|us|µs|ms|s|m|h)?", text)
    if not m:
        raise ExprError(f"bad number {text!r}", pos)
    num, unit = m.group(1), m.group(2)
    val: int | float = float(num) if any(c in num for c in ".eE") else int(num)
    if unit:
        val = val * _UNITS[unit]
        if isinstance(val, float) and val.is_integer():
            val = int(val)
    return val


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ExprError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or ""
        tok = m.group(0)
        if kind == "num":
            toks.append(_Tok("num", tok, pos, _number(tok, pos)))
        elif kind == "str":
            toks.append(_Tok("str", tok, pos, _unescape(tok[1:-1], pos)))
        elif kind == "op":
            toks.append(_Tok("op", tok, pos))
        elif kind == "ident":
            low = tok.lower()
            toks.append(_Tok("kw", low, pos) if low in _KEYWORDS else _Tok("ident", tok, pos))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


# --- AST --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class MapLookup:
    column: str
    key: str
    pos: int


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any  # str | int | float | bool | None
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Any
    right: Any
    pos: int


@dataclass(frozen=True, slots=True)
class InList:
    operand: Any
    values: tuple[Any, ...]
    negate: bool
    pos: int


@dataclass(frozen=True, slots=True)
class StrPred:
    op: str  # matches / contains / startswith / endswith
    operand: Any
    arg: str
    pos: int


@dataclass(frozen=True, slots=True)
class Exists:
    operand: Any
    pos: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and / or
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Any


Node = Any


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, text: str | None = None) -> _Tok | None:
        tok = self.peek()
        if tok.kind == kind and (text is None or tok.text == text):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, text: str | None, what: str) -> _Tok:
        tok = self.accept(kind, text)
        if tok is None:
            got = self.peek()
            shown = "end of expression" if got.kind == "end" else repr(got.text)
            raise ExprError(f"expected {what}, found {shown}", got.pos)
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExprError("empty expression", 0)
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.accept("kw", "or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_(self) -> Node:
        items = [self.unary()]
        while self.accept("kw", "and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self) -> Node:
        if self.accept("kw", "not"):
            return Not(self.unary())
        if self.accept("op", "("):
            node = self.or_()
            self.expect("op", ")", "')'")
            return node
        return self.predicate()

    def predicate(self) -> Node:
        tok = self.peek()
        if tok.kind == "kw" and tok.text == "exists":
            self.take()
            self.expect("op", "(", "'(' after exists")
            operand = self.operand()
            if not isinstance(operand, MapLookup | Column):
                raise ExprError("exists() takes a column or an attribute lookup", tok.pos)
            self.expect("op", ")", "')'")
            return Exists(operand, tok.pos)
        left = self.operand()
        op = self.peek()
        if op.kind == "op" and op.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.operand()
            return Compare(op.text, left, right, op.pos)
        if op.kind == "kw" and op.text in ("in", "not"):
            self.take()
            negate = op.text == "not"
            if negate:
                self.expect("kw", "in", "'in' after 'not'")
            self.expect("op", "[", "'[' starting a list")
            values = [self.literal()]
            while self.accept("op", ","):
                values.append(self.literal())
            self.expect("op", "]", "']' or ','")
            kinds = {_lit_kind(v.value) for v in values if v.value is not None}
            if len(kinds) > 1:
                raise ExprError("a list must hold only strings or only numbers", op.pos)
            return InList(left, tuple(v.value for v in values), negate, op.pos)
        if op.kind == "kw" and op.text in ("matches", "contains", "startswith", "endswith"):
            self.take()
            arg = self.expect("str", None, f"a string after {op.text}")
            if op.text == "matches":
                try:
                    check_regex(arg.value)
                except ValueError as exc:
                    raise ExprError(str(exc), arg.pos) from None
            return StrPred(op.text, left, arg.value, op.pos)
        if isinstance(left, Literal) and isinstance(left.value, bool):
            return left
        shown = "end of expression" if op.kind == "end" else repr(op.text)
        raise ExprError(f"expected a comparison, 'in', or 'matches', found {shown}", op.pos)

    def operand(self) -> Node:
        tok = self.peek()
        if tok.kind == "ident":
            self.take()
            if self.accept("op", "["):
                key = self.expect("str", None, "a quoted attribute key")
                self.expect("op", "]", "']'")
                return MapLookup(tok.text, key.value, tok.pos)
            return Column(tok.text, tok.pos)
        return self.literal()

    def literal(self) -> Literal:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "-":
            self.take()
            num = self.expect("num", None, "a number after '-'")
            return Literal(-num.value, tok.pos)
        if tok.kind in ("str", "num"):
            self.take()
            return Literal(tok.value, tok.pos)
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            self.take()
            return Literal({"true": True, "false": False, "null": None}[tok.text], tok.pos)
        shown = "end of expression" if tok.kind == "end" else repr(tok.text)
        raise ExprError(f"expected a column, attribute or literal, found {shown}", tok.pos)


def _lit_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "string"


def parse(text: str) -> Node:
    """Parse ``text`` into an AST; raises ExprError with the column of the first problem."""
    return _Parser(text).parse()


def columns_of(node: Node) -> set[str]:
    """Column names an expression reads."""
    if isinstance(node, Column | MapLookup):
        return {node.name if isinstance(node, Column) else node.column}
    if isinstance(node, Compare):
        return columns_of(node.left) | columns_of(node.right)
    if isinstance(node, InList | StrPred | Exists):
        return columns_of(node.operand)
    if isinstance(node, BoolOp):
        out: set[str] = set()
        for item in node.items:
            out |= columns_of(item)
        return out
    if isinstance(node, Not):
        return columns_of(node.item)
    return set()


def filter_batch(batch: pa.RecordBatch, mask: pa.Array) -> pa.RecordBatch:
    """``batch.filter(mask)`` done column by column (about 2x faster on the nested trace
    columns with pyarrow 26), with shortcuts when every or no row is kept."""
    kept = pc.sum(mask).as_py() or 0
    if kept == batch.num_rows:
        return batch
    if kept == 0:
        return batch.slice(0, 0)
    return pa.RecordBatch.from_arrays([c.filter(mask) for c in batch.columns], schema=batch.schema)


def map_get(arr: pa.Array, key: str) -> pa.Array:
    """Value of the first ``key`` entry of each map (null when absent or the map is null).

    Same result as ``pc.map_lookup(arr, key, "first")`` but several times faster on wide maps:
    one vectorised key comparison over all entries, then a take of the matching values.
    """
    n = len(arr)
    off = arr.offsets.to_numpy(zero_copy_only=False)
    start, end = int(off[0]), int(off[-1])
    keys = arr.keys.slice(start, end - start)
    items = arr.items.slice(start, end - start)
    hit = pc.equal(keys, pa.scalar(key, keys.type))
    if hit.null_count:
        hit = pc.fill_null(hit, False)
    idx = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return pa.nulls(n, items.type)
    rows = np.searchsorted(off - start, idx, side="right") - 1
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    rows, idx = rows[first], idx[first]
    take = np.zeros(n, dtype=np.int64)
    take[rows] = idx
    missing = np.ones(n, dtype=bool)
    missing[rows] = False
    if arr.null_count:
        missing |= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return items.take(pa.array(take, mask=missing))


# --- compilation ------------------------------------------------------------------------------

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
        kind = "null" if v is None else _lit_kind(v)
        scalar = pa.scalar(v) if v is not None else pa.scalar(None, pa.string())
        return _Val(kind, lambda _b, s=scalar: s, True)
    if isinstance(node, Column):
        idx = schema.get_field_index(node.name)
        if idx < 0:
            raise ExprError(
                f"unknown column {node.name!r}{_did_you_mean(node.name, schema)}", node.pos
            )
        t = schema.field(idx).type
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
        idx = schema.get_field_index(node.column)
        if idx < 0:
            raise ExprError(
                f"unknown column {node.column!r}{_did_you_mean(node.column, schema)}", node.pos
            )
        t = schema.field(idx).type
        if not (pa.types.is_map(t) and _kind_of(t.item_type) == "string"):
            raise ExprError(f"column {node.column!r} is not an attribute map", node.pos)
        return _Val("string", lambda b, i=idx, k=node.key: map_get(b.column(i), k))
    raise ExprError("expected a value", getattr(node, "pos", None))


def _did_you_mean(name: str, schema: pa.Schema) -> str:
    import difflib

    match = difflib.get_close_matches(name, schema.names, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


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
        kind = _lit_kind(lits[0]) if lits else val.kind
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
