"""sampling: consistent head sampling by trace id.

Head (stateless)::

    - type: probabilistic_sampler
      sampling_percentage: 10        # keep ~10 % of traces
      invalid_trace_id: keep         # rows with no/invalid TraceId (e.g. logs): keep | drop

The decision is a function of the TraceId only, following the OpenTelemetry consistent
probability sampling rule (TraceIdRatioBased / the Collector's ``proportional`` mode): the
rightmost 56 bits of the trace id are the randomness ``R``; the rejection threshold is
``T = round((1 - p) * 2**56)``; a row is kept when ``R >= T``. Every span (and log) of a trace
gets the same decision in every process and worker, and a lower percentage keeps a subset of
what a higher one keeps. Hex decoding is vectorised with numpy (no per-row Python).

Tail sampling (stateful, by event time, exactly once in flows.traces) is
``operators.tail_sampling``.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.arrow_kernels import filter_batch
from otelwax.settings import StrictModel

__all__ = [
    "ProbabilisticSamplerConfig",
    "build_head",
    "head_keep_mask",
    "parse_seconds",
    "trace_randomness",
]

log = logging.getLogger(__name__)

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_SHIFTS = (4 * np.arange(13, -1, -1)).astype(np.uint64)
_R_BITS = 56


def trace_randomness(trace_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(R, valid): the rightmost 56 bits of each 32-hex trace id as uint64, and a validity mask.

    Invalid ids (empty, null, wrong length, non-hex) get R = 0 and valid = False.
    """
    n = len(trace_ids)
    r = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return r, np.zeros(0, dtype=bool)
    ok = pc.fill_null(pc.equal(pc.binary_length(trace_ids), 32), False)
    valid = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    k = int(valid.sum())
    if not k:
        return r, valid
    tail = pc.binary_slice(trace_ids.filter(ok).cast(pa.binary()), 18, 32)
    # Freshly computed: offsets are 14 apart and the data buffer is contiguous.
    start = int(np.frombuffer(tail.buffers()[1], dtype=np.int32)[tail.offset])
    raw = np.frombuffer(tail.buffers()[2], dtype=np.uint8, count=14 * k, offset=start)
    nib = _HEX[raw.reshape(k, 14)]
    good = (nib != 255).all(axis=1)
    vals = (nib.astype(np.uint64) << _SHIFTS).sum(axis=1, dtype=np.uint64)
    idx = np.nonzero(valid)[0]
    r[idx] = np.where(good, vals, 0)
    valid[idx] = good
    return r, valid


def threshold(percentage: float) -> int:
    """Rejection threshold T for a sampling percentage (0..100)."""
    return round((1.0 - percentage / 100.0) * (1 << _R_BITS))


def head_keep_mask(trace_ids: pa.Array, percentage: float, keep_invalid: bool = True) -> np.ndarray:
    """Boolean numpy mask: True where the consistent sampler keeps the row."""
    r, valid = trace_randomness(trace_ids)
    keep = r >= np.uint64(threshold(percentage))
    return np.where(valid, keep, keep_invalid)


_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")


def parse_seconds(v: object) -> object:
    """Accept 10, 2.5, "10s", "500ms", "1m" (seconds when no unit)."""
    if isinstance(v, str):
        m = _DUR_RE.match(v)
        if not m:
            raise ValueError(f"not a duration: {v!r} (use e.g. 500ms, 10s, 1m)")
        return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return v


class ProbabilisticSamplerConfig(StrictModel):
    """Consistent head sampling by trace id."""

    type: Literal["probabilistic_sampler"]
    name: str | None = None
    sampling_percentage: float = Field(ge=0, le=100)
    invalid_trace_id: Literal["keep", "drop"] = "keep"

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        if "TraceId" not in schema.names:
            return [("type", "this signal has no TraceId column")]
        return []


class HeadSampler:
    """Stateless kernel for ``probabilistic_sampler``."""

    drop_reason = "sampled"

    def __init__(self, cfg: ProbabilisticSamplerConfig, schema: pa.Schema) -> None:
        self._i = schema.get_field_index("TraceId")
        self._pct = cfg.sampling_percentage
        self._keep_invalid = cfg.invalid_trace_id == "keep"

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0 or self._pct >= 100:
            return batch
        mask = head_keep_mask(batch.column(self._i), self._pct, self._keep_invalid)
        return filter_batch(batch, pa.array(mask, pa.bool_()))


def build_head(cfg: ProbabilisticSamplerConfig, schema: pa.Schema) -> HeadSampler:
    """Factory used by the registry."""
    return HeadSampler(cfg, schema)
