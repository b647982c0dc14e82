"""ClickHouse sink layer against real chdb and a real clickhouse-server (18.16, legacy layout)."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from connectors.clickhouse import (
    ClickHouseConfig,
    ClickHouseError,
    check_table,
    init_schema,
    parse_type,
    plan_columns,
)
from connectors.clickhouse_schema import TableOptions, logs_ddl, quote_ident, traces_ddl
from otelwax.codec.pydecode import decode_logs, decode_traces
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from otelwax.settings import format_errors
from tests.otlpgen import logs_payloads, trace_payloads

# --- config and DDL (no I/O) -------------------------------------------------------------------


def test_config_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELWAX_CLICKHOUSE_PASSWORD", "s3cret")
    cfg = ClickHouseConfig()
    assert (cfg.mode, cfg.path, cfg.database, cfg.traces_table) == (
        "embedded",
        ".data/chdb/{flow}",
        "otel",
        "otel_traces",
    )
    assert cfg.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)
    with pytest.raises(ValidationError) as ei:
        ClickHouseConfig.model_validate(
            {"mode": "server", "databse": "x", "traces_table": "a;DROP", "batch": {"max_rows": 0}}
        )
    msgs = format_errors(ei.value, "clickhouse", ClickHouseConfig)
    assert 'clickhouse.databse: unknown key (did you mean "database"?)' in msgs
    assert any(m.startswith("clickhouse.traces_table: Value error, must match") for m in msgs)
    assert any(m.startswith("clickhouse.batch.max_rows:") for m in msgs)


def test_trace_copy_is_on_for_a_server_and_off_for_chdb_unless_set() -> None:
    """A server answers a UI's trace lookups: by default it gets the trace-ordered copy;
    embedded chdb keeps its cheaper inserts. The key is validated like every other."""
    assert ClickHouseConfig(mode="server").schema_options.copy_traces
    assert not ClickHouseConfig(mode="embedded").schema_options.copy_traces
    off = {"mode": "server", "tables": {"trace_copy": "off"}}
    assert not ClickHouseConfig.model_validate(off).schema_options.copy_traces
    on = {"mode": "embedded", "tables": {"trace_projection": True}}  # the earlier key
    assert ClickHouseConfig.model_validate(on).schema_options.copy_traces
    with pytest.raises(ValidationError) as ei:
        ClickHouseConfig.model_validate({"tables": {"trace_copy": "yes"}})
    assert any(
        m.startswith("clickhouse.tables.trace_copy:")
        for m in format_errors(ei.value, "clickhouse", ClickHouseConfig)
    )
    on = TableOptions(trace_copy="on")
    legacy = "\n".join(traces_ddl("otel", "otel_traces", on, legacy=True))
    assert "ORDER BY (TraceId, Timestamp)\nSETTINGS index_granularity = 256" in legacy
    assert "MATERIALIZED VIEW IF NOT EXISTS `otel`.`otel_traces_by_trace_mv`" in legacy
    assert "PROJECTION by_trace" in traces_ddl("otel", "t", on)[0]
    assert "PROJECTION" not in traces_ddl("otel", "t", TableOptions())[0]


@pytest.mark.parametrize("bad", ["a b", "x`y", "1abc", "", "t;DROP TABLE x", "a.b"])
def test_identifiers_are_whitelisted(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid ClickHouse identifier"):
        quote_ident(bad)
    assert quote_ident("otel_traces") == "`otel_traces`"


def test_ddl_options() -> None:
    full = "\n".join(traces_ddl("otel", "otel_traces", TableOptions(ttl_days=7)))
    assert "bloom_filter(0.001)" in full and "CODEC(ZSTD(1))" in full
    assert "TTL toDateTime(Timestamp) + toIntervalDay(7)" in full
    assert "non_replicated_deduplication_window = 1000" in full
    assert "CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.`otel_traces_trace_id_ts_mv`" in full
    bare = "\n".join(
        traces_ddl(
            "otel",
            "t",
            TableOptions(
                skip_indexes=False, codecs=False, dedup_window=0, trace_lookup=False,
                partition_by="month",
            ),
        )
    )  # fmt: skip
    assert "INDEX" not in bare and "CODEC" not in bare and "TTL" not in bare
    assert "deduplication" not in bare and "VIEW" not in bare
    assert "PARTITION BY toYYYYMM(Timestamp)" in bare
    legacy = "\n".join(logs_ddl("otel", "otel_logs", TableOptions(), legacy=True))
    assert "Map(" not in legacy and "DateTime64" not in legacy
    assert "`LogAttributes.keys` Array(String)" in legacy and "InsertToken String" in legacy


def test_parse_type() -> None:
    t = parse_type("Array(Map(LowCardinality(String), String))")
    assert t.render() == "Array(Map(String, String))"
    assert parse_type("DateTime64(9, 'UTC')").args == (9, "'UTC'")


# --- embedded chdb, full modern schema ---------------------------------------------------------


def _cfg(client) -> ClickHouseConfig:
    return client.cfg


def test_chdb_roundtrip_every_field(chdb_client) -> None:
    cfg = _cfg(chdb_client)
    init_schema(chdb_client, cfg)
    assert check_table(chdb_client, cfg.traces_table, TRACES_SCHEMA) == []
    batch = decode_traces(
        trace_payloads(3, links_per_span=2, events_per_span=2, all_value_types=True, unicode=True)
    ).batch
    assert chdb_client.insert_arrow(cfg.traces_table, batch) == batch.num_rows
    cols = ", ".join(f"`{n}`" for n in TRACES_SCHEMA.names)
    rows = chdb_client.execute(
        f"SELECT {cols} FROM {cfg.database}.{cfg.traces_table} ORDER BY SpanId"
    )
    order = pc.sort_indices(batch.column("SpanId"))
    want = batch.take(order).to_pylist()
    assert len(rows) == len(want) == 300
    for got_row, exp in zip(rows, want, strict=True):
        got = dict(zip(TRACES_SCHEMA.names, got_row, strict=True))
        for k in ("TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind"):
            assert got[k] == exp[k], k
        for k in ("ServiceName", "ScopeName", "ScopeVersion", "Duration", "StatusCode"):
            assert got[k] == exp[k], k
        assert got["StatusMessage"] == exp["StatusMessage"]
        # Map columns keep every pair in order (ClickHouse stores Map as an array of pairs).
        assert got["SpanAttributes"] == exp["SpanAttributes"]
        assert got["ResourceAttributes"] == exp["ResourceAttributes"]
        assert got["Timestamp"].value == exp["Timestamp"].value  # pandas Timestamps, ns
        assert [t.value for t in got["Events.Timestamp"]] == [
            t.value for t in exp["Events.Timestamp"]
        ]
        assert got["Events.Name"] == exp["Events.Name"]
        assert got["Events.Attributes"] == exp["Events.Attributes"]
        for k in ("Links.TraceId", "Links.SpanId", "Links.TraceState"):
            assert got[k] == exp[k], k
        assert got["Links.Attributes"] == exp["Links.Attributes"]
    lookup = chdb_client.execute(
        f"SELECT count() FROM {cfg.database}.{cfg.traces_table}_trace_id_ts"
    )[0][0]
    assert lookup > 0


def test_chdb_dedup_token_skips_repeat(chdb_client) -> None:
    cfg = _cfg(chdb_client)
    init_schema(chdb_client, cfg)
    assert chdb_client.supports_dedup_token(cfg.traces_table)
    batch = decode_traces(trace_payloads(2, seed=7)).batch
    t = cfg.traces_table
    chdb_client.insert_arrow(t, batch, dedup_token="otlp_spans:0:0-1")
    chdb_client.insert_arrow(t, batch, dedup_token="otlp_spans:0:0-1")
    q = f"SELECT count(), uniqExact(SpanId) FROM {cfg.database}.{t}"
    assert chdb_client.execute(q) == [(200, 200)]
    chdb_client.insert_arrow(t, batch, dedup_token="otlp_spans:0:2-3")
    assert chdb_client.execute(q) == [(400, 200)]
    with pytest.raises(ValueError, match="dedup token"):
        chdb_client.insert_arrow(t, batch, dedup_token="x'; DROP TABLE y")


def test_chdb_trace_projection_answers_trace_lookups(chdb_client) -> None:
    # Small granules and no bloom filter: a trace's spans span many granules of the
    # service-ordered table (as on a big one) but one of the TraceId-ordered projection.
    opts = TableOptions(trace_copy="on", index_granularity=64, skip_indexes=False)
    cfg = _cfg(chdb_client).model_copy(update={"tables": opts})
    init_schema(chdb_client, cfg)
    batch = decode_traces(trace_payloads(20, seed=8)).batch
    t = f"{cfg.database}.{cfg.traces_table}"
    chdb_client.insert_arrow(t, batch, dedup_token="otlp_spans:0:0-1")
    tid = batch.column("TraceId")[0].as_py()
    want = pc.sum(pc.equal(batch.column("TraceId"), tid)).as_py()
    q = f"SELECT count() FROM {t} WHERE TraceId = {{tid:String}}"
    assert chdb_client.execute(q, {"tid": tid}) == [(want,)]
    # The planner reads the projection (the query fails if it does not).
    forced = f"{q} SETTINGS force_optimize_projection_name = 'by_trace'"
    assert chdb_client.execute(forced, {"tid": tid}) == [(want,)]
    parts = chdb_client.execute(
        "SELECT count() FROM system.projection_parts WHERE database = {db:String} "
        "AND table = {t:String} AND name = 'by_trace' AND active",
        {"db": cfg.database, "t": cfg.traces_table},
    )
    assert parts[0][0] >= 1


def test_chdb_logs_roundtrip(chdb_client) -> None:
    cfg = _cfg(chdb_client)
    init_schema(chdb_client, cfg)
    assert check_table(chdb_client, cfg.logs_table, LOGS_SCHEMA) == []
    batch = decode_logs(logs_payloads(2, all_value_types=True, unicode=True)).batch
    chdb_client.insert_arrow(cfg.logs_table, batch)
    rows = chdb_client.execute(
        f"SELECT Body, LogAttributes, toUnixTimestamp64Nano(Timestamp), SeverityNumber, "
        f"EventName, ScopeAttributes FROM {cfg.database}.{cfg.logs_table} "
        "ORDER BY toUnixTimestamp64Nano(Timestamp), Body"
    )
    exp = sorted(
        (
            r["Body"],
            r["LogAttributes"],
            r["Timestamp"].value,
            r["SeverityNumber"],
            r["EventName"],
            r["ScopeAttributes"],
        )
        for r in batch.to_pylist()
    )
    assert sorted(rows, key=lambda r: (r[2], r[0])) == sorted(exp, key=lambda r: (r[2], r[0]))


def test_health_check_messages(chdb_client) -> None:
    cfg = _cfg(chdb_client)
    db = cfg.database
    assert check_table(chdb_client, "otel_traces", TRACES_SCHEMA) == [
        "table otel_traces does not exist (create it with `otelwax clickhouse init`)"
    ]
    chdb_client.execute(
        f"CREATE TABLE {db}.partial (Timestamp DateTime64(9), TraceId UInt64, SpanName String) "
        "ENGINE = MergeTree ORDER BY Timestamp"
    )
    problems = check_table(chdb_client, "partial", TRACES_SCHEMA)
    assert (
        "partial: column 'TraceId' has type UInt64, incompatible with the string written: "
        "string cannot be stored as UInt64"
    ) in problems
    assert "partial: column 'SpanId' (string) is missing" in problems
    assert (
        "partial: column 'SpanAttributes' (map<string, string>) is missing "
        "(or 'SpanAttributes.keys' + 'SpanAttributes.values' Array columns)"
    ) in problems
    assert not any("SpanName" in p or "'Timestamp'" in p for p in problems)


def test_chdb_concurrent_inserts_share_one_engine(chdb_client) -> None:
    from connectors.clickhouse import open_client

    cfg = _cfg(chdb_client)
    init_schema(chdb_client, cfg)
    batches = [decode_traces(trace_payloads(1, seed=100 + i)).batch for i in range(8)]
    clients = [open_client(cfg) for _ in range(2)]  # same process: same engine

    def work(i: int) -> None:
        clients[i % 2].insert_arrow(cfg.traces_table, batches[i], dedup_token=f"w:{i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c in clients:
        c.close()
    q = f"SELECT count(), uniqExact(SpanId) FROM {cfg.database}.{cfg.traces_table}"
    assert chdb_client.execute(q) == [(800, 800)]


def test_chdb_one_data_path_per_process(chdb_client, tmp_path) -> None:
    from connectors.clickhouse import open_client

    with pytest.raises(ClickHouseError, match="one embedded data path per process"):
        open_client(ClickHouseConfig(path=str(tmp_path / "other")))


# --- clickhouse-server 18.16, legacy layout ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["native_http", "driver"])
def test_server_legacy_insert_and_read_back(ch_server, fmt: str) -> None:
    cfg = ch_server.cfg.model_copy(update={"insert_format": fmt})
    ch_server.cfg = cfg
    stmts = init_schema(ch_server, cfg)
    assert any("`SpanAttributes.keys` Array(String)" in s for s in stmts)  # auto → legacy
    assert check_table(ch_server, cfg.traces_table, TRACES_SCHEMA) == []
    batch = decode_traces(
        trace_payloads(2, links_per_span=1, events_per_span=2, all_value_types=True, unicode=True)
    ).batch
    batch = batch.slice(3, 150)  # sliced buffers must encode correctly too
    assert ch_server.insert_arrow(cfg.traces_table, batch) == 150
    _assert_server_holds(ch_server, batch)


def _assert_server_holds(ch_server, batch: pa.RecordBatch) -> None:
    """The legacy traces table holds exactly ``batch``'s spans, field by field."""
    cfg = ch_server.cfg
    rows = ch_server._driver.execute(
        f"SELECT * FROM {cfg.database}.{cfg.traces_table} ORDER BY SpanId", with_column_types=True
    )
    names = [c[0] for c in rows[1]]
    got = [dict(zip(names, r, strict=True)) for r in rows[0]]
    want = batch.take(pc.sort_indices(batch.column("SpanId"))).to_pylist()
    assert len(got) == len(want) == batch.num_rows
    for g, e in zip(got, want, strict=True):
        assert g["TimestampNs"] == e["Timestamp"].value
        assert int(g["Timestamp"].timestamp()) == e["Timestamp"].value // 10**9
        for k in ("TraceId", "SpanId", "ParentSpanId", "SpanName", "SpanKind", "ServiceName"):
            assert g[k] == e[k], k
        assert (g["Duration"], g["StatusCode"], g["StatusMessage"]) == (
            e["Duration"],
            e["StatusCode"],
            e["StatusMessage"],
        )
        assert (
            list(zip(g["SpanAttributes.keys"], g["SpanAttributes.values"], strict=True))
            == (e["SpanAttributes"])
        )
        assert (
            list(zip(g["ResourceAttributes.keys"], g["ResourceAttributes.values"], strict=True))
            == (e["ResourceAttributes"])
        )
        assert g["Events.Timestamp"] == [t.value for t in e["Events.Timestamp"]]
        assert g["Events.Name"] == e["Events.Name"]
        assert [
            list(zip(k, v, strict=True))
            for k, v in zip(g["Events.Attributes.keys"], g["Events.Attributes.values"], strict=True)
        ] == e["Events.Attributes"]
        assert g["Links.SpanId"] == e["Links.SpanId"]
        assert [
            list(zip(k, v, strict=True))
            for k, v in zip(g["Links.Attributes.keys"], g["Links.Attributes.values"], strict=True)
        ] == e["Links.Attributes"]


def test_server_inserts_in_turn_and_at_once_store_exactly_their_rows(ch_server) -> None:
    """A server client writes the String columns of each insert into one buffer it reuses
    (``StringArena``): inserts that grow, shrink, and two threads inserting at once through
    the same client each store exactly their own rows."""
    from otelwax.codec import decode_traces as decode

    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    full = decode(
        trace_payloads(12, links_per_span=1, events_per_span=2, all_value_types=True, unicode=True)
    ).batch
    assert full.num_rows >= 1000
    in_turn = [full.slice(0, 40), full.slice(40, 300), full.slice(340, 25), full.slice(365, 200)]
    for b in in_turn:
        assert ch_server.insert_arrow(cfg.traces_table, b) == b.num_rows
    rest = [full.slice(o, 50) for o in range(565, full.num_rows, 50)]
    errors: list[BaseException] = []

    def insert(batches: list[pa.RecordBatch]) -> None:
        try:
            for b in batches:
                ch_server.insert_arrow(cfg.traces_table, b)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(rest[k::2],)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    _assert_server_holds(ch_server, full)


def test_server_emulated_dedup_token(ch_server) -> None:
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    assert ch_server.supports_dedup_token(cfg.traces_table)
    batch = decode_traces(trace_payloads(2, seed=11)).batch
    assert ch_server.insert_arrow(cfg.traces_table, batch, dedup_token="p:1:0-9") == 200
    assert ch_server.insert_arrow(cfg.traces_table, batch, dedup_token="p:1:0-9") == 0
    q = f"SELECT count(), uniqExact(SpanId) FROM {cfg.database}.{cfg.traces_table}"
    assert ch_server.execute(q) == [(200, 200)]
    # A table without the InsertToken column cannot deduplicate on this server.
    ch_server.execute(
        f"CREATE TABLE {cfg.database}.plain (Timestamp DateTime, SpanId String) "
        "ENGINE = MergeTree ORDER BY Timestamp"
    )
    assert not ch_server.supports_dedup_token("plain")
    with pytest.raises(ClickHouseError, match="no InsertToken column"):
        ch_server.insert_arrow("plain", batch.select(["Timestamp", "SpanId"]), dedup_token="x")


def test_server_long_strings_and_logs(ch_server) -> None:
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    assert check_table(ch_server, cfg.logs_table, LOGS_SCHEMA) == []
    batch = decode_logs(logs_payloads(1, all_value_types=True, unicode=True)).batch
    bodies = ["x" * 200, "é" * 9000, "", "🚀" * 5000] * (batch.num_rows // 4)
    batch = batch.set_column(
        LOGS_SCHEMA.get_field_index("Body"), LOGS_SCHEMA.field("Body"), pa.array(bodies)
    )
    ch_server.insert_arrow(cfg.logs_table, batch)
    got = ch_server.execute(
        f"SELECT Body, count() FROM {cfg.database}.{cfg.logs_table} GROUP BY Body ORDER BY Body"
    )
    assert sorted(got) == sorted((b, batch.num_rows // 4) for b in set(bodies))


@pytest.mark.parametrize("backend", ["server", "chdb"])
def test_params_are_escaped(backend: str, request) -> None:
    """A string parameter comes back as given: quotes, backslashes, tabs and newlines (chdb
    parses a parameter's text with escapes: ``a\\b`` was read as ``a`` + backspace)."""
    client = request.getfixturevalue("ch_server" if backend == "server" else "chdb_client")
    for evil in ("x' OR 1=1 --\\", "a\\b\\nc", "tab\there\nline \"q\" ü"):
        assert client.execute("SELECT {v:String}", {"v": evil}) == [(evil,)], evil
    assert client.execute("SELECT length({a:Array(String)})", {"a": ["a", "b'"]}) == [(2,)]


def test_cli_init_and_check(clickhouse_server, ch_server, capsys: pytest.CaptureFixture) -> None:
    from otelwax.cli import main

    conn = [
        "--mode", "server", "--port", str(clickhouse_server.port),
        "--http-port", str(clickhouse_server.http_port), "--database", ch_server.cfg.database,
    ]  # fmt: skip
    assert main(["clickhouse", "check", *conn]) == 1
    out = capsys.readouterr().out
    assert f"problem: traces: table {ch_server.cfg.database}.otel_traces does not exist" in out
    assert "metrics: ClickHouse 18.16" in out and "(skipped)" in out  # not a problem unasked
    assert main(["clickhouse", "init", *conn]) == 0
    assert main(["clickhouse", "check", *conn]) == 0
    assert "accept every column; insert deduplication tokens supported" in capsys.readouterr().out
    assert main(["clickhouse", "init", "--dry-run", "--variant", "modern", *conn]) == 0
    assert "Map(LowCardinality(String), String)" in capsys.readouterr().out


def test_server_partly_stored_token_is_replaced(ch_server) -> None:
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    batch = decode_traces(trace_payloads(2, seed=12)).batch
    t = cfg.traces_table
    # Simulate a crash after the first part of an insert: half the rows carry the token.
    ch_server.insert_arrow(t, batch.slice(0, 80), dedup_token="p:2:0-1")
    assert ch_server.insert_arrow(t, batch, dedup_token="p:2:0-1") == 200
    q = f"SELECT count(), uniqExact(SpanId) FROM {cfg.database}.{t}"
    for _ in range(50):  # the DELETE mutation of 18.16 runs in the background
        if ch_server.execute(q) == [(200, 200)]:
            break
        time.sleep(0.1)
    assert ch_server.execute(q) == [(200, 200)]
    assert ch_server.insert_arrow(t, batch, dedup_token="p:2:0-1") == 0


def _settled(client, sql: str, want: list[tuple]) -> list[tuple]:
    """``sql``'s rows once they equal ``want`` (18.16 runs DELETE mutations in the
    background), or after ~5 s whatever they are."""
    for _ in range(50):
        got = client.execute(sql)
        if got == want:
            break
        time.sleep(0.1)
    return got


def test_server_trace_copy_holds_each_span_once_after_partial_stores(ch_server) -> None:
    """The default schema on 18.16 copies the spans into ``<table>_by_trace`` (ordered by
    TraceId) through a materialized view. A range found partly stored is replaced in the copy
    too, and a range whose spans reached the table but not the copy (the view's insert failed)
    is stored again: the copy ends with every span once, like the table."""
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    batch = decode_traces(trace_payloads(2, seed=15)).batch
    t, db = cfg.traces_table, cfg.database
    counts = [
        f"SELECT count(), uniqExact(SpanId) FROM {db}.{name}" for name in (t, f"{t}_by_trace")
    ]
    # A crash after the first part of an insert: 80 rows carry the token in both tables.
    ch_server.insert_arrow(t, batch.slice(0, 80), dedup_token="p:3:0-1")
    assert ch_server.insert_arrow(t, batch, dedup_token="p:3:0-1") == 200
    assert [_settled(ch_server, q, [(200, 200)]) for q in counts] == [[(200, 200)]] * 2
    # The table holds the range, the copy lost 30 of its spans.
    lost = batch.column("SpanId").to_pylist()[:30]
    ch_server.execute(
        f"ALTER TABLE {db}.{t}_by_trace DELETE WHERE has({{ids:Array(String)}}, SpanId)",
        {"ids": lost},
    )
    assert _settled(ch_server, counts[1], [(170, 170)]) == [(170, 170)]
    assert ch_server.insert_arrow(t, batch, dedup_token="p:3:0-1") == 200
    assert [_settled(ch_server, q, [(200, 200)]) for q in counts] == [[(200, 200)]] * 2
    assert ch_server.insert_arrow(t, batch, dedup_token="p:3:0-1") == 0


def test_native_encoding_of_modern_types_read_by_chdb(chdb_client) -> None:
    """The server path's Native encoder (DateTime64, Map, LowCardinality, nested Arrays) as a
    modern ClickHouse reads it — chdb is a modern ClickHouse, so it stands in for one."""
    from connectors.clickhouse import encode_native, plan_columns

    cfg = _cfg(chdb_client)
    init_schema(chdb_client, cfg)
    batch = decode_traces(
        trace_payloads(2, links_per_span=1, all_value_types=True, unicode=True)
    ).batch.slice(7, 120)
    plan = plan_columns(batch.schema, chdb_client.table_columns(cfg.traces_table))
    assert plan.problems == ()
    body = encode_native(batch, plan)
    cols = ", ".join(f"`{c.name}`" for c in plan.cols)
    eng = chdb_client._engine
    with (
        eng.lock,
        eng.session.send_insert(
            f"INSERT INTO {cfg.database}.{cfg.traces_table} ({cols})", "Native"
        ) as ins,
    ):
        ins.append(bytes(body))
        ins.finish()
    names = ", ".join(f"`{n}`" for n in TRACES_SCHEMA.names)
    got = chdb_client.execute(
        f"SELECT {names} FROM {cfg.database}.{cfg.traces_table} ORDER BY SpanId"
    )
    want = batch.take(pc.sort_indices(batch.column("SpanId"))).to_pylist()
    assert len(got) == len(want) == 120
    for g, e in zip(got, want, strict=True):
        g = dict(zip(TRACES_SCHEMA.names, g, strict=True))
        assert g["Timestamp"].value == e["Timestamp"].value
        assert [t.value for t in g["Events.Timestamp"]] == [t.value for t in e["Events.Timestamp"]]
        for k in TRACES_SCHEMA.names:
            if "Timestamp" not in k:
                assert g[k] == e[k], k


def test_native_encoding_of_bool_read_by_chdb(chdb_client) -> None:
    """Bool columns (the metrics tables' IsMonotonic) encode as one byte per row; nulls as
    false. ``check_table`` used to call a bool column incompatible with Bool."""
    from connectors.clickhouse import encode_native, plan_columns

    db = chdb_client.cfg.database
    chdb_client.execute(f"CREATE TABLE {db}.b (k UInt32, v Bool) ENGINE = MergeTree ORDER BY k")
    batch = pa.RecordBatch.from_pydict(
        {"k": pa.array([1, 2, 3], pa.uint32()), "v": pa.array([True, None, False])}
    )
    assert check_table(chdb_client, f"{db}.b", batch.schema) == []
    plan = plan_columns(batch.schema, chdb_client.table_columns(f"{db}.b"))
    eng = chdb_client._engine
    with eng.lock, eng.session.send_insert(f"INSERT INTO {db}.b (k, v)", "Native") as ins:
        ins.append(bytes(encode_native(batch, plan)))
        ins.finish()
    assert chdb_client.execute(f"SELECT k, v FROM {db}.b ORDER BY k") == [
        (1, True), (2, False), (3, False)
    ]


def test_a_second_process_on_a_chdb_folder_is_told_what_to_change(tmp_path) -> None:
    """Two flows on one embedded folder: the second gets the fix, not chdb's lock message."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from connectors.clickhouse import ClickHouseConfig, open_client\n"
        "c = open_client(ClickHouseConfig(path=sys.argv[1])); c.execute('SELECT 1')\n"
        "print('open', flush=True); time.sleep(float(sys.argv[2]))\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "open"
        res = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path), "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert f"cannot open embedded chdb at {tmp_path}" in last
        assert "own clickhouse.path" in last and "clickhouse.mode: server" in last
    finally:
        first.kill()
        first.wait()


def test_cli_works_flow_by_flow_and_check_creates_nothing(tmp_path) -> None:
    """Each flow has its own embedded folder; ``check`` on a traces-only store neither
    complains about otel_logs nor creates folders no flow uses (a subprocess: one chdb per
    process)."""
    import os
    import subprocess
    import sys

    conf = tmp_path / "otelwax.yaml"
    conf.write_text(f'clickhouse: {{path: "{tmp_path}/chdb/{{flow}}"}}\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "otelwax", "clickhouse", *args, "-c", str(conf)],
            capture_output=True, text=True, timeout=180, env=dict(os.environ),
        )  # fmt: skip

    res = cli("check")
    assert res.returncode == 1 and not (tmp_path / "chdb").exists()
    assert f"traces: {tmp_path}/chdb/traces does not exist yet" in res.stdout
    assert "otelwax clickhouse init -c" in res.stdout and "--flow traces" in res.stdout
    assert cli("init", "--flow", "traces").returncode == 0
    assert sorted(p.name for p in (tmp_path / "chdb").iterdir()) == ["traces"]
    res = cli("check", "--flow", "traces")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "otel_traces accept every column" in res.stdout and "otel_logs" not in res.stdout
    assert cli("init").returncode == 0  # every flow, metrics tables included
    res = cli("check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in (tmp_path / "chdb").iterdir()) == ["logs", "metrics", "traces"]
    assert "otel_metrics_gauge" in res.stdout


# --- a table that changes under a running client -----------------------------------------------


def _spans(n: int = 20) -> pa.RecordBatch:
    return decode_traces(trace_payloads(1, seed=5)).batch.slice(0, n)


def _create_spans_table(client, db: str, name: str) -> None:
    client.execute(
        f"CREATE TABLE {db}.{name} (Timestamp DateTime, SpanId String) "
        "ENGINE = MergeTree ORDER BY Timestamp"
    )


def _services_stored(client, db: str, name: str) -> list[tuple]:
    return client.execute(
        f"SELECT ServiceName, count() FROM {db}.{name} GROUP BY ServiceName ORDER BY ServiceName"
    )


def test_chdb_insert_writes_a_column_another_client_added(chdb_client) -> None:
    """A migration adds a column while a flow writes: the flow's next batch fills it."""
    from connectors.clickhouse import open_client

    db = chdb_client.cfg.database
    _create_spans_table(chdb_client, db, "spans")
    batch = _spans()
    services = sorted(set(batch.column("ServiceName").to_pylist()))
    assert chdb_client.insert_arrow("spans", batch) == 20
    other = open_client(chdb_client.cfg)  # e.g. `otelwax clickhouse migrate --apply`
    try:
        other.execute(f"ALTER TABLE {db}.spans ADD COLUMN ServiceName String")
    finally:
        other.close()
    assert chdb_client.insert_arrow("spans", batch) == 20
    stored = dict(_services_stored(chdb_client, db, "spans"))
    assert stored.pop("") == 20  # the rows written before the column existed
    assert sorted(stored) == services and sum(stored.values()) == 20
    # Dropped and created again without SpanId: the next insert writes what the table has.
    chdb_client.execute(f"DROP TABLE {db}.spans")
    chdb_client.execute(
        f"CREATE TABLE {db}.spans (Timestamp DateTime, ServiceName String) "
        "ENGINE = MergeTree ORDER BY Timestamp"
    )
    assert chdb_client.insert_arrow("spans", batch) == 20
    assert sum(n for _, n in _services_stored(chdb_client, db, "spans")) == 20


def test_server_insert_writes_a_column_added_while_it_runs(
    ch_server, clickhouse_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Columns added through this client, or by another process, are written from then on."""
    from connectors import clickhouse_client
    from connectors.clickhouse import open_client
    from tests.connectors.conftest import server_config

    db = ch_server.cfg.database
    _create_spans_table(ch_server, db, "spans")
    batch = _spans()
    assert ch_server.insert_arrow("spans", batch) == 20
    ch_server.execute(f"ALTER TABLE {db}.spans ADD COLUMN ServiceName String")
    assert ch_server.insert_arrow("spans", batch) == 20
    stored = dict(_services_stored(ch_server, db, "spans"))
    assert stored.pop("") == 20 and sum(stored.values()) == 20
    # Another process (`otelwax clickhouse migrate --apply`) adds a column: seen once the
    # cached column list is older than its maximum age.
    monkeypatch.setattr(clickhouse_client, "COLUMNS_MAX_AGE_S", 0.2)
    other = open_client(server_config(clickhouse_server, db))
    try:
        other.execute(f"ALTER TABLE {db}.spans ADD COLUMN SpanName String")
    finally:
        other.close()
    time.sleep(0.3)
    assert ch_server.insert_arrow("spans", batch) == 20
    names = ch_server.execute(f"SELECT count() FROM {db}.spans WHERE SpanName != ''")
    assert names == [(20,)]


@pytest.mark.parametrize(
    "arr",
    [
        pa.array(["", "a", "ü→€", "x" * 127, "y" * 128, "z" * 20_000, None, "end"]),
        pa.array(["skip", "é" * 70, None, "", "b" * 300, "tail"]).slice(1, 4),
        pa.array(["w" * 16_384, "v"], pa.large_string()),
        pa.array([], pa.string()),
        pa.array([None, None], pa.string()),
    ],
    ids=["mixed", "sliced", "large_string", "empty", "all_null"],
)
def test_the_native_string_encoder_writes_what_the_arrow_reference_writes(arr) -> None:
    """The native codec's Native ``String`` bodies (the server inserts' largest part) are byte
    for byte the numpy/Arrow reference's: varint lengths across 1-3 bytes, slices, nulls."""
    from connectors.clickhouse_native import _enc_strings, enc_strings_arrow
    from otelwax.codec import native

    assert native.NATIVE_STRINGS, "otelwax._native lacks native_strings: rebuild native/"
    assert bytes(_enc_strings(arr)) == bytes(enc_strings_arrow(arr))
    out = bytearray(b"\xee" * (len(want := bytes(enc_strings_arrow(arr))) + 7))
    assert native.native_strings_into(arr, out, 3) == len(want)
    assert out[3 : 3 + len(want)] == want and out[:3] + out[3 + len(want) :] == b"\xee" * 7
    if want:  # one byte short: told the size, nothing written
        short = bytearray(len(want) - 1)
        assert native.native_strings_into(arr, short, 0) == len(want)
        assert short == bytes(len(want) - 1)


def test_blocks_encoded_through_a_string_arena_are_the_reference_blocks(ch_server) -> None:
    """A ``StringArena`` reused block after block (growing, shrinking, or busy in another
    block) gives the same Native block as the reference encoder, here for the server's
    legacy traces table (Strings, Arrays of Strings, nested Arrays, the token column)."""
    from connectors.clickhouse_native import StringArena, enc_strings_arrow, native_parts
    from otelwax.codec import decode_traces as decode

    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    full = decode(
        trace_payloads(6, links_per_span=1, events_per_span=2, all_value_types=True, unicode=True)
    ).batch
    plan = plan_columns(full.schema, ch_server.table_columns(f"{cfg.database}.{cfg.traces_table}"))
    assert plan.problems == () and plan.token_column
    arena = StringArena()
    for off, n in ((0, 30), (30, 400), (430, 10), (440, 150), (5, 400)):
        b = full.slice(off, n)
        with arena.block() as strings:
            assert strings is not None
            got = b"".join(native_parts(b, plan, "tok", strings))
            with arena.block() as busy:  # one block at a time: another gets its own bytes
                assert busy is None
                assert b"".join(native_parts(b, plan, "tok", busy)) == got
        assert got == b"".join(native_parts(b, plan, "tok", enc_strings_arrow))
