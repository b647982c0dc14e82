"""The report's lag table (``otelwax query report --lag NAME=URL``, as ``make run`` writes it)
has a row for every flow: the logs and metrics flows publish their consumer lag on their
metrics port like the traces flow, and a flow that publishes none still gets a row saying so."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from otelwax.cli.query import lag_rows
from tests.conftest import free_port
from tests.flows.conftest import ROOT, scrape_metrics


@pytest.mark.extended
def test_logs_and_metrics_flows_give_lag_rows(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    ports = {"metrics": free_port(), "logs": free_port()}
    topics = {f: make_topic(f, partitions=2) for f in ports}
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "flows": {
                    "metrics": {
                        "source": {"topic": topics["metrics"]},
                        "remote_write": None,
                        "metrics_port": ports["metrics"],
                        "clickhouse": {"path": str(tmp_path / "chdb-m"), "create_schema": True},
                    },
                    "logs": {
                        "source": {"topic": topics["logs"]},
                        "metrics_port": ports["logs"],
                        "clickhouse": {"path": str(tmp_path / "chdb-l"), "create_schema": True},
                    },
                },
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OTELWAX_CONFIG=str(cfg))
    procs = []
    try:
        for flow in ports:  # as make run starts them
            cmd = [sys.executable, "-m", "bytewax.run", f"flows.{flow}"]
            with open(tmp_path / f"{flow}.log", "wb") as fh:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=fh))
        for flow, port in ports.items():
            want = f'otelwax_kafka_consumer_lag{{partition="1",topic="{topics[flow]}"}}'
            assert want in scrape_metrics(port, want), (tmp_path / f"{flow}.log").read_text()
        rows = lag_rows([f"{flow}=http://127.0.0.1:{port}" for flow, port in ports.items()])
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    assert rows == [
        {"flow": "metrics", "topic": topics["metrics"], "lag": 0},
        {"flow": "logs", "topic": topics["logs"], "lag": 0},
    ]


def test_a_flow_without_lag_still_gets_a_row() -> None:
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a flow whose partitions have not started yet
            body = b"# TYPE otelwax_kafka_consumer_lag gauge\n"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rows = lag_rows([f"metrics=http://127.0.0.1:{srv.server_port}"])
    finally:
        srv.shutdown()
    assert len(rows) == 1 and rows[0]["flow"] == "metrics", rows
    assert "no consumer lag published" in rows[0]["topic"], rows
