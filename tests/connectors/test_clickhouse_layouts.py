"""The clickhouseexporter's logs layouts (2026 five-minute key with text or bloom-filter indexes,
the earlier TimestampTime layout, JSON attributes) through the real sink path, and
``otelwax clickhouse migrate`` on chdb and the 18.16 server (issue 16 items 1 and 3)."""

from __future__ import annotations

import logging
import uuid

import pytest

from connectors.clickhouse import ClickHouseConfig, open_client
from connectors.clickhouse_migrate import apply_changes, plan_migration, table_layout
from connectors.clickhouse_schema import LOGS_SORT_KEY, TableOptions, logs_ddl
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from otelwax.codec import decode_logs
from otelwax.schemas import LOGS_SCHEMA
from tests.connectors.conftest import server_config
from tests.connectors.test_clickhouse_sink import sink_for  # noqa: F401 (fixture: closes clients)
from tests.otlpgen import logs_payloads


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


def test_a_json_attributes_table_is_refused_with_the_reason(chdb_client, sink_for) -> None:  # noqa: F811
    db, table = chdb_client.cfg.database, f"json_{uuid.uuid4().hex[:8]}"
    chdb_client.execute(
        f"CREATE TABLE {db}.{table} (Timestamp DateTime64(9), ServiceName LowCardinality(String),"
        " Body String, ResourceAttributes JSON, LogAttributes JSON,"
        " LogAttributesKeys Array(LowCardinality(String))) ENGINE = MergeTree"
        " ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)"
    )
    assert table_layout(chdb_client, db, table) == "json"
    cfg = _embedded(chdb_client).model_copy(update={"create_schema": False})
    with pytest.raises(RuntimeError, match="JSON-typed attribute tables"):
        _logs_sink(cfg, table).client()
    with pytest.raises(ValueError, match="JSON-typed attribute tables"):
        TableOptions.model_validate({"json": True})


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
