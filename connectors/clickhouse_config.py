"""Where and how ClickHouse stores rows: ``ClickHouseConfig`` and its parts (no I/O here;
``connectors.clickhouse.open_client`` connects)."""

from __future__ import annotations

import os
import ssl
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.clickhouse_schema import IDENT_RE, TableOptions
from otelwax.resilience import BreakerConfig, RetryConfig
from otelwax.settings import StrictModel

__all__ = ["BatchSettings", "ClickHouseConfig", "ClickHouseTlsConfig"]


class BatchSettings(StrictModel):
    """When a sink flushes: whichever comes first."""

    max_rows: int = Field(100_000, gt=0, description="rows per insert (ClickHouse likes ≥10K)")
    max_seconds: float = Field(1.0, gt=0, description="longest a row waits before a flush")


class ClickHouseTlsConfig(StrictModel):
    """How a ``secure`` connection checks the server's certificate."""

    ca_file: str | None = Field(None, description="PEM roots to trust (None: the system's)")
    verify: bool = Field(
        True, description="check the certificate and host name (false only for tests)"
    )

    def ssl_context(self) -> ssl.SSLContext:
        """The client context (reads ``ca_file``: call it when connecting)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _password_from_env() -> SecretStr:
    return SecretStr(os.environ.get("OTELWAX_CLICKHOUSE_PASSWORD", ""))


class ClickHouseConfig(StrictModel):
    """Where and how rows are stored. Validation does no I/O; ``open_client`` connects."""

    mode: Literal["embedded", "server"] = "embedded"
    path: str = Field(
        ".data/chdb/{flow}",
        description="embedded: chdb data folder; {flow} is the flow's name (traces, logs, "
        "metrics, spanmetrics), so flows sharing this section each get a folder: chdb allows "
        "one process per folder",
    )
    merge_wait_mib: int = Field(
        64,
        ge=0,
        description="embedded: an insert of 4 MiB or more waits (at most 5 s) while chdb's "
        "running merges hold more than this many MiB, so an insert and a big merge do not "
        "peak together; 0 = never. 64 took a 5M-span backlog's peak RSS from ~745 to ~670 MiB "
        "for ~10 % more CPU per span while draining it",
    )
    host: str = "127.0.0.1"
    port: int = Field(9000, gt=0, lt=65536, description="server: native protocol port")
    http_port: int = Field(8123, gt=0, lt=65536, description="server: HTTP port (inserts)")
    user: str = "default"
    password: SecretStr = Field(
        default_factory=_password_from_env, description="default: $OTELWAX_CLICKHOUSE_PASSWORD"
    )
    secure: bool = Field(
        False,
        description="server: TLS on both ports (HTTPS inserts, native secure port): set port "
        "and http_port to the server's tcp_port_secure (9440) and https_port (8443)",
    )
    tls: ClickHouseTlsConfig = Field(default_factory=ClickHouseTlsConfig)
    database: str = "otel"
    traces_table: str = "otel_traces"
    logs_table: str = "otel_logs"
    create_schema: bool = Field(False, description="run the DDL when the sink starts")
    tables: TableOptions = Field(default_factory=TableOptions)
    insert_format: Literal["native_http", "driver"] = "native_http"
    connect_timeout_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(60.0, gt=0, description="send/receive timeout of one query")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @model_validator(mode="before")
    @classmethod
    def _exporter_names(cls, data: Any) -> Any:
        """The clickhouseexporter's top-level ``cluster_name`` / ``table_engine`` are
        ``tables.cluster_name`` / ``tables.table_engine`` here; both spellings work."""
        if not isinstance(data, dict) or not ({"cluster_name", "table_engine"} & data.keys()):
            return data
        data = dict(data)
        tables = data.get("tables")
        tables = dict(tables) if isinstance(tables, dict) else {}
        for key in ("cluster_name", "table_engine"):
            if key in data:
                if key in tables:
                    raise ValueError(f"{key} is given twice (top level and tables.{key})")
                tables[key] = data.pop(key)
        data["tables"] = tables
        return data

    @model_validator(mode="after")
    def _cluster_needs_server(self) -> ClickHouseConfig:
        t = self.tables
        if self.mode == "embedded" and (t.cluster_name or t.table_engine.replicated):
            raise ValueError(
                "cluster_name and Replicated table engines need mode: server (embedded chdb "
                "is one process, without ZooKeeper)"
            )
        return self

    @field_validator("database", "traces_table", "logs_table")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not IDENT_RE.match(v):
            raise ValueError(f"must match {IDENT_RE.pattern}")
        return v

    @property
    def schema_options(self) -> TableOptions:
        """``tables`` as the DDL for this ``mode`` uses them (``trace_copy: auto`` decided)."""
        return self.tables.for_mode(self.mode)

    def for_flow(self, flow: str) -> ClickHouseConfig:
        """This config with ``{flow}`` in ``path`` replaced by ``flow``."""
        if "{flow}" not in self.path:
            return self
        return self.model_copy(update={"path": self.path.replace("{flow}", flow)})
