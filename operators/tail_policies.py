"""The policies of ``tail_sampling`` (``operators.tail_sampling``): their config models and
their vectorised evaluation over the spans of the traces being decided.

Span-level policies (status_code, string/numeric attribute) become one boolean column each,
aggregated per trace with ``any`` in one ``group_by`` (with first start / last end for
``latency``); ``probabilistic`` is the head sampler's rule on the trace id; ``rate_limiting``
walks the decided traces in decision order (one step per trace, not per span).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from operators.sampling import head_keep_mask, parse_seconds
from otelwax.settings import StrictModel

__all__ = ["Policy", "StatusCodePolicy", "Verdicts"]

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
           NumericAttributePolicy)  # fmt: skip
LeafPolicy = _tagged(*_LEAVES)


class AndPolicy(_Policy):
    type: Literal["and"]
    policies: list[LeafPolicy] = Field(min_length=1)


Policy = _tagged(*_LEAVES, RateLimitingPolicy, AndPolicy)
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
    return None


class Verdicts:
    """Per-trace policy evaluation over the spans of the traces being decided."""

    def __init__(self, policies: list[Any]) -> None:
        self.policies = policies
        leaves: list[Any] = []
        for p in policies:
            leaves.extend(p.policies if p.type == "and" else [p])
        self._span_leaves = [p for p in leaves if _leaf_mask(p, _EMPTY) is not None]

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

        def leaf(p: Any) -> np.ndarray:
            if id(p) in span_any:
                return span_any[id(p)]
            if p.type == "latency":
                m = lat_ns >= int(p.threshold * 1e9)
                if p.upper_threshold is not None:
                    m &= lat_ns <= int(p.upper_threshold * 1e9)
                return m
            if p.type == "probabilistic":
                return head_keep_mask(order, p.sampling_percentage, keep_invalid=False)
            raise AssertionError(p.type)

        keep = np.zeros(len(order), dtype=bool)
        for j, p in enumerate(self.policies):
            if p.type == "rate_limiting":
                keep |= _rate_limit(p, f"{j}", n_spans, at_ms, rate)
            elif p.type == "and":
                m = np.ones(len(order), dtype=bool)
                for q in p.policies:
                    m &= leaf(q)
                keep |= m
            else:
                keep |= leaf(p)
        return keep


def _rate_limit(
    p: RateLimitingPolicy, key: str, n_spans: np.ndarray, at_ms: np.ndarray, rate: dict
) -> np.ndarray:
    """Greedy in decision order: keep a trace while the second of the clock has room."""
    second, used = rate.get(key, [-1, 0])
    out = np.zeros(len(n_spans), dtype=bool)
    for i, (n, at) in enumerate(zip(n_spans.tolist(), (at_ms // 1000).tolist(), strict=True)):
        if at != second:
            second, used = at, 0
        if used + n <= p.spans_per_second:
            used += n
            out[i] = True
    rate[key] = [second, used]
    return out


_EMPTY = pa.table(
    {
        "StatusCode": pa.array([], pa.string()),
        "SpanAttributes": pa.array([], pa.map_(pa.string(), pa.string())),
        "ResourceAttributes": pa.array([], pa.map_(pa.string(), pa.string())),
    }
)
