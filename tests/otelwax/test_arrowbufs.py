"""otelwax.arrowbufs builds the arrays ``pa.array`` would and reads what ``to_numpy`` would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from otelwax.arrowbufs import from_numpy, numbers, scalar, string_array, values_view


def test_arrays_from_lists_equal_pa_array() -> None:
    words = ["flow", "", "ünïcode", "x" * 300]
    assert string_array(words).equals(pa.array(words, pa.string()))
    assert string_array([]).equals(pa.array([], pa.string()))


def test_values_view_of_sliced_arrays() -> None:
    a = pa.array(np.arange(10, dtype=np.int64)).slice(3, 4)
    assert values_view(a).tolist() == [3, 4, 5, 6]
    lists = pa.array([[1], [2, 3], [], [4]], pa.list_(pa.int32())).slice(1, 2)
    assert values_view(lists.offsets).tolist() == [1, 3, 3]
    assert values_view(pa.array([0.5, 1.5], pa.float64()).slice(1)).tolist() == [1.5]


def test_arrays_and_scalars_from_numpy_and_python_values_equal_pyarrows() -> None:
    for a in (np.arange(5, dtype=np.int64), np.array([0.5, -1.0]), np.arange(6, dtype=np.uint8)):
        assert from_numpy(a).equals(pa.array(a))
    assert from_numpy(np.arange(10)[::3]).to_pylist() == [0, 3, 6, 9]
    ts = from_numpy(np.array([1, 2], np.int64), pa.timestamp("ns"))
    assert ts.equals(pa.array([1, 2], pa.int64()).cast(pa.timestamp("ns")))
    with pytest.raises(TypeError):
        from_numpy(np.array([1], np.int32), pa.timestamp("ns"))
    values = ((7, pa.int32()), (10**6, pa.int64()), (2.5, pa.float64()), ("\x1f", pa.string()))
    for v, t in values:
        assert scalar(v, t).equals(pa.scalar(v, t))
    assert scalar(0, pa.timestamp("ns")).equals(pa.scalar(0, pa.timestamp("ns")))


def test_numbers_read_what_to_numpy_would_with_nulls_as_zero() -> None:
    chunked = pa.chunked_array([pa.array([1, 2], pa.uint64()), pa.array([3], pa.uint64())])
    assert numbers(chunked, np.float64).tolist() == [1.0, 2.0, 3.0]
    assert numbers(pa.array([True, False]), np.int64).tolist() == [1, 0]
    assert numbers(pa.array([5, None, 7], pa.int32()), np.int64).tolist() == [5, 0, 7]
    ts = pa.array([10, 20], pa.int64()).cast(pa.timestamp("ns"))
    assert numbers(ts, np.int64).tolist() == [10, 20]
