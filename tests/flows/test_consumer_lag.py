"""A flow's lag shows in Kafka's own tools: each partition's confirmed offset is committed to
the flow's consumer group (visibility only; resuming still uses snapshots and intents)."""

from __future__ import annotations

import glob
import os
import subprocess
import time
import uuid

import pytest

from tests import otlpgen
from tests.flows.conftest import ROOT, chdb_rows, produce


def _tools_classpath() -> str:
    """Kafka's jars plus kafka-tools (ConsumerGroupCommand), as scripts/kafka.sh fetches them;
    falls back to the local Maven repository for a cache fetched before kafka-tools was added."""
    libs = ROOT / ".cache" / "kafka" / "libs"
    tools = glob.glob(str(libs / "kafka-tools-[0-9]*.jar")) or glob.glob(
        os.path.expanduser("~/.m2/repository/org/apache/kafka/kafka-tools/*/kafka-tools-*.jar")
    )
    if not libs.is_dir() or not tools:
        pytest.skip("no kafka-tools jar: run scripts/kafka.sh fetch")
    return f"{libs}/*:{tools[0]}"


def describe_group(bootstrap: str, group: str, topic: str) -> dict[int, tuple[str, str, str]]:
    """``kafka-consumer-groups.sh --describe``: partition -> (CURRENT-OFFSET, LOG-END-OFFSET,
    LAG) of ``topic`` in ``group``."""
    out = subprocess.run(
        ["java", "-Xmx128m", "-cp", _tools_classpath(),
         "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", bootstrap, "--describe", "--group", group],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    rows: dict[int, tuple[str, str, str]] = {}
    lines = out.stdout.splitlines()
    header = next((ln.split() for ln in lines if ln.split()[:1] == ["GROUP"]), None)
    assert header is not None, f"no table from the tool:\n{out.stdout}\n{out.stderr[-3000:]}"
    col = {name: i for i, name in enumerate(header)}
    for ln in lines:
        f = ln.split()
        if len(f) >= len(col) - 3 and f[0] == group and f[col["TOPIC"]] == topic:
            rows[int(f[col["PARTITION"]])] = (
                f[col["CURRENT-OFFSET"]], f[col["LOG-END-OFFSET"]], f[col["LAG"]]
            )  # fmt: skip
    return rows


def test_kafka_consumer_groups_shows_the_flows_lag(flow_run) -> None:
    group = f"lag-{uuid.uuid4().hex[:8]}"
    run = flow_run(partitions=2, source={"group_id": group})
    payloads = otlpgen.trace_payloads(20, n_resources=2, spans_per_resource=10)  # 400 spans
    produce(run.bootstrap, run.topic, payloads[:10], partition=0)
    produce(run.bootstrap, run.topic, payloads[10:], partition=1)
    run.run_to_end()
    path = run.settings["clickhouse"]["path"]
    assert chdb_rows(path, "SELECT count() FROM otel.otel_traces") == [(400,)]

    rows = describe_group(run.bootstrap, group, run.topic)
    assert rows == {0: ("10", "10", "0"), 1: ("10", "10", "0")}, rows

    # Records produced while the flow is stopped are lag the tool shows.
    produce(run.bootstrap, run.topic, payloads[:3], partition=1)
    deadline = time.monotonic() + 20
    while (rows := describe_group(run.bootstrap, group, run.topic))[1][2] != "3":
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    assert rows == {0: ("10", "10", "0"), 1: ("10", "13", "3")}, rows
