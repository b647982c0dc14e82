"""connectors.clickhouse_embedded: what a flow's embedded chdb engine runs with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MIB = 2**20


def test_embedded_engine_caps_its_caches_and_merge_memory(chdb_client) -> None:
    """chdb sizes its caches for a server of its own (5 GiB each); in a flow process they are
    capped, and no merge starts while merges hold 256 MiB: what the engine reports."""
    rows = dict(
        chdb_client.execute(
            "SELECT name, toUInt64(value) FROM system.server_settings WHERE name IN "
            "('mark_cache_size', 'index_mark_cache_size', 'primary_index_cache_size', "
            "'query_condition_cache_size', 'merges_mutations_memory_usage_soft_limit')"
        )
    )
    assert len(rows) == 5, rows
    assert all(0 < v <= 64 * MIB for k, v in rows.items() if k.endswith("cache_size")), rows
    assert rows["merges_mutations_memory_usage_soft_limit"] == 256 * MIB


def test_an_insert_waits_while_merges_hold_more_than_the_limit(chdb_client, monkeypatch) -> None:
    """With ``merge_wait_mib``, an insert does not run beside merges holding more than that
    (an insert and a merge at once make a flow's memory peaks): it starts once they are done."""
    import time

    import pyarrow as pa

    import connectors.clickhouse_embedded as embedded
    from connectors.clickhouse import open_client

    db = chdb_client.cfg.database
    chdb_client.execute(f"CREATE TABLE {db}.big (k String, v String) ENGINE = MergeTree ORDER BY k")
    chdb_client.execute(f"CREATE TABLE {db}.small (x UInt64) ENGINE = MergeTree ORDER BY x")
    chdb_client.execute(f"SYSTEM STOP MERGES {db}.big")
    for i in range(6):
        chdb_client.execute(
            f"INSERT INTO {db}.big SELECT toString(cityHash64(number, {i})), "
            "randomPrintableASCII(100) FROM numbers(300000)"
        )
    monkeypatch.setattr(embedded, "MERGE_WAIT_MIN_INSERT", 0)
    monkeypatch.setattr(embedded, "MERGE_WAIT_MAX_S", 120.0)

    def merging() -> int:
        sql = f"SELECT toUInt64(sum(memory_usage)) FROM system.merges WHERE database = '{db}'"
        return chdb_client.execute(sql)[0][0]

    chdb_client.execute(f"SYSTEM START MERGES {db}.big")
    deadline = time.monotonic() + 60
    while not merging() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert merging(), "no merge started"
    waiting = open_client(chdb_client.cfg.model_copy(update={"merge_wait_mib": 1}))
    waiting.insert_arrow(f"{db}.small", pa.record_batch([pa.array([1], pa.uint64())], ["x"]))
    assert not merging(), "the insert ran beside the merge"
    waiting.close()
    assert chdb_client.execute(f"SELECT count() FROM {db}.small") == [(1,)]


# A fresh process (chdb reads JE_MALLOC_CONF once, when it loads): one insert of ~50 MiB of
# Arrow, then how much chdb's allocator keeps resident beyond what it has allocated.
_INSERT_THEN_STATS = """
import re, sys
import pyarrow as pa
import pyarrow.compute as pc
from connectors.clickhouse import ClickHouseConfig, open_client

client = open_client(ClickHouseConfig(mode="embedded", path=sys.argv[1], database="t"))
client.execute("CREATE DATABASE t")
client.execute("CREATE TABLE t.big (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
ids = pa.array(range(80_000), pa.uint64())
texts = pc.binary_repeat(pc.cast(ids, pa.string()), 120)
client.insert_arrow("t.big", pa.record_batch({"id": ids, "s": texts}))
# right after the insert: pages freed by the insert that jemalloc has not returned yet
stats = client.execute("SELECT stats FROM system.jemalloc_stats")[0][0]
m = re.search(r"Allocated: (\\d+), active: \\d+, metadata: (\\d+).*?resident: (\\d+)", stats)
print(*m.groups())
"""


def test_an_insert_returns_its_big_buffers_to_the_os_when_it_ends(tmp_path: Path) -> None:
    """chdb's allocator hands back the big buffers of an insert (1 MiB and more: its column
    data) as they are freed, rather than keeping them for 300 ms: in a flow that inserts a
    range every second they were ~40-50 MiB of its RSS at any time (bench/README.md, "flow
    memory, round 5")."""
    env = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    out = subprocess.run(
        [sys.executable, "-c", _INSERT_THEN_STATS, str(tmp_path / "chdb")], capture_output=True,
        text=True, timeout=120, check=True, env=env,
    )  # fmt: skip
    allocated, metadata, resident = (int(x) for x in out.stdout.split())
    assert resident - allocated - metadata < 40 * MIB, (allocated, metadata, resident)
