"""otelwax.arrowbufs builds the arrays ``pa.array`` would and reads what ``to_numpy`` would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from otelwax.arrowbufs import int_array, string_array, values_view


def test_arrays_from_lists_equal_pa_array() -> None:
    words = ["flow", "", "ünïcode", "x" * 300]
    assert string_array(words).equals(pa.array(words, pa.string()))
    assert string_array([]).equals(pa.array([], pa.string()))
    for t in (pa.uint32(), pa.uint64(), pa.int64()):
        assert int_array([0, 7, 2**31], t).equals(pa.array([0, 7, 2**31], t))
    with pytest.raises(OverflowError):
        int_array([-1], pa.uint64())


def test_values_view_of_sliced_arrays() -> None:
    a = pa.array(np.arange(10, dtype=np.int64)).slice(3, 4)
    assert values_view(a).tolist() == [3, 4, 5, 6]
    lists = pa.array([[1], [2, 3], [], [4]], pa.list_(pa.int32())).slice(1, 2)
    assert values_view(lists.offsets).tolist() == [1, 3, 3]
    assert values_view(pa.array([0.5, 1.5], pa.float64()).slice(1)).tolist() == [1.5]
