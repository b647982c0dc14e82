"""ClickHouse fixtures: a real clickhouse-server (Debian 18.16) and real embedded chdb.

- ``clickhouse_server``: the shared test server, ``scripts/services/clickhouse.sh`` on native
  19000 / HTTP 18123 (reused when already running, stopped at the end only if started here).
  Override with ``OTELWAX_TEST_CLICKHOUSE=host:native_port:http_port``.
- ``ch_server``: a ``ServerClient`` on a fresh database of that server (dropped afterwards).
- ``chdb_client``: an ``EmbeddedClient`` on the one chdb data folder of this test process (chdb
  allows a single folder per process) and a fresh database per test.
- ``fault_server``: a private server instance (free native / HTTP ports, own data folder) that
  a test may stop and start (outage tests), never the shared one.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, port_open

SCRIPT = ROOT / "scripts" / "services" / "clickhouse.sh"


@dataclass
class ServerAddr:
    host: str
    port: int
    http_port: int
    env: dict[str, str]

    def run(self, action: str) -> None:
        subprocess.run([str(SCRIPT), action], check=True, env=self.env, capture_output=True)


def _server(tcp: int, http: int, data: Path) -> ServerAddr:
    env = dict(os.environ, CH_TCP_PORT=str(tcp), CH_HTTP_PORT=str(http), CH_DATA=str(data))
    return ServerAddr("127.0.0.1", tcp, http, env)


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ServerAddr]:
    addr = os.environ.get("OTELWAX_TEST_CLICKHOUSE")
    if addr:
        host, tcp, http = addr.split(":")
        yield ServerAddr(host, int(tcp), int(http), dict(os.environ))
        return
    srv = _server(19000, 18123, ROOT / ".data" / "clickhouse")
    started = not port_open("127.0.0.1", srv.port)
    if started:
        srv.run("start")
    yield srv
    if started:
        srv.run("stop")


def server_config(srv: ServerAddr, database: str, **kw: object):  # -> ClickHouseConfig
    from connectors.clickhouse import ClickHouseConfig

    return ClickHouseConfig(
        mode="server",
        host=srv.host,
        port=srv.port,
        http_port=srv.http_port,
        database=database,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def ch_server(clickhouse_server: ServerAddr):  # -> Iterator[ServerClient]
    from connectors.clickhouse import open_client

    db = f"t_{uuid.uuid4().hex[:10]}"
    cfg = server_config(clickhouse_server, db)
    client = open_client(cfg)
    client.execute(f"CREATE DATABASE {db}")
    yield client
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    client.close()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def chdb_client(chdb_path: Path):  # -> Iterator[EmbeddedClient]
    from connectors.clickhouse import ClickHouseConfig, open_client

    db = f"t_{uuid.uuid4().hex[:10]}"
    client = open_client(ClickHouseConfig(mode="embedded", path=str(chdb_path), database=db))
    client.execute(f"CREATE DATABASE {db}")
    yield client
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    client.close()


@pytest.fixture
def fault_server() -> Iterator[ServerAddr]:
    """A private, stoppable ClickHouse server (wiped before use, stopped after)."""
    srv = _server(free_port(), free_port(), ROOT / ".data" / "clickhouse-fault")
    srv.run("wipe")
    srv.run("start")
    yield srv
    srv.run("stop")
