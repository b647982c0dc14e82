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

``parse(text)`` checks syntax and regexes with no schema (config validation uses it); what an
expression means, and how it runs over a batch, is :mod:`operators.expr`. Regexes use RE2
syntax (the engine of ``pyarrow.compute``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "BoolOp",
    "Column",
    "Compare",
    "Exists",
    "ExprError",
    "InList",
    "Literal",
    "MapLookup",
    "Node",
    "Not",
    "Parser",
    "StrPred",
    "check_regex",
    "columns_of",
    "literal_kind",
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


class Parser:
    """Recursive descent over the tokens of one expression (grammar: module docstring)."""

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
            kinds = {literal_kind(v.value) for v in values if v.value is not None}
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


def literal_kind(v: Any) -> str:
    """``bool``, ``number`` or ``string``: the kind of a literal's value."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "string"


def parse(text: str) -> Node:
    """Parse ``text`` into an AST; raises ExprError with the column of the first problem."""
    return Parser(text).parse()


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
