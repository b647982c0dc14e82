"""Deliberately broken user operators for the error-message tests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

NOT_CALLABLE = 42


def boom(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    raise ValueError("user code failed on purpose")


def drop_column(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    return batch.drop_columns(["StatusMessage"])


def retype_column(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    i = batch.schema.get_field_index("Duration")
    return batch.set_column(i, "Duration", batch.column(i).cast(pa.int64()))


def not_a_batch(batch: pa.RecordBatch, cfg: dict[str, Any]) -> Any:
    return batch.to_pylist()


def as_table(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.Table:
    return pa.Table.from_batches([batch])


def bad_factory(cfg: dict[str, Any]) -> Any:
    return "not callable"


def fail_on_marker(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    """A poison batch: raises whenever the batch holds a span named ``cfg["marker"]``."""
    if pc.any(pc.equal(batch.column("SpanName"), cfg["marker"])).as_py():
        raise ValueError(f"poison span in a batch of {batch.num_rows}")
    return batch
