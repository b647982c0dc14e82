"""ClickHouse type strings parsed into trees (``Array(Map(LowCardinality(String), String))``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChType", "parse_type"]


@dataclass(frozen=True, slots=True)
class ChType:
    """A parsed ClickHouse type: name and arguments (types or raw literals)."""

    name: str
    args: tuple[Any, ...] = ()

    def render(self, strip_lc: bool = True) -> str:
        if strip_lc and self.name == "LowCardinality":
            return self.args[0].render(strip_lc)
        if not self.args:
            return self.name
        parts = [a.render(strip_lc) if isinstance(a, ChType) else str(a) for a in self.args]
        return f"{self.name}({', '.join(parts)})"


def parse_type(s: str) -> ChType:
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
        return ChType(name, tuple(args))

    t = node()
    if not isinstance(t, ChType):
        raise ValueError(f"cannot parse ClickHouse type {s!r}")
    return t
