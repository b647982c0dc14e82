"""``otelwax query`` against a running flow: its embedded chdb cannot be opened by another
process, so the flow answers on its metrics port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests import otlpgen
from tests.conftest import free_port
from tests.flows.conftest import produce, scrape_metrics

ROOT = Path(__file__).resolve().parents[2]


def _query(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelwax", "query", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip


def test_query_a_running_flow_and_write_its_report(flow_run, tmp_path: Path) -> None:
    port = free_port()
    run = flow_run(partitions=2, metrics_port=port)
    now = time.time_ns() - 30 * 10**9
    produce(run.bootstrap, run.topic, otlpgen.trace_payloads(10, base_time_ns=now))
    p = run.start(env={"OTELWAX_METRICS_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    scrape_metrics(port, 'otelwax_sent_total{component="clickhouse_sink",unit="rows"} 1000.0')
    assert p.poll() is None  # the flow is running: its folder is locked

    full = tmp_path / "otelwax.yaml"  # a deployment file naming the flow's folder
    full.write_text(f"clickhouse: {{path: '{run.settings['clickhouse']['path']}'}}\n")
    local = _query("counts", "-c", str(full), "--json")
    assert local.returncode == 1 and "--flow http://127.0.0.1:" in local.stderr  # the way out
    res = _query("counts", "--flow", url, "--json")
    assert res.returncode == 0, res.stderr
    counts = dict(json.loads(res.stdout)["rows"])
    assert counts["otel_traces"] == 1000

    res = _query("services", "--flow", url, "--since", "1h")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[:3] == ["service", "spans", "errors"]
    bad = _query("trace", "nothex", "--flow", url)
    assert bad.returncode == 1 and "32 hex digits" in bad.stderr

    page = tmp_path / "report.html"
    res = _query("report", "--flow", url, "--lag", f"traces={url}", "--html", str(page))
    assert res.returncode == 0, res.stderr
    html = page.read_text()
    assert 'id="waterfall"' in html and html.count('class="span"') >= 2
    assert f"<td>{run.topic}</td><td>0</td>" in html  # the flow's lag, read from /metrics
    p.kill()
