"""OTLP/JSON over HTTP: parsed without json_format, it yields exactly the protobuf the SDK
would have sent, and lands in Kafka like a protobuf request."""

from __future__ import annotations

import base64
import gzip
import math
import uuid
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from connectors.ingest.otlp_json import JsonError, parse_json
from connectors.ingest.wire import count_datapoints
from tests.otlpgen import any_value, logs_request, trace_request

from .conftest import Shim, consume

_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def to_otlp_json(msg: Message) -> bytes:
    """OTLP/JSON as the spec writes it: hex ids, integer enums, int64 as strings."""
    d = json_format.MessageToDict(msg, use_integers_for_enums=True)

    def fix(o: Any) -> Any:
        if isinstance(o, dict):
            return {
                k: (base64.b64decode(v).hex() if k in _ID_KEYS else fix(v)) for k, v in o.items()
            }
        if isinstance(o, list):
            return [fix(x) for x in o]
        return o

    return orjson.dumps(fix(d))


def metrics_request() -> ExportMetricsServiceRequest:
    """Every metric kind, with exemplars (hex ids) and special doubles."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(KeyValue(key="service.name", value=any_value("m")))
    sm = rm.scope_metrics.add()
    sm.scope.name = "meter"
    t = 1_764_000_000_000_000_000
    attrs = [KeyValue(key="route", value=any_value("/a")), KeyValue(key="n", value=any_value(3))]
    g = sm.metrics.add(name="temp", unit="C")
    g.gauge.data_points.add(time_unix_nano=t, as_double=math.inf, attributes=attrs)
    g.gauge.data_points.add(time_unix_nano=t, as_int=-5)
    s = sm.metrics.add(name="reqs")
    s.sum.aggregation_temporality = 2
    s.sum.is_monotonic = True
    dp = s.sum.data_points.add(start_time_unix_nano=t - 10, time_unix_nano=t, as_int=2**62)
    dp.exemplars.add(time_unix_nano=t, as_double=1.5, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    h = sm.metrics.add(name="lat")
    h.histogram.aggregation_temporality = 1
    h.histogram.data_points.add(
        time_unix_nano=t, count=3, sum=4.5, bucket_counts=[1, 2, 0], explicit_bounds=[1.0, 2.0],
        min=0.5, max=2.5,
    )  # fmt: skip
    e = sm.metrics.add(name="exp")
    edp = e.exponential_histogram.data_points.add(time_unix_nano=t, count=4, scale=2, zero_count=1)
    edp.positive.offset = -3
    edp.positive.bucket_counts.extend([1, 2])
    sq = sm.metrics.add(name="sum")
    sdp = sq.summary.data_points.add(time_unix_nano=t, count=2, sum=math.nan)
    sdp.quantile_values.add(quantile=0.5, value=1.0)
    return req


REQUESTS = {
    "traces": trace_request(3, 7, seed=11, all_value_types=True, unicode=True, links_per_span=2),
    "logs": logs_request(2, 9, seed=12, all_value_types=True, unicode=True),
    "metrics": metrics_request(),
}


@pytest.mark.parametrize("signal", list(REQUESTS))
def test_json_parses_to_the_same_protobuf(signal: str) -> None:
    msg = REQUESTS[signal]
    parsed = parse_json(to_otlp_json(msg), type(msg))
    # Compare serialized bytes: NaN != NaN would defeat message equality.
    assert parsed.SerializeToString(deterministic=True) == msg.SerializeToString(deterministic=True)


def test_json_accepts_snake_case_enum_names_and_numbers() -> None:
    body = orjson.dumps(
        {
            "resource_spans": [
                {
                    "scope_spans": [
                        {
                            "spans": [
                                {
                                    "trace_id": "0102030405060708090a0b0c0d0e0f10",
                                    "spanId": "0102030405060708",
                                    "kind": "SPAN_KIND_SERVER",
                                    "startTimeUnixNano": 17,
                                    "status": {"code": 2},
                                    "unknownField": {"ignored": True},
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    )
    req = parse_json(body, ExportTraceServiceRequest)
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    assert sp.trace_id == bytes(range(1, 17))
    assert sp.kind == 2 and sp.start_time_unix_nano == 17 and sp.status.code == 2


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"resourceSpans": [1]}', b'{"resourceSpans":[{"resource":{"attributes":"x"}}]}'],
)
def test_json_shape_errors(body: bytes) -> None:
    with pytest.raises(JsonError):
        parse_json(body, ExportTraceServiceRequest)


def test_datapoint_count_matches_every_metric_kind() -> None:
    req = metrics_request()
    n = sum(
        count_datapoints(b"\x12" + bytes([m.ByteSize()]) + m.SerializeToString())
        for m in req.resource_metrics[0].scope_metrics[0].metrics
    )
    assert n == 6


@pytest.mark.parametrize("signal", list(REQUESTS))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_json_over_http_lands_in_kafka(shim: Shim, signal: str, gz: bool) -> None:
    run = uuid.uuid4().hex
    msg = type(REQUESTS[signal])()
    msg.CopyFrom(REQUESTS[signal])
    field, inner, item = {
        "traces": ("resource_spans", "scope_spans", "spans"),
        "logs": ("resource_logs", "scope_logs", "log_records"),
        "metrics": ("resource_metrics", "scope_metrics", "metrics"),
    }[signal]
    for res in getattr(msg, field):
        res.resource.attributes.append(KeyValue(key="test.run", value=any_value(run)))
    body = to_otlp_json(msg)
    headers = {"content-type": "application/json"}
    if gz:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    r = httpx.post(f"{shim.http_url}/v1/{signal}", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}

    def items(m: Message) -> list[bytes]:
        return [
            it.SerializeToString(deterministic=True)
            for res in getattr(m, field)
            if any(
                a.key == "test.run" and a.value.string_value == run for a in res.resource.attributes
            )
            for sc in getattr(res, inner)
            for it in getattr(sc, item)
        ]

    want = sorted(items(msg))

    def mine(recs):
        return [x for rec in recs for x in items(type(msg).FromString(rec.value))]

    recs = consume(shim.bootstrap, shim.topics[signal], until=lambda rs: len(mine(rs)) >= len(want))
    assert sorted(mine(recs)) == want, "every item exactly once, identical to the protobuf"
