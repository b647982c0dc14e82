"""Prometheus fixtures for tests (real Prometheus from the Debian package, remote-write on).

Use from a test module with
``from tests.promfixtures import prometheus_url_fixture  # noqa: F401`` (the fixture is named
``prometheus_url``; the import only registers it).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, port_open

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services" / "prometheus.sh"
DEFAULT_PORT = int(os.environ.get("OTELWAX_TEST_PROM_PORT", "19090"))


class PrometheusService:
    """A Prometheus started through scripts/services/prometheus.sh on its own port."""

    def __init__(self, port: int, data: Path | None = None) -> None:
        self.port = port
        self.env = dict(os.environ, PROM_PORT=str(port))
        if data is not None:
            self.env["PROM_DATA"] = str(data)
        self.url = f"http://127.0.0.1:{port}"
        self.write_url = f"{self.url}/api/v1/write"

    def start(self) -> None:
        subprocess.run([str(SCRIPT), "start"], check=True, env=self.env, capture_output=True)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop"], check=False, env=self.env, capture_output=True)

    def wipe(self) -> None:
        subprocess.run([str(SCRIPT), "wipe"], check=False, env=self.env, capture_output=True)


def prom_query(url: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query (at ``at``, unix seconds; default now); returns the result vector (list
    of {metric, value})."""
    params: dict[str, Any] = {"query": query}
    if at is not None:
        params["time"] = at
    r = requests.get(f"{url}/api/v1/query", params=params, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def prom_values(
    url: str, query: str, at: float | None = None
) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items (without __name__ unless asked): value} for an instant query."""
    out = {}
    for item in prom_query(url, query, at):
        out[tuple(sorted(item["metric"].items()))] = float(item["value"][1])
    return out


def prom_history(url: str, selector: str, window: str = "1h") -> dict[str, list[float]]:
    """{"k=v,..." labels: sample values in time order} of every series of ``selector`` over
    the last ``window``."""
    out = {}
    for item in prom_query(url, f"{selector}[{window}]"):
        labels = ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items()))
        out[labels] = [float(v) for _, v in item["values"]]
    return out


def wait_for(url: str, query: str, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll an instant query until it returns at least ``n`` series."""
    deadline = time.monotonic() + timeout
    res: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        res = prom_query(url, query)
        if len(res) >= n:
            return res
        time.sleep(0.3)
    return res


def unique_job(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", name="prometheus_url")
def prometheus_url_fixture() -> Iterator[str]:
    """Base URL of the shared test Prometheus (started if not running, left as found)."""
    svc = PrometheusService(DEFAULT_PORT)
    started = not port_open("127.0.0.1", DEFAULT_PORT)
    if started:
        svc.start()
    yield svc.url
    if started:
        svc.stop()


@pytest.fixture(name="own_prometheus")
def own_prometheus_fixture(tmp_path: Path) -> Iterator[PrometheusService]:
    """A private Prometheus on a free port that the test may stop and start."""
    svc = PrometheusService(free_port(), tmp_path / "prometheus")
    svc.start()
    yield svc
    svc.wipe()


# --- OTLP metrics request builders (shared by the metrics tests and bench/metrics_bench.py) ---


def _kvs(d: dict[str, Any]):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    out = []
    for k, v in d.items():
        if isinstance(v, bool):
            av = AnyValue(bool_value=v)
        elif isinstance(v, int):
            av = AnyValue(int_value=v)
        elif isinstance(v, float):
            av = AnyValue(double_value=v)
        else:
            av = AnyValue(string_value=str(v))
        out.append(KeyValue(key=k, value=av))
    return out


def metrics_request(
    resource: dict[str, Any], metrics: list[Any], scope: str = "otelwax.tests"
) -> bytes:
    """A serialized ExportMetricsServiceRequest with one resource and one scope."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    req = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=_kvs(resource)),
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope(name=scope, version="1.0"), metrics=metrics
                    )
                ],
            )
        ]
    )
    return req.SerializeToString()


def gauge(name: str, points: list[tuple[int, float, dict[str, Any]]], unit: str = ""):
    """A Gauge metric; points are (time_ns, value, attributes)."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint

    return Metric(
        name=name,
        unit=unit,
        gauge=Gauge(
            data_points=[
                NumberDataPoint(time_unix_nano=t, as_double=v, attributes=_kvs(a))
                for t, v, a in points
            ]
        ),
    )


def counter(
    name: str,
    points: list[tuple[int, float, dict[str, Any]]],
    unit: str = "",
    delta: bool = False,
    monotonic: bool = True,
    start_ns: int = 0,
):
    """A Sum metric; points are (time_ns, value, attributes)."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        AggregationTemporality,
        Metric,
        NumberDataPoint,
        Sum,
    )

    temp = (
        AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        if delta
        else AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    return Metric(
        name=name,
        unit=unit,
        sum=Sum(
            aggregation_temporality=temp,
            is_monotonic=monotonic,
            data_points=[
                NumberDataPoint(
                    start_time_unix_nano=start_ns or (t - 10**9),
                    time_unix_nano=t,
                    as_double=v,
                    attributes=_kvs(a),
                )
                for t, v, a in points
            ],
        ),
    )


def histogram(
    name: str,
    points: list[tuple[int, list[int], float, dict[str, Any]]],
    bounds: list[float],
    unit: str = "",
    delta: bool = False,
):
    """A Histogram metric; points are (time_ns, bucket_counts, sum, attributes)."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        AggregationTemporality,
        Histogram,
        HistogramDataPoint,
        Metric,
    )

    temp = (
        AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        if delta
        else AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    return Metric(
        name=name,
        unit=unit,
        histogram=Histogram(
            aggregation_temporality=temp,
            data_points=[
                HistogramDataPoint(
                    start_time_unix_nano=t - 10**9,
                    time_unix_nano=t,
                    count=sum(bc),
                    sum=s,
                    bucket_counts=bc,
                    explicit_bounds=bounds,
                    attributes=_kvs(a),
                )
                for t, bc, s, a in points
            ],
        ),
    )


def summary(name: str, points: list[tuple[int, int, float, dict[float, float]]], unit: str = ""):
    """A Summary metric; points are (time_ns, count, sum, {quantile: value})."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, Summary, SummaryDataPoint

    return Metric(
        name=name,
        unit=unit,
        summary=Summary(
            data_points=[
                SummaryDataPoint(
                    time_unix_nano=t,
                    count=c,
                    sum=s,
                    quantile_values=[
                        SummaryDataPoint.ValueAtQuantile(quantile=q, value=v) for q, v in qv.items()
                    ],
                )
                for t, c, s, qv in points
            ]
        ),
    )
