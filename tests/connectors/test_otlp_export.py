"""Jaeger sink: spans exported over OTLP/gRPC to a real Jaeger v2 come back from its query API
unchanged; outages are retried (nothing lost), a dead endpoint opens the circuit breaker."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY

from connectors.otlp_export import (
    JaegerExporter,
    JaegerExporterConfig,
    JaegerExportError,
    JaegerSink,
    JaegerUnavailableError,
)
from otelwax.codec import native
from otelwax.codec.pydecode import decode_traces
from otelwax.resilience import BreakerConfig, RetryConfig
from otelwax.schemas import SPAN_KIND_NAMES
from otelwax.settings import ValidationError, format_errors
from tests.conftest import free_port
from tests.flows.conftest import chdb_rows, flow_run, produce  # noqa: F401  (fixture flow_run)
from tests.jaegerfixtures import (  # noqa: F401  (fixture jaeger)
    JaegerService,
    ScriptedOtlpServer,
    jaeger_fixture,
    make_tls_files,
)
from tests.otlpgen import trace_payloads

_seq = iter(range(1_000_000))

FAST_RETRY = RetryConfig(attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2, jitter=0.0)


def component() -> str:
    return f"sink.jaeger.test{next(_seq)}"


def counter(name: str, comp: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"component": comp, "unit": "spans", **labels}) or 0.0


def spans_batch(seed: int, n_requests: int = 1, **kw) -> pa.RecordBatch:
    res = decode_traces(trace_payloads(n_requests, seed=seed, **kw))
    assert res.errors == []
    return res.batch


def cfg(endpoint: str, **kw) -> JaegerExporterConfig:
    kw.setdefault("retry", FAST_RETRY)
    return JaegerExporterConfig(enabled=True, endpoint=endpoint, **kw)


def closed_endpoint() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults_and_validation():
    c = JaegerExporterConfig()
    assert (c.enabled, c.endpoint, c.insecure, c.when_unavailable) == (
        False,
        "127.0.0.1:4317",
        True,
        "block",
    )
    with pytest.raises(ValidationError) as exc:
        JaegerExporterConfig.model_validate(
            {
                "endpoint": "http://jaeger:4317",
                "timeout_s": 0,
                "max_spans_per_requst": 5,
                "retry": {"attempts": 0},
                "when_unavailable": "drop",
            }
        )
    lines = format_errors(exc.value, "sinks.jaeger", JaegerExporterConfig)
    text = "\n".join(lines)
    assert "sinks.jaeger.endpoint: Value error, use host:port without a scheme" in text
    assert "sinks.jaeger.timeout_s: Input should be greater than 0" in text
    assert (
        'sinks.jaeger.max_spans_per_requst: unknown key (did you mean "max_spans_per_request"?)'
        in text
    )
    assert "sinks.jaeger.retry.attempts" in text
    assert "sinks.jaeger.when_unavailable" in text
    for bad in ("jaeger", "jaeger:0", "jaeger:99999", "a b:1"):
        with pytest.raises(ValidationError):
            JaegerExporterConfig(endpoint=bad)
    for good in ("jaeger:4317", "10.0.0.1:14317", "[::1]:4317", "jaeger-collector.obs.svc:4317"):
        assert JaegerExporterConfig(endpoint=good).endpoint == good
    secret = JaegerExporterConfig(headers={"authorization": "Bearer s3cr3t"})
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in str(secret.model_dump())


def test_tls_is_on_unless_loopback_or_explicitly_off():
    """A remote Jaeger gets TLS unless ``insecure: true`` is written; loopback stays plaintext."""
    for loopback in ("127.0.0.1:4317", "localhost:4317", "[::1]:4317", "127.0.0.2:14317"):
        assert JaegerExporterConfig(endpoint=loopback).insecure is True, loopback
    for remote in ("jaeger:4317", "10.0.0.1:4317", "jaeger-collector.obs.svc:4317"):
        assert JaegerExporterConfig(endpoint=remote).insecure is False, remote
        assert JaegerExporterConfig(endpoint=remote, insecure=True).insecure is True
    assert JaegerExporterConfig(endpoint="127.0.0.1:4317", insecure=False).insecure is False


def test_a_remote_endpoint_without_opt_in_speaks_tls_to_a_plaintext_server():
    """Default settings towards a non-loopback name: the channel is TLS, so a plaintext
    receiver is unavailable (nothing sent in clear); ``insecure: true`` reaches it."""
    with ScriptedOtlpServer([], host="0.0.0.0") as srv:
        remote = f"{socket.gethostname()}:{srv.port}"  # this machine, by a non-loopback name
        c = cfg(remote, when_unavailable="raise", timeout_s=2)
        assert c.insecure is False
        with JaegerExporter(c) as exp, pytest.raises(JaegerUnavailableError):
            exp.export(spans_batch(11, 1))
        assert srv.calls == []
        with JaegerExporter(cfg(remote, insecure=True)) as exp:
            exp.export(spans_batch(11, 1))
        assert srv.spans() == 100


def test_export_needs_open_and_disabled_counts_drops():
    comp = component()
    exp = JaegerExporter(JaegerExporterConfig(enabled=True), component=comp)
    with pytest.raises(RuntimeError, match="not open"):
        exp.export(spans_batch(1))
    off = JaegerExporter(JaegerExporterConfig(enabled=False), component=comp)
    off.export(spans_batch(1))  # no I/O at all
    assert counter("otelwax_dropped_total", comp, reason="disabled") == 100


def test_batches_of_the_wrong_shape_fail_whole_not_row_by_row():
    comp = component()
    batch = spans_batch(5)
    with JaegerExporter(cfg(closed_endpoint()), component=comp) as exp:
        with pytest.raises(JaegerExportError, match=r"lacks traces columns: \['SpanId'\]"):
            exp.export(batch.drop_columns(["SpanId"]))
        i = batch.schema.get_field_index("SpanAttributes")
        wrong = batch.set_column(i, "SpanAttributes", pa.array(["x"] * batch.num_rows))
        with pytest.raises(JaegerExportError, match="cannot encode spans"):
            exp.export(wrong)
    assert counter("otelwax_failed_total", comp) == 2 * batch.num_rows
    assert counter("otelwax_dropped_total", comp, reason="unencodable") == 0


# --- failures against a closed port ----------------------------------------------------------


def test_breaker_opens_after_repeated_failures_on_a_closed_port():
    comp = component()
    batch = spans_batch(2)
    c = cfg(
        closed_endpoint(),
        when_unavailable="raise",
        breaker=BreakerConfig(failure_threshold=4, open_seconds=1.0),
    )
    with JaegerExporter(c, component=comp) as exp:
        # Round 1: two attempts fail (connection refused) → retries exhausted, breaker closed.
        with pytest.raises(JaegerUnavailableError, match="retries exhausted") as e1:
            exp.export(batch)
        assert e1.value.done_rows == 0
        assert exp.breaker.state == "closed"
        # Round 2: two more failures reach the threshold → breaker open.
        with pytest.raises(JaegerUnavailableError, match="UNAVAILABLE"):
            exp.export(batch)
        assert exp.breaker.state == "open"
        # Open: fails fast without a call, says when to come back.
        t0 = time.monotonic()
        with pytest.raises(JaegerUnavailableError, match=r"circuit .* is open") as e3:
            exp.export(batch)
        fast = time.monotonic() - t0
        assert fast < 0.1
        assert 0.5 < e3.value.retry_after <= 1.0
        # After open_seconds one probe goes through; it fails, the breaker re-opens at once
        # (the retry after the probe meets the open breaker).
        time.sleep(1.05)
        assert exp.breaker.state == "half_open"
        with pytest.raises(JaegerUnavailableError, match=r"circuit .* is open"):
            exp.export(batch)
        assert exp.breaker.state == "open"
        assert exp.breaker.retry_after() > 0.8
    assert counter("otelwax_failed_total", comp) == 4 * batch.num_rows
    assert counter("otelwax_sent_total", comp) == 0
    print(f"\nbreaker open: export failed fast in {fast * 1000:.1f} ms")


def test_block_mode_gives_up_after_max_block_s():
    comp = component()
    c = cfg(
        closed_endpoint(),
        max_block_s=1.0,
        breaker=BreakerConfig(failure_threshold=2, open_seconds=0.3),
    )
    with JaegerExporter(c, component=comp) as exp:
        t0 = time.monotonic()
        with pytest.raises(JaegerUnavailableError, match=r"gave up after max_block_s=1\.0"):
            exp.export(spans_batch(3))
        took = time.monotonic() - t0
    assert 0.6 < took < 3.0
    assert counter("otelwax_failed_total", comp) == 100


def test_close_wakes_a_blocked_export():
    c = cfg(closed_endpoint(), breaker=BreakerConfig(failure_threshold=1, open_seconds=60))
    exp = JaegerExporter(c, component=component()).open()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            exp.export(spans_batch(4))
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.5)
    assert th.is_alive()  # blocked on the open breaker, spans kept
    exp.close()
    th.join(5)
    assert not th.is_alive()
    assert isinstance(errors[0], JaegerUnavailableError)


# --- a receiver that rejects the probe --------------------------------------------------------

OUTAGE_THEN_REJECT = [grpc.StatusCode.UNAVAILABLE] * 2 + [grpc.StatusCode.INVALID_ARGUMENT]


def test_a_rejected_probe_closes_the_breaker_and_export_goes_on():
    """Jaeger is down (breaker opens), comes back and rejects the probe request as invalid:
    that request's spans are dropped and counted, the breaker closes, the rest is sent. The
    breaker used to stay half-open forever and every later export blocked."""
    comp = component()
    batch = spans_batch(9, 2)  # 200 spans, 4 requests of 50
    c = cfg(
        "127.0.0.1:1",
        max_spans_per_request=50,
        max_block_s=10.0,
        retry=RetryConfig(attempts=1, initial_backoff_s=0.01, max_backoff_s=0.05),
        breaker=BreakerConfig(failure_threshold=2, open_seconds=0.3),
    )
    with ScriptedOtlpServer(OUTAGE_THEN_REJECT) as srv:
        c = c.model_copy(update={"endpoint": srv.endpoint})
        with JaegerExporter(c, component=comp) as exp:
            exp.export(batch)
            assert exp.breaker.state == "closed"
            exp.export(spans_batch(10, 1))
        assert srv.spans(grpc.StatusCode.INVALID_ARGUMENT) == 50
        assert srv.spans() == 150 + 100
    assert counter("otelwax_dropped_total", comp, reason="rejected") == 50
    assert counter("otelwax_sent_total", comp) == 250
    assert counter("otelwax_failed_total", comp) == 0


def test_trace_flow_keeps_storing_when_jaeger_rejects_the_probe(request):
    """The traces flow with its Jaeger sink: an outage then an INVALID_ARGUMENT answer to the
    probe must not stall the worker; every span still reaches ClickHouse, the rejected ones
    are logged as dropped and the flow drains the topic and exits."""
    make_run = request.getfixturevalue("flow_run")
    with ScriptedOtlpServer(OUTAGE_THEN_REJECT) as srv:
        jcfg = {
            "enabled": True,
            "endpoint": srv.endpoint,
            "max_spans_per_request": 20,
            "retry": {"attempts": 1, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            "breaker": {"failure_threshold": 2, "open_seconds": 0.3},
        }
        run = make_run(partitions=1, jaeger=jcfg)
        payloads = trace_payloads(6, seed=900, n_resources=2, spans_per_resource=10)
        produce(run.bootstrap, run.topic, payloads)
        run.run_to_end(timeout=60)
        batch = decode_traces(payloads).batch
        assert srv.spans(grpc.StatusCode.INVALID_ARGUMENT) == 20
        assert srv.spans() == batch.num_rows - 20
    path = run.settings["clickhouse"]["path"]
    (n,) = chdb_rows(path, "SELECT count() FROM otel.otel_traces")[0]
    assert n == batch.num_rows
    assert "dropping 20 spans" in run.log_text() and "INVALID_ARGUMENT" in run.log_text()


# --- against a real Jaeger v2 ----------------------------------------------------------------

_KINDS = list(SPAN_KIND_NAMES)
_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def _attrs(kvs: list[dict]) -> list[tuple[str, str]]:
    # "@jaeger@warnings" is Jaeger's own annotation (e.g. "clock skew adjustment disabled"
    # for otlpgen's children that do not nest in their parents' time): not our data.
    return sorted(
        (a["key"], a.get("value", {}).get("stringValue", ""))
        for a in kvs or []
        if a["key"] != "@jaeger@warnings"
    )


def v3_rows(svc: JaegerService, trace_ids: set[str]) -> dict[str, dict]:
    """Spans of the traces as Jaeger's v3 API (OTLP JSON) returns them, in our row shape with
    attribute lists sorted (Jaeger sorts them); keyed by SpanId."""
    out: dict[str, dict] = {}
    for tid in trace_ids:
        body = svc.get(f"/api/v3/traces/{tid}")
        for rs in (body or {}).get("result", {}).get("resourceSpans", []):
            res = _attrs(rs.get("resource", {}).get("attributes"))
            for ss in rs.get("scopeSpans", []):
                scope = ss.get("scope", {})
                for sp in ss.get("spans", []):
                    start, end = int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"])
                    status = sp.get("status", {})
                    events = sp.get("events", [])
                    links = sp.get("links", [])
                    out[sp["spanId"]] = {
                        "Timestamp": start,
                        "TraceId": sp["traceId"],
                        "SpanId": sp["spanId"],
                        "ParentSpanId": sp.get("parentSpanId", ""),
                        "TraceState": sp.get("traceState", ""),
                        "SpanName": sp.get("name", ""),
                        "SpanKind": _KINDS[sp.get("kind", 0)],
                        "ServiceName": dict(res).get("service.name", ""),
                        "ResourceAttributes": res,
                        "ScopeName": scope.get("name", ""),
                        "ScopeVersion": scope.get("version", ""),
                        "SpanAttributes": _attrs(sp.get("attributes")),
                        "Duration": end - start,
                        "StatusCode": _CODES[status.get("code", 0)],
                        "StatusMessage": status.get("message", ""),
                        "Events.Timestamp": [int(e["timeUnixNano"]) for e in events],
                        "Events.Name": [e.get("name", "") for e in events],
                        "Events.Attributes": [_attrs(e.get("attributes")) for e in events],
                        "Links.TraceId": [lk["traceId"] for lk in links],
                        "Links.SpanId": [lk["spanId"] for lk in links],
                        "Links.TraceState": [lk.get("traceState", "") for lk in links],
                        "Links.Attributes": [_attrs(lk.get("attributes")) for lk in links],
                    }
    return out


def expected_rows(batch: pa.RecordBatch) -> dict[str, dict]:
    """Our rows in the shape of ``v3_rows`` (ns integers, sorted attribute lists)."""
    ints = batch.set_column(0, "Timestamp", batch.column("Timestamp").cast(pa.int64())).set_column(
        batch.schema.get_field_index("Events.Timestamp"),
        "Events.Timestamp",
        batch.column("Events.Timestamp").cast(pa.list_(pa.int64())),
    )
    out = {}
    for r in ints.to_pylist():
        for k in ("ResourceAttributes", "SpanAttributes"):
            r[k] = sorted(r[k])
        for k in ("Events.Attributes", "Links.Attributes"):
            r[k] = [sorted(a) for a in r[k]]
        out[r["SpanId"]] = r
    return out


def wait_for(svc: JaegerService, batch: pa.RecordBatch, timeout: float = 30.0) -> dict:
    trace_ids = set(batch.column("TraceId").to_pylist())
    deadline = time.monotonic() + timeout
    while True:
        got = v3_rows(svc, trace_ids)
        if len(got) >= batch.num_rows or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


@pytest.mark.parametrize("encoder", ["python", "native"])
def test_spans_come_back_from_jaeger_unchanged(jaeger, encoder):
    if encoder == "native" and not native.AVAILABLE:
        pytest.skip("native codec not built")
    comp = component()
    seed = 100 if encoder == "python" else 101
    batch = spans_batch(seed, 3, events_per_span=2, links_per_span=1, unicode=True)
    # As after operators: health checks filtered out, span names rewritten.
    batch = batch.filter(pc.invert(pc.match_substring(batch.column("SpanName"), "/healthz")))
    name_i = batch.schema.get_field_index("SpanName")
    batch = batch.set_column(name_i, "SpanName", pc.utf8_upper(batch.column(name_i)))
    n = batch.num_rows
    assert 150 < n < 300
    c = cfg(jaeger.otlp_endpoint, max_spans_per_request=37, encoder=encoder)  # several requests
    with JaegerExporter(c, component=comp) as exp:
        assert exp.encoder_name == encoder
        exp.export(batch)
    assert counter("otelwax_sent_total", comp) == n
    assert counter("otelwax_received_total", comp) == n

    got = wait_for(jaeger, batch)
    want = expected_rows(batch)
    assert set(got) == set(want)
    for span_id, row in want.items():
        assert got[span_id] == row, span_id

    # Jaeger's own model (v1 API, what its UI shows): parents, tags, status, process.
    some_error = next(r for r in want.values() if r["StatusCode"] == "STATUS_CODE_ERROR")
    trace = jaeger.trace(some_error["TraceId"])
    spans = {s["spanID"]: s for s in trace["spans"]}
    for s in spans.values():
        parent = want[s["spanID"]]["ParentSpanId"]
        child_of = [r["spanID"] for r in s["references"] if r["refType"] == "CHILD_OF"]
        assert child_of == ([parent] if parent else [])
        assert trace["processes"][s["processID"]]["serviceName"] == want[s["spanID"]]["ServiceName"]
    tags = {t["key"]: t["value"] for t in spans[some_error["SpanId"]]["tags"]}
    assert tags["error"] is True
    assert tags["otel.status_code"] == "ERROR"
    assert tags["otel.status_description"] == "boom: upstream failed"
    assert tags["otel.scope.name"] == some_error["ScopeName"]
    for k, v in some_error["SpanAttributes"]:
        assert tags[k] == v


@pytest.mark.extended  # make test-all; make test keeps the flow test with Jaeger down at start
def test_jaeger_down_for_a_while_then_up_nothing_lost(tmp_path):
    comp = component()
    port = free_port()
    batch = spans_batch(200, 2)
    c = cfg(
        f"127.0.0.1:{port}",
        max_spans_per_request=30,
        breaker=BreakerConfig(failure_threshold=3, open_seconds=0.5),
    )
    exp = JaegerExporter(c, component=comp).open()
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            exp.export(batch)  # blocks through the outage
        except BaseException as exc:
            errors.append(exc)
        done.set()

    th = threading.Thread(target=run)
    th.start()
    states = set()
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        states.add(exp.breaker.state)
        time.sleep(0.05)
    assert not done.is_set()  # still holding the spans
    assert "open" in states
    svc = JaegerService.start_new(tmp_path / "jaeger", otlp_port=port)
    try:
        th.join(60)
        assert done.is_set() and errors == []
        got = wait_for(svc, batch)
    finally:
        exp.close()
        svc.stop()
    assert set(got) == set(batch.column("SpanId").to_pylist())
    assert counter("otelwax_sent_total", comp) == batch.num_rows
    assert counter("otelwax_failed_total", comp) == 0
    assert exp.breaker.state == "closed"


def test_bad_rows_are_isolated_raised_or_dropped(jaeger):
    def with_bad_row(seed: int) -> pa.RecordBatch:
        b = spans_batch(seed, 1).slice(0, 30)
        ids = b.column("SpanId").to_pylist()
        ids[25] = "zz"
        return b.set_column(2, "SpanId", pa.array(ids, pa.string()))

    comp = component()
    bad = with_bad_row(300)
    c = cfg(jaeger.otlp_endpoint, max_spans_per_request=10, on_rejected="raise")
    with JaegerExporter(c, component=comp) as exp:
        with pytest.raises(JaegerExportError, match=r"span at batch row 25: .*SpanId.*zz") as exc:
            exp.export(bad)
    # Rows before the bad one went out; the caller can resume at batch.slice(done_rows).
    assert exc.value.done_rows == 25
    assert len(wait_for(jaeger, bad.slice(0, 25))) == 25
    assert counter("otelwax_sent_total", comp) == 25
    assert counter("otelwax_failed_total", comp) == 5

    comp = component()
    bad = with_bad_row(301)
    c = cfg(jaeger.otlp_endpoint, max_spans_per_request=10)  # on_rejected="drop"
    with JaegerExporter(c, component=comp) as exp:
        exp.export(bad)
    good = pa.Table.from_batches([bad.slice(0, 25), bad.slice(26)]).combine_chunks()
    assert len(wait_for(jaeger, good.to_batches()[0])) == 29
    assert counter("otelwax_sent_total", comp) == 29
    assert counter("otelwax_dropped_total", comp, reason="unencodable") == 1


def test_wrong_endpoint_is_not_retried(jaeger):
    """Jaeger's query gRPC port speaks gRPC but not OTLP: UNIMPLEMENTED, raised at once."""
    comp = component()
    c = cfg(jaeger.query_grpc_endpoint, retry=RetryConfig(attempts=5, initial_backoff_s=1.0))
    with JaegerExporter(c, component=comp) as exp:
        t0 = time.monotonic()
        with pytest.raises(JaegerExportError, match="non-retryable error: UNIMPLEMENTED"):
            exp.export(spans_batch(400))
        assert time.monotonic() - t0 < 1.0
        assert exp.breaker.state == "closed"
        with pytest.raises(JaegerExportError, match="UNIMPLEMENTED"):
            exp.health_check(timeout_s=2)
    assert counter("otelwax_failed_total", comp) == 100


def test_health_check(jaeger):
    with JaegerExporter(cfg(jaeger.otlp_endpoint)) as exp:
        exp.health_check()
    with JaegerExporter(cfg(closed_endpoint())) as exp:
        with pytest.raises(JaegerUnavailableError, match="failed a health check"):
            exp.health_check(timeout_s=0.5)


def test_bytewax_sink_gzip_and_headers(jaeger):
    from connectors.clickhouse_sink import StoredRange

    comp = component()
    b1, b2 = spans_batch(500, 1), spans_batch(501, 1)
    items = [b1, StoredRange("otlp_spans", 0, 0, 9, b2, 10)]  # batches or flow ranges
    c = cfg(
        jaeger.otlp_endpoint,
        compression="gzip",
        headers={"x-tenant": "otelwax-test"},
        max_spans_per_request=64,
    )
    flow = Dataflow("jaeger_sink_test")
    op.output("jaeger", op.input("in", flow, TestingSource(items)), JaegerSink(c, component=comp))
    run_main(flow)
    both = pa.Table.from_batches([b1, b2]).combine_chunks().to_batches()[0]
    got = wait_for(jaeger, both)
    assert set(got) == set(both.column("SpanId").to_pylist())
    assert counter("otelwax_sent_total", comp) == 200


# --- through the traces flow (Kafka → flow process → operators → Jaeger + ClickHouse) --------


@pytest.mark.parametrize("hook", ["operator", "sink"])
def test_trace_flow_exports_to_jaeger(jaeger, request, hook):
    """Spans produced to Kafka come out of Jaeger equal to the rows the flow stored, after the
    flow's operators ran. ``operator``: the ``jaeger_tee`` user operator (works with any flow
    today); ``sink``: the flow's own ``jaeger:`` sink setting, once flows.traces has it."""
    from flows.settings import TracesFlowSettings

    if hook == "sink" and "jaeger" not in TracesFlowSettings.model_fields:
        pytest.skip("flows.traces has no `jaeger:` sink setting yet")
    make_run = request.getfixturevalue("flow_run")  # from tests/flows/conftest.py
    jcfg = {"endpoint": jaeger.otlp_endpoint, "max_spans_per_request": 50}
    ops: list[dict] = [{"type": "filter", "drop": "SpanAttributes['http.route'] in ['/healthz']"}]
    if hook == "operator":
        ops.append({"module": "connectors.otlp_export:jaeger_tee", "factory": True, "config": jcfg})
        run = make_run(partitions=2, operators=ops)
    else:
        run = make_run(partitions=2, operators=ops, jaeger={"enabled": True, **jcfg})
    seed = 600 if hook == "operator" else 601
    payloads = trace_payloads(
        12, seed=seed, n_resources=2, spans_per_resource=10, events_per_span=1, links_per_span=1
    )
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()

    batch = decode_traces(payloads).batch
    route = pc.map_lookup(batch.column("SpanAttributes"), "http.route", "first")
    batch = batch.filter(pc.fill_null(pc.not_equal(route, "/healthz"), True))
    assert 120 < batch.num_rows < 240
    got = wait_for(jaeger, batch)
    want = expected_rows(batch)
    assert set(got) == set(want)
    for span_id, row in want.items():
        assert got[span_id] == row, span_id
    # The ClickHouse sink stored the same spans.
    path = run.settings["clickhouse"]["path"]
    stored = {r[0] for r in chdb_rows(path, "SELECT SpanId FROM otel.otel_traces")}
    assert stored == set(want)


def test_sdk_trace_through_the_whole_pipeline_reaches_jaeger(jaeger, request, make_topic, tmp_path):
    """OTel SDK → ingest shim (gRPC) → Kafka → flows.traces (filter, jaeger_tee) → Jaeger: the
    trace comes back with its spans, parents, attributes (as strings), events and status."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from tests.connectors.ingest.conftest import start_shim

    make_run = request.getfixturevalue("flow_run")
    ops = [
        {"type": "filter", "drop": "SpanName == 'GET /healthz'"},
        {
            "module": "connectors.otlp_export:jaeger_tee",
            "factory": True,
            "config": {"endpoint": jaeger.otlp_endpoint},
        },
    ]
    run = make_run(partitions=2, operators=ops)
    topics = {"traces": run.topic, "metrics": make_topic("m"), "logs": make_topic("l")}
    shim = start_shim(run.bootstrap, topics, tmp_path)
    service = f"checkout-{next(_seq)}-{time.time_ns()}"
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=shim.grpc_target, insecure=True))
        )
        tracer = provider.get_tracer("shop.checkout", "2.1.0")
        with tracer.start_as_current_span(
            "POST /api/checkout",
            kind=SpanKind.SERVER,
            attributes={"http.route": "/api/checkout", "app.items": 3},
        ) as root:
            with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as charge:
                charge.add_event("retry", {"attempt": 1})
                charge.set_status(Status(StatusCode.ERROR, "card declined"))
            with tracer.start_as_current_span("GET /healthz"):
                pass  # dropped by the flow's filter
        trace_id = format(root.get_span_context().trace_id, "032x")
        root_id = format(root.get_span_context().span_id, "016x")
        charge_id = format(charge.get_span_context().span_id, "016x")
        provider.shutdown()
    finally:
        assert shim.stop() == 0, shim.log()
    run.run_to_end()

    found = jaeger.wait_spans({trace_id}, 2)
    trace = found[trace_id]
    spans = {s["spanID"]: s for s in trace["spans"]}
    assert set(spans) == {root_id, charge_id}  # the health check span was filtered out
    assert trace["processes"][spans[root_id]["processID"]]["serviceName"] == service
    assert spans[root_id]["operationName"] == "POST /api/checkout"
    assert spans[root_id]["references"] == []
    assert spans[charge_id]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": root_id}
    ]
    root_tags = {t["key"]: t["value"] for t in spans[root_id]["tags"]}
    assert root_tags["http.route"] == "/api/checkout"
    assert root_tags["app.items"] == "3"  # typed values come back as strings (documented)
    assert root_tags["span.kind"] == "server"
    assert root_tags["otel.scope.name"] == "shop.checkout"
    charge_tags = {t["key"]: t["value"] for t in spans[charge_id]["tags"]}
    assert charge_tags["span.kind"] == "client"
    assert charge_tags["error"] is True
    assert charge_tags["otel.status_code"] == "ERROR"
    assert charge_tags["otel.status_description"] == "card declined"
    (log,) = spans[charge_id]["logs"]
    assert {f["key"]: f["value"] for f in log["fields"]} == {"event": "retry", "attempt": "1"}


def test_tls_with_a_private_ca(tmp_path):
    files = make_tls_files(tmp_path / "tls", "jaeger.otelwax.test")
    svc = JaegerService.start_new(tmp_path / "jaeger", tls=(files["cert"], files["key"]))
    try:
        batch = spans_batch(700, 1)
        tls = {"ca_file": str(files["ca"]), "server_name_override": "jaeger.otelwax.test"}
        with JaegerExporter(cfg(svc.otlp_endpoint, insecure=False, tls=tls)) as exp:
            exp.export(batch)
        assert len(wait_for(svc, batch)) == batch.num_rows
        # Not trusting the CA, or speaking plaintext to a TLS port: unavailable, not sent.
        for bad in ({"insecure": False}, {"insecure": True}):
            c = cfg(svc.otlp_endpoint, when_unavailable="raise", timeout_s=2, **bad)
            with JaegerExporter(c) as exp, pytest.raises(JaegerUnavailableError):
                exp.export(spans_batch(701, 1))
    finally:
        svc.stop()


def test_trace_flow_waits_for_jaeger_and_loses_nothing(request, tmp_path):
    """Jaeger down when the flow starts: the flow holds its batches (retrying, breaker open),
    Jaeger comes up, every span arrives in Jaeger and in ClickHouse; the flow exits cleanly."""
    make_run = request.getfixturevalue("flow_run")
    port = free_port()
    jcfg = {
        "endpoint": f"127.0.0.1:{port}",
        "retry": {"attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.2},
        "breaker": {"failure_threshold": 2, "open_seconds": 0.5},
    }
    ops = [{"module": "connectors.otlp_export:jaeger_tee", "factory": True, "config": jcfg}]
    run = make_run(partitions=2, operators=ops)
    payloads = trace_payloads(8, seed=800, n_resources=2, spans_per_resource=10)
    produce(run.bootstrap, run.topic, payloads)
    run.write_config(source__stop_at_end=True)
    proc = run.start()
    deadline = time.monotonic() + 60  # the flow has met the outage (a loaded machine starts slowly)
    while "unavailable" not in run.log_text() and time.monotonic() < deadline:
        assert proc.poll() is None, run.log_text()  # blocked on Jaeger, not crashed
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, run.log_text()
    svc = JaegerService.start_new(tmp_path / "jaeger", otlp_port=port)
    try:
        assert run.wait(proc, 120) == 0, run.log_text()
        batch = decode_traces(payloads).batch
        got = wait_for(svc, batch)
    finally:
        svc.stop()
    assert set(got) == set(batch.column("SpanId").to_pylist())
    path = run.settings["clickhouse"]["path"]
    (n,) = chdb_rows(path, "SELECT count() FROM otel.otel_traces")[0]
    assert n == batch.num_rows
    assert "unavailable" in run.log_text()  # the outage was logged
