"""flows.traces end to end: Kafka → flow process → embedded ClickHouse (chdb)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from connectors.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_TOPIC
from connectors.kafka_source_config import KafkaSourceConfig, prefetch_conf
from tests import otlpgen
from tests.conftest import free_port
from tests.flows.conftest import (
    chdb_rows,
    consume_all,
    produce,
    scrape_metrics,
    shim_producer_conf,
)

SMALL = {"n_resources": 2, "spans_per_resource": 10}  # 20 spans per request


def _expected(payloads: list[bytes]) -> dict[str, tuple]:
    """SpanId → fields computed from the protobuf itself (independent of the decoder)."""
    out = {}
    for raw in payloads:
        req = ExportTraceServiceRequest.FromString(raw)
        for rs in req.resource_spans:
            svc = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {
                        a.key: a.value.string_value
                        for a in s.attributes
                        if a.value.WhichOneof("value") == "string_value"
                    }
                    out[s.span_id.hex()] = (
                        s.trace_id.hex(),
                        s.name,
                        Span.SpanKind.Name(s.kind),
                        svc,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano - s.start_time_unix_nano,
                        Status.StatusCode.Name(s.status.code),
                        attrs,
                        [e.name for e in s.events],
                        ss.scope.name,
                    )
    return out


def test_every_span_stored_once_with_equal_fields(flow_run) -> None:
    run = flow_run(partitions=3)
    payloads = otlpgen.trace_payloads(60, seed=11, **SMALL)
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()

    path = run.settings["clickhouse"]["path"]
    rows = chdb_rows(
        path,
        "SELECT SpanId, TraceId, SpanName, SpanKind, ServiceName, toUnixTimestamp64Nano(Timestamp),"
        " Duration, StatusCode, SpanAttributes, Events.Name, ScopeName FROM otel.otel_traces",
    )
    expected = _expected(payloads)
    assert len(rows) == len(expected) == 60 * 20
    got = {}
    for r in rows:
        assert r[0] not in got, f"span {r[0]} stored twice"
        attrs = dict(r[8])
        got[r[0]] = (*r[1:8], {k: attrs.get(k) for k in expected[r[0]][7]}, list(r[9]), r[10])
    assert got == expected
    # Every range was recorded as an intent before its insert.
    (n_intents,) = chdb_rows(path, "SELECT count() FROM otel.otelwax_intents")[0]
    assert n_intents >= 3


def test_an_lz4_record_batch_bigger_than_a_fetch_is_stored_with_the_rest(flow_run) -> None:
    """A partition's fetch is an eighth of source.prefetch_bytes (512 KiB of compressed
    records by default) while the shim writes lz4 record batches of up to 1 MB. One that does
    not compress (100 spans carrying 850 KB of random bytes) is bigger than a fetch: the broker
    returns it whole, and every span before, in and after it is stored; the flow ends."""
    run = flow_run(partitions=1)
    req = otlpgen.trace_request(seed=41, n_resources=1, spans_per_resource=100)
    rng = random.Random(41)
    for span in req.resource_spans[0].scope_spans[0].spans:
        span.attributes.append(otlpgen.kv("blob", rng.randbytes(8_500)))
    big = req.SerializeToString()
    fetch = prefetch_conf(KafkaSourceConfig(topic="t").prefetch_bytes)
    # lz4 keeps random bytes as they are: the compressed batch is > 850 KB
    assert fetch["max.partition.fetch.bytes"] < 100 * 8_500 < len(big) < 1_000_000
    small = otlpgen.trace_payloads(40, seed=42, **SMALL)
    produce(
        run.bootstrap,
        run.topic,
        [*small[:20], big, *small[20:]],
        conf=shim_producer_conf(run.bootstrap),
    )
    run.run_to_end(timeout=90)

    path = run.settings["clickhouse"]["path"]
    rows = chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces")
    assert rows == [(40 * 20 + 100, 40 * 20 + 100)], run.log_text()


def test_poison_records_go_to_the_dlq_and_good_ones_are_stored(flow_run) -> None:
    run = flow_run(partitions=1)
    good = otlpgen.trace_payloads(30, seed=12, **SMALL)
    truncated = good[0][: len(good[0]) // 2]
    garbage = b"\xff\xfe not protobuf \x00\x01"
    values = [*good[:10], garbage, *good[10:20], truncated, *good[20:]]
    produce(run.bootstrap, run.topic, values, partition=0)
    run.run_to_end()

    path = run.settings["clickhouse"]["path"]
    (n, uniq) = chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces")[0]
    assert n == uniq == 30 * 20
    dead = consume_all(run.bootstrap, run.settings["dead_letters"]["topic"])
    by_offset = {int(dict(m.headers())[H_OFFSET]): m for m in dead}
    assert set(by_offset) == {10, 21}
    assert by_offset[10].value() == garbage
    assert by_offset[21].value() == truncated
    for m in dead:
        h = dict(m.headers())
        assert h[H_TOPIC].decode() == run.topic
        assert h[H_PARTITION] == b"0"
        assert h[H_ERROR]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recovery", "workers"),
    [
        pytest.param(True, 1, marks=pytest.mark.extended),
        (False, 1),
        pytest.param(True, 2, marks=pytest.mark.extended),
    ],
    ids=["bytewax-recovery", "intents-only", "recovery-2-workers"],
)
def test_sigkill_at_random_moments_stores_every_span_exactly_once(
    flow_run, recovery: bool, workers: int
) -> None:
    """THE test: kill -9 the flow while it inserts, restart, repeat; count duplicates.

    Ranges are cut by time (0.15 s) from small polls, so where they end depends on timing, as
    in production; a replay must re-cut them from the intent log to get the same tokens.
    Without bytewax recovery the restart position comes from the intent log alone.
    """
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    run = flow_run(
        partitions=4,
        source={"batch": {"max_records": 1000, "max_delay_s": 0.15}, "poll_max_messages": 8},
    )
    if recovery:
        run.init_recovery(partitions=workers)
    n_requests = 1200
    payloads = otlpgen.trace_payloads(n_requests, seed=seed, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:800])

    def late_produce() -> None:  # more records arrive while the flow is being killed
        for i in range(800, n_requests, 50):
            time.sleep(0.5)
            produce(run.bootstrap, run.topic, payloads[i : i + 50])

    producer = threading.Thread(target=late_produce, daemon=True)
    producer.start()
    kills = run.kill_at_random_moments(
        rnd, 4, recovery=recovery, snapshot_s=1, extra=["-w", str(workers)]
    )
    producer.join(60)
    run.run_to_end(recovery=recovery, snapshot_s=1, timeout=180, extra=["-w", str(workers)])

    path = run.settings["clickhouse"]["path"]
    n, uniq = chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces")[0]
    sent = n_requests * 20
    replays = run.log_text(10**9).count("to re-cut") - run.log_text(10**9).count(" 0 recorded")
    assert (n, uniq) == (sent, sent), f"seed={seed} kills={kills} replays={replays}"
    assert kills >= 3


def test_configured_operators_run_between_decode_and_clickhouse(flow_run) -> None:
    run = flow_run(
        partitions=1, operators=[{"type": "filter", "drop": "SpanKind == 'SPAN_KIND_SERVER'"}]
    )
    payloads = otlpgen.trace_payloads(20, seed=13, **SMALL)
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()
    expected = {k for k, v in _expected(payloads).items() if v[2] != "SPAN_KIND_SERVER"}
    assert 0 < len(expected) < 20 * 20
    rows = chdb_rows(run.settings["clickhouse"]["path"], "SELECT SpanId FROM otel.otel_traces")
    assert sorted(r[0] for r in rows) == sorted(expected)


def test_worker_threads_share_one_chdb(flow_run) -> None:
    """``-w 3``: three bytewax workers in one process, one embedded ClickHouse."""
    run = flow_run(partitions=4)
    produce(run.bootstrap, run.topic, otlpgen.trace_payloads(80, seed=14, **SMALL))
    run.run_to_end(extra=["-w", "3"])
    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces") == [
        (80 * 20, 80 * 20)
    ]
    assert run.log_text(10**9).count(": start at") == 4


def test_flow_serves_standard_counters_and_consumer_lag(flow_run) -> None:
    port = free_port()
    run = flow_run(partitions=2, metrics_port=port)
    good = otlpgen.trace_payloads(30, seed=15, **SMALL)
    produce(run.bootstrap, run.topic, [*good, b"\x00garbage"], partition=0)
    p = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
    want = 'otelwax_sent_total{component="clickhouse_sink",unit="rows"} 600.0'
    lag0 = f'otelwax_kafka_consumer_lag{{partition="0",topic="{run.topic}"}} 0.0'
    text = scrape_metrics(port, want, lag0)
    p.kill()
    assert want in text, text[-3000:]
    assert 'otelwax_received_total{component="kafka_source",unit="records"} 31.0' in text
    assert 'otelwax_failed_total{component="decode",unit="records"} 1.0' in text
    assert 'otelwax_sent_total{component="dlq",unit="records"} 1.0' in text
    assert lag0 in text
    # Rows per insert: every insert observed, their sum = the rows stored.
    assert 'otelwax_batch_size_sum{component="clickhouse_sink",unit="rows"} 600.0' in text


def test_user_module_and_redaction_inside_the_flow(flow_run) -> None:
    """A typical pipeline (filter + user module + transform + redact + head sampling) runs in
    the flow process; the stored rows prove it: no PII, no health checks, templated names,
    and head sampling kept or dropped whole traces."""
    from tests.operators.batches import PII_VALUES, pii_trace_payloads

    operators = [
        {"type": "filter", "drop": "SpanAttributes['http.route'] in ['/health', '/ready']"},
        {"module": "operators.example_user_ops:template_span_names", "config": {}},
        {"type": "transform", "actions": [{"action": "hash", "map": "SpanAttributes",
                                           "keys": ["user.email"]}]},
        {"type": "redact", "maps": ["SpanAttributes", "Events.Attributes"],
         "deny_keys": ["http.request.header.authorization"]},
        {"type": "probabilistic_sampler", "sampling_percentage": 50},
    ]  # fmt: skip
    run = flow_run(partitions=2, operators=operators)
    payloads = pii_trace_payloads(n_traces=40, spans_per_trace=5, seed=5)
    produce(run.bootstrap, run.topic, payloads)
    run.run_to_end()
    rows = chdb_rows(
        run.settings["clickhouse"]["path"],
        "SELECT TraceId, SpanName, toString(SpanAttributes), toString(`Events.Attributes`), "
        "StatusMessage FROM otel.otel_traces",
    )
    per_trace: dict[str, int] = {}
    for trace_id, name, *text in rows:
        per_trace[trace_id] = per_trace.get(trace_id, 0) + 1
        assert name.startswith("GET /api/orders/{id}"), name
        blob = " ".join(text)
        assert not any(v in blob for v in PII_VALUES), blob
        assert "/health" not in blob
    # about half of the 40 traces kept, each complete (5 spans, 4 for the even ones whose
    # health-check span was filtered)
    assert 8 <= len(per_trace) <= 32, len(per_trace)
    assert set(per_trace.values()) <= {4, 5}


def _recreate(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Delete ``topic`` and create it again (Kafka deletes asynchronously: retry the create)."""
    from connectors.kafka import create_topics, delete_topics

    delete_topics(bootstrap, [topic])
    deadline = time.monotonic() + timeout
    while True:
        try:
            if create_topics(bootstrap, [topic], partitions=partitions):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_a_recreated_topic_stops_the_flow_loudly_until_reset(flow_run) -> None:
    """The topic is deleted and created again with more records than before: the stored
    position belongs to the old topic, so starting from it would silently skip the first
    records of the new one. The flow must refuse to start, say why and how to go on."""
    run = flow_run(partitions=1)
    produce(run.bootstrap, run.topic, otlpgen.trace_payloads(10, seed=31, **SMALL))
    run.run_to_end()
    _recreate(run.bootstrap, run.topic, 1)
    reborn = otlpgen.trace_payloads(15, seed=32, **SMALL)
    produce(run.bootstrap, run.topic, reborn)
    run.write_config(source__stop_at_end=True)
    p = run.start()
    rc = run.wait(p, 60)
    log = run.log_text(10**9).split("--- ")[-1]
    assert rc != 0, log[-3000:]
    assert f"{run.topic}[0]" in log and "on_stale_position: reset" in log, log[-3000:]
    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, "SELECT count() FROM otel.otel_traces")[0][0] == 10 * 20

    run.write_config(source__on_stale_position="reset")
    run.run_to_end()
    n, uniq = chdb_rows(path, "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces")[0]
    assert (n, uniq) == (25 * 20, 25 * 20)


def test_two_flows_with_one_flow_name_each_store_everything(flow_run) -> None:
    """Two deployments named alike (``sink.flow``) write two tables from one topic: each
    stores every span (the other's intents must not count as its own)."""
    run = flow_run(partitions=1)
    payloads = otlpgen.trace_payloads(20, seed=33, **SMALL)
    run.write_config(clickhouse__traces_table="spans_a")
    for wave in (payloads[:10], payloads[10:]):  # two runs: two intent groups
        produce(run.bootstrap, run.topic, wave)
        run.run_to_end()
    run.write_config(clickhouse__traces_table="spans_b")
    run.run_to_end()
    path = run.settings["clickhouse"]["path"]
    for table in ("spans_a", "spans_b"):
        n, uniq = chdb_rows(path, f"SELECT count(), uniqExact(SpanId) FROM otel.{table}")[0]
        assert (n, uniq) == (20 * 20, 20 * 20), table
