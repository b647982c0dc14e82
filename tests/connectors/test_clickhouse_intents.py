"""connectors.clickhouse_intents against real chdb and the 18.16 server: what the intent log
writes is what a restart reads back, whatever the flow is called, and it outlives merges."""

from __future__ import annotations

import pytest

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_intents import IntentLog, RangeRef
from connectors.clickhouse_sink import ClickHouseSinkConfig


@pytest.mark.parametrize("backend", ["chdb", "server"])
def test_recorded_intents_and_marks_read_back_after_a_merge(backend: str, request) -> None:
    """Intents and stored marks go in as one small insert; a flow name with quotes, a newline
    and non-ASCII is data, not SQL; ``written_at`` is the insert's time, so the table's TTL
    (chdb: 30 days) keeps the rows through a merge."""
    client = request.getfixturevalue("chdb_client" if backend == "chdb" else "ch_server")
    cfg = ClickHouseSinkConfig(flow="it's \"traces\"\nü")
    conn = ClickHouseConfig(mode="embedded", database=client.cfg.database)
    log = IntentLog(client, conn, cfg, f"{client.cfg.database}.otel_traces")
    log.create()
    a, b = RangeRef("spans", 0, 0, 9, 10, "id1"), RangeRef("spans", 0, 10, 19, 10, "id1")
    log.record([a])
    log.record([b], stored=[a])
    client.execute(f"OPTIMIZE TABLE {log.table} FINAL")
    assert log.ranges_from("spans", 0, 0) == [(0, 9, "id1"), (10, 19, "id1")]
    assert log.stored_from("spans", 0, 0) == {(0, 9)}
    assert log.pending_from("spans", 0) == 10
    log.confirm([b])
    assert log.pending_from("spans", 0) == 20
    age = client.execute(f"SELECT max(now() - written_at), count() FROM {log.table}")[0]
    assert 0 <= age[0] < 600 and age[1] == 4, age
