"""connectors.clickhouse_sink against real chdb: overlapped inserts confirm ranges to the
source's RangeAcks only once stored, and a failing insert surfaces instead of vanishing."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_intents import dedup_window_problem
from connectors.clickhouse_schema import TRACES_SORT_KEY, TableOptions
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from connectors.kafka_source import RangeAcks
from otelwax.codec import decode_traces
from tests.connectors.conftest import server_config
from tests.otlpgen import trace_payloads


@pytest.fixture
def sink_for(chdb_client):
    """A sink on the per-test database of the process's chdb folder, tables created."""

    def make(acks: RangeAcks | None) -> ClickHouseSink:
        conn = ClickHouseConfig(
            mode="embedded",
            path=str(Path(chdb_client.cfg.path)),
            database=chdb_client.cfg.database,
            create_schema=True,
        )
        return ClickHouseSink(conn, ClickHouseSinkConfig(), acks=acks, sort_key=TRACES_SORT_KEY)

    yield make
    # Clients a test got with sink.client() outside a partition: close them, or the process's
    # chdb engine stays on this folder and later tests cannot open theirs.
    from connectors.clickhouse_sink import _ClientHolder

    with _ClientHolder._lock:
        left = list(_ClientHolder._clients.values())
        _ClientHolder._clients.clear()
        _ClientHolder._refs.clear()
    for c in left:
        c.close()


def _ranges(acks: RangeAcks, n: int) -> list[StoredRange]:
    out = []
    for i in range(n):
        batch = decode_traces(trace_payloads(3, seed=100 + i)).batch
        first, last = i * 10, i * 10 + 9
        acks.emitted("spans", 0, first, 1000)
        out.append(StoredRange("spans", 0, first, last, batch, 10))
    return out


def test_overlapped_inserts_store_every_row_and_confirm_in_order(sink_for, chdb_client) -> None:
    acks = RangeAcks()
    sink = sink_for(acks)
    part = sink.build("clickhouse", 0, 1)
    ranges = _ranges(acks, 4)
    want = sum(r.batch.num_rows for r in ranges)
    ids = {s for r in ranges for s in r.batch.column("SpanId").to_pylist()}
    part.write_batch(ranges[:2])
    part.write_batch(ranges[2:])
    part.close()  # waits for the queued inserts
    assert acks.oldest("spans", 0) is None and acks.inflight_bytes == 0
    rows = chdb_client.execute(f"SELECT SpanId FROM {chdb_client.cfg.database}.otel_traces")
    assert len(rows) == want and {r[0] for r in rows} == ids


def test_the_next_batch_waits_until_the_one_before_is_being_stored(sink_for, chdb_client) -> None:
    """The sink holds at most two batches (one being stored, one handed over): while an insert
    is stuck, the next write_batch does not return, so the worker decodes no third range."""
    import threading

    acks = RangeAcks()
    sink = sink_for(acks)
    part = sink.build("clickhouse", 0, 1)
    ranges = _ranges(acks, 2)
    engine = chdb_client._engine
    with engine.lock:  # the insert of the first batch waits here
        part.write_batch(ranges[:1])
        nxt = threading.Thread(target=part.write_batch, args=(ranges[1:],), daemon=True)
        nxt.start()
        nxt.join(1.0)
        assert nxt.is_alive(), "write_batch returned while the batch before was still queued"
    nxt.join(30)
    assert not nxt.is_alive()
    part.close()
    assert acks.oldest("spans", 0) is None
    n = chdb_client.execute(f"SELECT count() FROM {chdb_client.cfg.database}.otel_traces")[0][0]
    assert n == sum(r.batch.num_rows for r in ranges)


def test_a_stored_batch_is_not_held_while_the_writer_waits_for_the_next(
    sink_for, chdb_client
) -> None:
    """Once a batch is stored (and confirmed to the source, which then reads more), the
    writer does not keep its rows alive until the next batch arrives (a range of ~30 MiB)."""
    import gc
    import weakref

    acks = RangeAcks()
    part = sink_for(acks).build("clickhouse", 0, 1)
    ranges = _ranges(acks, 1)
    part.write_batch(ranges)
    sorted_rows = weakref.ref(ranges[0].batch)  # the presorted copy the writer inserts
    del ranges
    deadline = time.monotonic() + 30
    while acks.oldest("spans", 0) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert acks.oldest("spans", 0) is None, "not stored"
    for _ in range(100):  # the writer drops its references right after confirming
        gc.collect()
        if sorted_rows() is None:
            break
        time.sleep(0.01)
    assert sorted_rows() is None, "the stored rows are still held"
    part.close()


def test_a_failing_insert_is_raised_and_its_range_stays_unconfirmed(sink_for, chdb_client) -> None:
    acks = RangeAcks()
    sink = sink_for(acks)
    part = sink.build("clickhouse", 0, 1)
    ranges = _ranges(acks, 2)
    part.write_batch(ranges[:1])
    db = chdb_client.cfg.database
    chdb_client.execute(f"DROP TABLE {db}.otel_traces_trace_id_ts_mv")
    chdb_client.execute(f"DROP TABLE {db}.otel_traces")
    with pytest.raises(RuntimeError, match="otel_traces"):
        part.write_batch(ranges[1:])
        part.close()
    # The first range may have been stored before the drop; the second never was, so the
    # source's snapshot stays at or before it.
    oldest = acks.oldest("spans", 0)
    assert oldest is not None and oldest <= ranges[1].first
    assert acks.error is not None  # the sources stop too (tests/connectors/test_kafka_source.py)


@pytest.mark.parametrize("backend", ["chdb", "server"])
def test_a_quiet_partitions_old_range_is_not_stored_twice(
    backend: str, chdb_client, request
) -> None:
    """Partition 0 stores one range, then partition 1 makes more inserts than the table's
    dedup window remembers; replaying partition 0's range (a restart from an older snapshot)
    must not store its rows again, and the source must not even need to re-read it."""
    if backend == "chdb":
        conn = ClickHouseConfig(
            mode="embedded",
            path=chdb_client.cfg.path,
            database=chdb_client.cfg.database,
            create_schema=True,
            tables={"dedup_window": 3},
        )
        count = chdb_client.execute
    else:
        from connectors.clickhouse import open_client

        srv = request.getfixturevalue("clickhouse_server")
        db = f"t_{uuid.uuid4().hex[:10]}"
        conn = server_config(srv, db, create_schema=True, tables={"dedup_window": 3})
        client = open_client(conn.model_copy(update={"create_schema": False}))
        request.addfinalizer(client.close)
        request.addfinalizer(lambda: client.execute(f"DROP DATABASE IF EXISTS {db}"))
        count = client.execute
    sink = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
    quiet = StoredRange("spans", 0, 0, 9, decode_traces(trace_payloads(3, seed=7)).batch, 10)
    part = sink.build("clickhouse", 0, 1)
    part.write_batch([quiet])
    for i in range(6):  # twice the window: partition 0's token is forgotten
        batch = decode_traces(trace_payloads(2, seed=200 + i)).batch
        part.write_batch([StoredRange("spans", 1, i * 10, i * 10 + 9, batch, 10)])
    assert sink.intent_log(sink.client()).pending_from("spans", 0) == 10
    part.close()

    again = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
    part = again.build("clickhouse", 0, 1)
    replay = StoredRange("spans", 0, 0, 9, decode_traces(trace_payloads(3, seed=7)).batch, 10)
    replay.replay = True
    part.write_batch([replay])
    part.close()
    n, uniq = count(f"SELECT count(), uniqExact(SpanId) FROM {conn.database}.otel_traces")[0]
    want = quiet.batch.num_rows + 6 * decode_traces(trace_payloads(2, seed=0)).batch.num_rows
    assert (n, uniq) == (want, want)


def test_two_sinks_with_one_flow_name_keep_separate_intents(sink_for, chdb_client) -> None:
    """Intents are per target table: another table's ranges say nothing about this one."""
    conn = sink_for(None).connection
    a = ClickHouseSink(conn, ClickHouseSinkConfig(), table="spans_a", sort_key=TRACES_SORT_KEY)
    b = ClickHouseSink(conn, ClickHouseSinkConfig(), table="spans_b", sort_key=TRACES_SORT_KEY)
    part = a.build("clickhouse", 0, 1)
    part.write_batch([StoredRange("spans", 0, 0, 9, decode_traces(trace_payloads(2)).batch, 10)])
    part.close()
    assert a.intent_log(a.client()).pending_from("spans", 0) == 10
    assert b.intent_log(b.client()).pending_from("spans", 0) is None
    assert b.intent_log(b.client()).ranges_from("spans", 0, 0) == []


def test_a_table_without_dedup_window_is_refused_at_start(sink_for, chdb_client) -> None:
    conn = sink_for(None).connection.model_copy(
        update={"tables": TableOptions(dedup_window=0)}
    )
    sink = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
    with pytest.raises(RuntimeError, match="non_replicated_deduplication_window"):
        sink.build("clickhouse", 0, 1)


@pytest.mark.parametrize(
    ("engine", "settings", "level", "text"),
    [
        ("MergeTree", {"non_replicated_deduplication_window": 1000}, None, ""),
        ("MergeTree", {}, logging.ERROR, "no non_replicated_deduplication_window"),
        ("MergeTree", {"non_replicated_deduplication_window": 10}, logging.WARNING, "below 100"),
        ("ReplicatedMergeTree", {"replicated_deduplication_window": 1000,
                                 "replicated_deduplication_window_seconds": 604800}, None, ""),
        ("ReplicatedMergeTree", {"replicated_deduplication_window": 0}, logging.ERROR,
         "no replicated_deduplication_window"),
        ("ReplicatedMergeTree", {"replicated_deduplication_window": 1000,
                                 "replicated_deduplication_window_seconds": 60}, logging.WARNING,
         "replicated_deduplication_window_seconds = 60 s"),
        ("Distributed", {}, logging.WARNING, "MergeTree tables it writes to"),
    ],
)  # fmt: skip
def test_the_dedup_window_check_names_the_setting_to_fix(engine, settings, level, text) -> None:
    got = dedup_window_problem("otel.t", engine, settings, 100, 3600)
    if level is None:
        assert got is None
    else:
        assert got is not None and got[0] == level and text in got[1], got


def test_an_intent_table_of_the_previous_layout_is_extended_and_still_read(
    sink_for, chdb_client
) -> None:
    db = chdb_client.cfg.database
    chdb_client.execute(
        f"CREATE TABLE {db}.otelwax_intents (flow String, topic String, kafka_partition UInt32, "
        "first_offset UInt64, last_offset UInt64, target String, group_id UInt64, "
        "records UInt32, written_at DateTime DEFAULT now()) ENGINE = MergeTree() "
        "ORDER BY (flow, topic, kafka_partition, first_offset)"
    )
    chdb_client.execute(
        f"INSERT INTO {db}.otelwax_intents (flow, topic, kafka_partition, first_offset, "
        f"last_offset, target, group_id, records) VALUES ('traces', 'spans', 0, 0, 9, "
        f"'{db}.otel_traces', 1, 10)"
    )
    sink = sink_for(None)
    intents = sink.intent_log(sink.client())
    assert intents.ranges_from("spans", 0, 0) == [(0, 9, "")]  # replayed under its old token
    assert intents.pending_from("spans", 0) == 0


def test_lookup_dedup_on_1816_stores_a_replayed_range_once_in_table_and_copy(
    clickhouse_server,
) -> None:
    """A traces table from before the InsertToken column (dedup by (TraceId, SpanId) lookup)
    and its trace-ordered copy: a replayed range that an earlier run stored in part adds
    only the missing spans, to the table and through its view to the copy alike."""
    from connectors.clickhouse import open_client
    from connectors.clickhouse_schema import traces_ddl

    db = f"t_{uuid.uuid4().hex[:10]}"
    conn = server_config(clickhouse_server, db)
    client = open_client(conn)
    try:
        client.execute(f"CREATE DATABASE {db}")
        for sql in traces_ddl(db, "otel_traces", conn.schema_options, legacy=True):
            client.execute(sql.replace(",\n    `InsertToken` String", "").replace(
                ", `InsertToken`", ""
            ))
        batch = decode_traces(trace_payloads(2, seed=43)).batch
        client.insert_arrow("otel_traces", batch.slice(0, 80))  # the crashed run's part
        sink = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
        part = sink.build("clickhouse", 0, 1)
        part.write_batch([StoredRange("spans", 0, 0, 9, batch, 10, replay=True)])
        part.close()
        q = "SELECT count(), uniqExact(SpanId) FROM {}"
        for table in ("otel_traces", "otel_traces_by_trace"):
            assert client.execute(q.format(f"{db}.{table}")) == [(200, 200)], table
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_on_1816_only_a_replayed_range_counts_the_rows_stored_under_its_token(
    clickhouse_server, monkeypatch
) -> None:
    """18.16 has no insert tokens: counting the rows stored under a token reads the whole
    InsertToken column, so an insert would cost more as the table grows. A new range cannot
    have rows under its token (its intent is recorded before any insert), so only a replayed
    range (or a retried insert) counts; one stored by a crashed run is then not stored twice."""
    from connectors.clickhouse import open_client
    from connectors.clickhouse_server import ServerClient

    queries: list[str] = []
    execute = ServerClient.execute

    def recording(self, sql, params=None):  # type: ignore[no-untyped-def]
        queries.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(ServerClient, "execute", recording)
    db = f"t_{uuid.uuid4().hex[:10]}"
    conn = server_config(clickhouse_server, db, create_schema=True)
    sink = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
    client = open_client(conn.model_copy(update={"create_schema": False}))
    try:
        part = sink.build("clickhouse", 0, 1)
        batches = [decode_traces(trace_payloads(1, seed=i)).batch for i in range(3)]
        new = [StoredRange("spans", 0, i * 10, i * 10 + 9, b, 10) for i, b in enumerate(batches)]
        part.write_batch(new)
        counts = [q for q in queries if "count() FROM" in q and "InsertToken = " in q]
        assert counts == [], counts
        # A crashed run stored this range but did not mark it: its replay must be skipped.
        crashed = decode_traces(trace_payloads(1, seed=9)).batch
        replay = StoredRange("spans", 1, 0, 9, crashed, 10, replay=True)
        client.insert_arrow("otel_traces", crashed, dedup_token=replay.token)
        part.write_batch([replay])
        part.close()
        counts = [q for q in queries if "count() FROM" in q and "InsertToken = " in q]
        assert counts, "the replayed range was inserted without looking for its rows"
        want = sum(r.batch.num_rows for r in new) + crashed.num_rows
        got = client.execute(f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces")
        assert got == [(want, want)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_a_null_table_gets_its_rows_unsorted_and_its_views_get_them_all(
    sink_for, chdb_client, caplog
) -> None:
    """A Null table (the source of materialized views) keeps no order: the sink says at start
    that it does not presort for it, and every row still reaches the views."""
    db = chdb_client.cfg.database
    chdb_client.execute(
        f"CREATE TABLE {db}.otel_traces (Timestamp DateTime64(9), TraceId String, SpanId String, "
        "ParentSpanId String, TraceState String, SpanName LowCardinality(String), "
        "SpanKind LowCardinality(String), ServiceName LowCardinality(String), "
        "ResourceAttributes Map(LowCardinality(String), String), ScopeName String, "
        "ScopeVersion String, SpanAttributes Map(LowCardinality(String), String), "
        "Duration UInt64, StatusCode LowCardinality(String), StatusMessage String, "
        "`Events.Timestamp` Array(DateTime64(9)), `Events.Name` Array(LowCardinality(String)), "
        "`Events.Attributes` Array(Map(LowCardinality(String), String)), "
        "`Links.TraceId` Array(String), `Links.SpanId` Array(String), "
        "`Links.TraceState` Array(String), "
        "`Links.Attributes` Array(Map(LowCardinality(String), String))) ENGINE = Null"
    )
    chdb_client.execute(
        f"CREATE TABLE {db}.span_ids (SpanId String) ENGINE = MergeTree ORDER BY tuple()"
    )
    chdb_client.execute(
        f"CREATE MATERIALIZED VIEW {db}.span_ids_mv TO {db}.span_ids "
        f"AS SELECT SpanId FROM {db}.otel_traces"
    )
    acks = RangeAcks()
    sink = sink_for(acks)
    with caplog.at_level(logging.INFO, logger="connectors.clickhouse_sink"):
        part = sink.build("clickhouse", 0, 1)
    assert f"{db}.otel_traces is a Null table: rows are not presorted" in caplog.text
    ranges = _ranges(acks, 2)
    ids = [s for r in ranges for s in r.batch.column("SpanId").to_pylist()]
    part.write_batch(ranges)
    part.close()
    rows = chdb_client.execute(f"SELECT SpanId FROM {db}.span_ids")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert acks.oldest("spans", 0) is None


def test_lookup_dedup_on_chdb_stores_a_replayed_range_once(sink_for, chdb_client) -> None:
    """``dedup: lookup`` with embedded chdb (a traces table of the exporter's layout, without
    InsertToken): the span ids go to chdb as an array parameter; a replayed range that an
    earlier run stored in part adds only the missing spans. Span ids a user's tools wrote may
    hold any text, a quote included."""
    db = chdb_client.cfg.database
    batch = decode_traces(trace_payloads(2, seed=44)).batch
    ids = batch.column("SpanId").to_pylist()
    ids[0] = "it's\\odd]"
    batch = batch.set_column(
        batch.schema.get_field_index("SpanId"), "SpanId", pa.array(ids, pa.string())
    )
    conn = ClickHouseConfig(
        mode="embedded", path=str(Path(chdb_client.cfg.path)), database=db, create_schema=True
    )
    sink = ClickHouseSink(
        conn, ClickHouseSinkConfig(dedup="lookup"), sort_key=TRACES_SORT_KEY
    )
    part = sink.build("clickhouse", 0, 1)
    chdb_client.insert_arrow("otel_traces", batch.slice(0, 80))  # the crashed run's part
    part.write_batch([StoredRange("spans", 0, 0, 9, batch, 10, replay=True)])
    part.close()
    got = chdb_client.execute(f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces")
    assert got == [(200, 200)]


_STORE_IN_FRESH_PROCESS = """
import json, sys
from connectors.clickhouse import ClickHouseConfig, open_client
from connectors.clickhouse_schema import TRACES_SORT_KEY
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from otelwax.codec import decode_traces
from tests.otlpgen import trace_payloads

conn = ClickHouseConfig(**json.loads(sys.argv[1]))
sink = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
part = sink.build("clickhouse", 0, 1)
batch = decode_traces(trace_payloads(3, seed=7)).batch
part.write_batch([StoredRange("spans", 0, 0, 9, batch, 10)])
part.close()
loaded = {m: m in sys.modules for m in ("pandas", "pyarrow.dataset")}
client = open_client(conn.model_copy(update={"create_schema": False}))
db = conn.database
rows = client.execute(f"SELECT count() FROM {db}.otel_traces")[0][0]
marks = client.execute(
    f"SELECT first_offset, last_offset, mark FROM {db}.otelwax_intents ORDER BY mark"
)
if conn.mode == "server":
    client.execute(f"DROP DATABASE IF EXISTS {db}")
client.close()
print(json.dumps({"loaded": loaded, "rows": rows, "marks": marks}))
"""


@pytest.mark.parametrize("backend", ["chdb", "server"])
def test_a_sink_stores_its_rows_and_intents_without_loading_what_it_does_not_use(
    backend: str, tmp_path: Path, request
) -> None:
    """A flow has no use for pandas (~50 MiB of RSS, ~0.3 s of CPU in the first insert into a
    server) nor pyarrow.dataset (~12 MiB, chdb's reader of pyarrow objects): storing a range,
    intents included, loads neither (chdb itself loads pandas)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    if backend == "server":
        srv = request.getfixturevalue("clickhouse_server")
        conn = server_config(srv, f"t_{uuid.uuid4().hex[:10]}", create_schema=True)
    else:
        conn = ClickHouseConfig(mode="embedded", path=str(tmp_path / "chdb"), create_schema=True)
    out = subprocess.run(
        [sys.executable, "-c", _STORE_IN_FRESH_PROCESS, conn.model_dump_json()],
        cwd=root, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == decode_traces(trace_payloads(3, seed=7)).batch.num_rows
    assert got["marks"] == [[0, 9, ""], [0, 9, "stored"]]
    assert got["loaded"]["pyarrow.dataset"] is False
    if backend == "server":
        assert got["loaded"]["pandas"] is False


def _intent_inserts(client, db: str) -> tuple[int, set[tuple[int, int]]]:
    """Inserts into the intents table (one group id each) and the ranges marked stored."""
    rows = client.execute(
        f"SELECT group_id, first_offset, last_offset, mark FROM {db}.otelwax_intents"
    )
    return len({r[0] for r in rows}), {(r[1], r[2]) for r in rows if r[3] == "stored"}


def test_a_backlog_costs_one_intent_insert_per_range(sink_for, chdb_client) -> None:
    """Each one-row insert into the intents table is a MergeTree part (~5-10 ms of CPU on
    chdb): a batch's stored marks ride with the next batch's intents, so a backlog of N
    ranges makes N + 1 inserts rather than 2N, and close writes the last marks."""
    acks = RangeAcks()
    part = sink_for(acks).build("clickhouse", 0, 1)
    ranges = _ranges(acks, 6)
    for r in ranges:
        part.write_batch([r])
    part.close()
    inserts, marked = _intent_inserts(chdb_client, chdb_client.cfg.database)
    assert marked == {(r.first, r.last) for r in ranges}
    assert inserts < 2 * len(ranges), inserts  # N + 1 unless the test thread stalled


def test_the_last_batchs_marks_are_written_when_no_next_batch_comes(
    sink_for, chdb_client
) -> None:
    """A worker with nothing more to store (a quiet topic) still marks its last batch stored
    soon, without waiting for a next batch or the flow's end."""
    acks = RangeAcks()
    sink = sink_for(acks)
    part = sink.build("clickhouse", 0, 1)
    ranges = _ranges(acks, 2)
    part.write_batch(ranges)
    intents = sink.intent_log(sink.client())
    deadline = time.monotonic() + 20
    while intents.stored_from("spans", 0, 0) != {(0, 9), (10, 19)}:
        assert time.monotonic() < deadline, intents.stored_from("spans", 0, 0)
        time.sleep(0.05)
    assert intents.pending_from("spans", 0) == 20
    part.close()


def test_a_crash_before_the_marks_are_written_stores_nothing_twice(
    sink_for, chdb_client
) -> None:
    """Partition 0 stores a range, then partition 1 makes more inserts than the table's dedup
    window remembers and the flow dies before closing. Partition 0's mark must have been
    written before those inserts (it rides with partition 1's first intents, not with
    partition 0's next one, which never comes): its replay is then skipped as stored."""
    conn = sink_for(None).connection.model_copy(
        update={"tables": TableOptions(dedup_window=3)}
    )
    acks = RangeAcks()
    sink = ClickHouseSink(conn, ClickHouseSinkConfig(), acks=acks, sort_key=TRACES_SORT_KEY)
    part = sink.build("clickhouse", 0, 1)
    acks.emitted("spans", 0, 0, 1000)
    quiet = decode_traces(trace_payloads(3, seed=7)).batch
    part.write_batch([StoredRange("spans", 0, 0, 9, quiet, 10)])
    for i in range(6):  # twice the window: partition 0's token is forgotten
        acks.emitted("spans", 1, i * 10, 1000)
        batch = decode_traces(trace_payloads(2, seed=200 + i)).batch
        part.write_batch([StoredRange("spans", 1, i * 10, i * 10 + 9, batch, 10)])
    # No close: the process dies here (what the writer still holds is lost).
    again = ClickHouseSink(conn, ClickHouseSinkConfig(), sort_key=TRACES_SORT_KEY)
    replay = StoredRange("spans", 0, 0, 9, quiet, 10, replay=True)
    fresh = again.build("clickhouse", 1, 2)
    fresh.write_batch([replay])
    fresh.close()
    db = conn.database
    n, uniq = chdb_client.execute(f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces")[0]
    assert n == uniq, (n, uniq)
    part.close()
