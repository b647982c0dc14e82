"""OTel → Prometheus name/label translation (compatibility spec), on decoded metric tables."""

from __future__ import annotations

import time

import pytest

from connectors.prom_names import job_instance, metric_name, sanitize_label_name
from connectors.prom_translate import tables_to_series
from otelwax.codec.pymetrics import decode_metrics
from tests.promfixtures import counter, gauge, histogram, metrics_request, summary


@pytest.mark.parametrize(
    ("name", "unit", "kind", "want"),
    [
        ("http.server.duration", "s", "histogram", "http_server_duration_seconds"),
        ("http.server.duration", "ms", "histogram", "http_server_duration_milliseconds"),
        ("system.memory.usage", "By", "gauge", "system_memory_usage_bytes"),
        ("system.cpu.utilization", "1", "gauge", "system_cpu_utilization_ratio"),
        ("requests", "1", "counter", "requests_total"),
        ("requests", "{request}", "counter", "requests_total"),
        ("requests.total", "", "counter", "requests_total"),
        ("total.requests", "", "counter", "requests_total"),
        ("queue.size", "", "gauge", "queue_size"),
        ("net.io", "By", "counter", "net_io_bytes_total"),
        ("speed", "m/s", "gauge", "speed_meters_per_second"),
        ("duration_seconds", "s", "histogram", "duration_seconds"),
        ("2xx.count", "", "gauge", "_2xx_count"),
        ("weird-name!!x", "", "gauge", "weird_name_x"),
        ("traces.span.metrics.calls", "", "counter", "traces_span_metrics_calls_total"),
        (
            "traces.span.metrics.duration",
            "ms",
            "histogram",
            "traces_span_metrics_duration_milliseconds",
        ),
    ],
)
def test_metric_names(name: str, unit: str, kind: str, want: str) -> None:
    assert metric_name(name, unit, kind) == want


@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("http.method", "http_method"),
        ("service.name", "service_name"),
        ("1abc", "key_1abc"),
        ("_private", "key_private"),
        ("__reserved", "__reserved"),
        ("a-b/c", "a_b_c"),
    ],
)
def test_label_names(key: str, want: str) -> None:
    assert sanitize_label_name(key) == want


def test_job_instance() -> None:
    assert job_instance({"service.name": "api", "service.namespace": "shop"}) == ("shop/api", "")
    assert job_instance({"service.name": "api", "service.instance.id": "i-1"}) == ("api", "i-1")


def test_series_from_all_types() -> None:
    now = time.time_ns()
    ms = now // 1_000_000
    res = {"service.name": "api", "service.instance.id": "i-1", "host.name": "h1", "1x": "y"}
    p = metrics_request(
        res,
        [
            gauge("temp", [(now, 21.5, {"a_b": "y", "a.b": "x"})], unit="Cel"),
            counter("reqs", [(now, 7, {"code": 200})]),
            counter("inflight", [(now, 3, {})], monotonic=False),
            counter("deltas", [(now, 3, {})], delta=True),
            histogram("lat", [(now, [1, 2, 0], 0.7, {})], [0.1, 0.5], unit="s"),
            summary("rt", [(now, 4, 2.0, {0.5: 0.3, 0.99: 0.9})], unit="s"),
        ],
    )
    sb = decode_metrics([p])
    out = tables_to_series(sb.tables)
    got = {tuple(sorted(k)): v for k, v in out.series.items()}
    base = (("instance", "i-1"), ("job", "api"))

    def key(name: str, *extra: tuple[str, str]):
        return tuple(sorted((("__name__", name), *base, *extra)))

    # colliding labels joined with ';' in key order
    assert got[key("temp_celsius", ("a_b", "x;y"))] == [(ms, 21.5)]
    assert got[key("reqs_total", ("code", "200"))] == [(ms, 7.0)]
    assert got[key("inflight")] == [(ms, 3.0)]
    assert got[key("lat_seconds_count")] == [(ms, 3.0)]
    assert got[key("lat_seconds_sum")] == [(ms, 0.7)]
    assert got[key("lat_seconds_bucket", ("le", "0.1"))] == [(ms, 1.0)]
    assert got[key("lat_seconds_bucket", ("le", "0.5"))] == [(ms, 3.0)]
    assert got[key("lat_seconds_bucket", ("le", "+Inf"))] == [(ms, 3.0)]
    assert got[key("rt_seconds", ("quantile", "0.99"))] == [(ms, 0.9)]
    assert got[key("rt_seconds_count")] == [(ms, 4.0)]
    ti = tuple(sorted((("__name__", "target_info"), *base, ("host_name", "h1"), ("key_1x", "y"))))
    assert got[ti] == [(ms, 1.0)]
    # delta sums must be converted upstream; the translator refuses them, counted
    assert out.skipped == {"delta_temporality": 1}
    assert not any(dict(k)["__name__"].startswith("deltas") for k in got)
    # labels are sorted by name, as remote-write requires
    for labels in out.series:
        assert list(labels) == sorted(labels)


def test_exponential_histograms_become_native_histogram_samples() -> None:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        ExponentialHistogram,
        ExponentialHistogramDataPoint,
        Metric,
    )

    from connectors.prom_native_histogram import encode_native_histogram

    now = time.time_ns()

    def metric(scale: int, temporality: int = 2) -> Metric:
        return Metric(
            name=f"eh{scale}",
            unit="s",
            exponential_histogram=ExponentialHistogram(
                aggregation_temporality=temporality,
                data_points=[
                    ExponentialHistogramDataPoint(
                        time_unix_nano=now,
                        count=3,
                        sum=1.0,
                        scale=scale,
                        positive=ExponentialHistogramDataPoint.Buckets(
                            offset=1, bucket_counts=[1, 2]
                        ),
                    )
                ],
            ),
        )

    res = decode_metrics(
        [metrics_request({"service.name": "a"}, [metric(2), metric(-5), metric(3, 1)])]
    )
    row = res.tables["otel_metrics_exponential_histogram"].to_pylist()[0]
    assert row["Scale"] == 2 and row["PositiveOffset"] == 1
    assert row["PositiveBucketCounts"] == [1, 2]
    out = tables_to_series(res.tables)
    assert out.skipped == {"exponential_histogram_scale": 1, "delta_temporality": 1}
    ((labels, samples),) = out.series.items()
    assert dict(labels)["__name__"] == "eh2_seconds"
    assert samples == [(now // 1_000_000, encode_native_histogram(3, 1.0, 2, 0, 1, [1, 2], 0, []))]
    # schema 2, span offset 2 (OTel index 1 → Prometheus index 2), deltas +1, +1 (zigzag 2, 2)
    h = samples[0][1]
    assert b"\x20\x04" in h and b"\x5a\x04\x08\x04\x10\x02" in h and h.endswith(b"\x62\x02\x02\x02")


def test_sliced_batches_and_empty_attribute_values_translate_like_whole_ones() -> None:
    now = time.time_ns()
    attrs = [{}, {"": ""}, {"a": "1"}, {"a": "1", "b": ""}, {"a": "2"}, {"b": "x", "a": "2"}]
    pts = [(now, float(i), a) for i, a in enumerate(attrs)]
    res = decode_metrics([metrics_request({"service.name": "s"}, [gauge("g", pts)])])
    batch = res.tables["otel_metrics_gauge"]
    whole = tables_to_series({"otel_metrics_gauge": batch}).series
    # an empty label value is no label in Prometheus: {} = {"": ""}, {a:1} = {a:1, b:""}
    assert sorted(len(v) for k, v in whole.items() if dict(k)["__name__"] == "g") == [1, 1, 2, 2]
    part = tables_to_series({"otel_metrics_gauge": batch.slice(4, 2)}).series
    assert {k: v for k, v in whole.items() if k in part} == part
    assert len(part) == 2
