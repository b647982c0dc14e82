"""SIGTERM (Kubernetes, compose, systemd) and Ctrl-C stop a running flow quietly: its
"stopped" line, no traceback, exit code 0."""

from __future__ import annotations

import signal
import time

import pytest

from tests import otlpgen
from tests.flows.conftest import chdb_rows, produce


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_a_running_flow_with_one_line_and_exit_0(flow_run, sig: int) -> None:
    run = flow_run(partitions=1)
    payloads = otlpgen.trace_payloads(3, n_resources=1, spans_per_resource=20)  # 60 spans
    produce(run.bootstrap, run.topic, payloads)
    p = run.start()
    deadline = time.monotonic() + 60
    while "start at" not in run.log_text():
        assert p.poll() is None and time.monotonic() < deadline, run.log_text()
        time.sleep(0.3)
    time.sleep(3)  # the ranges are stored (1 s age bound)
    p.send_signal(sig)
    t0 = time.monotonic()
    rc = run.wait(p, 30)
    took = time.monotonic() - t0
    text = run.log_text(last=20_000)
    assert rc == 0, text
    assert "Traceback" not in text and "signal received" not in text, text
    assert "stopped after" in text, text
    assert "\n\n" not in text.strip(), text
    assert took < 5, took
    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, "SELECT count() FROM otel.otel_traces") == [(60,)]
