"""A trace mix for tail sampling: Kafka records as the shim writes them (one trace per record,
keyed by trace id) with explicit record timestamps, and some traces' spans arriving late.

Shared by the tail-sampling tests (flow and unit) and ``bench/tail_sampling_bench.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

T0_MS = 1_800_000_000_000
SERVICES = ("checkout", "cart", "payments", "search")
ROUTES = ("/checkout", "/cart", "/search", "/health", "/pay")


@dataclass
class Record:
    key: bytes
    value: bytes
    ts_ms: int


def _kv(k: str, v: str) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(string_value=v))


def _request(service: str, tier: str, spans: list[Span]) -> bytes:
    res = Resource(attributes=[_kv("service.name", service), _kv("customer.tier", tier)])
    ss = ScopeSpans(scope=InstrumentationScope(name="tailgen"), spans=spans)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=res, scope_spans=[ss])]
    ).SerializeToString()


def trace_mix(
    n_traces: int,
    *,
    seed: int = 0,
    spacing_ms: float = 20.0,
    error_rate: float = 0.08,
    slow_rate: float = 0.06,
    late_rate: float = 0.08,
    late_after_ms: int = 2500,
    mean_spans: int = 6,
    t0_ms: int = T0_MS,
) -> list[Record]:
    """Records of ``n_traces`` traces starting ``spacing_ms`` apart (event time), sorted by
    timestamp. A trace has 1..3*``mean_spans`` spans in 1-3 records within 400 ms of its
    start; ``error_rate`` of them have an error span, ``slow_rate`` a root over 2 s,
    ``late_rate`` one more span ``late_after_ms`` after the start. Attributes: ``http.route``,
    ``http.response.size`` (number), resource ``customer.tier`` (gold for ~5 %)."""
    rng = random.Random(seed)
    recs: list[Record] = []
    for j in range(n_traces):
        tid = rng.randbytes(16)
        t_ms = t0_ms + int(j * spacing_ms)
        n = max(1, min(3 * mean_spans, int(rng.expovariate(1 / mean_spans)) + 1))
        slow = rng.random() < slow_rate
        err_at = rng.randrange(n) if rng.random() < error_rate else -1
        service = rng.choice(SERVICES)
        tier = "gold" if rng.random() < 0.05 else "basic"
        root = rng.randbytes(8)
        spans = []
        for i in range(n):
            start = t_ms * 1_000_000 + i * 1_000_000
            dur = (2_500 if slow and i == 0 else rng.randint(1, 300)) * 1_000_000
            spans.append(
                Span(
                    trace_id=tid,
                    span_id=root if i == 0 else rng.randbytes(8),
                    parent_span_id=b"" if i == 0 else root,
                    name=f"GET {rng.choice(ROUTES)}",
                    kind=2,
                    start_time_unix_nano=start,
                    end_time_unix_nano=start + dur,
                    attributes=[
                        _kv("http.route", rng.choice(ROUTES)),
                        _kv("http.response.size", str(rng.choice([10, 2_000, 2_000_000]))),
                    ],
                    status=Status(code=2 if i == err_at else 0),
                )
            )
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 2)))) if n > 1 else []
        bounds = [0, *cuts, n]
        for k in range(len(bounds) - 1):
            part = spans[bounds[k] : bounds[k + 1]]
            recs.append(Record(tid.hex().encode(), _request(service, tier, part),
                               t_ms + k * rng.randint(50, 200)))  # fmt: skip
        if rng.random() < late_rate:
            late = Span(trace_id=tid, span_id=rng.randbytes(8), parent_span_id=root,
                        name="late", kind=1, start_time_unix_nano=(t_ms + late_after_ms) * 10**6,
                        end_time_unix_nano=(t_ms + late_after_ms + 5) * 10**6)  # fmt: skip
            recs.append(Record(tid.hex().encode(), _request(service, tier, [late]),
                               t_ms + late_after_ms))  # fmt: skip
    recs.sort(key=lambda r: r.ts_ms)
    return recs
