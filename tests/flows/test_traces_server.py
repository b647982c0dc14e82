"""flows.traces into a real ClickHouse server (Debian 18.16, legacy table layout)."""

from __future__ import annotations

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
