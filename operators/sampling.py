"""sampling: consistent head sampling by trace id, and tail sampling within a decision window.

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

Tail (stateful, traces only)::

    - type: tail_sampling
      decision_wait: 10s            # from the first span of a trace seen by this worker
      keep_errors: true             # any span with StatusCode STATUS_CODE_ERROR
      latency_threshold: 2s         # trace latency = max(end) - min(start) over its spans
      base_percentage: 5            # plus a consistent head-sampling rate for the rest
      max_buffered_spans: 1000000   # memory bound: the oldest traces are decided early
      decided_cache: 200000         # trace ids remembered for spans that arrive late

Protocol (what a flow does; see ``operators.registry.Pipeline``): ``process(batch, now)``
buffers the rows and returns the rows of every trace whose decision is due; ``flush()``
decides everything still buffered (end of input / shutdown); ``next_deadline()`` says when to
call ``process`` again with an empty batch if no data arrives (bytewax ``notify_at``). Spans of
a trace must reach the same worker: Kafka records are keyed by trace id, so a partition (and
its worker) sees whole traces. Late spans of an already decided trace follow its decision
while the id is in the cache; after that they are decided on their own. The buffer is not part
of bytewax snapshots: after a crash, buffered spans are replayed from Kafka only if offsets
were not committed past them (the flow's at-least-once replay window).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators.arrow_kernels import filter_batch
from otelwax.settings import StrictModel

__all__ = [
    "ProbabilisticSamplerConfig",
    "TailSamplingConfig",
    "build_head",
    "build_tail",
    "head_keep_mask",
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


def _seconds(v: object) -> object:
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


class TailSamplingConfig(StrictModel):
    """Tail sampling of whole traces within a decision window (see the module doc)."""

    type: Literal["tail_sampling"]
    name: str | None = None
    decision_wait: float = Field(10.0, gt=0, description="seconds (or '500ms', '10s')")
    keep_errors: bool = True
    latency_threshold: float | None = Field(None, gt=0, description="seconds; None = off")
    base_percentage: float = Field(0.0, ge=0, le=100)
    max_buffered_spans: int = Field(1_000_000, gt=0)
    decision_interval: float = Field(
        1.0,
        gt=0,
        description="seconds between decision rounds (a trace waits up to "
        "decision_wait + decision_interval)",
    )
    decided_cache: int = Field(200_000, ge=0)

    _secs = field_validator(
        "decision_wait", "latency_threshold", "decision_interval", mode="before"
    )(_seconds)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        need = ("TraceId", "StatusCode", "Timestamp", "Duration")
        if any(n not in schema.names for n in need):
            return [("type", "tail_sampling works on traces only")]
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


class TailSampler:
    """Stateful kernel for ``tail_sampling``: ``process``/``flush``/``next_deadline``.

    The buffer is a list of (arrival time, batch) in arrival order. A trace is due when the
    first batch holding it is ``decision_wait`` old; decisions run at most every
    ``decision_interval`` and touch the due batches' trace ids, a hash probe of the buffer and
    an aggregation over the due rows only.
    """

    drop_reason = "sampled"
    stateful = True

    def __init__(self, cfg: TailSamplingConfig, schema: pa.Schema) -> None:
        self.cfg = cfg
        self.schema = schema
        self._wait_ns = int(cfg.decision_wait * 1e9)
        self._interval_ns = int(cfg.decision_interval * 1e9)
        self._lat_ns = None if cfg.latency_threshold is None else int(cfg.latency_threshold * 1e9)
        self._buf: list[tuple[int, pa.RecordBatch]] = []
        self._buffered = 0
        self._last_decision = 0
        self._kept_ids: list[pa.Array] = []
        self._dropped_ids: list[pa.Array] = []
        self.dropped_rows = 0  # rows dropped by the last call (read by the registry wrapper)

    # -- helpers --------------------------------------------------------------------------

    def _cache(self, chunks: list[pa.Array], ids: pa.Array) -> None:
        if self.cfg.decided_cache == 0 or len(ids) == 0:
            return
        chunks.append(ids)
        total = sum(len(c) for c in chunks)
        while chunks and total - len(chunks[0]) >= self.cfg.decided_cache:
            total -= len(chunks.pop(0))

    @staticmethod
    def _in(ids: pa.Array, chunks: list[pa.Array]) -> pa.Array | None:
        if not chunks:
            return None
        value_set = pa.concat_arrays(chunks) if len(chunks) > 1 else chunks[0]
        return pc.is_in(ids, value_set=value_set)

    # -- protocol -------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    def _due_ns(self) -> int | None:
        if not self._buf:
            return None
        return max(self._buf[0][0] + self._wait_ns, self._last_decision + self._interval_ns)

    def next_deadline(self) -> float | None:
        """Wall-clock time (seconds) when buffered traces are next due, or None when empty."""
        due = self._due_ns()
        return None if due is None else due / 1e9

    def process(self, batch: pa.RecordBatch, now: float | None = None) -> list[pa.RecordBatch]:
        """Buffer ``batch`` and return the rows of the traces decided to keep now."""
        now_ns = int((time.time() if now is None else now) * 1e9)
        out: list[pa.RecordBatch] = []
        self.dropped_rows = 0
        if batch.num_rows:
            tid = batch.column("TraceId")
            kept_late = self._in(tid, self._kept_ids)
            dropped_late = self._in(tid, self._dropped_ids)
            fresh = None
            if kept_late is not None:
                late = filter_batch(batch, kept_late)
                if late.num_rows:
                    out.append(late)
                fresh = pc.invert(kept_late)
            if dropped_late is not None:
                self.dropped_rows += pc.sum(dropped_late).as_py() or 0
                nd = pc.invert(dropped_late)
                fresh = nd if fresh is None else pc.and_(fresh, nd)
            if fresh is not None:
                batch = filter_batch(batch, fresh)
            if batch.num_rows:
                self._buf.append((now_ns, batch))
                self._buffered += batch.num_rows
        due = self._due_ns()
        if due is not None and (self._buffered > self.cfg.max_buffered_spans or now_ns >= due):
            out.extend(self._decide(now_ns, force=False))
        return out

    def flush(self) -> list[pa.RecordBatch]:
        """Decide every buffered trace now (end of input or shutdown)."""
        self.dropped_rows = 0
        return self._decide(0, force=True)

    def _decide(self, now_ns: int, force: bool) -> list[pa.RecordBatch]:
        if not self._buf:
            return []
        self._last_decision = now_ns
        cut = now_ns - self._wait_ns
        n_old = len(self._buf) if force else sum(1 for t, _ in self._buf if t <= cut)
        if not force and self._buffered > self.cfg.max_buffered_spans:
            # Over the memory bound: decide the oldest batches' traces early, down to 90 %.
            target = int(self.cfg.max_buffered_spans * 0.9)
            left = self._buffered - sum(b.num_rows for _, b in self._buf[:n_old])
            while n_old < len(self._buf) and left > target:
                left -= self._buf[n_old][1].num_rows
                n_old += 1
            log.warning("tail_sampling: over %d buffered spans, deciding early",
                        self.cfg.max_buffered_spans)  # fmt: skip
        if n_old == 0:
            return []
        old_ids = [b.column("TraceId") for _, b in self._buf[:n_old]]
        due_ids = pc.unique(pa.concat_arrays(old_ids) if n_old > 1 else old_ids[0])
        due_parts: list[pa.RecordBatch] = []
        rest: list[tuple[int, pa.RecordBatch]] = []
        for t, b in self._buf:
            m = pc.is_in(b.column("TraceId"), value_set=due_ids)
            d = filter_batch(b, m)
            if d.num_rows:
                due_parts.append(d)
            if d.num_rows < b.num_rows:
                rest.append((t, filter_batch(b, pc.invert(m))))
        self._buf = rest
        self._buffered = sum(b.num_rows for _, b in rest)
        due = pa.Table.from_batches(due_parts)
        start = pc.cast(due.column("Timestamp"), pa.int64())
        end = pc.add(start, pc.cast(due.column("Duration"), pa.int64()))
        err = pc.equal(due.column("StatusCode"), "STATUS_CODE_ERROR")
        work = pa.table({"TraceId": due.column("TraceId"), "s": start, "e": end, "err": err})
        agg = work.group_by("TraceId", use_threads=False).aggregate(
            [("s", "min"), ("e", "max"), ("err", "any")]
        )
        ids = agg.column("TraceId").combine_chunks()
        keep = np.zeros(len(agg), dtype=bool)
        if self.cfg.keep_errors:
            keep |= np.asarray(agg.column("err_any").to_numpy(), dtype=bool)
        if self._lat_ns is not None:
            lat = agg.column("e_max").to_numpy() - agg.column("s_min").to_numpy()
            keep |= lat >= self._lat_ns
        if self.cfg.base_percentage > 0:
            keep |= head_keep_mask(ids, self.cfg.base_percentage, keep_invalid=False)
        kmask = pa.array(keep)
        kept_ids, dropped_ids = ids.filter(kmask), ids.filter(pc.invert(kmask))
        self._cache(self._kept_ids, kept_ids)
        self._cache(self._dropped_ids, dropped_ids)
        out_tbl = due.filter(pc.is_in(due.column("TraceId"), value_set=kept_ids))
        self.dropped_rows += due.num_rows - out_tbl.num_rows
        if out_tbl.num_rows == 0:
            return []
        return [out_tbl.combine_chunks().to_batches()[0]]


def build_head(cfg: ProbabilisticSamplerConfig, schema: pa.Schema) -> HeadSampler:
    """Factory used by the registry."""
    return HeadSampler(cfg, schema)


def build_tail(cfg: TailSamplingConfig, schema: pa.Schema) -> TailSampler:
    """Factory used by the registry."""
    return TailSampler(cfg, schema)
