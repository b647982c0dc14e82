"""ClickHouse over TLS: a private 18.16 server with ``https_port`` and ``tcp_port_secure``
and a certificate from a CA made here with openssl; otelwax stores rows through HTTPS (the
Native-over-HTTP inserts) and queries over the secure native port."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.clickhouse import ClickHouseConfig, init_schema, open_client
from otelwax.codec.pydecode import decode_traces
from tests.conftest import ROOT, free_port
from tests.jaegerfixtures import make_tls_files
from tests.otlpgen import trace_payloads

SCRIPT = ROOT / "scripts" / "services" / "clickhouse.sh"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("chtls")
    files = make_tls_files(d / "tls", "localhost")
    https, secure = free_port(), free_port()
    data = d / "data"
    (data / "config.d").mkdir(parents=True)
    (data / "config.d" / "tls.xml").write_text(
        f"""<?xml version="1.0"?>
<yandex>
  <https_port>{https}</https_port>
  <tcp_port_secure>{secure}</tcp_port_secure>
  <openSSL><server>
    <certificateFile>{files["cert"]}</certificateFile>
    <privateKeyFile>{files["key"]}</privateKeyFile>
    <verificationMode>none</verificationMode>
    <loadDefaultCAFile>false</loadDefaultCAFile>
    <disableProtocols>sslv2,sslv3</disableProtocols>
  </server></openSSL>
</yandex>
"""
    )
    env = dict(
        os.environ, CH_DATA=str(data), CH_TCP_PORT=str(free_port()), CH_HTTP_PORT=str(free_port())
    )
    subprocess.run([str(SCRIPT), "start"], check=True, env=env, capture_output=True, timeout=90)
    try:
        yield {"https": https, "secure": secure, "ca": files["ca"]}
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


def _cfg(srv: dict, **kw: object) -> ClickHouseConfig:
    return ClickHouseConfig(
        mode="server",
        host="localhost",
        port=srv["secure"],
        http_port=srv["https"],
        secure=True,
        database="tls",
        connect_timeout_s=3,
        timeout_s=10,
        **kw,  # type: ignore[arg-type]
    )


def test_rows_are_stored_over_https_with_a_private_ca(tls_server: dict) -> None:
    cfg = _cfg(tls_server, tls={"ca_file": str(tls_server["ca"])}, create_schema=True)
    client = open_client(cfg)
    try:
        assert client.version.startswith("18.16")
        init_schema(client, cfg)
        batch = decode_traces(trace_payloads(1, seed=71)).batch
        client.insert_arrow("otel_traces", batch)  # POST over HTTPS (http_port = https_port)
        assert client.execute("SELECT count() FROM tls.otel_traces") == [(batch.num_rows,)]
    finally:
        client.close()


def test_an_untrusted_certificate_is_refused_unless_verify_is_off(tls_server: dict) -> None:
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        open_client(_cfg(tls_server))  # the system roots do not know the test CA
    client = open_client(_cfg(tls_server, tls={"verify": False}))
    try:
        assert client.execute("SELECT 1") == [(1,)]
    finally:
        client.close()


def test_tls_settings_validate_without_io(tmp_path: Path) -> None:
    cfg = ClickHouseConfig(mode="server", secure=True, tls={"ca_file": str(tmp_path / "no.pem")})
    assert cfg.tls.verify is True  # nothing read yet: the file is opened when connecting
    with pytest.raises(FileNotFoundError):
        cfg.tls.ssl_context()
