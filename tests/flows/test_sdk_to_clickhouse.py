"""OTel SDK → ingest shim → Kafka → flows.traces → ClickHouse (chdb): every span once, equal."""

from __future__ import annotations

import uuid

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.connectors.ingest.conftest import start_shim
from tests.flows.conftest import chdb_rows


def test_sdk_spans_through_shim_and_flow_are_stored_once_and_equal(flow_run, tmp_path) -> None:
    run = flow_run(partitions=2)
    topics = {"traces": run.topic, "metrics": f"m_{uuid.uuid4().hex[:6]}", "logs": "l_unused"}
    shim = start_shim(run.bootstrap, topics, tmp_path)
    try:
        memory = InMemorySpanExporter()
        provider = TracerProvider(
            resource=Resource.create({"service.name": "checkout", "deployment.environment": "t"})
        )
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{shim.http_url}/v1/traces"))
        )
        tracer = provider.get_tracer("otelwax.test", "1.2.3")
        kinds = [SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.PRODUCER]
        for t in range(40):
            with tracer.start_as_current_span(
                f"GET /cart/{t % 5}", kind=SpanKind.SERVER, attributes={"http.route": "/cart"}
            ) as root:
                root.add_event("cache.miss", {"key": f"k{t}"})
                for c in range(4):
                    with tracer.start_as_current_span(
                        f"step-{c}", kind=kinds[c], attributes={"step": c, "ok": c % 2 == 0}
                    ) as child:
                        if c == 3:
                            child.set_status(Status(StatusCode.ERROR, "boom"))
        assert provider.force_flush(30_000)
        provider.shutdown()
    finally:
        assert shim.stop() == 0, shim.log()

    run.run_to_end()
    rows = chdb_rows(
        run.settings["clickhouse"]["path"],
        "SELECT SpanId, TraceId, ParentSpanId, SpanName, SpanKind, ServiceName, ScopeName, "
        "ScopeVersion, toUnixTimestamp64Nano(Timestamp), Duration, StatusCode, StatusMessage, "
        "SpanAttributes, Events.Name, ResourceAttributes['deployment.environment'] "
        "FROM otel.otel_traces",
    )
    spans = memory.get_finished_spans()
    assert len(spans) == 200
    assert len(rows) == len({r[0] for r in rows}) == 200
    got = {r[0]: r for r in rows}
    for s in spans:
        r = got[f"{s.context.span_id:016x}"]
        assert r[1] == f"{s.context.trace_id:032x}"
        assert r[2] == (f"{s.parent.span_id:016x}" if s.parent else "")
        assert r[3] == s.name
        assert r[4] == f"SPAN_KIND_{s.kind.name}"
        assert (r[5], r[6], r[7]) == ("checkout", "otelwax.test", "1.2.3")
        assert r[8] == s.start_time and r[9] == s.end_time - s.start_time
        assert r[10] == f"STATUS_CODE_{s.status.status_code.name}"
        assert r[11] == (s.status.description or "")
        attrs = dict(r[12])
        for k, v in s.attributes.items():
            assert attrs[k] == (str(v).lower() if isinstance(v, bool) else str(v))
        assert list(r[13]) == [e.name for e in s.events]
        assert r[14] == "t"
