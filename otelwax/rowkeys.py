"""Row identity strings built by Arrow compute (C++), for grouping rows by their content
without a Python object per map entry, and integer codes that group rows within one call.

A row's key depends on its own values only (keys made in different calls compare) and two
rows get the same key only when their values are equal. Strings are joined with the ASCII
separators ``\\x1c``, ``\\x1d`` and ``\\x1f``. A row holding one of ``\\x1c``-``\\x1f`` in a
value (next to never) gets ``\\x1e`` followed by every string as ``<byte length>:<string>``
instead, a prefix-free code; no key of the first kind holds ``\\x1e``, so the two never meet.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from otelwax.arrowbufs import from_numpy, numbers, scalar, values_view

__all__ = ["codes", "first_rows", "group_rows", "map_codes", "map_keys", "row_groups", "row_keys"]

# Separators as Arrow scalars: a Python str handed to pyarrow.compute imports pandas.
_NONE, _LEN, _ROW, _MAP, _ITEM, _TAG = (
    scalar(s, pa.string()) for s in ("", ":", "\x1c", "\x1d", "\x1f", "\x1e")
)


def _prefixed(strings: pa.Array) -> pa.Array:
    """``<byte length>:<string>`` for each string."""
    lengths = pc.cast(pc.binary_length(strings), pa.string())
    return pc.binary_join_element_wise(lengths, strings, _LEN)


def _has_separators(strings: pa.Array) -> bool:
    """Whether a byte of the array's data buffer is a separator (bytes outside a sliced array
    may answer yes: that only costs the slower encoding)."""
    data = strings.buffers()[2]
    if data is None or data.size == 0:
        return False
    b = np.frombuffer(data, np.uint8)
    return bool(((b >= 0x1C) & (b <= 0x1F)).any())


def _map_parts(col: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(offsets from 0, keys, values) of a map column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets
    base = offsets[0].as_py()
    end = offsets[-1].as_py()
    k, v = col.values.slice(base, end - base).flatten()
    if base:
        offsets = pc.subtract(offsets, offsets[0])
    return offsets, k, v


def _map_key(offsets: pa.Array, k: pa.Array, v: pa.Array, prefixed: bool) -> pa.Array:
    if prefixed:
        pairs = pc.binary_join_element_wise(_prefixed(k), _prefixed(v), _NONE)
        return pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), _NONE)
    # "<n>\x1d<k1>\x1f<k2>...\x1d<v1>\x1f<v2>...": the count keeps {} and {"": ""} apart.
    kl = pa.ListArray.from_arrays(offsets, k)
    vl = pa.ListArray.from_arrays(offsets, v)
    n = pc.cast(pc.list_value_length(kl), pa.string())
    return pc.binary_join_element_wise(
        n, pc.binary_join(kl, _ITEM), pc.binary_join(vl, _ITEM), _MAP
    )


def _map_raw(offsets: pa.Array, k: pa.Array, v: pa.Array) -> pa.Array:
    """Each row's keys and values glued together (to look for separators per row)."""
    kl = pa.ListArray.from_arrays(offsets, k)
    vl = pa.ListArray.from_arrays(offsets, v)
    return pc.binary_join_element_wise(
        pc.binary_join(kl, _NONE), pc.binary_join(vl, _NONE), _NONE
    )


def _keys(
    maps: list[tuple[pa.Array, pa.Array, pa.Array] | None], strings: list[pa.Array | None]
) -> pa.Array:
    """Row keys of the columns given in order, each as map parts or a string array."""

    def build(prefixed: bool) -> pa.Array:
        parts = [
            _map_key(*m, prefixed) if m is not None else s
            for m, s in zip(maps, strings, strict=True)
        ]
        if prefixed:
            parts = [_prefixed(p) for p in parts]
        if len(parts) == 1:
            return parts[0]
        return pc.binary_join_element_wise(*parts, _NONE if prefixed else _ROW)

    plain = build(False)
    suspects = [k for m in maps if m is not None for k in m[1:]]
    suspects += [s for s in strings if s is not None]
    if not any(_has_separators(a) for a in suspects):
        return plain
    raw = [_map_raw(*m) if m is not None else s for m, s in zip(maps, strings, strict=True)]
    marked = functools.reduce(
        pc.or_, (pc.match_substring_regex(r, "[\x1c-\x1f]") for r in raw)
    )
    tagged = pc.binary_join_element_wise(_TAG, build(True), _NONE)
    return pc.if_else(marked, tagged, plain)


def map_keys(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One string per row of a ``map<string, string>`` column identifying its pairs (in
    order)."""
    return _keys([_map_parts(col)], [None])


def row_keys(batch: pa.RecordBatch | pa.Table, names: list[str]) -> pa.Array:
    """One string per row of ``batch`` identifying its values in the columns ``names``
    (strings, maps of strings, booleans and integers)."""
    maps: list[tuple[pa.Array, pa.Array, pa.Array] | None] = []
    strings: list[pa.Array | None] = []
    for name in names:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_map(col.type):
            maps.append(_map_parts(col))
            strings.append(None)
        else:
            maps.append(None)
            strings.append(col if pa.types.is_string(col.type) else pc.cast(col, pa.string()))
    return _keys(maps, strings)


def codes(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense integer codes of ``arr``'s values in order of first appearance (Arrow's hash
    kernel, no sort; a null is a value of its own) and how many distinct there are."""
    d = arr.dictionary_encode(null_encoding="encode")
    if isinstance(d, pa.ChunkedArray):
        d = d.combine_chunks()
    return numbers(d.indices, np.int64), len(d.dictionary)


def first_rows(codes: np.ndarray) -> np.ndarray:
    """The first row of each code, for codes numbered in order of first appearance (a code
    is new where it exceeds every code before it)."""
    if not len(codes):
        return codes
    top = np.maximum.accumulate(codes)
    return np.flatnonzero(np.concatenate(([True], top[1:] > top[:-1])))


def group_rows(*parts: tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by their tuple of ``(codes, how many)``: (group of each row, numbered in
    order of first appearance; first row of each group)."""
    inv = parts[0][0]
    for c, m in parts[1:]:
        inv = codes(from_numpy(inv * m + c))[0]
    return inv, first_rows(inv)


def map_codes(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """:func:`codes` of a ``map<string, string>`` column: equal codes for rows with the same
    pairs in the same order. A row is hashed as three byte strings read in place: its keys'
    bytes, its values' bytes and the lengths of both (equal lengths make equal bytes equal
    pairs), three hash lookups per row instead of two per pair."""
    offsets, k, v = _map_parts(col)
    ends = values_view(offsets).astype(np.int32)
    if k.null_count or v.null_count or not (k.type == v.type == pa.string()):
        pairs = np.empty(2 * len(k), np.int32)
        pairs[0::2] = codes(k)[0]
        pairs[1::2] = codes(v)[0]
        group, first = group_rows(codes(_binary(ends * 8, pa.py_buffer(pairs))))
        return group, len(first)
    ko, vo = _string_offsets(k), _string_offsets(v)
    lengths = np.empty(2 * len(k), np.int32)
    lengths[0::2] = np.diff(ko)
    lengths[1::2] = np.diff(vo)
    group, first = group_rows(
        codes(_binary(ko[ends], k.buffers()[2])),
        codes(_binary(vo[ends], v.buffers()[2])),
        codes(_binary(ends * 8, pa.py_buffer(lengths))),
    )
    return group, len(first)


def _string_offsets(strings: pa.Array) -> np.ndarray:
    return np.frombuffer(
        strings.buffers()[1], np.int32, count=len(strings) + 1, offset=strings.offset * 4
    )


def _binary(offsets: np.ndarray, data: pa.Buffer | None) -> pa.Array:
    """A binary array over ``data`` (not copied) cut at ``offsets``."""
    offsets = np.ascontiguousarray(offsets, np.int32)
    data = data if data is not None else pa.py_buffer(b"")
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), data])


def row_groups(
    batch: pa.RecordBatch | pa.Table, names: list[str], rows: np.ndarray | None = None
) -> tuple[list[str], np.ndarray]:
    """The distinct :func:`row_keys` of ``batch`` (of its ``rows`` when given, an index
    array) in order of first appearance, and each row's index into them; the strings are
    built for one row per group."""
    parts = []
    for name in names:
        col = batch.column(name)
        c, m = map_codes(col) if pa.types.is_map(col.type) else codes(col)
        parts.append((c if rows is None else c[rows], m))
    group, first = group_rows(*parts)
    at = first if rows is None else rows[first]
    return row_keys(batch.take(from_numpy(at)), names).to_pylist(), group
