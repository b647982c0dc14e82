"""flows.traces into a replicated ClickHouse table: ZooKeeper (Maven Central jars) and two
Debian 18.16 servers forming cluster ``otelwax`` (one shard, replicas ``a`` and ``b``), tables
created ON CLUSTER with ReplicatedMergeTree. A flow killed mid-run while writing through one
replica and restarted against the other stores every span exactly once, on both replicas."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import otlpgen
from tests.conftest import ROOT, free_port
from tests.connectors.conftest import ServerAddr, server_config
from tests.flows.conftest import FlowRun, produce
from tests.flows.test_traces_server import _server_settings

SMALL = {"n_resources": 2, "spans_per_resource": 10}
ZK_SCRIPT = ROOT / "scripts" / "services" / "zookeeper.sh"
CH_SCRIPT = ROOT / "scripts" / "services" / "clickhouse.sh"


@dataclass
class Cluster:
    zk_env: dict[str, str]
    a: ServerAddr
    b: ServerAddr


def _run(script: object, action: str, env: dict[str, str]) -> None:
    res = subprocess.run([str(script), action], env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{script} {action}: {res.stdout}{res.stderr}"


@pytest.fixture(scope="module")
def ch_cluster() -> Iterator[Cluster]:
    """ZooKeeper and two replicas on free ports, with their own data (wiped at the end)."""
    data = ROOT / ".data" / f"cluster-{uuid.uuid4().hex[:6]}"
    zk_env = dict(os.environ, ZK_PORT=str(free_port()), ZK_DATA=str(data / "zk"))
    ports = {r: (free_port(), free_port(), free_port()) for r in ("a", "b")}
    servers = {}
    for r, (tcp, http, inter) in ports.items():
        env = dict(
            os.environ,
            CH_TCP_PORT=str(tcp),
            CH_HTTP_PORT=str(http),
            CH_DATA=str(data / r),
            CH_ZK_PORT=zk_env["ZK_PORT"],
            CH_CLUSTER="otelwax",
            CH_CLUSTER_PORTS=",".join(str(p[0]) for p in ports.values()),
            CH_REPLICA=r,
            CH_INTERSERVER_PORT=str(inter),
            CH_LOG_LEVEL="information",  # a SIGTERM shows as "Received termination signal"
        )
        servers[r] = ServerAddr("127.0.0.1", tcp, http, env)
    try:
        _run(ZK_SCRIPT, "start", zk_env)
        for srv in servers.values():
            _run(CH_SCRIPT, "start", srv.env)
        for srv in servers.values():
            _wait_ddl_queue(srv)
        yield Cluster(zk_env, servers["a"], servers["b"])
        _assert_alive(servers)
    finally:
        for srv in servers.values():
            _run(CH_SCRIPT, "wipe", srv.env)
        _run(ZK_SCRIPT, "wipe", zk_env)
        subprocess.run(["rm", "-rf", str(data)], check=False)


def _wait_ddl_queue(srv: ServerAddr, timeout: float = 60.0) -> None:
    """Wait until the replica reads the distributed DDL queue in ZooKeeper: its session is up,
    and a DDL worker has created the queue. 18.16 dereferences its DDL worker's session when
    it enqueues an ON CLUSTER query, so one sent earlier crashes the server (SIGSEGV)."""
    sql = "SELECT count() FROM system.zookeeper WHERE path = '/clickhouse/task_queue/ddl'"
    deadline = time.monotonic() + timeout
    while True:
        try:
            _rows(srv, sql)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _assert_alive(servers: dict[str, ServerAddr]) -> None:
    """A replica that died during the module fails its teardown with the end of its logs (a
    crash of 18.16 shows as ``Received signal`` there), before the wipe removes them."""
    dead = {}
    for name, srv in servers.items():
        res = subprocess.run(
            [str(CH_SCRIPT), "status"], env=srv.env, capture_output=True, text=True
        )
        if res.returncode != 0:
            logs = Path(srv.env["CH_DATA"]) / "log"
            tails = [
                f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-40:])
                for f in sorted(logs.glob("*.log"))
            ]
            dead[name] = res.stdout.strip() + "\n" + "\n".join(tails)
    assert not dead, "replicas died during the module: " + "\n".join(
        f"{n} (:{servers[n].port}): {text}" for n, text in dead.items()
    )


def _rows(srv: ServerAddr, sql: str) -> list[tuple]:
    from connectors.clickhouse import open_client

    client = open_client(server_config(srv, "default"))
    try:
        return client.execute(sql)
    finally:
        client.close()


def _count(srv: ServerAddr, db: str) -> int:
    try:
        return int(_rows(srv, f"SELECT count() FROM {db}.otel_traces")[0][0])
    except Exception:
        return 0  # not created yet


def _settings(srv: ServerAddr, db: str) -> dict:
    # A window of one block: ZooKeeper's block hashes cannot hide a replay, so the spans are
    # stored once only if the restarted flow sees the intents and marks written through the
    # other replica (and the InsertToken rows, 18.16 having no insert tokens).
    replicated = {
        "cluster_name": "otelwax",
        "table_engine": {"name": "ReplicatedMergeTree"},
        "tables": {"dedup_window": 1},
    }
    return {**_server_settings(srv, db), **replicated, "timeout_s": 20.0}


def _kill_when(
    run: FlowRun, p: subprocess.Popen[bytes], reached: Callable[[], bool], timeout: float = 90.0
) -> None:
    """SIGKILL the running flow ``p`` once ``reached()``; fails if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None and not reached():
        time.sleep(0.1)
    assert p.poll() is None, f"the flow ended before it was killed:\n{run.log_text()}"
    p.kill()
    p.wait()


@pytest.mark.slow
@pytest.mark.extended
def test_flow_killed_on_one_replica_resumed_on_the_other_stores_each_span_once(
    flow_run, ch_cluster: Cluster
) -> None:
    db = f"rc_{uuid.uuid4().hex[:8]}"
    a, b = ch_cluster.a, ch_cluster.b
    run = flow_run(
        partitions=2,
        source={"batch": {"max_records": 1000, "max_delay_s": 0.15}, "poll_max_messages": 8},
        clickhouse=_settings(a, db),
    )
    n_requests = 400
    payloads = otlpgen.trace_payloads(n_requests, seed=31, **SMALL)
    produce(run.bootstrap, run.topic, payloads[:100])
    sent = n_requests * 20

    def late_produce() -> None:  # records keep arriving: ranges are cut by time, not size
        for i in range(100, n_requests, 10):
            time.sleep(0.6)
            produce(run.bootstrap, run.topic, payloads[i : i + 10])

    producer = threading.Thread(target=late_produce, daemon=True)
    producer.start()
    run.write_config(source__stop_at_end=False)
    p = run.start()  # through replica a: killed once some ranges are stored
    _kill_when(run, p, lambda: _count(a, db) > 0)
    stored_a = _count(a, db)

    run.write_config(clickhouse=_settings(b, db))  # the same flow, now through replica b
    p = run.start()
    _kill_when(run, p, lambda: _count(b, db) > stored_a)
    assert producer.is_alive(), "every record arrived before the second kill: nothing to test"
    producer.join(60)

    run.write_config(clickhouse=_settings(a, db))  # and back through a, to the end
    run.run_to_end(timeout=120)

    log = run.log_text(10**9)
    for srv in (a, b):
        for table in ("otel_traces", "otel_traces_by_trace"):  # the server's trace copy too
            _rows(srv, f"SYSTEM SYNC REPLICA {db}.{table}")
            got = _rows(srv, f"SELECT count(), uniqExact(SpanId) FROM {db}.{table}")[0]
            assert tuple(got) == (sent, sent), f"replica {srv.port}, {table}: {got}\n{log[-4000:]}"
    engines = _rows(a, f"SELECT name, engine FROM system.tables WHERE database = '{db}'")
    assert dict(engines) == {
        "otel_traces": "ReplicatedMergeTree",
        "otel_traces_by_trace": "ReplicatedMergeTree",
        "otel_traces_by_trace_mv": "MaterializedView",
        "otelwax_intents": "ReplicatedMergeTree",
    }, engines
    _rows(a, f"DROP DATABASE IF EXISTS {db} ON CLUSTER otelwax")


def test_tables_created_on_cluster_exist_on_both_replicas_with_their_window(
    ch_cluster: Cluster,
) -> None:
    """`otelwax clickhouse init`'s DDL, run through one replica, creates the tables on both,
    replicated, with the deduplication window and a Distributed table over them."""
    from connectors.clickhouse import open_client
    from connectors.clickhouse_schema import create_schema

    db = f"rd_{uuid.uuid4().hex[:8]}"
    cfg = server_config(
        ch_cluster.a,
        db,
        cluster_name="otelwax",
        table_engine={"name": "ReplicatedMergeTree"},
        tables={"distributed": True},
    )
    client = open_client(cfg)
    try:
        create_schema(client, db, "otel_traces", "otel_logs", cfg.tables)
    finally:
        client.close()
    q = f"SELECT name, engine, engine_full FROM system.tables WHERE database = '{db}' ORDER BY name"
    for srv in (ch_cluster.a, ch_cluster.b):
        rows = _rows(srv, q)
        assert [(n, e) for n, e, _ in rows] == [
            ("otel_logs", "ReplicatedMergeTree"),
            ("otel_logs_dist", "Distributed"),
            ("otel_traces", "ReplicatedMergeTree"),
            ("otel_traces_dist", "Distributed"),
        ], rows
        assert all("replicated_deduplication_window = 1000" in f for n, _, f in rows
                   if not n.endswith("_dist")), rows  # fmt: skip
    _rows(ch_cluster.a, f"DROP DATABASE IF EXISTS {db} ON CLUSTER otelwax")


def test_range_partly_stored_through_one_replica_is_completed_through_the_other(
    ch_cluster: Cluster,
) -> None:
    """18.16 has no insert tokens: a range found partly stored (the flow died between the
    per-partition parts of one insert) is inserted again. On a Replicated table that must not
    DELETE the stored part first: the replica would skip re-inserting it (its block hash is in
    ZooKeeper) and its rows would be gone. The trace-ordered copy a server gets by default
    (filled by a view from each insert) ends with each span once too."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from connectors.clickhouse import open_client
    from connectors.clickhouse_schema import create_schema
    from otelwax.codec.pydecode import decode_traces

    db = f"rp_{uuid.uuid4().hex[:8]}"
    kw = {"cluster_name": "otelwax", "table_engine": {"name": "ReplicatedMergeTree"}}
    batch = decode_traces(otlpgen.trace_payloads(2, seed=32)).batch  # 200 spans
    ts = batch.column("Timestamp")
    two_days = pa.array([2 * 86400 * 10**9 if i >= 100 else 0 for i in range(len(batch))])
    earlier = pc.subtract(ts.cast(pa.int64()), two_days).cast(ts.type)
    batch = batch.set_column(batch.schema.get_field_index("Timestamp"), "Timestamp", earlier)
    a = open_client(server_config(ch_cluster.a, db, **kw))
    b = open_client(server_config(ch_cluster.b, db, **kw))
    try:
        create_schema(a, db, "otel_traces", None, a.cfg.schema_options)
        a.insert_arrow("otel_traces", batch.slice(0, 100), dedup_token="p:3:0-1")  # one part
        assert b.insert_arrow("otel_traces", batch, dedup_token="p:3:0-1") == 200
        for srv in (ch_cluster.a, ch_cluster.b):
            _rows(srv, f"SYSTEM SYNC REPLICA {db}.otel_traces")
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and _rows(  # a DELETE would run in background
                    srv,
                    f"SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done",
                )[0][0]
            ):
                time.sleep(0.2)
            for table in ("otel_traces", "otel_traces_by_trace"):
                _rows(srv, f"SYSTEM SYNC REPLICA {db}.{table}")
                got = _rows(srv, f"SELECT count(), uniqExact(SpanId) FROM {db}.{table}")[0]
                assert tuple(got) == (200, 200), f"replica {srv.port}, {table}: {got}"
        assert b.insert_arrow("otel_traces", batch, dedup_token="p:3:0-1") == 0
    finally:
        a.close()
        b.close()
        _rows(ch_cluster.a, f"DROP DATABASE IF EXISTS {db} ON CLUSTER otelwax")


def test_migrate_adds_a_missing_column_on_every_replica(ch_cluster: Cluster) -> None:
    from connectors.clickhouse import open_client
    from connectors.clickhouse_migrate import apply_changes, plan_migration
    from connectors.clickhouse_schema import create_schema

    db = f"rm_{uuid.uuid4().hex[:8]}"
    kw = {"cluster_name": "otelwax", "table_engine": {"name": "ReplicatedMergeTree"}}
    a = open_client(server_config(ch_cluster.a, db, **kw))
    try:
        create_schema(a, db, "otel_traces", None, a.cfg.tables)
        a.execute(f"ALTER TABLE {db}.otel_traces ON CLUSTER otelwax DROP COLUMN StatusMessage")
        changes = plan_migration(a, db, "otel_traces", "traces", a.cfg.tables)
        sqls = [c.sql for c in changes if c.sql]
        assert sqls == [
            f"ALTER TABLE `{db}`.`otel_traces` ON CLUSTER `otelwax` ADD COLUMN "
            "`StatusMessage` String"
        ], changes
        assert apply_changes(a, changes) == 1
        q = f"SELECT count() FROM system.columns WHERE database = '{db}' AND name = 'StatusMessage'"
        for srv in (ch_cluster.a, ch_cluster.b):
            assert _rows(srv, q) == [(1,)], srv.port
        leftover = _rows(ch_cluster.a, f"SELECT name FROM system.tables WHERE database = '{db}'")
        assert leftover == [("otel_traces",)]  # the scratch table is gone
    finally:
        a.close()
        _rows(ch_cluster.a, f"DROP DATABASE IF EXISTS {db} ON CLUSTER otelwax")


def test_init_on_cluster_with_zookeeper_down_fails_in_one_line_and_the_server_lives(
    tmp_path: Path,
) -> None:
    """`otelwax clickhouse init` with ``cluster_name`` against an 18.16 replica that cannot
    reach ZooKeeper: 18.16 crashes on an ON CLUSTER query then (its DDL worker has no
    session), so otelwax refuses to send one, says why in one line, and the server lives."""
    import sys

    import yaml

    tcp, http, inter = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        CH_TCP_PORT=str(tcp),
        CH_HTTP_PORT=str(http),
        CH_DATA=str(ROOT / ".data" / f"nozk-{uuid.uuid4().hex[:6]}"),
        CH_ZK_PORT=str(free_port()),  # nothing listens there
        CH_CLUSTER="otelwax",
        CH_CLUSTER_PORTS=str(tcp),
        CH_REPLICA="a",
        CH_INTERSERVER_PORT=str(inter),
    )
    conf = tmp_path / "otelwax.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "clickhouse": {
                    "mode": "server",
                    "port": tcp,
                    "http_port": http,
                    "database": "nozk",
                    "cluster_name": "otelwax",
                    "table_engine": {"name": "ReplicatedMergeTree"},
                }
            }
        )
    )
    try:
        _run(CH_SCRIPT, "start", env)
        init = [sys.executable, "-m", "otelwax", "clickhouse", "init", "--flow", "traces"]
        res = subprocess.run(
            [*init, "-c", str(conf)], capture_output=True, text=True, timeout=180, cwd=ROOT
        )
        assert res.returncode == 1, res.stdout + res.stderr
        err = [ln for ln in res.stderr.splitlines() if "error:" in ln]
        assert len(err) == 1 and "cannot reach ZooKeeper" in err[0], res.stderr
        assert "not sending ON CLUSTER DDL" in err[0], err
        status = subprocess.run([str(CH_SCRIPT), "status"], env=env, capture_output=True)
        assert status.returncode == 0, status.stdout
    finally:
        _run(CH_SCRIPT, "wipe", env)
