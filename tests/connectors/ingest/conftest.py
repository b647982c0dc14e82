"""Fixtures for the ingest shim: the real `python -m otelwax ingest` process on free ports,
pointed at fresh uniquely named topics on the real broker, and a Kafka reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port


@dataclass
class Shim:
    """A running shim subprocess."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    topics: dict[str, str]
    bootstrap: str
    log_path: Path
    scheme: str = "http"
    extra: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples of the metrics port: (name, sorted label items) -> value."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_shim(
    bootstrap: str,
    topics: dict[str, str],
    tmp: Path,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    scheme: str = "http",
) -> Shim:
    """Start `python -m otelwax ingest` and wait until /healthz answers."""
    gp, hp, mp = free_port(), free_port(), free_port()
    log_path = tmp / f"shim-{uuid.uuid4().hex[:6]}.log"
    cmd = [
        sys.executable,
        "-m",
        "otelwax",
        "ingest",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(gp),
        "--http-port",
        str(hp),
        "--metrics-port",
        str(mp),
        "--kafka-bootstrap",
        bootstrap,
        "--topic-traces",
        topics["traces"],
        "--topic-metrics",
        topics["metrics"],
        "--topic-logs",
        topics["logs"],
        *(extra or []),
    ]
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {}))
        )
    shim = Shim(proc, gp, hp, mp, topics, bootstrap, log_path, scheme, extra or [])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"shim exited with {proc.returncode}:\n{shim.log()}")
        try:
            if httpx.get(f"http://127.0.0.1:{mp}/healthz", timeout=1).status_code == 200:
                return shim
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    shim.stop()
    raise RuntimeError(f"shim did not become ready:\n{shim.log()}")


@pytest.fixture(scope="module")
def module_topics(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    """Fresh traces/metrics/logs topics for one test module."""
    from connectors.kafka import create_topics, delete_topics

    suffix = uuid.uuid4().hex[:10]
    topics = {s: f"ingest_{s}_{suffix}" for s in ("traces", "metrics", "logs")}
    create_topics(kafka_bootstrap, list(topics.values()), partitions=4)
    yield topics
    delete_topics(kafka_bootstrap, list(topics.values()))


@pytest.fixture(scope="module")
def shim(
    kafka_bootstrap: str, module_topics: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shim]:
    """One shim per test module with default settings."""
    s = start_shim(kafka_bootstrap, module_topics, tmp_path_factory.mktemp("shim"))
    yield s
    assert s.stop() == 0, s.log()


@dataclass
class Rec:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int


def consume(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Rec]], bool],
    timeout: float = 30.0,
    settle: float = 1.0,
) -> list[Rec]:
    """Read ``topic`` from the beginning until ``until(records)`` holds, then ``settle`` more
    seconds to catch duplicates; returns every record read."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    out: list[Rec] = []
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = c.consume(num_messages=1000, timeout=0.2)
            for m in batch:
                if not m.error():
                    out.append(Rec(m.key(), m.value(), dict(m.headers() or []), m.partition()))
            if done_at is None and until(out):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
    finally:
        c.close()
    return out


@pytest.fixture
def fresh_topics(make_topic: Callable[..., str]) -> dict[str, str]:
    """Fresh topics for one test."""
    return {s: make_topic(f"ingest_{s}") for s in ("traces", "metrics", "logs")}
