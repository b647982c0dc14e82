"""Offline oracle of ``tail_sampling``: the spans the policy keeps from a whole input, computed
record by record in plain Python from the protobuf (independent of the codec and of the
kernel's vectorised bookkeeping), following the rules of ``operators.tail_sampling``'s doc."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MIX_POLICIES: list[dict[str, Any]] = [
    {"type": "status_code", "status_codes": ["ERROR"]},
    {"type": "latency", "threshold": 2},
    {"type": "probabilistic", "sampling_percentage": 10},
    {"type": "and", "policies": [
        {"type": "string_attribute", "key": "customer.tier", "values": ["gold"]},
        {"type": "numeric_attribute", "key": "http.response.size", "min_value": 1e6}]},
    {"type": "rate_limiting", "spans_per_second": 40},
    {"type": "composite", "max_total_spans_per_second": 60,
     "policy_order": ["big", "cart", "paced", "small"],
     "composite_sub_policy": [
         {"name": "small", "type": "span_count", "min_spans": 1, "max_spans": 2},
         {"name": "cart", "type": "and", "policies": [
             {"type": "string_attribute", "key": "service.name", "values": ["cart"]},
             {"type": "string_attribute", "key": "http.route", "values": ["/cart"]}]},
         {"name": "big", "type": "numeric_attribute", "key": "http.response.size",
          "min_value": 1e6},
         {"name": "paced", "type": "rate_limiting", "spans_per_second": 8}],
     "rate_allocation": [{"policy": "big", "percent": 30}, {"policy": "cart", "percent": 0},
                         {"policy": "paced", "percent": 25}]},
]  # fmt: skip
"""Every policy type but boolean_attribute, for ``tests.tailgen.trace_mix`` (errors, slow
roots, gold customers, string attributes only)."""

_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}


@dataclass
class OSpan:
    span_id: str
    trace_id: str
    status: int
    start: int
    end: int
    attrs: dict[str, str]


@dataclass
class _Waiting:
    due: int
    seq: int
    spans: list[OSpan] = field(default_factory=list)


def spans_of(payload: bytes) -> list[OSpan]:
    """The spans of one record, in order; attribute lookups see the span's, then the resource's."""
    out = []
    for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
        res = {a.key: a.value.string_value for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {**res, **{a.key: a.value.string_value for a in s.attributes}}
                out.append(OSpan(s.span_id.hex(), s.trace_id.hex(), s.status.code,
                                 s.start_time_unix_nano, s.end_time_unix_nano, attrs))  # fmt: skip
    return out


def _leaf(p: dict[str, Any], spans: list[OSpan]) -> bool:
    t = p["type"]
    if t == "status_code":
        return any(s.status in {_CODES[c] for c in p["status_codes"]} for s in spans)
    if t == "latency":
        lat = max(s.end for s in spans) - min(s.start for s in spans)
        up = p.get("upper_threshold")
        return lat >= p["threshold"] * 1e9 and (up is None or lat <= up * 1e9)
    if t == "probabilistic":
        r = int(spans[0].trace_id[-14:], 16)
        return r >= round((1.0 - p["sampling_percentage"] / 100.0) * (1 << 56))
    if t == "string_attribute":
        hit = any(s.attrs.get(p["key"]) in p["values"] for s in spans)
        return hit != bool(p.get("invert_match"))
    if t == "numeric_attribute":
        for s in spans:
            try:
                v = float(s.attrs[p["key"]])
            except (KeyError, ValueError):
                continue
            lo, hi = p.get("min_value"), p.get("max_value")
            if (lo is None or v >= lo) and (hi is None or v <= hi):
                return True
        return False
    if t == "span_count":
        return p["min_spans"] <= len(spans) <= (p.get("max_spans") or len(spans))
    if t == "boolean_attribute":
        want = "true" if p["value"] else "false"
        return any(s.attrs.get(p["key"]) == want for s in spans)
    if t == "and":
        return all(_leaf(q, spans) for q in p["policies"])
    raise AssertionError(t)


def _fits(rate: dict, key: Any, second: int, n: int, limit: int) -> bool:
    """Count ``n`` spans into the limiter ``key`` for ``second`` if they fit in ``limit``."""
    sec, used = rate.get(key, (second, 0))
    used = used if sec == second else 0
    ok = used + n <= limit
    rate[key] = (second, used + n if ok else used)
    return ok


def _composite(p: dict[str, Any], j: int, spans: list[OSpan], second: int, rate: dict) -> bool:
    subs = {q["name"]: q for q in p["composite_sub_policy"]}
    total = p["max_total_spans_per_second"]
    pct = {a["policy"]: a["percent"] for a in p.get("rate_allocation", [])}
    for name in p.get("policy_order") or list(subs):
        q = subs[name]
        if q["type"] == "rate_limiting":
            hit = _fits(rate, (j, name, "rate"), second, len(spans), q["spans_per_second"])
        else:
            hit = _leaf(q, spans)
        if hit:
            share = 0 if name not in pct else (total * pct[name] // 100 if pct[name]
                                               else total // len(subs))  # fmt: skip
            return _fits(rate, (j, name), second, len(spans), min(share, total))
    return False


def kept_spans(
    records: Iterable[tuple[int, int, bytes]], wait_s: float, policies: list[dict[str, Any]]
) -> tuple[set[str], int]:
    """Span ids kept from ``records`` = (partition, Kafka timestamp ms, payload) in offset
    order per partition, and the number of traces still waiting at the end."""
    by_part: dict[int, list[tuple[int, bytes]]] = {}
    for p, ts, v in records:
        by_part.setdefault(p, []).append((ts, v))
    kept: set[str] = set()
    waiting_left = 0
    wait_ms = round(wait_s * 1000)
    for recs in by_part.values():
        clock: int | None = None
        waiting: dict[str, _Waiting] = {}
        decided: dict[str, bool] = {}
        rate: dict[Any, tuple[int, int]] = {}
        seq = 0
        for ts, payload in recs:
            clock = ts if clock is None else max(clock, ts)
            due = sorted((w.seq, tid) for tid, w in waiting.items() if w.due <= clock)
            for _, tid in due:
                spans = waiting.pop(tid).spans
                keep = False
                for j, p in enumerate(policies):
                    if p["type"] == "rate_limiting":
                        keep |= _fits(rate, j, clock // 1000, len(spans), p["spans_per_second"])
                    elif p["type"] == "composite":
                        keep |= _composite(p, j, spans, clock // 1000, rate)
                    else:
                        keep |= _leaf(p, spans)
                decided[tid] = keep
                if keep:
                    kept.update(s.span_id for s in spans)
            for s in spans_of(payload):
                if s.trace_id in decided:
                    if decided[s.trace_id]:
                        kept.add(s.span_id)
                elif s.trace_id in waiting:
                    waiting[s.trace_id].spans.append(s)
                else:
                    waiting[s.trace_id] = _Waiting(clock + wait_ms, seq, [s])
                    seq += 1
        waiting_left += len(waiting)
    return kept, waiting_left
