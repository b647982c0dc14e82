"""Property tests: the vectorised map kernels agree with a plain-Python model of the same edit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.arrow_kernels import map_get
from operators.transform import filter_map_entries, map_parts, set_map_key

MAP = pa.map_(pa.string(), pa.string())
keys = st.sampled_from(["a", "b", "c", "ü", ""])
vals = st.text(max_size=3)
row = st.one_of(st.none(), st.lists(st.tuples(keys, vals), max_size=5))
maps = st.lists(row, max_size=12)


def sliced(rows: list, start: int, length: int) -> pa.MapArray:
    arr = pa.array(rows, MAP)
    start = min(start, len(rows))
    return arr.slice(start, length)


def as_rows(arr: pa.Array) -> list:
    return arr.to_pylist()


@settings(max_examples=200, deadline=None)
@given(maps, st.integers(0, 5), st.integers(0, 12), keys)
def test_map_get_matches_map_lookup(rows: list, start: int, length: int, key: str) -> None:
    arr = sliced(rows, start, length)
    assert map_get(arr, key).to_pylist() == pc.map_lookup(arr, pa.scalar(key), "first").to_pylist()


@settings(max_examples=200, deadline=None)
@given(maps, st.integers(0, 5), st.integers(0, 12), keys, vals, st.booleans())
def test_set_map_key_matches_model(
    rows: list, start: int, length: int, key: str, value: str, only_if_missing: bool
) -> None:
    arr = sliced(rows, start, length)
    out = set_map_key(arr, key, pa.scalar(value), only_if_missing=only_if_missing)
    out.validate(full=True)
    expected = []
    for r in as_rows(arr):
        r = list(r or [])
        has = any(k == key for k, _ in r)
        if has and only_if_missing:
            expected.append(r)
        elif has:
            expected.append([(k, value if k == key else v) for k, v in r])
        else:
            expected.append([*r, (key, value)])
    got = [list(r or []) for r in as_rows(out)]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(maps, st.integers(0, 5), st.integers(0, 12), st.sets(keys, max_size=3))
def test_filter_entries_matches_model(rows: list, start: int, length: int, drop: set) -> None:
    arr = sliced(rows, start, length)
    _, k, _ = map_parts(arr)
    keep = (
        ~np.isin(np.array(k.to_pylist(), dtype=object), list(drop))
        if len(k)
        else np.zeros(0, dtype=bool)
    )
    out = filter_map_entries(arr, keep.astype(bool))
    out.validate(full=True)
    expected = [
        None if r is None else [(a, b) for a, b in r if a not in drop] for r in as_rows(arr)
    ]
    assert as_rows(out) == expected
