"""connectors.clickhouse_embedded: what a flow's embedded chdb engine runs with."""

from __future__ import annotations

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
