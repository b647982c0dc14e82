"""Arrow arrays from Python lists and numpy arrays, Arrow scalars, and numpy views of Arrow
arrays, through buffers.

``pa.array``, ``pa.scalar`` (and so every ``pyarrow.compute`` call given a Python number or
string) probe their argument for pandas types and ``Array.to_numpy`` converts through
pyarrow's pandas layer: the first call of any imports pandas (~0.3 s of CPU and ~50 MiB of
RSS) in a flow process that has no other use for it (a flow into a ClickHouse server: the
Native encoder reads numbers and offsets, the intents are built from Python values; the
metrics flow's remote-write branch). These build the same arrays, scalars and views from
the buffers, without that import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["from_numpy", "list_parts", "numbers", "scalar", "string_array", "values_view"]


def string_array(values: Sequence[str]) -> pa.Array:
    """A ``string`` array of ``values`` (no nulls)."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )


def _dtype(type: pa.DataType) -> np.dtype:
    if pa.types.is_timestamp(type):
        return np.dtype(np.int64)
    if pa.types.is_integer(type):
        kind = "u" if pa.types.is_unsigned_integer(type) else "i"
        return np.dtype(f"{kind}{type.bit_width // 8}")
    if pa.types.is_floating(type):
        return np.dtype(f"f{type.bit_width // 8}")
    raise TypeError(f"no numpy view of {type} values")


def values_view(a: pa.Array) -> np.ndarray:
    """The values of an integer or floating-point array as a read-only numpy view (no copy,
    sliced arrays included); null slots hold whatever their buffer has, so fill them first."""
    dt = _dtype(a.type)
    return np.frombuffer(a.buffers()[1], dtype=dt, count=len(a), offset=a.offset * dt.itemsize)


def from_numpy(values: np.ndarray, type: pa.DataType | None = None) -> pa.Array:
    """An integer or floating-point array of ``values`` (1-d, no nulls; copied only when not
    contiguous), of ``type`` when given (same width: ``pa.timestamp("ns")`` for int64)."""
    values = np.ascontiguousarray(values)
    if type is None:
        type = pa.from_numpy_dtype(values.dtype)
    elif _dtype(type).itemsize != values.dtype.itemsize:
        raise TypeError(f"{values.dtype} values cannot be read as {type}")
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(values)])


def scalar(value: int | float | str, type: pa.DataType) -> pa.Scalar:
    """``value`` as an Arrow scalar of ``type`` (integer, floating point or string), to hand
    to ``pyarrow.compute`` instead of the Python value."""
    if pa.types.is_string(type):
        return string_array([value])[0]
    return from_numpy(np.array([value], _dtype(type))).cast(type)[0]


def numbers(a: pa.Array | pa.ChunkedArray, dtype: np.dtype | type) -> np.ndarray:
    """The values of a number, boolean or timestamp array as a numpy array of ``dtype`` (null
    slots read as 0)."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    if pa.types.is_boolean(a.type):
        a = a.cast(pa.int8())
    if a.null_count:
        a = a.fill_null(scalar(0, a.type))
    return values_view(a).astype(dtype, copy=False)


def list_parts(col: pa.Array | pa.ChunkedArray, dtype: np.dtype | type) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    """A list column as (length of each row's list, start of each in ``flat``, the flat
    values as ``dtype``); a null list is empty."""
    lengths = numbers(pc.list_value_length(col), np.int64)
    flat = numbers(pc.list_flatten(col), dtype)
    return lengths, np.cumsum(lengths) - lengths, flat
