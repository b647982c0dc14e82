"""Bounded differential fuzzing of the native decoder against the protobuf-based reference.

Valid OTLP requests are mutated (bit flips, truncation, inserted/deleted/duplicated bytes,
splices of two requests, random lengths) and each batch is decoded by both implementations:
the native decoder must never crash or hang, and must give the same rows and the same failing
payload indices as ``otelwax.codec.pydecode`` / ``pymetrics``. The run is time-bounded
(``OTELWAX_FUZZ_SECONDS``, default 8 s for traces and logs each, half that for metrics) with a
fixed seed (``OTELWAX_FUZZ_SEED``) so a failure reproduces.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable

import pyarrow as pa
import pytest

from otelwax.codec import DecodeResult, native, pydecode, pymetrics
from tests.otlpgen import logs_payloads, trace_payloads

pytestmark = pytest.mark.skipif(
    not native.AVAILABLE,
    reason=f"otelwax._native is not built (install with cargo present): {native.IMPORT_ERROR}",
)

SECONDS = float(os.environ.get("OTELWAX_FUZZ_SECONDS", "8"))
SEED = int(os.environ.get("OTELWAX_FUZZ_SEED", "20261126"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to three random structural or byte-level mutations."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not b:
            b = bytearray(rng.choice(corpus))
        op = rng.randrange(9)
        i = rng.randrange(len(b))
        if op == 0:  # flip a bit
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # set a byte to an interesting value
            b[i] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, 0x22, 0x0F, 0x0B])
        elif op == 2:  # truncate
            del b[i:]
        elif op == 3:  # delete a range
            del b[i : i + rng.randint(1, 16)]
        elif op == 4:  # insert random bytes
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 5:  # duplicate a range (repeated / merged fields)
            j = min(len(b), i + rng.randint(1, 64))
            b[j:j] = b[i:j]
        elif op == 6:  # splice in part of another request
            other = rng.choice(corpus)
            k = rng.randrange(len(other))
            b[i:] = other[k:]
        elif op == 7:  # replace a byte with a huge varint length
            b[i : i + 1] = _varint(rng.choice([2**31, 2**32 + 5, 2**63 - 1, 2**64 - 1]))
        else:  # invalid UTF-8 lead byte inside the payload
            b[i] = rng.choice([0xC0, 0xE2, 0xF5, 0xFF])
    return bytes(b)


def _run(
    corpus: list[bytes],
    nat: Callable[[list[bytes]], DecodeResult],
    ref: Callable[[list[bytes]], DecodeResult],
    seed: int,
) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + SECONDS
    checked = 0
    while time.monotonic() < deadline:
        batch_seed = rng.getrandbits(32)
        brng = random.Random(batch_seed)
        payloads = [mutate(brng, brng.choice(corpus), corpus) for _ in range(8)]
        payloads.append(brng.choice(corpus))  # one valid payload in every batch
        t0 = time.monotonic()
        got = nat(payloads)
        assert time.monotonic() - t0 < 5, f"native decode too slow (batch seed {batch_seed})"
        want = ref(payloads)
        ctx = f"batch seed {batch_seed} (OTELWAX_FUZZ_SEED={SEED})"
        assert [i for i, _ in got.errors] == [i for i, _ in want.errors], (
            ctx,
            got.errors,
            want.errors,
        )
        assert got.rows_per_payload == want.rows_per_payload, ctx
        assert got.batch.equals(want.batch), ctx
        checked += len(payloads)
    return checked


def _small_traces() -> list[bytes]:
    kw = {"n_resources": 2, "spans_per_resource": 2, "links_per_span": 1, "attrs_per_span": 4}
    return trace_payloads(6, seed=3, all_value_types=True, unicode=True, **kw) + trace_payloads(
        2, seed=4, n_resources=1, spans_per_resource=1
    )


def _small_logs() -> list[bytes]:
    return logs_payloads(6, seed=3, n_resources=2, logs_per_resource=2, all_value_types=True)


def _nan_free(v: object) -> object:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, list | tuple):
        return [_nan_free(x) for x in v]
    if isinstance(v, dict):
        return {k: _nan_free(x) for k, x in v.items()}
    return v


def tables_equal(a: pa.RecordBatch, b: pa.RecordBatch) -> bool:
    """Batch equality where NaN equals NaN (float columns of metrics)."""
    if a.equals(b):
        return True
    return a.schema.equals(b.schema) and _nan_free(a.to_pylist()) == _nan_free(b.to_pylist())


def _small_metrics() -> list[bytes]:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from tests.otlpgen import kv

    ex = [
        m.Exemplar(
            as_double=1.5,
            span_id=b"\x01" * 8,
            trace_id=b"\x02" * 16,
            filtered_attributes=[kv("f", 1)],
        )
    ]
    num = [
        m.NumberDataPoint(as_int=i, time_unix_nano=i, attributes=[kv("k", [i, "x"])], exemplars=ex)
        for i in range(2)
    ]
    buckets = m.ExponentialHistogramDataPoint.Buckets
    metrics = [
        m.Metric(name="g", unit="1", gauge=m.Gauge(data_points=num)),
        m.Metric(
            name="s", sum=m.Sum(data_points=num, aggregation_temporality=2, is_monotonic=True)
        ),
        m.Metric(
            name="h",
            histogram=m.Histogram(
                data_points=[
                    m.HistogramDataPoint(
                        count=3,
                        sum=2.0,
                        bucket_counts=[1, 2],
                        explicit_bounds=[1.0],
                        min=0,
                        max=5,
                        exemplars=ex,
                    )
                ],
                aggregation_temporality=1,
            ),
        ),
        m.Metric(
            name="e",
            exponential_histogram=m.ExponentialHistogram(
                data_points=[
                    m.ExponentialHistogramDataPoint(
                        count=3,
                        scale=2,
                        positive=buckets(offset=-1, bucket_counts=[1, 300]),
                        negative=buckets(offset=1, bucket_counts=[2]),
                    )
                ]
            ),
        ),
        m.Metric(
            name="q",
            summary=m.Summary(
                data_points=[
                    m.SummaryDataPoint(
                        count=2,
                        sum=1.0,
                        quantile_values=[m.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=1)],
                    )
                ]
            ),
        ),
    ]
    out = []
    for i in range(4):
        rm = m.ResourceMetrics(
            resource=Resource(attributes=[kv("service.name", f"svc{i}"), kv("n", i)]),
            schema_url="https://r",
            scope_metrics=[
                m.ScopeMetrics(
                    scope=InstrumentationScope(name="sc", version="1", attributes=[kv("a", True)]),
                    metrics=metrics[i:] + metrics[:i],
                    schema_url="https://s",
                )
            ],
        )
        out.append(ExportMetricsServiceRequest(resource_metrics=[rm]).SerializeToString())
    return out


def test_fuzz_metrics_decoder_matches_reference():
    corpus = _small_metrics()
    rng = random.Random(SEED + 2)
    deadline = time.monotonic() + SECONDS / 2
    while time.monotonic() < deadline:
        batch_seed = rng.getrandbits(32)
        brng = random.Random(batch_seed)
        payloads = [mutate(brng, brng.choice(corpus), corpus) for _ in range(8)]
        payloads.append(brng.choice(corpus))
        got = native.decode_metrics(payloads)
        want = pymetrics.decode_metrics(payloads)
        ctx = f"batch seed {batch_seed} (OTELWAX_FUZZ_SEED={SEED})"
        assert [i for i, _ in got.errors] == [i for i, _ in want.errors], (
            ctx,
            got.errors,
            want.errors,
        )
        assert got.rows_per_payload == want.rows_per_payload, ctx
        for name, table in want.tables.items():
            assert tables_equal(got.tables[name], table), (ctx, name)


def test_fuzz_traces_decoder_matches_reference():
    checked = _run(_small_traces(), native.decode_traces, pydecode.decode_traces, SEED)
    assert checked > 0


def test_fuzz_logs_decoder_matches_reference():
    checked = _run(_small_logs(), native.decode_logs, pydecode.decode_logs, SEED + 1)
    assert checked > 0


def test_fuzz_random_bytes_never_crash():
    rng = random.Random(SEED)
    for _ in range(200):
        payloads = [rng.randbytes(rng.randint(0, 64)) for _ in range(16)]
        for fn in (native.decode_traces, native.decode_logs, native.decode_metrics):
            res = fn(payloads)
            assert len(res.rows_per_payload) == 16
            rows = res.num_rows if hasattr(res, "tables") else res.batch.num_rows
            assert rows == sum(res.rows_per_payload)
