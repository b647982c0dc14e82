"""flows.logs end to end: OTel SDK → ingest shim → Kafka → flow process → embedded chdb."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from connectors.dlq import H_ERROR, H_OFFSET, H_TOPIC
from tests import otlpgen
from tests.conftest import free_port
from tests.connectors.ingest.conftest import start_shim
from tests.flows.conftest import (
    FlowRun,
    chdb_rows,
    consume_all,
    flow_runs,
    produce,
    scrape_metrics,
)

SMALL = {"n_resources": 2, "logs_per_resource": 10}  # 20 log records per request


class LogsRun(FlowRun):
    """A ``flows.logs`` deployment under test (``module="flows.logs"``)."""

    @property
    def chdb(self) -> str:
        return self.settings["clickhouse"]["path"]


@pytest.fixture
def logs_run(tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]):
    """Factory: fresh logs + DLQ topics and a flows.logs config writing to embedded chdb."""
    yield from flow_runs(
        tmp_path,
        kafka_bootstrap,
        make_topic,
        prefix="logs",
        module="flows.logs",
        cls=LogsRun,
        partitions=2,
    )


def _as_string(v: Any) -> str:
    """An attribute value as the codec (and the clickhouseexporter) renders it."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _count(payloads: Sequence[bytes]) -> int:
    return sum(otlpgen.log_count(ExportLogsServiceRequest.FromString(p)) for p in payloads)


def test_sdk_logs_through_shim_and_flow_are_stored_once_and_equal(logs_run, tmp_path) -> None:
    run = logs_run(partitions=2)
    topics = {"traces": f"t_{uuid.uuid4().hex[:6]}", "metrics": "m_unused", "logs": run.topic}
    shim = start_shim(run.bootstrap, topics, tmp_path)
    resource = Resource.create({"service.name": "payments", "deployment.environment": "t"})
    try:
        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{shim.http_url}/v1/logs"))
        )
        logger = provider.get_logger("otelwax.test.logs", "3.1.4")
        tracer = TracerProvider(resource=resource).get_tracer("t")
        levels = [
            (SeverityNumber.DEBUG, "DEBUG"),
            (SeverityNumber.INFO, "INFO"),
            (SeverityNumber.WARN, "WARN"),
            (SeverityNumber.ERROR, "ERROR"),
        ]
        for i in range(120):
            sev, text = levels[i % 4]
            attrs = {"i": i, "user": f"u{i % 7}", "ok": i % 2 == 0, "ratio": i / 8}
            body = f"payment {i} handled — ünïcode {'!' * (i % 3)}"
            if i % 3 == 0:  # inside a span: trace and span ids are set from the context
                with tracer.start_as_current_span(f"op-{i}"):
                    logger.emit(
                        timestamp=time.time_ns() - 10**9,
                        severity_number=sev,
                        severity_text=text,
                        body=body,
                        attributes=attrs,
                    )
            else:
                logger.emit(
                    severity_number=sev,
                    severity_text=text,
                    body=body,
                    attributes=attrs,
                    event_name="payment.done" if i % 5 == 0 else None,
                )
        assert provider.force_flush(30_000)
        provider.shutdown()
    finally:
        assert shim.stop() == 0, shim.log()

    run.run_to_end()
    rows = chdb_rows(
        run.chdb,
        "SELECT LogAttributes['i'], Body, SeverityText, SeverityNumber, TraceId, SpanId, "
        "TraceFlags, ServiceName, ScopeName, ScopeVersion, toUnixTimestamp64Nano(Timestamp), "
        "LogAttributes, ResourceAttributes['deployment.environment'], EventName "
        "FROM otel.otel_logs",
    )
    records = memory.get_finished_logs()
    assert len(records) == 120
    assert len(rows) == len({r[0] for r in rows}) == 120, "every log record exactly once"
    got = {r[0]: r for r in rows}
    with_trace = 0
    for rec in records:
        lr = rec.log_record
        r = got[str(lr.attributes["i"])]
        assert r[1] == lr.body
        assert (r[2], r[3]) == (lr.severity_text, lr.severity_number.value)
        assert r[4] == (f"{lr.trace_id:032x}" if lr.trace_id else "")
        assert r[5] == (f"{lr.span_id:016x}" if lr.span_id else "")
        assert r[6] == int(lr.trace_flags or 0)
        with_trace += bool(lr.trace_id)
        assert (r[7], r[8], r[9]) == ("payments", "otelwax.test.logs", "3.1.4")
        # no timestamp given: the observed time is stored (clickhouseexporter does the same)
        assert r[10] == (lr.timestamp or lr.observed_timestamp)
        attrs = dict(r[11])
        assert attrs == {k: _as_string(v) for k, v in lr.attributes.items()}
        assert r[12] == "t"
        assert r[13] == (lr.event_name or "")
    assert with_trace == 40


def test_poison_records_go_to_the_dlq_and_good_ones_are_stored(logs_run) -> None:
    run = logs_run(partitions=1)
    good = otlpgen.logs_payloads(30, seed=21, **SMALL)
    garbage = b"\xff\xfe not protobuf \x00\x01"
    truncated = good[0][: len(good[0]) // 2]
    values = [*good[:10], garbage, *good[10:20], truncated, *good[20:]]
    produce(run.bootstrap, run.topic, values, partition=0)
    run.run_to_end()

    (n,) = chdb_rows(run.chdb, "SELECT count() FROM otel.otel_logs")[0]
    assert n == _count(good) == 30 * 20
    dead = consume_all(run.bootstrap, run.settings["dead_letters"]["topic"])
    by_offset = {int(dict(m.headers())[H_OFFSET]): m for m in dead}
    assert set(by_offset) == {10, 21}
    assert by_offset[10].value() == garbage
    assert by_offset[21].value() == truncated
    for m in dead:
        h = dict(m.headers())
        assert h[H_TOPIC].decode() == run.topic
        assert h[H_ERROR]
    (flow,) = chdb_rows(run.chdb, "SELECT DISTINCT flow FROM otel.otelwax_intents")[0]
    assert flow == "logs"


def test_redaction_and_severity_filter_show_in_the_stored_rows(logs_run) -> None:
    run = logs_run(
        partitions=1,
        operators=[
            {"type": "filter", "drop": "SeverityNumber < 9"},
            {"type": "redact", "name": "pii", "builtin": ["email", "credit_card"]},
        ],
    )
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(otlpgen.kv("service.name", "shop"))
    sl = rl.scope_logs.add()
    for i in range(40):
        rec = sl.log_records.add()
        rec.time_unix_nano = otlpgen.BASE_TIME_NS + i
        rec.severity_number = 5 if i % 4 == 0 else 9  # DEBUG or INFO
        rec.body.string_value = f"order {i} by jane.doe{i}@example.com card 4111 1111 1111 1111"
        rec.attributes.append(otlpgen.kv("contact", f"ops{i}@example.org"))
        rec.attributes.append(otlpgen.kv("i", str(i)))
    produce(run.bootstrap, run.topic, [req.SerializeToString()])
    run.run_to_end()

    rows = chdb_rows(
        run.chdb, "SELECT LogAttributes['i'], Body, LogAttributes['contact'] FROM otel.otel_logs"
    )
    assert sorted(int(r[0]) for r in rows) == [i for i in range(40) if i % 4]
    for i, body, contact in rows:
        assert body.startswith(f"order {i} by ") and "card" in body, body
        assert "@example" not in body and "4111" not in body, body
        assert "@" not in contact
    (leaks,) = chdb_rows(
        run.chdb,
        "SELECT count() FROM otel.otel_logs WHERE Body LIKE '%@example.com%' "
        "OR match(Body, '\\\\d{4} \\\\d{4}')",
    )[0]
    assert leaks == 0


@pytest.mark.extended  # make test-all; the soak smoke SIGKILLs flows.logs under load and reconciles
def test_restarts_replay_without_duplicating_rows(logs_run) -> None:
    """SIGKILL while records keep arriving, then a clean restart, then a restart over the same
    intents: every log record is stored exactly once."""
    run = logs_run(
        partitions=2,
        source={"batch": {"max_records": 500, "max_delay_s": 0.15}, "poll_max_messages": 8},
    )
    payloads = otlpgen.logs_payloads(300, seed=23, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:100])

    def late_produce() -> None:  # still producing when the flow is killed
        for i in range(100, 300, 20):
            time.sleep(0.3)
            produce(run.bootstrap, run.topic, payloads[i : i + 20])

    producer = threading.Thread(target=late_produce, daemon=True)
    p = run.start()
    producer.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ": start at" not in run.log_text(10**9):
        time.sleep(0.1)
    time.sleep(1.5)  # usually some ranges are stored by now (not required)
    assert p.poll() is None, run.log_text()
    p.kill()
    p.wait()
    (stored_before,) = chdb_rows(run.chdb, "SELECT count() FROM otel.otel_logs")[0]
    producer.join(30)
    run.run_to_end()
    run.run_to_end()  # nothing new: the stored marks say where each partition ends

    n, uniq = chdb_rows(
        run.chdb,
        "SELECT count(), uniqExact(Body, Timestamp, LogAttributes, ServiceName) "
        "FROM otel.otel_logs",
    )[0]
    sent = _count(payloads)
    assert sent == 300 * 20
    assert stored_before < sent  # killed while records were still arriving
    assert n == sent, f"{n - sent} duplicated rows (stored before the kill: {stored_before})"
    assert uniq <= n
    # the last restart read nothing again: every range was marked stored
    last = run.logs[-1].read_text()
    assert last.count(" 0 recorded range(s) to re-cut") == 2, last


def test_flow_serves_standard_counters(logs_run) -> None:
    port = free_port()
    run = logs_run(partitions=1, metrics_port=port)
    good = otlpgen.logs_payloads(10, seed=24, **SMALL)
    produce(run.bootstrap, run.topic, [*good, b"\x00garbage"], partition=0)
    p = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
    want = 'otelwax_sent_total{component="clickhouse_sink",unit="rows"} 200.0'
    text = scrape_metrics(port, want)
    p.kill()
    assert want in text, text[-3000:]
    assert 'otelwax_received_total{component="kafka_source",unit="records"} 11.0' in text
    assert 'otelwax_sent_total{component="decode",unit="logs"} 200.0' in text
    assert 'otelwax_failed_total{component="decode",unit="records"} 1.0' in text
    assert 'otelwax_sent_total{component="dlq",unit="records"} 1.0' in text


# --- settings (no I/O) ------------------------------------------------------------------------


def test_logs_settings_defaults_and_sources(tmp_path: Path) -> None:
    from flows.logs import load_settings

    s = load_settings(env={})
    assert (s.source.topic, s.sink.flow, s.sink.dedup) == ("otlp_logs", "logs", "token")
    assert s.clickhouse.logs_table == "otel_logs" and s.clickhouse.create_schema
    assert s.metrics_port == 9466 and s.dead_letters.topic == "otlp_dlq"
    f = tmp_path / "otelwax.yaml"
    f.write_text(
        "kafka: {bootstrap_servers: 'shared:9092'}\n"
        "flows:\n"
        "  traces: {source: {topic: spans_x}}\n"
        "  logs:\n"
        "    source: {batch: {max_records: 7}}\n"
        "    operators: [{type: filter, drop: 'SeverityNumber < 9'}]\n"
    )
    env = {
        "OTELWAX_LOGS__source__batch__max_delay_s": "0.5",
        "OTELWAX_TRACES__source__topic": "not_for_logs",
    }
    s = load_settings(str(f), env=env, source__stop_at_end=True)
    assert s.kafka.bootstrap_servers == "shared:9092"
    assert s.source.topic == "otlp_logs"  # a partial source section keeps the logs topic
    assert (s.source.batch.max_records, s.source.batch.max_delay_s) == (7, 0.5)
    assert s.source.stop_at_end and s.operators[0]["type"] == "filter"
    # ``topic:`` is a shorthand for ``source.topic`` (as in docker/config/otelwax.yaml)
    f.write_text("topic: logs_a\nsink: {intents_table: my_intents}\n")
    s = load_settings(str(f), env={})
    assert (s.source.topic, s.sink.flow, s.sink.intents_table) == ("logs_a", "logs", "my_intents")


def test_logs_settings_errors_name_their_keys(tmp_path: Path) -> None:
    from flows.logs import load_settings

    f = tmp_path / "bad.yaml"
    f.write_text("sink: {dedup: lookup}\nsource: {btach: {}}\n")
    with pytest.raises(ValueError) as err:
        load_settings(str(f), env={})
    assert "sink.dedup" in str(err.value) and "source.btach: unknown key" in str(err.value)
    from otelwax.cli.config import ConfigError, load_config

    f.write_text("flows:\n  logs: {sourse: {}}\n")
    with pytest.raises(ConfigError, match=r"flows\.logs\.sourse: unknown key"):
        load_config(f, env={})


def test_operators_are_checked_against_the_logs_schema() -> None:
    from flows.logs import build

    with pytest.raises(ValueError, match=r"operators\.0\.type: tail_sampling works on traces"):
        build(None, operators=[{"type": "tail_sampling"}])
    with pytest.raises(Exception, match="SpanName"):
        build(None, operators=[{"type": "filter", "drop": "SpanName == 'x'"}])
    build(None, operators=[{"type": "filter", "drop": "SeverityNumber < 9"}])  # no I/O


def test_logs_into_a_clickhouse_server_legacy_layout_replay_is_skipped(
    logs_run, clickhouse_server
) -> None:
    """ClickHouse 18.16 (no insert tokens): the legacy table's InsertToken column deduplicates."""
    from connectors.clickhouse import open_client
    from tests.connectors.conftest import server_config

    db = f"l_{uuid.uuid4().hex[:8]}"
    srv = clickhouse_server
    run = logs_run(
        partitions=2,
        clickhouse={
            "mode": "server",
            "host": srv.host,
            "port": srv.port,
            "http_port": srv.http_port,
            "database": db,
            "create_schema": True,
        },
    )
    payloads = otlpgen.logs_payloads(40, seed=25, **SMALL)
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()
    run.run_to_end()  # replays the latest intent group with the same tokens
    client = open_client(server_config(srv, db))
    try:
        ((n,),) = client.execute(f"SELECT count() FROM {db}.otel_logs")
        bodies = client.execute(
            f"SELECT Body, SeverityText, ServiceName FROM {db}.otel_logs ORDER BY TimestampNs"
        )
        client.execute(f"DROP DATABASE IF EXISTS {db}")
    finally:
        client.close()
    assert n == _count(payloads) == 40 * 20
    expected = set()
    for raw in payloads:
        for rl in ExportLogsServiceRequest.FromString(raw).resource_logs:
            svc = next(
                a.value.string_value for a in rl.resource.attributes if a.key == "service.name"
            )
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    expected.add((r.body.string_value, r.severity_text, svc))
    assert set(bodies) == expected
