"""otelwax.rowkeys: a row's key is its own (same in any batch) and tells any two values apart."""

from __future__ import annotations

import pyarrow as pa

from otelwax.rowkeys import map_keys, row_keys

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
