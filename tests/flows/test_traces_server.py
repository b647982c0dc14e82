"""flows.traces into a real ClickHouse server (Debian 18.16, legacy table layout)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests import otlpgen
from tests.conftest import ROOT, free_port
from tests.connectors.conftest import ServerAddr, _server, server_config
from tests.flows.conftest import produce

SMALL = {"n_resources": 2, "spans_per_resource": 10}


def _server_settings(srv: ServerAddr, database: str) -> dict:
    return {
        "mode": "server",
        "host": srv.host,
        "port": srv.port,
        "http_port": srv.http_port,
        "database": database,
        "create_schema": True,
        "retry": {"attempts": 2, "initial_backoff_s": 0.1, "max_backoff_s": 0.5},
        "breaker": {"failure_threshold": 3, "open_seconds": 2.0},
        "connect_timeout_s": 2.0,
        "timeout_s": 10.0,
    }


def _rows(srv: ServerAddr, database: str, sql: str) -> list[tuple]:
    from connectors.clickhouse import open_client

    client = open_client(server_config(srv, database))
    try:
        return client.execute(sql)
    finally:
        client.close()


@pytest.fixture
def flow_server() -> Iterator[ServerAddr]:
    """A private ClickHouse server this file may stop and start (own ports and data)."""
    srv = _server(free_port(), free_port(), ROOT / ".data" / "clickhouse-flow")
    srv.run("wipe")
    srv.run("start")
    yield srv
    srv.run("stop")


@pytest.mark.slow
@pytest.mark.extended  # make test-all; the soak smoke restarts this 18.16 server mid-stream too
def test_clickhouse_down_mid_stream_nothing_lost_nothing_duplicated(flow_run, flow_server) -> None:
    db = f"f_{uuid.uuid4().hex[:8]}"
    run = flow_run(partitions=2, clickhouse=_server_settings(flow_server, db))
    payloads = otlpgen.trace_payloads(300, seed=21, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:100])
    run.write_config(source__stop_at_end=False)
    p = run.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the first rows are stored
        try:
            if _rows(flow_server, db, f"SELECT count() FROM {db}.otel_traces")[0][0] > 0:
                break
        except Exception:
            pass
        time.sleep(0.5)
    flow_server.run("stop")
    produce(run.bootstrap, run.topic, payloads[100:])
    time.sleep(6)  # several retry rounds and an open breaker while the server is down
    assert p.poll() is None, f"flow died while ClickHouse was down:\n{run.log_text()}"
    flow_server.run("start")
    deadline = time.monotonic() + 90
    n = uniq = 0
    while time.monotonic() < deadline:
        n, uniq = _rows(
            flow_server, db, f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces"
        )[0]
        if n >= 300 * 20:
            break
        time.sleep(1)
    time.sleep(2)  # anything duplicated would arrive now
    n, uniq = _rows(flow_server, db, f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces")[0]
    p.kill()
    p.wait()
    log = run.log_text(10**9)
    assert (n, uniq) == (300 * 20, 300 * 20), log[-4000:]
    assert "circuit" in log or "retry" in log, "the outage was not noticed"


@pytest.mark.slow
def test_two_worker_processes_store_the_same_rows_as_one(flow_run, clickhouse_server) -> None:
    payloads = otlpgen.trace_payloads(120, seed=22, **SMALL)
    one_db, two_db = f"f1_{uuid.uuid4().hex[:8]}", f"f2_{uuid.uuid4().hex[:8]}"
    one = flow_run(partitions=4, clickhouse=_server_settings(clickhouse_server, one_db))
    produce(one.bootstrap, one.topic, payloads)
    one.run_to_end()

    two = flow_run(partitions=4, clickhouse=_server_settings(clickhouse_server, two_db))
    two.settings["source"]["topic"] = one.topic  # same records
    two.write_config(source__stop_at_end=True)
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [two.start(extra=["-a", addrs, "-i", str(i)]) for i in (0, 1)]
    for p in procs:
        assert two.wait(p, 120) == 0, two.log_text()
    # Each process owned some partitions.
    logs = two.log_text(10**9)
    assert logs.count(": start at") == 4

    q = "SELECT SpanId, TraceId, SpanName, SpanKind, Duration, StatusCode FROM {db}.otel_traces"
    rows1 = sorted(_rows(clickhouse_server, one_db, q.format(db=one_db)))
    rows2 = sorted(_rows(clickhouse_server, two_db, q.format(db=two_db)))
    assert len(rows1) == 120 * 20
    assert rows1 == rows2
    for db in (one_db, two_db):
        _rows(clickhouse_server, "default", f"DROP DATABASE IF EXISTS {db}")


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_every_span_once_in_the_trace_copy(
    flow_run, clickhouse_server
) -> None:
    """kill -9 the flow at random moments while it stores into 18.16 with the default schema,
    then run it to the end: the copy ordered by TraceId (written by a view from each insert)
    holds every span exactly once, like the table, and a trace looked up there is whole."""
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    db = f"fk_{uuid.uuid4().hex[:8]}"
    run = flow_run(
        partitions=2,
        clickhouse=_server_settings(clickhouse_server, db),
        source={"batch": {"max_records": 1000, "max_delay_s": 0.15}, "poll_max_messages": 8},
    )
    payloads = otlpgen.trace_payloads(400, seed=seed, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:250])

    def late_produce() -> None:  # records keep arriving while the flow is killed
        for i in range(250, 400, 50):
            time.sleep(0.7)
            produce(run.bootstrap, run.topic, payloads[i : i + 50])

    producer = threading.Thread(target=late_produce, daemon=True)
    producer.start()
    kills = run.kill_at_random_moments(rnd, 3, span=(1.5, 3.5), after=": start at")
    producer.join(60)
    run.run_to_end(timeout=180)
    sent = 400 * 20
    q = "SELECT count(), uniqExact(SpanId) FROM {}"
    try:
        for table in ("otel_traces", "otel_traces_by_trace"):
            got = _rows(clickhouse_server, db, q.format(f"{db}.{table}"))
            assert got == [(sent, sent)], f"{table}: seed={seed} kills={kills}"
        tid = _rows(clickhouse_server, db, f"SELECT any(TraceId) FROM {db}.otel_traces")[0][0]
        one = f"SELECT SpanId FROM {db}.{{}} WHERE TraceId = '{tid}' ORDER BY SpanId"
        copy, table = (
            _rows(clickhouse_server, db, one.format(t))
            for t in ("otel_traces_by_trace", "otel_traces")
        )
        assert copy == table and len(copy) >= 1
    finally:
        _rows(clickhouse_server, "default", f"DROP DATABASE IF EXISTS {db}")
    assert kills >= 2


def test_a_table_dropped_under_the_flow_stops_it_with_the_error(
    flow_run, clickhouse_server
) -> None:
    """A permanent insert error (the table is gone) must end the flow with a clear error,
    not leave it waiting: inserts run on a background thread and the source pauses when the
    sink falls behind, so the failure has to reach the source as well."""
    db = f"fd_{uuid.uuid4().hex[:8]}"
    run = flow_run(partitions=2, clickhouse=_server_settings(clickhouse_server, db))
    payloads = otlpgen.trace_payloads(200, seed=23, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:50])
    run.write_config(source__stop_at_end=False, source__batch__max_delay_s=0.2)
    p = run.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _rows(clickhouse_server, db, f"SELECT count() FROM {db}.otel_traces")[0][0]:
                break
        except Exception:
            pass
        time.sleep(0.3)
    _rows(clickhouse_server, db, f"DROP TABLE {db}.otel_traces")
    produce(run.bootstrap, run.topic, payloads[50:])
    rc = run.wait(p, 60)
    log = run.log_text(10**9)
    _rows(clickhouse_server, "default", f"DROP DATABASE IF EXISTS {db}")
    assert rc not in (0, None), log[-4000:]
    assert "otel_traces" in log and "no further batches are stored" in log, log[-4000:]
