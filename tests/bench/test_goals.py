"""``make bench``'s last table: issue 14's goals read from the benchmarks' JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _write(res: Path, name: str, data: dict) -> None:
    (res / f"{name}.json").write_text(json.dumps(data))


def _goals(res: Path, *extra: str) -> dict[str, tuple[str, str]]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "goals.py"), str(res), *extra],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [ln.strip("|").split(" | ") for ln in out.splitlines() if ln.startswith("| ")]
    return {r[0].strip(): (r[2].strip(), r[3].strip()) for r in rows[1:]}


def test_each_goal_says_met_not_met_or_not_measured(tmp_path) -> None:
    sbs = [
        {"stage": "1 ingest: OTLP gRPC → Kafka acked", "system": "otelwax shim",
         "spans_per_core_s": 300_000, "spans_per_core_s_all": [300_000, 420_000, 250_000]},
        {"stage": "1 ingest: OTLP gRPC → Kafka acked", "system": "Collector otlp → kafka",
         "spans_per_core_s": 250_000, "spans_per_core_s_all": [250_000, 300_000, 260_000]},
        {"stage": "4 Kafka → Null sink", "system": "Collector: kafkareceiver → batch → nop",
         "spans_per_core_s": 280_000},
        {"stage": "4 Kafka → Null sink", "system": "otelwax flows.traces → chdb (Null engine)",
         "spans_per_core_s": 175_000},
    ]  # fmt: skip
    _write(tmp_path, "side_by_side", {"results": sbs})
    mib = 1 << 20
    _write(tmp_path, "flow_memory", {"spans": 1_000_000, "results": [
        {"variant": "server defaults", "runs": [{"peak": {"rss": 350 * mib}}]},
        {"variant": "chdb defaults", "runs": [{"peak": {"rss": 590 * mib}},
                                              {"peak": {"rss": 620 * mib}}]},
    ]})  # fmt: skip
    _write(tmp_path, "query", {"rows": [
        {"target": "ClickHouse 18.16.1 server", "clients": 2, "lookup1": {"qps": 1101.7}},
    ]})  # fmt: skip
    got = _goals(tmp_path)
    # the median of the paired rounds' ratios (1.2, 1.4, 0.96), not the ratio of medians
    assert got["1 ingest, telemetrygen, otelwax shim"] == (
        "300,000 vs 250,000 spans per CPU-s = 1.20x", "met"
    )
    assert got["2 Kafka → Null engine, chdb"][1] == "not met"
    assert got["4 flow RSS, server"] == ("350 MiB peak at 1,000,000 spans", "met")
    assert got["4 flow RSS, chdb"] == ("620 MiB peak at 1,000,000 spans", "not met")  # max run
    assert got["6 trace lookup, server, default schema"] == ("1,102 lookups/s (2 clients)", "met")
    assert got["3 MergeTree, chdb, one core"] == ("—", "not measured")
    assert got["5 flows.metrics → remote-write"] == ("—", "not measured")
    # a benchmark that did not succeed in this run: its older JSON is not read
    assert _goals(tmp_path, "--fresh", "query,")["4 flow RSS, server"][1] == "not measured"
