"""Fixtures for the flow tests: real Kafka, real chdb, real clickhouse-server, real processes.

A flow under test always runs as its own ``python -m bytewax.run`` process, so it can be
SIGKILLed and because chdb allows one data folder per process.
The test process reads ClickHouse only after the flow process exited.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.connectors.conftest import clickhouse_server  # noqa: F401  (shared fixture)

ROOT = Path(__file__).resolve().parents[2]


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    partition: int | None = None,
    timestamps: Sequence[int] | None = None,
    conf: dict[str, Any] | None = None,
) -> None:
    """Write records the way the shim does (value = OTLP request, key = trace id hex);
    ``timestamps``: each record's Kafka timestamp (ms) instead of the time of sending;
    ``conf``: producer properties on top (e.g. the shim's own, :func:`shim_producer_conf`)."""
    from confluent_kafka import Producer

    base = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    p = Producer({**base, **(conf or {})})
    for i, v in enumerate(values):
        kw: dict[str, Any] = {}
        if partition is not None:
            kw["partition"] = partition
        if timestamps is not None:
            kw["timestamp"] = timestamps[i]
        key = keys[i] if keys is not None else uuid.uuid4().hex.encode()
        while True:
            try:
                p.produce(topic, value=v, key=key, **kw)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0


def shim_producer_conf(bootstrap: str) -> dict[str, Any]:
    """The ingest shim's librdkafka producer properties at its defaults (lz4 record batches
    of up to 1 MB)."""
    from connectors.kafka import KafkaConfig
    from connectors.kafka_producer import AsyncProducer, ProducerConfig

    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    return AsyncProducer(kafka, ProducerConfig()).librdkafka_conf()


def consume_all(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Any]:
    """Every record of ``topic`` (from the beginning) as confluent-kafka messages."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    idle = 0
    while time.monotonic() < deadline:
        msgs = c.consume(500, 0.5)
        real = [m for m in msgs if m.error() is None]
        out.extend(real)
        idle = 0 if real else idle + 1
        if out and idle >= 3:
            break
    c.close()
    return out


@dataclass
class FlowRun:
    """One flow deployment under test: its config file, data folders and processes."""

    tmp: Path
    bootstrap: str
    topic: str
    settings: dict[str, Any]
    module: str = "flows.traces"
    """The flow module whose ``build(config)`` runs (``flows.traces``, ``flows.logs``)."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.tmp / "flow.yaml"

    @property
    def recovery_dir(self) -> Path:
        return self.tmp / "recovery"

    def write_config(self, **changes: Any) -> Path:
        data = dict(self.settings)
        for k, v in changes.items():
            cur = data
            parts = k.split("__")
            for part in parts[:-1]:
                cur[part] = dict(cur.get(part) or {})
                cur = cur[part]
            cur[parts[-1]] = v
        self.settings = data
        self.config_path.write_text(yaml.safe_dump(data))
        return self.config_path

    def init_recovery(self, partitions: int = 1) -> None:
        self.recovery_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(self.recovery_dir), str(partitions)],
            check=True,
            cwd=ROOT,
        )

    def start(
        self,
        *,
        recovery: bool = False,
        snapshot_s: int = 1,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m bytewax.run "<module>:build('<config>')"`` in the background."""
        self.write_config()
        args = [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "bytewax.run",
            f"{self.module}:build({str(self.config_path)!r})",
        ]
        if recovery:
            args += ["-r", str(self.recovery_dir), "-s", str(int(snapshot_s)), "-b", "0"]
        args += list(extra)
        log = self.tmp / f"flow-{len(self.logs)}.log"
        self.logs.append(log)
        penv = dict(os.environ, PYTHONPATH=str(ROOT), OTELWAX_METRICS_PORT="none")
        penv.pop("OTELWAX_CONFIG", None)
        penv.update(env or {})
        with open(log, "wb") as fh:
            p = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=penv)
        self.procs.append(p)
        return p

    def wait(self, p: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            msg = f"flow did not finish in {timeout}s; log:\n{self.log_text()}"
            raise AssertionError(msg) from None

    def run_to_end(self, timeout: float = 120.0, **kw: Any) -> None:
        """Run with ``stop_at_end`` until every partition is drained; assert a clean exit."""
        self.write_config(source__stop_at_end=True)
        p = self.start(**kw)
        rc = self.wait(p, timeout)
        assert rc == 0, f"flow exited with {rc}; log:\n{self.log_text()}"

    def log_text(self, last: int = 6000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-last:]}" for p in self.logs
        )

    def kill_at_random_moments(
        self,
        rnd: random.Random,
        times: int,
        span: tuple[float, float] = (2.0, 4.5),
        after: str | None = None,
        **kw: Any,
    ) -> int:
        """Start the flow ``times`` times (``start(**kw)``) and SIGKILL it after a random
        ``span`` of seconds each time, counted from when its log shows ``after`` (waited
        for up to 60 s; a loaded machine may take seconds to start a flow); returns how many
        runs were killed (not ended)."""
        kills = 0
        for _ in range(times):
            p = self.start(**kw)
            deadline = time.monotonic() + 60
            while after and p.poll() is None and time.monotonic() < deadline:
                if after in self.logs[-1].read_text(errors="replace"):
                    break
                time.sleep(0.1)
            time.sleep(rnd.uniform(*span))
            if p.poll() is None:
                p.kill()
                p.wait()
                kills += 1
        return kills

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def scrape_metrics(port: int, *wants: str, timeout: float = 60.0) -> str:
    """A flow's ``/metrics`` text once it contains every line in ``wants`` (or at timeout)."""
    import httpx

    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline and not all(w in text for w in wants):
        time.sleep(0.5)
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            pass
    return text


def chdb_rows(path: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on an embedded chdb folder from the test process (flow must be stopped)."""
    from connectors import clickhouse

    client = clickhouse.open_client(clickhouse.ClickHouseConfig(mode="embedded", path=str(path)))
    try:
        return list(client.execute(sql))
    finally:
        client.close()


def chdb_json(path: Path | str, sql: str) -> list[list[Any]]:
    """Typed rows (JSON) of ``sql`` on an embedded chdb folder, read in a separate process:
    chdb allows one data path per process, so a test that reads several flows' folders cannot
    use chdb_rows (64-bit integers come as strings, as ClickHouse quotes them in JSON)."""
    script = (
        "import chdb.session, sys\n"
        "s = chdb.session.Session(sys.argv[1])\n"
        "print(s.query(sys.argv[2], 'JSONCompact').data())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), sql], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)["data"]


def flow_runs(
    tmp_path: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    *,
    prefix: str,
    module: str,
    cls: type[FlowRun] = FlowRun,
    partitions: int = 4,
) -> Iterator[Callable[..., FlowRun]]:
    """Factory body shared by the flow fixtures: a fresh source + DLQ topic and a config
    writing to embedded chdb for ``module``; every run is killed at the end."""
    runs: list[FlowRun] = []

    def _make(partitions: int = partitions, **settings: Any) -> FlowRun:
        topic = make_topic(prefix, partitions=partitions)
        dlq = make_topic("dlq", partitions=1)
        base: dict[str, Any] = {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "source": {"topic": topic, "batch": {"max_records": 50, "max_delay_s": 0.3}},
            "dead_letters": {"topic": dlq},
            "clickhouse": {
                "mode": "embedded",
                "path": str(tmp_path / f"chdb{len(runs)}"),
                "create_schema": True,
            },
            "metrics_port": None,
        }
        for k, v in settings.items():
            base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
        d = tmp_path / f"run{len(runs)}"
        d.mkdir()
        run = cls(d, kafka_bootstrap, topic, base, module=module)
        runs.append(run)
        return run

    yield _make
    for r in runs:
        r.kill_all()


@pytest.fixture
def flow_run(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> Iterator[Callable[..., FlowRun]]:
    """Factory: a fresh topic + DLQ topic and a flows.traces config writing to embedded chdb."""
    yield from flow_runs(
        tmp_path, kafka_bootstrap, make_topic, prefix="spans", module="flows.traces"
    )


def chdb_query(path: Path | str, sql: str) -> list[list[str]]:
    """CSV rows of ``sql`` on an embedded chdb folder, read in a separate process (the test
    process may hold another chdb folder)."""
    script = (
        "import chdb.session, sys\n"
        "s = chdb.session.Session(sys.argv[1])\n"
        "print(s.query(sys.argv[2], 'CSV').data())\n"
        "s.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.replace('"', "").split(",") for line in out.splitlines() if line.strip()]


@dataclass
class WindowFlowRun:
    """An event-time metrics flow (``flows.spanmetrics``/``flows.logmetrics``) run as
    ``python -m bytewax.run <module>`` with bytewax recovery (1 s snapshots), reading
    ``$OTELWAX_CONFIG`` = ``settings`` to the end of its topic (``tail: false``)."""

    tmp: Path
    module: str
    settings: dict[str, Any]

    def __post_init__(self) -> None:
        rec = self.tmp / "recovery"
        rec.mkdir()
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True, cwd=ROOT
        )
        cfg = self.tmp / "flow.yaml"
        settings = {**self.settings, "metrics_port": None}
        settings["source"] = {**settings.get("source", {}), "stop_at_end": True}
        cfg.write_text(yaml.safe_dump(settings))
        self.env = dict(os.environ, OTELWAX_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
        self.env.pop("OTELWAX_METRICS_PORT", None)
        self.cmd = [sys.executable, "-m", "bytewax.run", self.module]
        self.cmd += ["-r", str(rec), "-s", "1", "-b", "10"]

    @classmethod
    def one_second_windows(
        cls, tmp: Path, flow: str, bootstrap: str, topic: str, write_url: str
    ) -> WindowFlowRun:
        """``flows.<flow>`` with 1 s windows and no lateness over ``topic``, writing to
        ``write_url`` and embedded chdb in ``tmp/chdb``; small ranges and tiny remote-write
        requests keep it busy long enough to be killed mid-way."""
        return cls(
            tmp,
            f"flows.{flow}",
            {
                "kafka": {"bootstrap_servers": bootstrap},
                "source": {"topic": topic, "batch": {"max_records": 3, "max_delay_s": 0.05}},
                flow: {"window_s": 1, "allowed_lateness_s": 0, "max_age_s": None},
                "remote_write": {
                    "url": write_url,
                    "max_samples_per_request": 2,
                    "order": {"delay_s": 0.1},
                },
                "clickhouse": {"path": str(tmp / "chdb"), "create_schema": True},
            },
        )

    def kill_when(self, reached: Callable[[], bool], timeout: float = 90.0) -> None:
        """Start the flow and SIGKILL it as soon as ``reached()`` (polled) is true; fails when
        the flow ends first."""
        log = self.tmp / "killed.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=fh)
        deadline = time.monotonic() + timeout
        killed = False
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if reached():
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        tail = log.read_text(errors="replace")[-3000:]
        assert killed, f"flow ended (rc {proc.returncode}) before it could be killed:\n{tail}"

    def run_to_end(self, timeout: float = 120.0) -> None:
        """Run the flow again from its recovery snapshot until the topic is drained."""
        res = subprocess.run(
            self.cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
