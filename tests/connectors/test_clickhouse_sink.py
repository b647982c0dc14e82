"""connectors.clickhouse_sink against real chdb: overlapped inserts confirm ranges to the
source's RangeAcks only once stored, and a failing insert surfaces instead of vanishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.clickhouse import ClickHouseConfig
from connectors.clickhouse_schema import TRACES_SORT_KEY
from connectors.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, StoredRange
from connectors.kafka_source import RangeAcks
from otelwax.codec import decode_traces
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

    return make


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
