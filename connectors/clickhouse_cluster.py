"""Where the tables live on a ClickHouse cluster: the clickhouseexporter's ``cluster_name``
(``ON CLUSTER`` DDL) and ``table_engine`` (``{name, params}``) options, and the optional
``Distributed`` tables over them. Pure DDL text, no I/O.

- ``table_engine.name``: ``MergeTree`` (default) or ``ReplicatedMergeTree``; other names are
  refused (otelwax's exactly-once rests on MergeTree insert deduplication, and a Replacing or
  Collapsing engine would change what is stored). The trace-id lookup table gets the matching
  ``(Replicated)AggregatingMergeTree``.
- ``table_engine.params``: as in the exporter, the text between the engine's parentheses.
  ``{database}`` and ``{table}`` in it are replaced here by each table's names (so one setting
  serves every table, on servers older than 20.x too); ``{shard}``, ``{replica}`` and other
  macros are the server's. Empty with ``ReplicatedMergeTree``: ``'/clickhouse/tables/{shard}/
  {database}/{table}', '{replica}'``. Only quoted string literals are accepted.
- Replicated tables remember ``replicated_deduplication_window`` insert blocks (set to
  ``dedup_window``), shared by all replicas through ZooKeeper: a range replayed through any
  replica is skipped.
- ``cluster_name`` without a Replicated engine does what the exporter does: a separate,
  unreplicated table on every node. A flow must then always write to the same node.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from otelwax.settings import StrictModel

__all__ = ["DEFAULT_REPLICATED_PARAMS", "ENGINES", "TableEngine", "distributed_name"]

ENGINES = ("MergeTree", "ReplicatedMergeTree")
DEFAULT_REPLICATED_PARAMS = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
_PARAMS_RE = re.compile(r"^\s*('[^'\\]*'\s*(,\s*'[^'\\]*'\s*)*)?$")
DISTRIBUTED_SUFFIX = "_dist"


class TableEngine(StrictModel):
    """The engine of the tables otelwax creates (the clickhouseexporter's ``table_engine``)."""

    name: str = Field("MergeTree", description=f"one of {', '.join(ENGINES)}")
    params: str = Field(
        "",
        description="the engine's arguments, e.g. \"'/clickhouse/tables/{shard}/{database}/"
        "{table}', '{replica}'\" ({database}/{table}: each table's names; empty: that default "
        "for ReplicatedMergeTree)",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(
                f"unknown table engine {v!r}: otelwax creates {' or '.join(ENGINES)} tables "
                "(its exactly-once inserts need MergeTree token deduplication)"
            )
        return v

    @field_validator("params")
    @classmethod
    def _literals(cls, v: str) -> str:
        if not _PARAMS_RE.match(v):
            raise ValueError("must be comma-separated 'quoted' strings (no quotes or \\ inside)")
        return v

    @property
    def replicated(self) -> bool:
        """Whether tables are replicated through ZooKeeper."""
        return self.name.startswith("Replicated")

    def check_params(self) -> None:
        """Replicated params must give each table its own ZooKeeper path (``{table}``, or the
        server's ``{uuid}`` macro of Atomic databases)."""
        unique = "{table}" in self.params or "{uuid}" in self.params
        if self.replicated and self.params and not unique:
            raise ValueError(
                "ReplicatedMergeTree params must contain {table} (or {uuid}): otelwax creates "
                "several tables (spans, trace-id lookup, intents), each needs its own "
                "ZooKeeper path"
            )

    def clause(self, database: str, table: str, family: Literal["", "Aggregating"] = "") -> str:
        """``ENGINE = ...`` text of ``database.table`` (``family``: AggregatingMergeTree)."""
        if not self.replicated:
            return f"{family}MergeTree"
        params = self.params or DEFAULT_REPLICATED_PARAMS
        params = params.replace("{database}", database).replace("{table}", table)
        return f"Replicated{family}MergeTree({params})"

    def window_setting(self) -> str:
        """The MergeTree setting that sizes insert deduplication on these tables."""
        if self.replicated:
            return "replicated_deduplication_window"
        return "non_replicated_deduplication_window"


def on_cluster(cluster_name: str | None) -> str:
    """`` ON CLUSTER `name``` or nothing (the name is checked by the config)."""
    return f" ON CLUSTER `{cluster_name}`" if cluster_name else ""


def distributed_name(table: str) -> str:
    """The name of the ``Distributed`` table over ``table``."""
    return f"{table}{DISTRIBUTED_SUFFIX}"


def distributed_ddl(qualified_dist: str, qualified_local: str, cluster: str, database: str,
                    table: str) -> str:  # fmt: skip
    """A ``Distributed`` table reading ``database.table`` on every shard of ``cluster``
    (inserts through it are forwarded asynchronously: otelwax writes the local tables)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified_dist}{on_cluster(cluster)} AS {qualified_local} "
        f"ENGINE = Distributed(`{cluster}`, `{database}`, `{table}`, rand())"
    )
