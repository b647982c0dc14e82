"""Arrow arrays from short Python lists, and numpy views of Arrow arrays, through buffers.

``pa.array`` probes its argument for pandas types and ``Array.to_numpy`` converts through
pyarrow's pandas layer: the first call of either imports pandas (~0.3 s of CPU and ~50 MiB
of RSS) in a flow process that has no other use for it (a flow into a ClickHouse server:
the Native encoder reads numbers and offsets, the intents are built from Python values).
These build the same arrays and views from the buffers, without that import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

__all__ = ["int_array", "string_array", "values_view"]


def string_array(values: Sequence[str]) -> pa.Array:
    """A ``string`` array of ``values`` (no nulls)."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )


def _dtype(type: pa.DataType) -> np.dtype:
    if pa.types.is_integer(type):
        kind = "u" if pa.types.is_unsigned_integer(type) else "i"
        return np.dtype(f"{kind}{type.bit_width // 8}")
    if pa.types.is_floating(type):
        return np.dtype(f"f{type.bit_width // 8}")
    raise TypeError(f"no numpy view of {type} values")


def int_array(values: Sequence[int], type: pa.DataType) -> pa.Array:
    """An integer array of ``type`` (e.g. ``pa.uint64()``) of ``values`` (no nulls); a value
    out of the type's range raises ``OverflowError``."""
    if not pa.types.is_integer(type):
        raise TypeError(f"int_array needs an integer type, not {type}")
    arr = np.array(values, dtype=_dtype(type))
    return pa.Array.from_buffers(type, len(arr), [None, pa.py_buffer(arr)])


def values_view(a: pa.Array) -> np.ndarray:
    """The values of an integer or floating-point array as a read-only numpy view (no copy,
    sliced arrays included); null slots hold whatever their buffer has, so fill them first."""
    dt = _dtype(a.type)
    return np.frombuffer(a.buffers()[1], dtype=dt, count=len(a), offset=a.offset * dt.itemsize)
