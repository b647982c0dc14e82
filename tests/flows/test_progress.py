"""A running flow says what it is doing, and what it did when it is stopped."""

from __future__ import annotations

import re
import signal
import time

from tests import otlpgen
from tests.flows.conftest import chdb_rows, produce


def _wait_for(run, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, run.log_text(last=20000))
        if m:
            return m
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in the flow's log:\n{run.log_text()}")


def test_progress_lines_and_a_stopped_line_on_sigterm(flow_run) -> None:
    run = flow_run(partitions=2, progress_s=1)
    payloads = otlpgen.trace_payloads(20, n_resources=2, spans_per_resource=10)  # 400 spans
    produce(run.bootstrap, run.topic, payloads)
    p = run.start()
    line = _wait_for(run, r"progress: [\d,]+ records/s, 20 read, 400 rows stored.*; lag [^\n]*")
    assert f"lag {run.topic} 0 (max p" in line.group(0)
    p.send_signal(signal.SIGTERM)  # what Kubernetes and compose send
    run.wait(p, timeout=60)
    stopped = _wait_for(run, r"stopped after \d+ s: 20 records read, 400 rows stored")
    assert "read again on the next start" in run.log_text(last=20000)[stopped.start() :]
    stored = chdb_rows(run.settings["clickhouse"]["path"], "SELECT count() FROM otel.otel_traces")
    assert stored == [(400,)]
