"""redact: mask sensitive values in attribute maps and log bodies; attribute key allow/deny.

YAML::

    - type: redact
      name: pii
      maps: [SpanAttributes, Events.Attributes]     # default: every attribute map of the signal
      body: true                                    # logs: also scan Body (default true)
      builtin: [email, credit_card, bearer_token, jwt]   # default: all of them
      patterns:                                     # your own, RE2 syntax
        - {name: ssn, regex: '\\b\\d{3}-\\d{2}-\\d{4}\\b', replacement: '***-**-****'}
      replacement: "****"                           # mask used by the built-in patterns
      allow_keys: []        # when set, every other key is removed from the scanned maps
      deny_keys: [password, http.request.header.authorization]   # whole value masked
      ignore_keys: []       # values of these keys are never scanned

Order: allow-list removal, deny-list masking, then pattern masking of the remaining values
(``ignore_keys`` skipped). Values are flattened out of the maps once; one combined RE2 match
finds the few values that need work and only those go through ``replace_substring_regex``.

Built-in patterns (RE2; documented trade-offs):
- ``email``: ``local@domain.tld`` (Unicode letters allowed, as in internationalised addresses).
- ``credit_card``: 13-16 digit numbers of the major brands (Visa 4…, Mastercard 51-55/22-27,
  Amex 34/37, Discover 6011/65), optionally grouped by spaces or dashes. No Luhn check (not
  expressible in a regex): a random number with such a prefix is masked too.
- ``bearer_token``: ``Bearer <token>`` (the word ``Bearer`` is kept).
- ``jwt``: three base64url segments starting with ``eyJ``.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators.expr_syntax import check_regex
from operators.transform import (
    apply_to_maps,
    filter_map_entries,
    is_map_column,
    map_parts,
    rebuild_map,
    replace_column,
)
from otelwax.settings import StrictModel

__all__ = ["BUILTIN_PATTERNS", "RedactConfig", "RedactPattern", "build"]

# name -> (regex, replacement template; "{mask}" is replaced by the configured mask)
BUILTIN_PATTERNS: dict[str, tuple[str, str]] = {
    "email": (
        r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}",
        "{mask}",
    ),
    "credit_card": (
        r"\b(?:(?:4\d{3}|5[1-5]\d{2}|2[2-7]\d{2}|6011|65\d{2})(?:[ -]?\d{4}){2}[ -]?\d{1,4}"
        r"|3[47]\d{2}[ -]?\d{6}[ -]?\d{5})\b",
        "{mask}",
    ),
    "bearer_token": (r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*", r"\1{mask}"),
    "jwt": (r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", "{mask}"),
}


class RedactPattern(StrictModel):
    """A user pattern: RE2 ``regex`` replaced by ``replacement`` (``\\1`` refers to groups)."""

    name: str | None = None
    regex: str = Field(min_length=1)
    replacement: str = "****"

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        check_regex(v)
        return v


class RedactConfig(StrictModel):
    """A redaction step (see the module doc for the YAML form and the order of work)."""

    type: Literal["redact"]
    name: str | None = None
    maps: list[str] | None = None
    body: bool = True
    builtin: list[Literal["email", "credit_card", "bearer_token", "jwt"]] = Field(
        default_factory=lambda: list(BUILTIN_PATTERNS)
    )
    patterns: list[RedactPattern] = Field(default_factory=list)
    replacement: str = "****"
    allow_keys: list[str] = Field(default_factory=list)
    deny_keys: list[str] = Field(default_factory=list)
    ignore_keys: list[str] = Field(default_factory=list)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        out = []
        for i, name in enumerate(self.maps or []):
            if name not in schema.names:
                out.append((f"maps.{i}", f"unknown attribute map {name!r} for this signal"))
            elif not is_map_column(schema.field(name).type):
                out.append((f"maps.{i}", f"column {name!r} is not an attribute map"))
        return out


class RedactKernel:
    """Stateless kernel (schema unchanged)."""

    drop_reason = None

    def __init__(self, cfg: RedactConfig, schema: pa.Schema) -> None:
        problems = cfg.problems(schema)
        if problems:
            raise ValueError("; ".join(f"{p}: {m}" for p, m in problems))
        names = (
            cfg.maps if cfg.maps is not None else [f.name for f in schema if is_map_column(f.type)]
        )
        self._maps = [(schema.get_field_index(n), schema.field(n)) for n in names]
        self._body = None
        if cfg.body and "Body" in schema.names and pa.types.is_string(schema.field("Body").type):
            self._body = (schema.get_field_index("Body"), schema.field("Body"))
        self._rules: list[tuple[str, str]] = [
            (BUILTIN_PATTERNS[b][0], BUILTIN_PATTERNS[b][1].replace("{mask}", cfg.replacement))
            for b in cfg.builtin
        ] + [(p.regex, p.replacement) for p in cfg.patterns]
        self._any = "|".join(f"(?:{r})" for r, _ in self._rules) if self._rules else None
        self._mask = cfg.replacement
        self._allow = pa.array(cfg.allow_keys, pa.string()) if cfg.allow_keys else None
        self._deny = pa.array(cfg.deny_keys, pa.string()) if cfg.deny_keys else None
        self._ignore = pa.array(cfg.ignore_keys, pa.string()) if cfg.ignore_keys else None

    def _scrub(self, values: pa.Array) -> pa.Array:
        """Apply every pattern to the values that match any of them.

        Attribute values repeat a lot (routes, methods, hosts): when at most half of them are
        distinct, the regexes run on the distinct values only and the result is taken back.
        """
        if self._any is None or len(values) == 0:
            return values
        if len(values) >= 1024:
            enc = pc.dictionary_encode(values)
            if len(enc.dictionary) <= len(values) // 2:
                scrubbed = self._scrub_values(enc.dictionary)
                if scrubbed is enc.dictionary:
                    return values
                return scrubbed.take(enc.indices)
        return self._scrub_values(values)

    def _scrub_values(self, values: pa.Array) -> pa.Array:
        hit = pc.fill_null(pc.match_substring_regex(values, self._any), False)
        n_hit = pc.sum(hit).as_py() or 0
        if not n_hit:
            return values
        sub = values.filter(hit)
        for regex, repl in self._rules:
            sub = pc.replace_substring_regex(sub, regex, repl)
        return pc.replace_with_mask(values, hit, sub)

    def _map(self, m: pa.MapArray) -> pa.MapArray:
        if self._allow is not None:
            _, keys, _ = map_parts(m)
            m = filter_map_entries(m, pc.is_in(keys, value_set=self._allow))
        off, keys, items = map_parts(m)
        if len(items) == 0:
            return m
        new = items
        if self._deny is not None:
            deny = pc.is_in(keys, value_set=self._deny)
            new = pc.if_else(deny, pa.scalar(self._mask), new)
        if self._any is not None:
            scan = None
            if self._ignore is not None:
                scan = pc.invert(pc.is_in(keys, value_set=self._ignore))
            if self._deny is not None:
                nd = pc.invert(pc.is_in(keys, value_set=self._deny))
                scan = nd if scan is None else pc.and_(scan, nd)
            if scan is None:
                new = self._scrub(new)
            elif (pc.sum(scan).as_py() or 0) > 0:
                new = pc.replace_with_mask(new, scan, self._scrub(new.filter(scan)))
        if new is items:
            return m
        return rebuild_map(m, off, keys, new, keep_nulls=True)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return batch
        for i, _ in self._maps:
            batch = replace_column(batch, i, apply_to_maps(batch.column(i), self._map))
        if self._body is not None:
            i = self._body[0]
            batch = replace_column(batch, i, self._scrub(batch.column(i)))
        return batch


def build(cfg: RedactConfig, schema: pa.Schema) -> RedactKernel:
    """Factory used by the registry."""
    return RedactKernel(cfg, schema)
