"""The soak's user operator: raises on a batch holding a marker span (a "poison batch").

Loaded by ``flows.traces`` from the soak config as ``module: soak.poison_op:raise_on_marker``;
every other batch passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


class PoisonSpan(ValueError):
    """Raised for a batch holding a span named like ``cfg['marker']``."""


def raise_on_marker(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    """Return ``batch`` unchanged, or raise when a span's name equals ``cfg['marker']``."""
    marker = str(cfg.get("marker", "soak.poison"))
    hits = pc.sum(pc.equal(batch.column("SpanName"), marker)).as_py() or 0
    if hits:
        raise PoisonSpan(f"{hits} span(s) named {marker!r} in this batch")
    return batch
