"""tail_sampling: whole-trace decisions by *event* time, deterministic on replay.

::

    - type: tail_sampling
      decision_wait: 10s           # of event time after the trace's first span was read
      max_traces: 50000            # traces waiting for a decision (memory bound)
      overflow: decide_early       # over the bound: decide the oldest now | drop them
      decided_cache: 100000        # decided trace ids remembered for spans arriving later
      policies:                    # a trace is kept when any policy keeps it
        - {name: errors, type: status_code, status_codes: [ERROR]}
        - {name: slow, type: latency, threshold: 2s}
        - {name: base, type: probabilistic, sampling_percentage: 5}
        - {name: gold, type: string_attribute, key: customer.tier, values: [gold]}
        - {name: big, type: numeric_attribute, key: http.response.size, min_value: 1000000}
        - {name: budget, type: rate_limiting, spans_per_second: 500}
        - name: slow-checkout       # every sub-policy must keep the trace
          type: and
          policies: [{type: latency, threshold: 1s},
                     {type: string_attribute, key: http.route, values: [/checkout]}]
        - {name: chatty, type: span_count, min_spans: 100}      # max_spans: 0 = no bound
        - {name: uncached, type: boolean_attribute, key: app.cached, value: false}
        - name: shared-budget       # the Collector's composite: first match in order decides
          type: composite
          max_total_spans_per_second: 1000
          policy_order: [errors, rest]
          composite_sub_policy:
            - {name: errors, type: status_code, status_codes: [ERROR]}
            - {name: rest, type: probabilistic, sampling_percentage: 100}
          rate_allocation: [{policy: errors, percent: 60}, {policy: rest, percent: 40}]

Clock. One sampler per Kafka partition (records are keyed by trace id, so a partition holds
whole traces). Its clock is the largest Kafka record timestamp read so far, in offset order
(the shim's ingest time: a client's clock cannot move it). The spans of one record share its
timestamp. A trace's first span read at clock ``c`` makes the trace *due* at
``c + decision_wait``; it is decided just before the first record that moves the clock to or
past that point, from the spans read until then. Spans of a decided trace that come later
follow the decision while the trace id is in the decided cache (evicted oldest decision first);
after that they start a new trace (spans later in the same batch as their trace's decision
always follow it, so keep ``decided_cache`` above the decisions of one range).

Nothing depends on wall-clock time or on how the records were cut into batches, so the kept
set is a function of the partition's records alone (the test's offline oracle computes it),
and a replay from a snapshot re-creates the same output per batch. The flip side: a
partition that receives no records decides nothing until it does (``flush`` decides all at the
end of input). Over ``max_traces`` (checked after each batch, so the ranges of a replay
decide the same) the oldest traces are decided early or dropped; both are counted.

Policies see only what the columns hold: StatusCode, Timestamp + Duration (latency = last end
- first start), TraceId (``probabilistic`` is the head sampler's consistent rule, so a head
sampler at p% upstream and this policy at p% agree), span and resource attribute maps
(``string_attribute``: exact values or ``regex``; ``numeric_attribute``: values parsed as
numbers; ``boolean_attribute``: the value rendered ``true``/``false``), the spans read
(``span_count``). ``rate_limiting`` keeps traces in decision order while the spans it kept
within the current second of the clock stay within ``spans_per_second``. ``composite`` asks its
sub-policies in ``policy_order``; the first that matches decides: kept while the spans that
sub-policy kept in the clock's second stay within its ``rate_allocation`` percent of
``max_total_spans_per_second`` (percent 0: an equal share; no entry: nothing), else dropped.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators.sampling import parse_seconds
from operators.tail_policies import Policy, StatusCodePolicy, Verdicts
from otelwax.settings import StrictModel

__all__ = ["TailSampler", "TailSamplingConfig", "build_tail"]

log = logging.getLogger(__name__)


class TailSamplingConfig(StrictModel):
    """Tail sampling of whole traces by event time (see the module doc)."""

    type: Literal["tail_sampling"]
    name: str | None = None
    decision_wait: float = Field(10.0, gt=0, description="seconds (or '500ms', '10s')")
    policies: list[Policy] = Field(
        default_factory=lambda: [StatusCodePolicy(type="status_code", status_codes=["ERROR"])],
        min_length=1,
    )
    max_traces: int = Field(50_000, gt=0, description="traces waiting for a decision")
    overflow: Literal["decide_early", "drop"] = "decide_early"
    decided_cache: int = Field(100_000, ge=0)

    _secs = field_validator("decision_wait", mode="before")(parse_seconds)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        need = ("TraceId", "StatusCode", "Timestamp", "Duration", "SpanAttributes")
        if any(n not in schema.names for n in need):
            return [("type", "tail_sampling works on traces only")]
        return []


# --- the kernel -------------------------------------------------------------------------------


def _concat(chunks: list[pa.Array], typ: pa.DataType) -> pa.Array:
    if not chunks:
        return pa.array([], typ)
    return pa.concat_arrays(chunks) if len(chunks) > 1 else chunks[0]


def _positions(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Index of each value in ``value_set`` (-1 when absent). A hash table is built per call:
    over ``value_set`` when it is small, else over ``values`` first, to pick the few entries
    of a large set (the decided cache, the waiting traces) that a batch can hit."""
    none = np.full(len(values), -1, dtype=np.int64)
    if len(value_set) == 0 or len(values) == 0:
        return none
    where = None
    if len(value_set) > 2 * len(values):
        hit = pc.is_in(value_set, value_set=pc.unique(values))
        where = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
        if len(where) == 0:
            return none
        value_set = value_set.filter(hit)
    pos = pc.fill_null(pc.index_in(values, value_set=value_set), -1)
    pos = pos.to_numpy(zero_copy_only=False).astype(np.int64)
    if where is None:
        return pos
    return np.where(pos >= 0, where[np.maximum(pos, 0)], -1)


class TailSampler:
    """Deterministic tail sampler of one Kafka partition (see the module doc).

    ``process(batch, ts_ms)`` takes the next spans in offset order with the Kafka timestamp of
    each span's record and returns the kept spans of every trace decided meanwhile, plus
    later spans of traces decided kept before. State (all immutable Arrow data, so a copy for
    a snapshot is cheap): the clock, the waiting traces ``(TraceId, due_ms, seq)`` and their
    spans, the decided cache and the rate limiters. Pickles as compressed Arrow IPC.
    """

    drop_reason = "sampled"
    stateful = True

    def __init__(self, cfg: TailSamplingConfig, schema: pa.Schema) -> None:
        self.cfg = cfg
        self.schema = schema
        self.configure(cfg)
        self.clock_ms: int | None = None
        self._seq = 0
        self._held: list[pa.RecordBatch] = []  # waiting spans, in arrival order
        self._held_due: list[int] = []  # per chunk: the earliest due time of its traces
        self._traces = pa.table({"TraceId": pa.array([], pa.string()),
                                 "due": pa.array([], pa.int64()),
                                 "seq": pa.array([], pa.int64())})  # fmt: skip
        self._cache_ids: list[pa.Array] = []
        self._cache_keep: list[pa.Array] = []
        self._rate: dict[str, list[int]] = {}
        self.dropped_rows = 0
        """Spans sampled out by the last call."""
        self.overflow_rows = 0
        """Spans dropped by the last call because ``max_traces`` was exceeded (``drop``)."""
        self.stats = {"kept": 0, "sampled": 0, "early": 0, "overflow": 0}
        """Traces decided by the last call: kept, sampled out, decided early, dropped over
        ``max_traces``."""

    def configure(self, cfg: TailSamplingConfig) -> None:
        """Use ``cfg`` from now on (a restored snapshot may carry an older configuration)."""
        self.cfg = cfg
        self._wait_ms = round(cfg.decision_wait * 1000)
        self._verdicts = Verdicts(cfg.policies)

    def fresh(self) -> TailSampler:
        """A new, empty sampler with this one's configuration."""
        return TailSampler(self.cfg, self.schema)

    # -- state --------------------------------------------------------------------------

    @property
    def waiting_traces(self) -> int:
        return self._traces.num_rows

    @property
    def buffered_rows(self) -> int:
        return sum(b.num_rows for b in self._held)

    @property
    def nbytes(self) -> int:
        """Arrow bytes held (waiting spans, trace table, decided cache)."""
        cache = sum(a.nbytes for a in self._cache_ids + self._cache_keep)
        return sum(b.nbytes for b in self._held) + self._traces.nbytes + cache

    def __deepcopy__(self, memo: dict) -> TailSampler:
        # bytewax deep-copies state for a snapshot: Arrow data is immutable, share it.
        new = object.__new__(TailSampler)
        new.__dict__.update(self.__dict__)
        new._cache_ids, new._cache_keep = list(self._cache_ids), list(self._cache_keep)
        new._held, new._held_due = list(self._held), list(self._held_due)
        new._rate = {k: list(v) for k, v in self._rate.items()}
        new.stats = dict(self.stats)
        return new

    def __getstate__(self) -> dict:
        ids = _concat(self._cache_ids, pa.string())
        keep = _concat(self._cache_keep, pa.bool_())
        return {
            "cfg": self.cfg.model_dump(),
            "clock_ms": self.clock_ms,
            "seq": self._seq,
            "rate": self._rate,
            "spans": _ipc(pa.Table.from_batches(self._held, self.schema)),
            "chunks": [(b.num_rows, d) for b, d in zip(self._held, self._held_due, strict=True)],
            "traces": _ipc(self._traces),
            "cache": _ipc(pa.table({"TraceId": ids, "keep": keep})),
        }

    def __setstate__(self, s: dict) -> None:
        spans = _unipc(s["spans"])
        self.__init__(TailSamplingConfig.model_validate(s["cfg"]), spans.schema)
        self.clock_ms, self._seq, self._rate = s["clock_ms"], s["seq"], s["rate"]
        self._traces = _unipc(s["traces"])
        start = 0
        for n, due in s["chunks"]:
            self._held.extend(spans.slice(start, n).combine_chunks().to_batches())
            self._held_due.append(due)
            start += n
        cache = _unipc(s["cache"])
        if cache.num_rows:
            self._cache_ids = [cache.column("TraceId").combine_chunks()]
            self._cache_keep = [cache.column("keep").combine_chunks()]

    # -- protocol -----------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch | pa.Table, ts_ms: Any) -> pa.Table:
        """Read ``batch`` (spans in offset order; ``ts_ms`` the record timestamp of each row,
        an int or an array); returns the spans kept now."""
        t = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if not t.schema.equals(self.schema):
            t = t.cast(self.schema)  # e.g. nullability: rows are kept together with held ones
        n = t.num_rows
        self._reset_counts()
        if n == 0:
            return self.schema.empty_table()
        ts = np.broadcast_to(np.asarray(ts_ms, dtype=np.int64), (n,))
        start = int(ts[0]) if self.clock_ms is None else self.clock_ms
        clock = np.maximum.accumulate(np.maximum(ts, start))
        out: list[pa.Table] = []
        fresh = self._follow_decisions(t, out)
        self._read(t, fresh, clock, out)
        self.clock_ms = int(clock[-1])
        self._bound(out)
        return _table(out, self.schema)

    def flush(self) -> pa.Table:
        """Decide every waiting trace now (end of input)."""
        self._reset_counts()
        out: list[pa.Table] = []
        self._decide_oldest(self._traces.num_rows, out, drop=False)
        return _table(out, self.schema)

    def _reset_counts(self) -> None:
        self.dropped_rows = 0
        self.overflow_rows = 0
        self.stats = dict.fromkeys(self.stats, 0)

    # -- steps --------------------------------------------------------------------------

    def _follow_decisions(self, t: pa.Table, out: list[pa.Table]) -> np.ndarray | None:
        """Spans of traces in the decided cache follow their decision; returns the mask of
        the other rows (None: all)."""
        if not self._cache_ids:
            return None
        if len(self._cache_ids) > 1:  # one array, so the next batch needs no concatenation
            self._cache_ids = [_concat(self._cache_ids, pa.string())]
            self._cache_keep = [_concat(self._cache_keep, pa.bool_())]
        ids = self._cache_ids[0]
        keep = self._cache_keep[0].to_numpy(zero_copy_only=False)
        pos = _positions(t.column("TraceId").combine_chunks(), ids)
        decided = pos >= 0
        if not decided.any():
            return None
        kept = decided & keep[np.where(decided, pos, 0)]
        if kept.any():
            out.append(t.filter(pa.array(kept)))
        self.dropped_rows += int(decided.sum() - kept.sum())
        return ~decided

    def _read(
        self, t: pa.Table, fresh: np.ndarray | None, clock: np.ndarray, out: list[pa.Table]
    ) -> None:
        """Add the ``fresh`` rows of ``t``; decide every trace whose due time the clock
        reaches, from the spans read before that row."""
        n = t.num_rows
        rows = np.arange(n)
        if fresh is not None:
            t, rows = t.filter(pa.array(fresh)), rows[fresh]
        tid = t.column("TraceId").combine_chunks()
        firsts = (
            pa.table({"TraceId": tid, "i": pa.array(rows)})
            .group_by("TraceId", use_threads=False)
            .aggregate([("i", "min")])
            .sort_by("i_min")
        )
        old = self._traces
        is_new = _positions(firsts.column("TraceId").combine_chunks(), old.column("TraceId")) < 0
        new = firsts.filter(pa.array(is_new))
        seq0 = self._seq
        self._seq += new.num_rows
        traces = pa.concat_tables([
            old,
            pa.table({"TraceId": new.column("TraceId"),
                      "due": pa.array(clock[new.column("i_min").to_numpy()] + self._wait_ms),
                      "seq": pa.array(np.arange(seq0, self._seq, dtype=np.int64))}),
        ]).combine_chunks()  # fmt: skip
        due = traces.column("due").to_numpy()
        at = np.searchsorted(clock, due, side="left")
        decided = at < n
        row_pos = _positions(tid, traces.column("TraceId"))
        if not decided.any():
            self._traces = traces
            if t.num_rows:
                self._hold(t, int(due[row_pos].min()))
            return
        row_at = at[row_pos]
        row_decided = row_at < n
        order = np.lexsort((traces.column("seq").to_numpy(), at))  # decision order
        order = order[decided[order]]
        d_ids = traces.column("TraceId").take(pa.array(order)).combine_chunks()
        self._traces = traces.filter(pa.array(~decided))
        spans = pa.concat_tables([
            self._take(d_ids, int(due[decided].max())),
            t.filter(pa.array(row_decided & (rows < row_at))),
        ])  # fmt: skip
        late = t.filter(pa.array(row_decided & (rows >= row_at)))
        if not row_decided.all():
            self._hold(t.filter(pa.array(~row_decided)), int(due[row_pos[~row_decided]].min()))
        keep = self._verdicts.evaluate(spans, d_ids, clock[at[order]], self._rate)
        self._emit(d_ids, keep, [spans, late], out)

    def _hold(self, t: pa.Table, min_due: int) -> None:
        for b in t.combine_chunks().to_batches():
            self._held.append(b)
            self._held_due.append(min_due)

    def _take(self, ids: pa.Array, max_due: int) -> pa.Table:
        """Remove and return the held spans of ``ids`` (traces due by ``max_due``). Only
        chunks holding a trace due by then are looked at (decisions hit the oldest chunks),
        and only those holding some of ``ids`` are copied."""
        look = [i for i, d in enumerate(self._held_due) if d <= max_due]
        if not look:
            return self.schema.empty_table()
        tids = pa.chunked_array([self._held[i].column("TraceId") for i in look], pa.string())
        hit = pc.is_in(tids, value_set=ids).to_numpy(zero_copy_only=False)  # one hash table
        taken: list[pa.RecordBatch] = []
        start = 0
        for i in look:
            b = self._held[i]
            m = hit[start : start + b.num_rows]
            start += b.num_rows
            k = int(m.sum())
            if k == b.num_rows:
                taken.append(b)
                self._held[i] = None  # type: ignore[call-overload]
            elif k:
                taken.append(b.filter(pa.array(m)))
                self._held[i] = b.filter(pa.array(~m))
        keep = [i for i, b in enumerate(self._held) if b is not None]
        self._held = [self._held[i] for i in keep]
        self._held_due = [self._held_due[i] for i in keep]
        return pa.Table.from_batches(taken, self.schema)

    def _emit(
        self, ids: pa.Array, keep: np.ndarray, parts: list[pa.Table], out: list[pa.Table]
    ) -> None:
        """Output the kept traces' spans, count the rest, remember the decisions."""
        kept_ids = ids.filter(pa.array(keep))
        for part in parts:
            if part.num_rows == 0:
                continue
            k = part.filter(pc.is_in(part.column("TraceId"), value_set=kept_ids))
            self.dropped_rows += part.num_rows - k.num_rows
            if k.num_rows:
                out.append(k)
        self.stats["kept"] += int(keep.sum())
        self.stats["sampled"] += int(len(keep) - keep.sum())
        self._remember(ids, pa.array(keep))

    def _remember(self, ids: pa.Array, keep: pa.Array) -> None:
        if self.cfg.decided_cache == 0 or len(ids) == 0:
            return
        self._cache_ids.append(ids)
        self._cache_keep.append(keep)
        over = sum(len(c) for c in self._cache_ids) - self.cfg.decided_cache
        while over > 0:  # evict the oldest decisions first
            head = len(self._cache_ids[0])
            if head <= over:
                self._cache_ids.pop(0)
                self._cache_keep.pop(0)
                over -= head
            else:
                self._cache_ids[0] = self._cache_ids[0].slice(over)
                self._cache_keep[0] = self._cache_keep[0].slice(over)
                over = 0

    def _bound(self, out: list[pa.Table]) -> None:
        """Over ``max_traces`` after a batch: the oldest traces are decided early or dropped."""
        over = self._traces.num_rows - self.cfg.max_traces
        if over <= 0:
            return
        drop = self.cfg.overflow == "drop"
        log.warning("tail_sampling: %d traces waiting (max_traces %d): %s the %d oldest",
                    self._traces.num_rows, self.cfg.max_traces,
                    "dropping" if drop else "deciding", over)  # fmt: skip
        self._decide_oldest(over, out, drop)
        self.stats["overflow" if drop else "early"] += over

    def _decide_oldest(self, k: int, out: list[pa.Table], drop: bool) -> None:
        """Decide (``drop``: drop) the ``k`` oldest waiting traces (``_traces`` is in seq
        order) at the current clock."""
        if k <= 0:
            return
        ids = self._traces.column("TraceId").slice(0, k).combine_chunks()
        last_due = self._traces.column("due")[k - 1].as_py()  # dues grow with seq
        self._traces = self._traces.slice(k).combine_chunks()
        spans = self._take(ids, last_due)
        if drop:
            self.overflow_rows += spans.num_rows
            self._remember(ids, pa.array(np.zeros(k, dtype=bool)))
            return
        at = np.full(k, self.clock_ms or 0, dtype=np.int64)
        self._emit(ids, self._verdicts.evaluate(spans, ids, at, self._rate), [spans], out)


def _ipc(t: pa.Table) -> bytes:
    sink = io.BytesIO()
    opts = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_stream(sink, t.schema, options=opts) as w:
        w.write_table(t)
    return sink.getvalue()


def _unipc(b: bytes) -> pa.Table:
    return pa.ipc.open_stream(b).read_all()


def _table(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts).combine_chunks()


def build_tail(cfg: TailSamplingConfig, schema: pa.Schema) -> TailSampler:
    """Factory used by the registry."""
    return TailSampler(cfg, schema)
