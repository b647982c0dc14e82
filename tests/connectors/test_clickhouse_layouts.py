"""The clickhouseexporter's logs layouts (2026 five-minute key with text or bloom-filter indexes,
the earlier TimestampTime layout, JSON attributes) through the real sink path, and
``otelwax clickhouse migrate`` on chdb and the 18.16 server (issue 16 items 1 and 3)."""

from __future__ import annotations

import logging
import time
import uuid

import pyarrow as pa
import pytest

from connectors.clickhouse import ClickHouseConfig, open_client
from connectors.clickhouse_migrate import apply_changes, plan_migration, table_layout
from connectors.clickhouse_schema import LOGS_SORT_KEY, TRACES_SORT_KEY, TableOptions, logs_ddl
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from otelwax.codec import decode_logs, decode_traces
from otelwax.schemas import LOGS_SCHEMA
from tests.connectors.conftest import server_config
from tests.connectors.test_clickhouse_sink import sink_for  # noqa: F401 (fixture: closes clients)
from tests.otlpgen import logs_payloads, trace_payloads


def _logs_sink(cfg: ClickHouseConfig, table: str) -> ClickHouseSink:
    return ClickHouseSink(
        cfg, ClickHouseSinkConfig(), table=table, schema=LOGS_SCHEMA, sort_key=LOGS_SORT_KEY
    )


def _write(sink: ClickHouseSink, seed: int, first: int = 0) -> int:
    batch = decode_logs(logs_payloads(3, seed=seed)).batch
    part = sink.build("clickhouse", 0, 1)
    part.write_batch([StoredRange("logs", 0, first, first + 9, batch, 10)])
    part.close()
    return batch.num_rows


def _embedded(chdb_client, **tables: object) -> ClickHouseConfig:
    return ClickHouseConfig(
        mode="embedded",
        path=chdb_client.cfg.path,
        database=chdb_client.cfg.database,
        create_schema=True,
        tables=tables,
    )


@pytest.mark.parametrize(
    ("tables", "layout", "body_index"),
    [
        ({}, "five_minutes", "text(tokenizer = 'splitByNonAlpha')"),  # chdb is 26.x
        ({"text_indexes": "off"}, "five_minutes", "tokenbf_v1(32768, 3, 0)"),
        ({"logs_layout": "timestamp_time"}, "timestamp_time", "tokenbf_v1(32768, 3, 0)"),
    ],
)
def test_each_logs_layout_is_created_written_and_read_back(
    chdb_client, sink_for, tables, layout, body_index  # noqa: F811
) -> None:
    cfg = _embedded(chdb_client, **tables)
    table = f"logs_{uuid.uuid4().hex[:8]}"
    n = _write(_logs_sink(cfg, table), seed=5)
    db = cfg.database
    assert table_layout(chdb_client, db, table) == layout
    got = chdb_client.execute(
        f"SELECT count(), uniqExact(Body), countIf(ServiceName != '') FROM {db}.{table}"
    )[0]
    assert got == (n, n, n)
    idx = dict(
        chdb_client.execute(
            "SELECT name, type_full FROM system.data_skipping_indices "
            "WHERE database = {db:String} AND table = {t:String}",
            {"db": db, "t": table},
        )
    )
    assert body_index in idx.values()
    sort_key = chdb_client.execute(
        "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": db, "t": table},
    )[0][0]
    if layout == "five_minutes":
        assert sort_key == "toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp"
        ns = chdb_client.execute(
            f"SELECT count() FROM {db}.{table} WHERE `__otel_materialized_k8s.namespace.name` "
            "= ResourceAttributes['k8s.namespace.name']"
        )[0][0]
        assert ns == n
    else:
        assert sort_key == "ServiceName, TimestampTime, Timestamp"
    assert plan_migration(chdb_client, db, table, "logs", TableOptions(**tables)) == []
    # A replay of the same range (restart) stores nothing twice.
    _write(_logs_sink(cfg, table), seed=5)
    assert chdb_client.execute(f"SELECT count() FROM {db}.{table}")[0][0] == n


def _traces_sink(cfg: ClickHouseConfig, table: str) -> ClickHouseSink:
    return ClickHouseSink(cfg, ClickHouseSinkConfig(), table=table, sort_key=TRACES_SORT_KEY)


def _write_traces(sink: ClickHouseSink, batch: pa.RecordBatch) -> None:
    part = sink.build("clickhouse", 0, 1)
    part.write_batch([StoredRange("traces", 0, 0, 9, batch, 10)])
    part.close()


def test_json_mode_tables_store_queryable_attributes_and_their_keys(
    chdb_client, sink_for  # noqa: F811
) -> None:
    """tables.json: the exporter's JSON traces and logs tables, written by the sinks: attributes
    are JSON paths (`SpanAttributes.`http.request.method``), *AttributesKeys hold each row's
    keys, a repeated key does not fail the insert, a replay stores nothing twice, and
    migrate finds nothing to add."""
    cfg = _embedded(chdb_client, json=True)
    db, spans, logs = cfg.database, f"spans_{uuid.uuid4().hex[:6]}", f"logs_{uuid.uuid4().hex[:6]}"
    batch = decode_traces(trace_payloads(3, seed=3)).batch
    _write_traces(_traces_sink(cfg, spans), batch)
    assert table_layout(chdb_client, db, spans) == "json"
    types = chdb_client.table_columns(f"{db}.{spans}")
    assert types["SpanAttributes"] == "JSON" and types["Events.Attributes"] == "Array(JSON)"
    maps = batch.column("SpanAttributes").to_pylist()
    want_get = sum(dict(m).get("http.request.method") == "GET" for m in maps)
    assert want_get > 0
    got = chdb_client.execute(
        f"SELECT count(), countIf(SpanAttributes.`http.request.method` = 'GET'), "
        f"countIf(SpanAttributes.http.request.method = 'GET'), "
        f"countIf(arraySort(SpanAttributesKeys) = arraySort(JSONAllPaths(SpanAttributes))), "
        f"countIf(length(ResourceAttributesKeys) > 0) FROM {db}.{spans}"
    )[0]
    n = batch.num_rows
    assert got == (n, want_get, want_get, n, n)
    keys = chdb_client.execute(
        f"SELECT SpanAttributesKeys FROM {db}.{spans} WHERE SpanId = {{s:String}}",
        {"s": batch.column("SpanId")[0].as_py()},
    )[0][0]
    assert keys == [k for k, _ in maps[0]]
    assert plan_migration(chdb_client, db, spans, "traces", TableOptions(json=True)) == []
    _write_traces(_traces_sink(cfg, spans), batch)  # a replay of the same range
    assert chdb_client.execute(f"SELECT count() FROM {db}.{spans}")[0][0] == n

    n_logs = _write(_logs_sink(cfg, logs), seed=4)
    got = chdb_client.execute(
        f"SELECT count(), countIf(length(LogAttributesKeys) = length(JSONAllPaths(LogAttributes)))"
        f", countIf(ResourceAttributes.service.name = ServiceName) FROM {db}.{logs}"
    )[0]
    assert got == (n_logs, n_logs, n_logs)
    assert plan_migration(chdb_client, db, logs, "logs", TableOptions(json=True)) == []

    # OTLP allows a repeated key; the JSON column would refuse the whole insert.
    field = batch.schema.get_field_index("SpanAttributes")
    dup = pa.array([[("k", "first"), ("k", "second")]], type=batch.schema.field(field).type)
    one = batch.slice(0, 1).set_column(field, "SpanAttributes", dup)
    assert chdb_client.insert_arrow(f"{db}.{spans}", one) == 1
    got = chdb_client.execute(
        f"SELECT toString(SpanAttributes.k), SpanAttributesKeys FROM {db}.{spans} "
        "WHERE has(SpanAttributesKeys, 'k')"
    )
    assert got == [("first", ["k", "k"])]


def test_the_native_block_a_server_insert_sends_fills_json_columns(chdb_client, tmp_path) -> None:
    """A server gets the maps as Map(String, String) Native columns for its JSON columns (and
    converts them on input): the exact body of the HTTP insert, read by ClickHouse 26's Native
    input format (chdb), stores queryable attributes and keys."""
    from connectors.clickhouse_json_schema import with_attribute_keys
    from connectors.clickhouse_native import encode_native, plan_columns
    from connectors.clickhouse_schema import create_schema

    db, table = chdb_client.cfg.database, f"nspans_{uuid.uuid4().hex[:8]}"
    create_schema(chdb_client, db, table, None, TableOptions(json=True, trace_lookup=False))
    cols = chdb_client.table_columns(f"{db}.{table}")
    batch = with_attribute_keys(decode_traces(trace_payloads(1, seed=8)).batch, cols)
    plan = plan_columns(batch.schema, cols)
    assert plan.problems == () and plan.json
    body = tmp_path / "block.native"
    body.write_bytes(encode_native(batch, plan))
    names = ", ".join(f"`{c.name}`" for c in plan.cols)
    chdb_client.execute(f"INSERT INTO {db}.{table} ({names}) FROM INFILE '{body}' FORMAT Native")
    got = chdb_client.execute(
        f"SELECT count(), countIf(arraySort(SpanAttributesKeys) = "
        f"arraySort(JSONAllPaths(SpanAttributes))), countIf(notEmpty(JSONAllPaths(SpanAttributes)))"
        f" FROM {db}.{table}"
    )[0]
    assert got == (batch.num_rows,) * 3


def test_json_mode_on_a_server_without_the_json_type_is_refused(clickhouse_server) -> None:
    db = f"t_{uuid.uuid4().hex[:10]}"
    cfg = server_config(clickhouse_server, db, create_schema=True, tables={"json": True})
    with pytest.raises(RuntimeError) as err:
        _logs_sink(cfg, "otel_logs").client()
    msg = str(err.value)
    assert "tables.json: true needs ClickHouse >= 25.3" in msg and "18.16" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="json: true cannot be combined with variant: legacy"):
        TableOptions.model_validate({"json": True, "variant": "legacy"})


def test_migrate_adds_the_keys_columns_to_an_older_json_table(chdb_client) -> None:
    """A JSON logs table from before the exporter added *AttributesKeys: migrate adds the
    three columns and their bloom filters, the sink fills them from then on."""
    db, table = chdb_client.cfg.database, f"jlogs_{uuid.uuid4().hex[:8]}"
    ddl = logs_ddl(db, table, TableOptions(json=True))[0]
    old = "\n".join(line for line in ddl.splitlines() if "AttributesKeys" not in line)
    chdb_client.execute(old)
    changes = plan_migration(chdb_client, db, table, "logs", TableOptions())
    shown = "\n".join(c.what for c in changes)
    for name in ("Resource", "Scope", "Log"):
        assert f"column {name}AttributesKeys (Array(LowCardinality(String))) is missing" in shown
    assert "index idx_log_attr_keys (bloom_filter(0.01) on LogAttributesKeys) is missing" in shown
    assert apply_changes(chdb_client, changes) == 6
    assert plan_migration(chdb_client, db, table, "logs", TableOptions()) == []
    cfg = _embedded(chdb_client).model_copy(update={"create_schema": False})
    n = _write(_logs_sink(cfg, table), seed=6)
    got = chdb_client.execute(f"SELECT countIf(notEmpty(ResourceAttributesKeys)) FROM {db}.{table}")
    assert got == [(n,)]


def test_migrate_adds_a_missing_column_and_the_dedup_window_keeping_rows(
    chdb_client, sink_for, caplog  # noqa: F811
) -> None:
    """An old-layout table without EventName and without a dedup window: the sink's start-up
    check refuses it and names `otelwax clickhouse migrate`; migrate shows both, --apply
    adds them, the old rows stay and the sink writes again."""
    db, table = chdb_client.cfg.database, f"old_{uuid.uuid4().hex[:8]}"
    old = TableOptions(logs_layout="timestamp_time", dedup_window=0)
    ddl = logs_ddl(db, table, old)[0].replace("    EventName String CODEC(ZSTD(1)),\n", "")
    chdb_client.execute(ddl)
    chdb_client.execute(
        f"INSERT INTO {db}.{table} (Timestamp, ServiceName, Body) VALUES (now64(9), 'a', 'kept')"
    )
    cfg = _embedded(chdb_client).model_copy(update={"create_schema": False})
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as err:
        _logs_sink(cfg, table).client()
    assert "otelwax clickhouse migrate --apply" in str(err.value)
    logged = [r.message for r in caplog.records]
    assert any("EventName" in m and "clickhouse migrate" in m for m in logged)

    changes = plan_migration(chdb_client, db, table, "logs", TableOptions())
    shown = "\n".join(c.what for c in changes)
    assert "column EventName (String) is missing" in shown
    assert "non_replicated_deduplication_window is unset" in shown
    assert apply_changes(chdb_client, changes) == 2
    assert plan_migration(chdb_client, db, table, "logs", TableOptions()) == []
    assert table_layout(chdb_client, db, table) == "timestamp_time"  # layout kept
    n = _write(_logs_sink(cfg, table), seed=9)
    rows = chdb_client.execute(f"SELECT countIf(Body = 'kept'), count() FROM {db}.{table}")[0]
    assert rows == (1, n + 1)


def test_migrate_cli_on_the_legacy_server_adds_the_column(clickhouse_server, capsys) -> None:
    from otelwax.cli import main

    db = f"t_{uuid.uuid4().hex[:10]}"
    cfg = server_config(clickhouse_server, db)
    client = open_client(cfg)
    try:
        client.execute(f"CREATE DATABASE {db}")
        legacy = logs_ddl(db, "otel_logs", TableOptions(), legacy=True)[0]
        client.execute(legacy.replace("    EventName String,\n", ""))
        client.execute(f"INSERT INTO {db}.otel_logs (ServiceName, Body) SELECT 'a', 'kept'")
        flags = [
            "clickhouse", "migrate", "--flow", "logs", "--mode", "server",
            "--host", clickhouse_server.host, "--port", str(clickhouse_server.port),
            "--http-port", str(clickhouse_server.http_port), "--database", db,
        ]  # fmt: skip
        assert main(flags) == 1
        out = capsys.readouterr().out
        assert "column EventName (String) is missing" in out and "would run" in out
        assert main([*flags, "--apply"]) == 0
        assert "logs: migrate: 100% 1/1 statements" in capsys.readouterr().err  # no TTY: a line
        assert main(flags) == 0
        assert "is up to date" in capsys.readouterr().out
        assert "EventName" in client.table_columns(f"{db}.otel_logs")
        assert client.execute(f"SELECT count() FROM {db}.otel_logs WHERE Body = 'kept'") == [(1,)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_migrate_adds_the_trace_copy_to_a_1816_store_keeping_its_spans(clickhouse_server) -> None:
    """A store created before the copy was the default: migrate adds the table, its view and
    the spans stored so far; afterwards every insert reaches both, and nothing is left."""
    from connectors.clickhouse_schema import create_schema

    db = f"t_{uuid.uuid4().hex[:10]}"
    cfg = server_config(clickhouse_server, db)
    client = open_client(cfg)
    try:
        create_schema(client, db, "otel_traces", None, TableOptions(trace_copy="off"))
        batch = decode_traces(trace_payloads(2, seed=41)).batch
        client.insert_arrow("otel_traces", batch.slice(0, 120), dedup_token="t:0:0-1")
        # A flow of this version starting with create_schema: true leaves that to migrate: an
        # empty copy would answer lookups of the spans stored so far with nothing.
        create_schema(client, db, "otel_traces", None, cfg.schema_options)
        assert client.execute(f"EXISTS TABLE {db}.otel_traces_by_trace") == [(0,)]
        changes = plan_migration(client, db, "otel_traces", "traces", cfg.schema_options)
        shown = "\n".join(c.what for c in changes)
        assert "otel_traces_by_trace, its copy ordered by TraceId, is missing" in shown
        assert apply_changes(client, changes) == 3
        assert plan_migration(client, db, "otel_traces", "traces", cfg.schema_options) == []
        client.insert_arrow("otel_traces", batch.slice(120), dedup_token="t:0:2-3")
        q = "SELECT count(), uniqExact(SpanId), uniqExact(InsertToken) FROM {}"
        for table in ("otel_traces", "otel_traces_by_trace"):
            assert client.execute(q.format(f"{db}.{table}")) == [(200, 200, 2)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_migrate_reports_a_1816_trace_copy_with_bigger_granules_and_keeps_it(
    clickhouse_server,
) -> None:
    """A copy created with 1024-row granules (before 256 was the default) still answers
    lookups; 18.16 cannot change a table's granularity in place, so migrate says what it
    costs and how to rebuild, runs nothing, and leaves the copy as it is."""
    from connectors.clickhouse_schema import create_schema

    db = f"t_{uuid.uuid4().hex[:10]}"
    cfg = server_config(clickhouse_server, db)
    client = open_client(cfg)
    try:
        create_schema(client, db, "otel_traces", None, cfg.schema_options)
        assert plan_migration(client, db, "otel_traces", "traces", cfg.schema_options) == []
        copy = f"{db}.otel_traces_by_trace"
        ddl = client.execute(f"SHOW CREATE TABLE {copy}")[0][0]
        client.execute(f"DROP TABLE {copy}")
        client.execute(ddl.replace("index_granularity = 256", "index_granularity = 1024"))
        changes = plan_migration(client, db, "otel_traces", "traces", cfg.schema_options)
        assert [c.sql for c in changes] == [None]
        assert "otel_traces_by_trace has 1024-row granules, this version creates 256" in (
            changes[0].what
        )
        assert apply_changes(client, changes) == 0
        assert "index_granularity = 1024" in client.execute(f"SHOW CREATE TABLE {copy}")[0][0]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_migrate_adds_the_by_trace_projection_for_stored_parts(chdb_client) -> None:
    """Modern ClickHouse (chdb stands in): migrate adds the projection and builds it for the
    parts already stored, so a lookup of an old trace reads it."""
    from connectors.clickhouse_schema import create_schema

    db, table = chdb_client.cfg.database, f"spans_{uuid.uuid4().hex[:8]}"
    # Small granules: a trace's spans lie in several of the service-ordered table's granules.
    small = {"variant": "modern", "index_granularity": 64, "skip_indexes": False}
    create_schema(chdb_client, db, table, None, TableOptions(**small))
    batch = decode_traces(trace_payloads(20, seed=42)).batch
    chdb_client.insert_arrow(f"{db}.{table}", batch, dedup_token="t:0:0-1")
    on = TableOptions(trace_copy="on", **small)
    changes = plan_migration(chdb_client, db, table, "traces", on)
    assert [c.sql.split(" ", 3)[-1] for c in changes if c.sql] == [
        "ADD PROJECTION by_trace (SELECT * ORDER BY TraceId)",
        "MATERIALIZE PROJECTION by_trace",
    ]
    apply_changes(chdb_client, changes)
    assert plan_migration(chdb_client, db, table, "traces", on) == []
    tid = batch.column("TraceId")[0].as_py()
    q = (
        f"SELECT count() FROM {db}.{table} WHERE TraceId = {{tid:String}} "
        "SETTINGS force_optimize_projection_name = 'by_trace'"
    )
    want = [(sum(1 for t in batch.column("TraceId").to_pylist() if t == tid),)]
    for _ in range(50):  # the mutation runs in the background
        try:
            if chdb_client.execute(q, {"tid": tid}) == want:
                break
        except Exception:
            pass
        time.sleep(0.1)
    assert chdb_client.execute(q, {"tid": tid}) == want


def test_migrate_recreates_a_missing_trace_lookup_and_sets_the_ttl(chdb_client) -> None:
    db, table = chdb_client.cfg.database, f"spans_{uuid.uuid4().hex[:8]}"
    from connectors.clickhouse_schema import create_schema

    create_schema(chdb_client, db, table, None, TableOptions(variant="modern", trace_lookup=False))
    want = TableOptions(ttl_days=7)
    shown = [c.what for c in plan_migration(chdb_client, db, table, "traces", want)]
    assert any(f"lookup table {table}_trace_id_ts is missing" in w for w in shown)
    assert any("TTL is none, wanted toDateTime(Timestamp) + toIntervalDay(7)" in w for w in shown)
    apply_changes(chdb_client, plan_migration(chdb_client, db, table, "traces", want))
    assert plan_migration(chdb_client, db, table, "traces", want) == []
    chdb_client.execute(
        f"INSERT INTO {db}.{table} (Timestamp, TraceId, SpanId, ServiceName) "
        "VALUES (now64(9), 'abc', '01', 's')"
    )
    got = chdb_client.execute(f"SELECT TraceId FROM {db}.{table}_trace_id_ts")
    assert got == [("abc",)]


def test_migrate_cli_brings_older_metrics_tables_up_keeping_rows(chdb_client, capsys) -> None:
    """otel_metrics_* tables of an older version (a column missing, no dedup window):
    migrate --flow metrics shows both, --apply adds them, the stored point stays and a second
    run finds every table up to date."""
    from connectors.clickhouse_metrics_schema import metrics_ddl
    from otelwax.cli import main

    db = chdb_client.cfg.database
    for sql in metrics_ddl(db, dedup_window=0)[1:]:
        sql = sql.replace(", non_replicated_deduplication_window = 0", "")
        chdb_client.execute(sql.replace("ScopeDroppedAttrCount UInt32 CODEC(ZSTD(1)),\n    ", ""))
    chdb_client.execute(
        f"INSERT INTO {db}.otel_metrics_gauge (ServiceName, MetricName, TimeUnix, Value) "
        "VALUES ('a', 'kept', now64(9), 1.5)"
    )
    flags = [
        "clickhouse", "migrate", "--flow", "metrics", "--mode", "embedded",
        "--path", chdb_client.cfg.path, "--database", db,
    ]  # fmt: skip
    assert main(flags) == 1
    out = capsys.readouterr().out
    for table in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
        assert f"otel_metrics_{table}`: column ScopeDroppedAttrCount (UInt32) is missing" in out
        assert f"otel_metrics_{table}`: non_replicated_deduplication_window is unset" in out
    assert main([*flags, "--apply"]) == 0
    assert "metrics: migrate: 100% 10/10 statements" in capsys.readouterr().err
    assert main(flags) == 0
    assert capsys.readouterr().out.count("is up to date") == 5
    got = chdb_client.execute(
        f"SELECT MetricName, Value, ScopeDroppedAttrCount FROM {db}.otel_metrics_gauge"
    )
    assert got == [("kept", 1.5, 0)]
    engine = chdb_client.execute(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} "
        "AND name = 'otel_metrics_summary'",
        {"db": db},
    )[0][0]
    assert "non_replicated_deduplication_window = 1000" in engine
