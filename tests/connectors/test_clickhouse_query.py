"""``otelwax query``'s named queries on real chdb and the 18.16 server, and the HTML report."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from connectors.clickhouse import init_schema
from connectors.clickhouse_query import QueryError, Tables, run_query
from otelwax.codec.pydecode import decode_traces
from tests.otlpgen import trace_payloads


def _spans_now() -> pa.RecordBatch:
    """Spans dated a minute ago (the queries look back from now())."""
    base = time.time_ns() - 60 * 10**9
    return decode_traces(trace_payloads(2, base_time_ns=base)).batch


def _store_and_check_queries(client) -> None:
    """Create the tables on ``client``, store spans dated now, and check every query."""
    cfg = client.cfg
    init_schema(client, cfg)
    batch = _spans_now()
    client.insert_arrow(cfg.traces_table, batch)
    tables = Tables.of(cfg)
    rows = batch.to_pylist()
    counts = run_query(client, tables, "counts").as_dicts()
    assert {"table": tables.traces, "rows": len(rows)} in counts

    services = run_query(client, tables, "services", {"since_s": 3600}).as_dicts()
    want = Counter(r["ServiceName"] for r in rows)
    assert {s["service"]: s["spans"] for s in services} == dict(want)
    errors = Counter(r["ServiceName"] for r in rows if r["StatusCode"] == "STATUS_CODE_ERROR")
    assert {s["service"]: s["errors"] for s in services} == {k: errors[k] for k in want}
    assert all(s["p99_ms"] >= s["p50_ms"] >= 0 for s in services)

    traces = run_query(client, tables, "traces", {"slowest": 1, "limit": 3}).as_dicts()
    assert len(traces) == 3
    assert traces[0]["duration_ms"] >= traces[1]["duration_ms"] >= traces[2]["duration_ms"]
    tid = traces[0]["trace_id"]
    spans = run_query(client, tables, "trace", {"id": tid}).as_dicts()
    assert sorted(s["span_id"] for s in spans) == sorted(
        r["SpanId"] for r in rows if r["TraceId"] == tid
    )
    assert spans == sorted(spans, key=lambda s: (s["start_ns"], s["span_id"]))
    assert traces[0]["spans"] == len(spans)

    timeline = run_query(client, tables, "timeline", {"since_s": 3600}).as_dicts()
    assert sum(t["spans"] for t in timeline) == len(rows)

    for name, params, msg in (
        ("trace", {"id": "x' OR 1=1 --"}, "32 hex digits"),
        ("services", {"since_s": "1h"}, "want an integer"),
        ("nope", {}, "unknown query"),
    ):
        with pytest.raises(QueryError, match=msg):
            run_query(client, tables, name, params)


def test_queries_on_chdb(chdb_client) -> None:
    _store_and_check_queries(chdb_client)


def test_queries_on_the_legacy_layout_of_a_1816_server(ch_server) -> None:
    _store_and_check_queries(ch_server)


def test_trace_query_reads_the_trace_ordered_copy_on_a_1816_server(ch_server) -> None:
    """A server's default schema has the copy ordered by TraceId (on 18.16 a table): one
    trace is read from it, not by scanning the spans table. A span written to the copy
    alone shows that the answer came from there."""
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    batch = _spans_now()
    ch_server.insert_arrow(cfg.traces_table, batch)
    tables = Tables.of(cfg)
    counts = {c["table"]: c["rows"] for c in run_query(ch_server, tables, "counts").as_dicts()}
    assert counts[f"{cfg.traces_table}_by_trace"] == counts[cfg.traces_table] == len(batch)
    tid = batch.column("TraceId")[0].as_py()
    extra = batch.filter(pa.compute.equal(batch.column("TraceId"), tid)).slice(0, 1)
    extra = extra.set_column(2, "SpanId", pa.array(["00000000000000ff"]))
    ch_server.insert_arrow(f"{cfg.traces_table}_by_trace", extra)
    spans = run_query(ch_server, tables, "trace", {"id": tid}).as_dicts()
    assert "00000000000000ff" in {s["span_id"] for s in spans}


def test_a_trace_lookup_on_the_1816_copy_reads_one_or_two_256_row_granules(ch_server) -> None:
    """The copy's granules hold 256 spans: a lookup reads the one or two granules (a trace may
    straddle a boundary) its trace sits in, ~4x fewer rows than 1024-row granules (a lookup's
    server CPU is mostly reading and decompressing that granule of every column)."""
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    batch = decode_traces(trace_payloads(30, seed=5)).batch
    ch_server.insert_arrow(cfg.traces_table, batch)
    copy = f"{cfg.database}.{cfg.traces_table}_by_trace"
    ch_server.execute(f"OPTIMIZE TABLE {copy} FINAL")  # one part: every granule full
    assert len(batch) > 2000
    want = Counter(batch.column("TraceId").to_pylist())
    for tid in sorted(want)[:: max(1, len(want) // 20)]:
        rows = ch_server.execute(
            f"SELECT count() FROM {copy} WHERE TraceId = {{tid:String}} "
            "SETTINGS max_rows_to_read = 512",
            {"tid": tid},
        )
        assert rows == [(want[tid],)]


def test_a_trace_viewed_again_is_read_from_the_uncompressed_cache(ch_server) -> None:
    """The trace query asks for the server's uncompressed cache: a trace looked at again (a
    UI refresh, a second user) skips reading and decompressing its blocks (18.16: -33 % server
    CPU per repeated lookup; a miss costs what it costs without the cache)."""
    cfg = ch_server.cfg
    init_schema(ch_server, cfg)
    batch = _spans_now()
    ch_server.insert_arrow(cfg.traces_table, batch)
    tables = Tables.of(cfg)
    tid = batch.column("TraceId")[0].as_py()
    hits = "SELECT value FROM system.events WHERE event = 'UncompressedCacheHits'"
    before = sum(v for (v,) in ch_server.execute(hits))
    for _ in range(2):
        assert run_query(ch_server, tables, "trace", {"id": tid}).as_dicts()
    assert sum(v for (v,) in ch_server.execute(hits)) > before


def test_a_missing_table_says_how_to_create_it(chdb_client) -> None:
    with pytest.raises(QueryError, match="otelwax clickhouse init"):
        run_query(chdb_client, Tables(chdb_client.cfg.database), "services")


def test_query_command_prints_tables_and_writes_the_report(
    chdb_client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otelwax.cli import main

    cfg = chdb_client.cfg
    init_schema(chdb_client, cfg)
    batch = _spans_now()
    chdb_client.insert_arrow(cfg.traces_table, batch)
    conf = tmp_path / "otelwax.yaml"
    ch = {"mode": "embedded", "path": cfg.path, "database": cfg.database}
    conf.write_text(yaml.safe_dump({"clickhouse": ch}))

    assert main(["query", "counts", "-c", str(conf)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["table", "rows"]
    assert f"{cfg.traces_table} {batch.num_rows}" in [" ".join(ln.split()) for ln in out]

    page = tmp_path / "report.html"
    assert main(["query", "report", "-c", str(conf), "--html", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {page.resolve()}"
    html = page.read_text()
    for element in ('id="counts"', 'id="services"', 'id="chart-p99"', 'id="waterfall"'):
        assert element in html, element
    assert html.count('class="span"') >= 2  # the slowest trace's spans as waterfall rows
    assert "<script" not in html and "http" not in html.split("<body>", 1)[1]
    # the command let go of the folder: only the fixture's client holds the engine now
    assert chdb_client._engine.refs == 1
