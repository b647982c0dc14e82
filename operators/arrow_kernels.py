"""Arrow kernels the operators share: row filtering and attribute-map lookup, vectorised."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["filter_batch", "map_get"]


def filter_batch(batch: pa.RecordBatch, mask: pa.Array) -> pa.RecordBatch:
    """``batch.filter(mask)`` done column by column (about 2x faster on the nested trace
    columns with pyarrow 26), with shortcuts when every or no row is kept."""
    kept = pc.sum(mask).as_py() or 0
    if kept == batch.num_rows:
        return batch
    if kept == 0:
        return batch.slice(0, 0)
    return pa.RecordBatch.from_arrays([c.filter(mask) for c in batch.columns], schema=batch.schema)


def map_get(arr: pa.Array, key: str) -> pa.Array:
    """Value of the first ``key`` entry of each map (null when absent or the map is null).

    Same result as ``pc.map_lookup(arr, key, "first")`` but several times faster on wide maps:
    one vectorised key comparison over all entries, then a take of the matching values.
    """
    n = len(arr)
    off = arr.offsets.to_numpy(zero_copy_only=False)
    start, end = int(off[0]), int(off[-1])
    keys = arr.keys.slice(start, end - start)
    items = arr.items.slice(start, end - start)
    hit = pc.equal(keys, pa.scalar(key, keys.type))
    if hit.null_count:
        hit = pc.fill_null(hit, False)
    idx = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return pa.nulls(n, items.type)
    rows = np.searchsorted(off - start, idx, side="right") - 1
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    rows, idx = rows[first], idx[first]
    take = np.zeros(n, dtype=np.int64)
    take[rows] = idx
    missing = np.ones(n, dtype=bool)
    missing[rows] = False
    if arr.null_count:
        missing |= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return items.take(pa.array(take, mask=missing))
