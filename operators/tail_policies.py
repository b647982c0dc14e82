"""The policies of ``tail_sampling`` (``operators.tail_sampling``): their config models and
their vectorised evaluation over the spans of the traces being decided.

Span-level policies (status_code, string/numeric/boolean attribute) become one boolean column
each, aggregated per trace with ``any`` in one ``group_by`` (with first start / last end for
``latency`` and the span count for ``span_count``); ``probabilistic`` is the head sampler's rule
on the trace id; ``rate_limiting`` and ``composite`` walk the decided traces in decision order
(one step per trace, not per span).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from operators.sampling import head_keep_mask, parse_seconds
from otelwax.settings import StrictModel

__all__ = ["CompositePolicy", "Policy", "StatusCodePolicy", "Verdicts"]

_STATUS = {"ERROR": "STATUS_CODE_ERROR", "OK": "STATUS_CODE_OK", "UNSET": "STATUS_CODE_UNSET"}


class _Policy(StrictModel):
    name: str | None = None


class StatusCodePolicy(_Policy):
    type: Literal["status_code"]
    status_codes: list[Literal["ERROR", "OK", "UNSET"]] = Field(min_length=1)


class LatencyPolicy(_Policy):
    type: Literal["latency"]
    threshold: float = Field(gt=0, description="seconds (or '500ms', '2s')")
    upper_threshold: float | None = Field(None, gt=0)
    _secs = field_validator("threshold", "upper_threshold", mode="before")(parse_seconds)


class ProbabilisticPolicy(_Policy):
    type: Literal["probabilistic"]
    sampling_percentage: float = Field(ge=0, le=100)


class StringAttributePolicy(_Policy):
    type: Literal["string_attribute"]
    key: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
    regex: bool = False
    invert_match: bool = False


class NumericAttributePolicy(_Policy):
    type: Literal["numeric_attribute"]
    key: str = Field(min_length=1)
    min_value: float | None = None
    max_value: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NumericAttributePolicy:
        if self.min_value is None and self.max_value is None:
            raise ValueError("set min_value, max_value or both")
        return self


class SpanCountPolicy(_Policy):
    """Keeps traces with ``min_spans`` to ``max_spans`` spans (read before the decision)."""

    type: Literal["span_count"]
    min_spans: int = Field(ge=0)
    max_spans: int = Field(0, ge=0, description="0: no upper bound (as the Collector)")

    @model_validator(mode="after")
    def _bounds(self) -> SpanCountPolicy:
        if 0 < self.max_spans < self.min_spans:
            raise ValueError("max_spans is below min_spans")
        return self


class BooleanAttributePolicy(_Policy):
    """Keeps traces with a span (else resource) attribute ``key`` rendered ``true``/``false``
    equal to ``value`` (attribute maps hold text, so a string "true" matches too)."""

    type: Literal["boolean_attribute"]
    key: str = Field(min_length=1)
    value: bool


class RateLimitingPolicy(_Policy):
    type: Literal["rate_limiting"]
    spans_per_second: int = Field(gt=0)


def _policy_type(v: Any) -> str | None:
    return v.get("type") if isinstance(v, dict) else getattr(v, "type", None)


def _tagged(*models: type[_Policy]) -> Any:
    """A union of policy models told apart by their ``type``."""
    tags = [Annotated[m, Tag(m.model_fields["type"].annotation.__args__[0])] for m in models]
    return Annotated[Union[tuple(tags)], Discriminator(_policy_type)]  # noqa: UP007


_LEAVES = (StatusCodePolicy, LatencyPolicy, ProbabilisticPolicy, StringAttributePolicy,
           NumericAttributePolicy, SpanCountPolicy, BooleanAttributePolicy)  # fmt: skip
LeafPolicy = _tagged(*_LEAVES)


class AndPolicy(_Policy):
    type: Literal["and"]
    policies: list[LeafPolicy] = Field(min_length=1)


class RateAllocation(StrictModel):
    policy: str = Field(min_length=1, description="name of a composite_sub_policy")
    percent: int = Field(ge=0, le=100, description="of max_total_spans_per_second; 0: equal share")


class CompositePolicy(_Policy):
    """The Collector's ``composite``: the first sub-policy in ``policy_order`` that matches a
    trace decides it, kept while that sub-policy's spans in the current second of the clock
    stay within its allocation (and ``max_total_spans_per_second``); a sub-policy without a
    ``rate_allocation`` entry gets 0 spans per second, as in the Collector."""

    type: Literal["composite"]
    max_total_spans_per_second: int = Field(gt=0)
    composite_sub_policy: list[_tagged(*_LEAVES, RateLimitingPolicy, AndPolicy)] = Field(
        min_length=1
    )
    policy_order: list[str] = Field(
        default_factory=list, description="names of all sub-policies; empty: as listed"
    )
    rate_allocation: list[RateAllocation] = Field(default_factory=list)

    @field_validator("composite_sub_policy")
    @classmethod
    def _named(cls, subs: list[Any]) -> list[Any]:
        for i, p in enumerate(subs):
            if not p.name:
                raise ValueError(f"sub-policy {i} needs a name (policy_order and rate_allocation "
                                 "refer to sub-policies by name)")  # fmt: skip
        _unique([p.name for p in subs], "sub-policy names")
        return subs

    @field_validator("policy_order", "rate_allocation")
    @classmethod
    def _refs(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        subs = info.data.get("composite_sub_policy")
        if subs is None:  # already reported
            return v
        names = [p.name for p in subs]
        refs = [r if isinstance(r, str) else r.policy for r in v]
        for i, r in enumerate(refs):
            if r not in names:
                raise ValueError(f"entry {i}: {r!r} is not a composite_sub_policy name "
                                 f"({', '.join(names)})")  # fmt: skip
        _unique(refs, "names")
        if info.field_name == "policy_order" and refs and len(refs) != len(names):
            missing = ", ".join(n for n in names if n not in refs)
            raise ValueError(f"list every composite_sub_policy or none (missing: {missing})")
        if info.field_name == "rate_allocation" and sum(a.percent for a in v) > 100:
            raise ValueError("the percents add up to more than 100")
        return v

    def ordered(self) -> list[tuple[Any, int]]:
        """Sub-policies in evaluation order, each with its spans per second: ``percent`` of
        the total (0: an equal share of it; no entry: 0)."""
        by_name = {p.name: p for p in self.composite_sub_policy}
        share = {a.policy: a.percent for a in self.rate_allocation}
        total = self.max_total_spans_per_second

        def spans(name: str) -> int:
            if name not in share:
                return 0
            return total * share[name] // 100 if share[name] else total // len(by_name)

        return [(by_name[n], spans(n)) for n in self.policy_order or list(by_name)]


def _unique(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} repeat: {', '.join(dup)}")


Policy = _tagged(*_LEAVES, RateLimitingPolicy, AndPolicy, CompositePolicy)
"""One entry of ``tail_sampling.policies`` (a tagged union)."""


# --- span-level evidence ----------------------------------------------------------------------


def _attr(batch: pa.RecordBatch | pa.Table, key: str) -> pa.Array:
    """The value of ``key`` in each span's attributes, else its resource's (null when neither)."""
    span = pc.map_lookup(batch.column("SpanAttributes"), key, "first")
    res = pc.map_lookup(batch.column("ResourceAttributes"), key, "first")
    return pc.coalesce(span, res)


_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _leaf_mask(p: Any, t: pa.Table) -> pa.Array | None:
    """Per span: does this span make ``p`` keep its trace? None for trace-level policies."""
    if p.type == "status_code":
        return pc.is_in(t.column("StatusCode"), pa.array([_STATUS[s] for s in p.status_codes]))
    if p.type == "string_attribute":
        v = _attr(t, p.key)
        if p.regex:
            m = pc.match_substring_regex(v, "|".join(f"(?:{x})" for x in p.values))
        else:
            m = pc.is_in(v, pa.array(p.values, pa.string()))
        m = pc.fill_null(m, False)
        return pc.invert(m) if p.invert_match else m
    if p.type == "numeric_attribute":
        v = _attr(t, p.key)
        ok = pc.fill_null(pc.match_substring_regex(v, _NUMBER), False)
        num = pc.cast(pc.if_else(ok, v, "0"), pa.float64())
        m = ok
        if p.min_value is not None:
            m = pc.and_(m, pc.greater_equal(num, p.min_value))
        if p.max_value is not None:
            m = pc.and_(m, pc.less_equal(num, p.max_value))
        return m
    if p.type == "boolean_attribute":
        return pc.fill_null(pc.equal(_attr(t, p.key), "true" if p.value else "false"), False)
    return None


def _leaves(policies: list[Any]) -> list[Any]:
    """Every policy under ``policies`` that tests a trace (and/composite unfolded)."""
    out: list[Any] = []
    for p in policies:
        if p.type == "and":
            out.extend(p.policies)
        elif p.type == "composite":
            out.extend(_leaves(p.composite_sub_policy))
        else:
            out.append(p)
    return out


class Verdicts:
    """Per-trace policy evaluation over the spans of the traces being decided."""

    def __init__(self, policies: list[Any]) -> None:
        self.policies = policies
        self._span_leaves = [p for p in _leaves(policies) if _leaf_mask(p, _EMPTY) is not None]

    def evaluate(
        self, spans: pa.Table, order: pa.Array, at_ms: np.ndarray, rate: dict[str, list[int]]
    ) -> np.ndarray:
        """Keep mask aligned with ``order`` (trace ids in decision order; ``at_ms`` is the clock
        at each decision); ``rate`` holds each rate limiter's [second, spans kept in it]."""
        start = pc.cast(spans.column("Timestamp"), pa.int64())
        cols: dict[str, Any] = {
            "TraceId": spans.column("TraceId"),
            "s": start,
            "e": pc.add(start, pc.cast(spans.column("Duration"), pa.int64())),
        }
        aggs: list[tuple[str, str]] = [("s", "min"), ("e", "max"), ("s", "count")]
        for i, p in enumerate(self._span_leaves):
            cols[f"p{i}"] = _leaf_mask(p, spans)
            aggs.append((f"p{i}", "any"))
        agg = pa.table(cols).group_by("TraceId", use_threads=False).aggregate(aggs)
        idx = pc.index_in(order, agg.column("TraceId")).to_numpy(zero_copy_only=False)
        n_spans = agg.column("s_count").to_numpy()[idx]
        lat_ns = (agg.column("e_max").to_numpy() - agg.column("s_min").to_numpy())[idx]
        span_any = {
            id(p): np.asarray(agg.column(f"p{i}_any").to_numpy(zero_copy_only=False), bool)[idx]
            for i, p in enumerate(self._span_leaves)
        }

        def match(p: Any) -> np.ndarray:
            if id(p) in span_any:
                return span_any[id(p)]
            if p.type == "and":
                m = np.ones(len(order), dtype=bool)
                for q in p.policies:
                    m &= match(q)
                return m
            if p.type == "latency":
                m = lat_ns >= int(p.threshold * 1e9)
                if p.upper_threshold is not None:
                    m &= lat_ns <= int(p.upper_threshold * 1e9)
                return m
            if p.type == "span_count":
                return (n_spans >= p.min_spans) & ((n_spans <= p.max_spans) | (p.max_spans == 0))
            if p.type == "probabilistic":
                return head_keep_mask(order, p.sampling_percentage, keep_invalid=False)
            raise AssertionError(p.type)

        seconds = (at_ms // 1000).tolist()
        counts = n_spans.tolist()
        keep = np.zeros(len(order), dtype=bool)
        for j, p in enumerate(self.policies):
            if p.type == "rate_limiting":
                lim = rate.setdefault(f"{j}", [-1, 0])
                spans = zip(seconds, counts, strict=True)
                keep |= np.array([_take(lim, s, n, p.spans_per_second) for s, n in spans], bool)
            elif p.type == "composite":
                keep |= _composite(p, f"{j}", seconds, counts, rate, match)
            else:
                keep |= match(p)
        return keep


def _take(limiter: list[int], second: int, n: int, limit: int) -> bool:
    """Count ``n`` spans into ``limiter`` = [second, spans kept in it] if they fit in
    ``limit`` (a new second starts from 0); False (nothing counted) if not."""
    if limiter[0] != second:
        limiter[0], limiter[1] = second, 0
    if limiter[1] + n > limit:
        return False
    limiter[1] += n
    return True


def _composite(
    p: CompositePolicy, key: str, seconds: list[int], counts: list[int], rate: dict, match: Any
) -> np.ndarray:
    """Greedy in decision order: the first sub-policy (in ``policy_order``) that matches a
    trace keeps it if its allocation has room in the clock's second, else drops it. A
    ``rate_limiting`` sub-policy only counts the traces that reach it."""
    subs = p.ordered()
    total = p.max_total_spans_per_second
    hits = [None if q.type == "rate_limiting" else match(q).tolist() for q, _ in subs]
    alloc = [rate.setdefault(f"{key}.{i}", [-1, 0]) for i in range(len(subs))]
    limiters = {i: rate.setdefault(f"{key}.{i}.rate", [-1, 0])
                for i, (q, _) in enumerate(subs) if q.type == "rate_limiting"}  # fmt: skip
    out = np.zeros(len(counts), dtype=bool)
    for t, (sec, n) in enumerate(zip(seconds, counts, strict=True)):
        for i, (q, spans) in enumerate(subs):
            hit = _take(limiters[i], sec, n, q.spans_per_second) if i in limiters else hits[i][t]
            if hit:
                out[t] = _take(alloc[i], sec, n, min(spans, total))
                break
    return out


_EMPTY = pa.table(
    {
        "StatusCode": pa.array([], pa.string()),
        "SpanAttributes": pa.array([], pa.map_(pa.string(), pa.string())),
        "ResourceAttributes": pa.array([], pa.map_(pa.string(), pa.string())),
    }
)
