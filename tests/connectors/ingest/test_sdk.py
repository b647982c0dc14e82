"""The unmodified OpenTelemetry Python SDK exporters (gRPC and HTTP/protobuf, gzip) send
spans, metrics and logs through the shim; every item lands in Kafka exactly once, keyed as the
Collector's kafkaexporter would key it."""

from __future__ import annotations

import logging
import uuid
from collections import Counter

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from connectors.ingest.wire import resource_key
from connectors.kafka import HEADER_CONTENT_TYPE, HEADER_INGEST_TIME

from .conftest import Shim, consume

PROTOCOLS = ["grpc", "http"]


def _span_exporter(proto: str, shim: Shim):
    if proto == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=shim.grpc_target, insecure=True, compression=Compression.Gzip
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{shim.http_url}/v1/traces", compression=Compression.Gzip)


def _metric_exporter(proto: str, shim: Shim):
    if proto == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            endpoint=shim.grpc_target, insecure=True, compression=Compression.Gzip
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=f"{shim.http_url}/v1/metrics", compression=Compression.Gzip)


def _log_exporter(proto: str, shim: Shim):
    if proto == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(
            endpoint=shim.grpc_target, insecure=True, compression=Compression.Gzip
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=f"{shim.http_url}/v1/logs", compression=Compression.Gzip)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_sdk_spans_arrive_once_keyed_by_trace_id(shim: Shim, proto: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    run = uuid.uuid4().hex[:8]
    provider = TracerProvider(resource=Resource.create({"service.name": f"sdk-{proto}-{run}"}))
    provider.add_span_processor(
        BatchSpanProcessor(_span_exporter(proto, shim), max_export_batch_size=64)
    )
    tracer = provider.get_tracer("otelwax.test")
    sent: dict[bytes, bytes] = {}  # span id -> trace id
    for t in range(12):
        with tracer.start_as_current_span(f"root-{t}") as root:
            root.set_attribute("run", run)
            for c in range(9):
                with tracer.start_as_current_span(f"child-{c}") as child:
                    ctx = child.get_span_context()
                    sent[ctx.span_id.to_bytes(8, "big")] = ctx.trace_id.to_bytes(16, "big")
            ctx = root.get_span_context()
            sent[ctx.span_id.to_bytes(8, "big")] = ctx.trace_id.to_bytes(16, "big")
    assert provider.force_flush(20_000)
    provider.shutdown()

    def spans_of(recs):
        for r in recs:
            req = ExportTraceServiceRequest.FromString(r.value)
            for rs in req.resource_spans:
                svc = [
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                ]
                if svc != [f"sdk-{proto}-{run}"]:
                    continue
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        yield r, sp

    recs = consume(
        shim.bootstrap,
        shim.topics["traces"],
        until=lambda rs: sum(1 for _ in spans_of(rs)) >= len(sent),
    )
    counts = Counter(sp.span_id for _r, sp in spans_of(recs))
    assert set(counts) == set(sent), "every span id arrives"
    assert max(counts.values()) == 1, "and arrives once"
    for r, sp in spans_of(recs):
        assert r.key == sp.trace_id.hex().encode(), "key is the 32-hex trace id of every span"
        assert sp.trace_id == sent[sp.span_id]
        assert r.headers[HEADER_CONTENT_TYPE] == b"application/x-protobuf"
        assert int(r.headers[HEADER_INGEST_TIME]) > 0


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_sdk_metrics_arrive_once_keyed_by_resource(shim: Shim, proto: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    run = uuid.uuid4().hex[:8]
    reader = PeriodicExportingMetricReader(
        _metric_exporter(proto, shim), export_interval_millis=3_600_000
    )
    resource = Resource.create({"service.name": f"sdk-{proto}-{run}"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("otelwax.test")
    counter = meter.create_counter("requests")
    hist = meter.create_histogram("latency_ms")
    for route in range(7):
        counter.add(route + 1, {"route": f"/r{route}"})
        hist.record(route * 3.5, {"route": f"/r{route}"})
    assert provider.force_flush(20_000)

    def points(recs):
        for r in recs:
            req = ExportMetricsServiceRequest.FromString(r.value)
            for rm in req.resource_metrics:
                svc = [
                    a.value.string_value for a in rm.resource.attributes if a.key == "service.name"
                ]
                if svc != [f"sdk-{proto}-{run}"]:
                    continue
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        dps = m.sum.data_points if m.HasField("sum") else m.histogram.data_points
                        for dp in dps:
                            yield r, rm, m.name, dp

    recs = consume(
        shim.bootstrap, shim.topics["metrics"], until=lambda rs: sum(1 for _ in points(rs)) >= 14
    )
    got = Counter(
        (name, next(a.value.string_value for a in dp.attributes))
        for _r, _rm, name, dp in points(recs)
    )
    assert got == Counter({(n, f"/r{i}"): 1 for n in ("requests", "latency_ms") for i in range(7)})
    for r, rm, _name, _dp in points(recs):
        assert r.key == resource_key(rm.resource.SerializeToString())
        assert len(r.key) == 32
    provider.shutdown()


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
@pytest.mark.parametrize("proto", PROTOCOLS)
def test_sdk_logs_arrive_once(shim: Shim, proto: str) -> None:
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    run = uuid.uuid4().hex[:8]
    provider = LoggerProvider(resource=Resource.create({"service.name": f"sdk-{proto}-{run}"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(proto, shim)))
    pylog = logging.getLogger(f"otelwax.test.sdk.{run}")
    pylog.propagate = False
    pylog.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    pylog.addHandler(handler)
    bodies = {f"message {i} of {run}" for i in range(150)}
    for b in sorted(bodies):
        pylog.warning(b)
    assert provider.force_flush(20_000)
    pylog.removeHandler(handler)
    provider.shutdown()

    def logs(recs):
        for r in recs:
            req = ExportLogsServiceRequest.FromString(r.value)
            for rl in req.resource_logs:
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        if lr.body.string_value.endswith(run):
                            yield r, rl, lr

    recs = consume(
        shim.bootstrap, shim.topics["logs"], until=lambda rs: sum(1 for _ in logs(rs)) >= 150
    )
    got = Counter(lr.body.string_value for _r, _rl, lr in logs(recs))
    assert set(got) == bodies
    assert max(got.values()) == 1
    for r, rl, _lr in logs(recs):
        assert r.key == resource_key(rl.resource.SerializeToString())
