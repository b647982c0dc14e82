"""transform: set, copy, rename, delete, hash or truncate attributes; set or derive columns.

YAML (one operator step; actions run in order)::

    - type: transform
      name: tidy
      actions:
        - {action: set, to: "SpanAttributes['deployment.environment']", value: prod}
        - {action: set, to: ServiceName, value: unknown, only_if_missing: true}
        - {action: copy, from: "ResourceAttributes['k8s.pod.name']", to: "SpanAttributes['pod']"}
        - {action: rename, map: SpanAttributes, key: http.method, to: http.request.method}
        - {action: delete, map: SpanAttributes, keys: [password], key_pattern: "^internal\\."}
        - {action: hash, map: SpanAttributes, keys: [user.id, enduser.id]}
        - {action: truncate, map: SpanAttributes, max_length: 256}

References (``to``/``from``) are a column name or ``Map['key']`` (the expression syntax of
``operators.expr``). ``map`` names an attribute map column (``map<string,string>``) or a list
of maps (``Events.Attributes``, ``Links.Attributes``). "missing" means an absent key for a map
and an empty string for a column. Hash = lowercase hex SHA-256 of ``salt + value`` (salt from
the environment: ``salt: ${env:OTELWAX_HASH_SALT}``).

Everything works on whole Arrow arrays: map columns are split into (offsets, keys, values),
edited with ``pyarrow.compute``/numpy, and rebuilt; no Python loop over rows (hashing loops over
the *distinct* values that need hashing, in C-level hashlib calls).

The module also holds the map kernels ``redact`` reuses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, SecretStr, field_validator

from operators.arrow_kernels import map_get
from operators.expr_syntax import Column, ExprError, MapLookup, Parser, check_regex
from otelwax.settings import StrictModel

__all__ = [
    "TransformConfig",
    "apply_to_maps",
    "build",
    "filter_map_entries",
    "map_parts",
    "parse_ref",
    "rebuild_map",
]

# --- map kernels ------------------------------------------------------------------------------


def map_parts(arr: pa.MapArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(offsets rebased to 0 as int64 numpy, keys, items) of a possibly sliced MapArray."""
    off = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    start, end = int(off[0]), int(off[-1])
    keys = arr.keys.slice(start, end - start)
    items = arr.items.slice(start, end - start)
    return off - start, keys, items


def rebuild_map(
    like: pa.MapArray, offsets: np.ndarray, keys: pa.Array, items: pa.Array, keep_nulls: bool
) -> pa.MapArray:
    """A MapArray of ``like``'s type from parts; keeps ``like``'s null rows when asked."""
    mask = like.is_null() if keep_nulls and like.null_count else None
    return pa.MapArray.from_arrays(
        pa.array(offsets.astype(np.int32), pa.int32()), keys, items, type=like.type, mask=mask
    )


def filter_map_entries(arr: pa.MapArray, keep: pa.Array | np.ndarray) -> pa.MapArray:
    """Keep only the entries where ``keep`` (one boolean per entry) is true."""
    off, keys, items = map_parts(arr)
    keep_np = (
        keep
        if isinstance(keep, np.ndarray)
        else np.asarray(pc.fill_null(keep, False).to_numpy(zero_copy_only=False), dtype=bool)
    )
    if keep_np.all():
        return arr
    cum = np.concatenate(([0], np.cumsum(keep_np, dtype=np.int64)))
    mask = pa.array(keep_np, pa.bool_())
    return rebuild_map(arr, cum[off], keys.filter(mask), items.filter(mask), keep_nulls=True)


def entry_rows(off: np.ndarray) -> np.ndarray:
    """Row index of every entry, given rebased offsets."""
    return np.repeat(np.arange(len(off) - 1, dtype=np.int64), np.diff(off))


def set_map_key(
    arr: pa.MapArray,
    key: str,
    values: pa.Array | pa.Scalar,
    where: np.ndarray | None = None,
    only_if_missing: bool = False,
) -> pa.MapArray:
    """Set ``key`` to ``values`` (scalar or one per row) in the rows where ``where`` is true.

    An existing entry for ``key`` gets the new value in place; rows without it get a new entry
    at the end; with ``only_if_missing`` rows that already have the key are left alone.
    """
    n = len(arr)
    off, keys, items = map_parts(arr)
    hit = pc.equal(keys, pa.scalar(key, keys.type))
    key_idx = np.flatnonzero(pc.fill_null(hit, False).to_numpy(zero_copy_only=False))
    key_rows = np.searchsorted(off, key_idx, side="right") - 1  # row of each existing entry
    sel = np.ones(n, dtype=bool) if where is None else where.copy()
    if only_if_missing and len(key_rows):
        sel[key_rows] = False
    if not sel.any():
        return arr
    if len(key_idx):
        # Rows that have the key: replace the value in place (every occurrence of the key).
        upd = sel[key_rows]
        if upd.any():
            pos = key_idx[upd]
            mask = np.zeros(len(items), dtype=bool)
            mask[pos] = True
            if isinstance(values, pa.Scalar):  # if_else is ~4x faster than replace_with_mask
                items = pc.if_else(pa.array(mask), pa.scalar(values.as_py(), items.type), items)
            else:
                repl = values.take(pa.array(key_rows[upd])).cast(items.type)
                items = pc.replace_with_mask(items, pa.array(mask), repl)
        sel[key_rows] = False
    if not sel.any():
        return rebuild_map(arr, off, keys, items, keep_nulls=True)
    kept_off = off
    # Append one entry at the end of each selected row; old entries keep their order.
    add_before = np.concatenate(([0], np.cumsum(sel, dtype=np.int64)))
    new_off = kept_off + add_before
    total_old = len(keys)
    sel_rows = np.flatnonzero(sel)
    is_new = np.zeros(total_old + len(sel_rows), dtype=bool)
    is_new[new_off[sel_rows + 1] - 1] = True
    take = np.empty(len(is_new), dtype=np.int64)
    take[~is_new] = np.arange(total_old)
    take[is_new] = total_old + np.arange(len(sel_rows))
    if isinstance(values, pa.Scalar):
        new_vals = pa.repeat(pa.scalar(values.as_py(), items.type), len(sel_rows))
    else:
        new_vals = values.take(pa.array(sel_rows)).cast(items.type)
    new_keys = pa.repeat(pa.scalar(key, keys.type), len(sel_rows))
    tk = pa.array(take)
    keys = pa.concat_arrays([keys, new_keys]).take(tk)
    items = pa.concat_arrays([items, new_vals]).take(tk)
    return rebuild_map(arr, new_off, keys, items, keep_nulls=False)


def apply_to_maps(col: pa.Array, fn: Callable[[pa.MapArray], pa.MapArray]) -> pa.Array:
    """Apply a MapArray → MapArray function to a map column or to a list-of-maps column."""
    if pa.types.is_map(col.type):
        return fn(col)
    if pa.types.is_list(col.type) and pa.types.is_map(col.type.value_type):
        off = col.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        flat = col.values.slice(int(off[0]), int(off[-1] - off[0]))
        new_flat = fn(flat)
        mask = col.is_null() if col.null_count else None
        return pa.ListArray.from_arrays(
            pa.array((off - off[0]).astype(np.int32), pa.int32()),
            new_flat,
            type=col.type,
            mask=mask,
        )
    raise TypeError(f"not a map column: {col.type}")


def map_value_apply(
    arr: pa.MapArray, fn: Callable[[pa.Array], pa.Array], keys_sel: Callable[[pa.Array], Any] | None
) -> pa.MapArray:
    """Replace the values of selected entries (all when ``keys_sel`` is None) by ``fn(values)``."""
    off, keys, items = map_parts(arr)
    if len(items) == 0:
        return arr
    if keys_sel is None:
        new_items = fn(items)
    else:
        sel = pc.fill_null(keys_sel(keys), False)
        n_sel = pc.sum(sel).as_py() or 0
        if not n_sel:
            return arr
        if n_sel == len(items):
            new_items = fn(items)
        else:
            new_items = pc.replace_with_mask(items, sel, fn(items.filter(sel)))
    return rebuild_map(arr, off, keys, new_items, keep_nulls=True)


def replace_column(batch: pa.RecordBatch, i: int, arr: pa.Array) -> pa.RecordBatch:
    """``batch`` with column ``i`` replaced, keeping the batch's own field (name, nullability)."""
    return batch.set_column(i, batch.schema.field(i), arr)


def is_map_column(t: pa.DataType) -> bool:
    """True for map<string,string> and list<map<string,string>> columns."""
    if pa.types.is_list(t):
        t = t.value_type
    return pa.types.is_map(t) and pa.types.is_string(t.key_type) and pa.types.is_string(t.item_type)


def sha256_hex(values: pa.Array, salt: bytes = b"") -> pa.Array:
    """Lowercase hex SHA-256 of each string (nulls stay null), hashing each distinct value once."""
    if len(values) == 0:
        return values
    uniq = pc.unique(values)
    digests = [
        None if v is None else hashlib.sha256(salt + v.encode()).hexdigest()
        for v in uniq.to_pylist()
    ]
    return pa.array(digests, values.type).take(pc.index_in(values, value_set=uniq))


# --- references -------------------------------------------------------------------------------


def parse_ref(text: str) -> Column | MapLookup:
    """Parse ``Column`` or ``Map['key']``; raises ExprError."""
    p = Parser(text)
    node = p.operand()
    if p.peek().kind != "end":
        raise ExprError(f"unexpected {p.peek().text!r}", p.peek().pos)
    if not isinstance(node, Column | MapLookup):
        raise ExprError("expected a column name or Map['key']", 0)
    return node


def _check_ref(v: str) -> str:
    try:
        parse_ref(v)
    except ExprError as exc:
        raise ValueError(str(exc)) from None
    return v


def _ref_problems(text: str, schema: pa.Schema, field: str) -> list[tuple[str, str]]:
    ref = parse_ref(text)
    name = ref.name if isinstance(ref, Column) else ref.column
    if name not in schema.names:
        return [(field, f"unknown column {name!r} for this signal")]
    t = schema.field(name).type
    if isinstance(ref, MapLookup) and not (pa.types.is_map(t) and is_map_column(t)):
        return [(field, f"column {name!r} is not an attribute map")]
    if isinstance(ref, Column) and not pa.types.is_string(t):
        return [(field, f"column {name!r} is {t}; only string columns can be set")]
    return []


def _map_problems(name: str, schema: pa.Schema, field: str = "map") -> list[tuple[str, str]]:
    if name not in schema.names:
        maps = [f.name for f in schema if is_map_column(f.type)]
        return [(field, f"unknown attribute map {name!r}; one of {', '.join(maps)}")]
    if not is_map_column(schema.field(name).type):
        return [(field, f"column {name!r} is not an attribute map")]
    return []


# --- config -----------------------------------------------------------------------------------


class _Action(StrictModel):
    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        """(field, message) for each reference that does not fit ``schema``."""
        return []


class SetAction(_Action):
    """Set an attribute or a string column to a constant."""

    action: Literal["set"]
    to: str
    value: str
    only_if_missing: bool = False

    _v = field_validator("to")(_check_ref)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        return _ref_problems(self.to, schema, "to")


class CopyAction(_Action):
    """Copy a column or attribute into another column or attribute (absent sources skip)."""

    action: Literal["copy"]
    from_: str = Field(alias="from")
    to: str
    only_if_missing: bool = False

    _v = field_validator("from_", "to")(_check_ref)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        out = _ref_problems(self.to, schema, "to")
        ref = parse_ref(self.from_)
        name = ref.name if isinstance(ref, Column) else ref.column
        if name not in schema.names:
            out.append(("from", f"unknown column {name!r} for this signal"))
        return out


class RenameAction(_Action):
    """Rename an attribute key (an existing entry under the new key is replaced)."""

    action: Literal["rename"]
    map: str
    key: str = Field(min_length=1)
    to: str = Field(min_length=1)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        return _map_problems(self.map, schema)


class DeleteAction(_Action):
    """Delete attribute keys listed in ``keys`` or matching ``key_pattern`` (RE2)."""

    action: Literal["delete"]
    map: str
    keys: list[str] = Field(default_factory=list)
    key_pattern: str | None = None

    @field_validator("key_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            check_regex(v)
        return v

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        out = _map_problems(self.map, schema)
        if not self.keys and self.key_pattern is None:
            out.append(("keys", "give keys or key_pattern"))
        return out


class HashAction(_Action):
    """Replace the values of ``keys`` with their hex SHA-256 (of salt + value)."""

    action: Literal["hash"]
    map: str
    keys: list[str] = Field(min_length=1)
    salt: SecretStr = SecretStr("")

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        return _map_problems(self.map, schema)


class TruncateAction(_Action):
    """Cut attribute values (of ``keys``, or all) or a string column to ``max_length`` chars."""

    action: Literal["truncate"]
    map: str | None = None
    column: str | None = None
    keys: list[str] | None = None
    max_length: int = Field(gt=0)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        if (self.map is None) == (self.column is None):
            return [("map", "give exactly one of map or column")]
        if self.map is not None:
            return _map_problems(self.map, schema)
        if self.column not in schema.names or not pa.types.is_string(
            schema.field(self.column).type
        ):
            return [("column", f"{self.column!r} is not a string column of this signal")]
        return []


TransformAction = Annotated[
    SetAction | CopyAction | RenameAction | DeleteAction | HashAction | TruncateAction,
    Field(discriminator="action"),
]


class TransformConfig(StrictModel):
    """A transform step: actions applied in order to every row."""

    type: Literal["transform"]
    name: str | None = None
    actions: list[TransformAction] = Field(min_length=1)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        return [
            (f"actions.{i}.{f}", m)
            for i, a in enumerate(self.actions)
            for f, m in a.problems(schema)
        ]


# --- operator ---------------------------------------------------------------------------------

BatchFn = Callable[[pa.RecordBatch], pa.RecordBatch]


def _ref_reader(text: str, schema: pa.Schema) -> Callable[[pa.RecordBatch], pa.Array]:
    ref = parse_ref(text)
    if isinstance(ref, Column):
        i = schema.get_field_index(ref.name)
        return lambda b: pc.cast(b.column(i), pa.string())
    i = schema.get_field_index(ref.column)
    return lambda b: map_get(b.column(i), ref.key)


def _writer(
    text: str, schema: pa.Schema, only_if_missing: bool
) -> Callable[[pa.RecordBatch, Any], pa.RecordBatch]:
    """A function (batch, value array|scalar) → batch that writes to the reference."""
    ref = parse_ref(text)
    if isinstance(ref, Column):
        i = schema.get_field_index(ref.name)
        field = schema.field(i)

        def write_col(b: pa.RecordBatch, val: Any) -> pa.RecordBatch:
            cur = b.column(i)
            ok = pc.is_valid(val) if not isinstance(val, pa.Scalar) else None
            cond = ok
            if only_if_missing:
                empty = pc.fill_null(pc.equal(cur, ""), True)
                cond = empty if cond is None else pc.and_(cond, empty)
            if cond is None:
                new = pa.repeat(pa.scalar(val.as_py(), field.type), len(cur))
            else:
                new = pc.if_else(cond, val, cur)
            return b.set_column(i, b.schema.field(i), new.cast(field.type))

        return write_col
    i = schema.get_field_index(ref.column)
    field = schema.field(i)

    def write_map(b: pa.RecordBatch, val: Any) -> pa.RecordBatch:
        where = None
        if not isinstance(val, pa.Scalar):
            where = np.asarray(pc.is_valid(val).to_numpy(zero_copy_only=False), dtype=bool)
        new = set_map_key(b.column(i), ref.key, val, where, only_if_missing)
        return b.set_column(i, b.schema.field(i), new)

    return write_map


def _compile_action(a: _Action, schema: pa.Schema) -> BatchFn:
    if isinstance(a, SetAction):
        write = _writer(a.to, schema, a.only_if_missing)
        value = pa.scalar(a.value, pa.string())
        return lambda b: write(b, value)
    if isinstance(a, CopyAction):
        read = _ref_reader(a.from_, schema)
        write = _writer(a.to, schema, a.only_if_missing)
        return lambda b: write(b, read(b))
    if isinstance(a, TruncateAction) and a.column is not None:
        i = schema.get_field_index(a.column)
        n = a.max_length
        return lambda b: replace_column(b, i, pc.utf8_slice_codeunits(b.column(i), 0, n))

    name = a.map  # type: ignore[attr-defined]
    i = schema.get_field_index(name)
    map_fn: Callable[[pa.MapArray], pa.MapArray]
    if isinstance(a, RenameAction):
        old, new = a.key, a.to

        def rename(m: pa.MapArray) -> pa.MapArray:
            off, keys, items = map_parts(m)
            old_idx = np.flatnonzero(
                pc.fill_null(pc.equal(keys, old), False).to_numpy(zero_copy_only=False)
            )
            if not len(old_idx):
                return m
            is_old = np.zeros(len(keys), dtype=bool)
            is_old[old_idx] = True
            renamed = pc.if_else(pa.array(is_old), pa.scalar(new, keys.type), keys)
            m2 = rebuild_map(m, off, renamed, items, keep_nulls=True)
            new_idx = np.flatnonzero(
                pc.fill_null(pc.equal(keys, new), False).to_numpy(zero_copy_only=False)
            )
            if not len(new_idx):
                return m2
            # Rows that had both keys: the renamed entry replaces the old target entry.
            has_old = np.zeros(len(m), dtype=bool)
            has_old[np.searchsorted(off, old_idx, side="right") - 1] = True
            new_rows = np.searchsorted(off, new_idx, side="right") - 1
            keep = np.ones(len(keys), dtype=bool)
            keep[new_idx[has_old[new_rows]]] = False
            return filter_map_entries(m2, keep)

        map_fn = rename
    elif isinstance(a, DeleteAction):
        keyset = pa.array(a.keys, pa.string())
        pattern = a.key_pattern

        def delete(m: pa.MapArray) -> pa.MapArray:
            _, keys, _ = map_parts(m)
            drop = pc.is_in(keys, value_set=keyset)
            if pattern is not None:
                drop = pc.or_(drop, pc.match_substring_regex(keys, pattern))
            return filter_map_entries(m, pc.invert(pc.fill_null(drop, False)))

        map_fn = delete
    elif isinstance(a, HashAction):
        keyset = pa.array(a.keys, pa.string())
        salt = a.salt.get_secret_value().encode()
        map_fn = lambda m: map_value_apply(  # noqa: E731
            m, lambda v: sha256_hex(v, salt), lambda k: pc.is_in(k, value_set=keyset)
        )
    elif isinstance(a, TruncateAction):
        n = a.max_length
        sel = None
        if a.keys is not None:
            keyset = pa.array(a.keys, pa.string())
            sel = lambda k: pc.is_in(k, value_set=keyset)  # noqa: E731
        map_fn = lambda m: map_value_apply(  # noqa: E731
            m, lambda v: pc.utf8_slice_codeunits(v, 0, n), sel
        )
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown action {a!r}")
    return lambda b: replace_column(b, i, apply_to_maps(b.column(i), map_fn))


class TransformKernel:
    """Stateless kernel: applies the compiled actions in order (schema unchanged)."""

    drop_reason = None

    def __init__(self, cfg: TransformConfig, schema: pa.Schema) -> None:
        problems = cfg.problems(schema)
        if problems:
            raise ValueError("; ".join(f"{p}: {m}" for p, m in problems))
        self._steps = [_compile_action(a, schema) for a in cfg.actions]

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for step in self._steps:
            batch = step(batch)
        return batch


def build(cfg: TransformConfig, schema: pa.Schema) -> TransformKernel:
    """Factory used by the registry."""
    return TransformKernel(cfg, schema)
