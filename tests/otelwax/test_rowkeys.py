"""otelwax.rowkeys: a row's key is its own (same in any batch) and tells any two values apart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from otelwax.rowkeys import first_rows, map_codes, map_keys, row_groups, row_keys

_MAP = pa.map_(pa.string(), pa.string())
_MAPS = [[], [("", "")], [("a", "x\x1fy")], [("a\x1fx", "y")], [("a", "x")],
         [("k", "v"), ("k2", "v2")], [("k", "v\x1ck2"), ("", "v2")], [("0", "")], [("\x1e", "")]]
_STRS = ["x", "", "y", "y", "z\x1c", "1:x", "\x1e", "0\x1d", "x"]


def test_every_distinct_row_gets_its_own_key_whatever_it_holds() -> None:
    batch = pa.record_batch({"m": pa.array(_MAPS, _MAP), "s": pa.array(_STRS)})
    keys = row_keys(batch, ["s", "m"]).to_pylist()
    rows = list(zip(_STRS, map(tuple, _MAPS), strict=True))
    assert len(set(keys)) == len(set(rows))
    assert len(set(map_keys(batch.column("m")).to_pylist())) == len(_MAPS)


def test_a_rows_key_does_not_depend_on_the_other_rows_of_its_batch() -> None:
    batch = pa.record_batch({"m": pa.array(_MAPS, _MAP), "s": pa.array(_STRS)})
    whole = row_keys(batch, ["s", "m"]).to_pylist()
    alone = [row_keys(batch.slice(i, 1), ["s", "m"]).to_pylist()[0] for i in range(len(_STRS))]
    copied = [row_keys(pa.record_batch({"m": pa.array([m], _MAP), "s": [s]}), ["s", "m"])
              .to_pylist()[0] for s, m in zip(_STRS, _MAPS, strict=True)]  # fmt: skip
    assert whole == alone == copied


def test_row_groups_are_the_rows_with_equal_keys_and_name_them_by_their_key() -> None:
    """Grouping by codes puts two rows together exactly when their keys are equal, and each
    group's string is the key of its rows (so it can name state kept across batches)."""
    maps = (_MAPS + _MAPS[::-1]) * 2
    strs = (_STRS + _STRS) * 2
    flags = [i % 3 == 0 for i in range(len(maps))]
    batch = pa.record_batch({"m": pa.array(maps, _MAP), "s": pa.array(strs), "b": flags})
    names = ["m", "s", "b"]
    keys = row_keys(batch, names).to_pylist()
    distinct, of_row = row_groups(batch, names)
    assert [distinct[g] for g in of_row.tolist()] == keys
    assert len(distinct) == len(set(keys))
    rows = np.array([0, 3, 9, 12, 30, 31])
    distinct, of_row = row_groups(batch, names, rows)
    assert [distinct[g] for g in of_row.tolist()] == [keys[i] for i in rows.tolist()]
    col_codes, n = map_codes(batch.column("m").slice(9))
    assert n == len(set(map(tuple, maps[9:])))
    firsts = [tuple(maps[9:][i]) for i in first_rows(col_codes).tolist()]
    assert firsts == list(dict.fromkeys(map(tuple, maps[9:])))
