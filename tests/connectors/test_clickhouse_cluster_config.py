"""The clickhouseexporter's ``cluster_name`` / ``table_engine`` options: validation and the DDL
they produce (no server; tests/flows/test_clickhouse_cluster.py runs it on a real cluster)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.clickhouse_config import ClickHouseConfig
from connectors.clickhouse_intents import intents_ddl
from connectors.clickhouse_metrics_schema import metrics_ddl
from connectors.clickhouse_schema import schema_ddl

REPLICATED = {"name": "ReplicatedMergeTree"}


def _cfg(**kw: object) -> ClickHouseConfig:
    return ClickHouseConfig.model_validate({"mode": "server", **kw})


def _error(**kw: object) -> str:
    with pytest.raises(ValidationError) as exc:
        _cfg(**kw)
    return str(exc.value)


def test_exporter_option_names_are_accepted_at_the_top_level_and_under_tables() -> None:
    top = _cfg(cluster_name="prod", table_engine=REPLICATED)
    nested = _cfg(tables={"cluster_name": "prod", "table_engine": REPLICATED})
    assert top.tables == nested.tables
    assert top.tables.cluster_name == "prod" and top.tables.table_engine.replicated
    assert "given twice" in _error(cluster_name="a", tables={"cluster_name": "b"})


@pytest.mark.parametrize("name", ["ReplacingMergeTree", "Log", "Memory", "mergetree", ""])
def test_unknown_table_engine_is_refused_naming_the_path_and_the_choices(name: str) -> None:
    msg = _error(table_engine={"name": name})
    assert "tables.table_engine.name" in msg
    assert "MergeTree or ReplicatedMergeTree" in msg


@pytest.mark.parametrize(
    "params", ["'/p/{table}', '{replica}') DROP TABLE x --", "'/p/{table}', replica", "'a\\'b'"]
)
def test_engine_params_are_quoted_literals_only(params: str) -> None:
    msg = _error(table_engine={"name": "ReplicatedMergeTree", "params": params})
    assert "tables.table_engine.params" in msg and "quoted" in msg


def test_replicated_params_without_table_would_share_one_zookeeper_path() -> None:
    msg = _error(table_engine={"name": "ReplicatedMergeTree", "params": "'/ch/t', '{replica}'"})
    assert "{table}" in msg
    uuid = {"name": "ReplicatedMergeTree", "params": "'/ch/{uuid}/{shard}', '{replica}'"}
    assert _cfg(table_engine=uuid).tables.table_engine.params.startswith("'/ch/{uuid}")


def test_bad_cluster_names_and_distributed_without_a_cluster_are_refused() -> None:
    assert "tables.cluster_name" in _error(cluster_name="a b`; DROP")
    assert "needs cluster_name" in _error(tables={"distributed": True})


def test_cluster_options_need_a_server() -> None:
    msg = _error(mode="embedded", cluster_name="prod")
    assert "need mode: server" in msg
    assert "need mode: server" in _error(mode="embedded", table_engine=REPLICATED)


def test_cluster_name_with_mergetree_is_accepted_as_the_exporter_does() -> None:
    """The exporter then creates an unreplicated table on every node; so does otelwax."""
    cfg = _cfg(cluster_name="prod")
    ddl = "\n".join(schema_ddl("otel", "otel_traces", None, cfg.tables))
    assert "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces` ON CLUSTER `prod`" in ddl
    assert "ENGINE = MergeTree\n" in ddl and "Replicated" not in ddl
    assert "non_replicated_deduplication_window = 1000" in ddl


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "18.16"])
def test_replicated_ddl_gives_each_table_its_path_and_the_replicated_window(legacy: bool) -> None:
    opts = _cfg(cluster_name="prod", table_engine=REPLICATED).tables
    stmts = schema_ddl("otel", "otel_traces", "otel_logs", opts, legacy=legacy)
    assert all(" ON CLUSTER `prod`" in s for s in stmts), stmts
    ddl = "\n".join(stmts)
    for table in ("otel_traces", "otel_logs"):
        path = f"'/clickhouse/tables/{{shard}}/otel/{table}', '{{replica}}'"
        assert f"ENGINE = ReplicatedMergeTree({path})" in ddl
    assert ddl.count("replicated_deduplication_window = 1000") == 2
    assert "non_replicated" not in ddl
    if not legacy:
        assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/otel/" \
            "otel_traces_trace_id_ts', '{replica}')" in ddl  # fmt: skip


def test_user_params_get_each_table_name_and_keep_server_macros() -> None:
    opts = _cfg(
        table_engine={"name": "ReplicatedMergeTree", "params": "'/ch/{database}/{table}', '{r}'"}
    ).tables
    ddl = intents_ddl("`otel`.`otelwax_intents`", 0, opts, "otel", "otelwax_intents")
    assert "ENGINE = ReplicatedMergeTree('/ch/otel/otelwax_intents', '{r}')" in ddl
    gauge = metrics_ddl("otel", opts=opts)[1]
    assert "ReplicatedMergeTree('/ch/otel/otel_metrics_gauge', '{r}')" in gauge
    assert "replicated_deduplication_window = 1000" in gauge


def test_default_ddl_is_unchanged_without_cluster_options() -> None:
    opts = _cfg().tables
    ddl = "\n".join(schema_ddl("otel", "otel_traces", "otel_logs", opts))
    assert "ON CLUSTER" not in ddl and "Replicated" not in ddl and "_dist" not in ddl
    assert "ENGINE = MergeTree() PARTITION" in intents_ddl("`otel`.`i`", 0, opts, "otel", "i")


def test_distributed_tables_read_the_local_ones_on_the_cluster() -> None:
    opts = _cfg(cluster_name="prod", table_engine=REPLICATED, tables={"distributed": True}).tables
    dist = schema_ddl("otel", "otel_traces", None, opts)[-1]
    assert dist == (
        "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces_dist` ON CLUSTER `prod` AS "
        "`otel`.`otel_traces` ENGINE = Distributed(`prod`, `otel`, `otel_traces`, rand())"
    )
