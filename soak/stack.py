"""The soak's private stack: its own Kafka, ClickHouse 18.16 server, Prometheus and Jaeger
(started through the project's scripts with port/data overrides), the ingest shim and the four
flows, each flow supervised like an orchestrator would (a flow that dies is restarted).

Nothing here touches the shared services: every port comes from :class:`Ports` (a private
range) and every data folder lives under the run directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otelwax.startup import EXIT_CANNOT_START

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ("traces", "logs", "metrics", "spanmetrics")
POISON_MARKER = "soak.poison"
"""Span name on which the soak's user operator (``soak.poison_op``) raises."""


@dataclass(frozen=True)
class Ports:
    """Every port of one soak stack, laid out from ``base`` (default: the 27000 range)."""

    base: int = 27000

    def __getattr__(self, name: str) -> int:
        offsets = {
            "kafka": 92, "kafka_controller": 93, "ch_tcp": 0, "ch_http": 123, "prom": 90,
            "jaeger_otlp": 317, "jaeger_query": 686, "jaeger_query_grpc": 685,
            "jaeger_health": 133, "jaeger_gate": 318, "shim_grpc": 417, "shim_http": 418,
            "shim_metrics": 888, "traces": 464, "metrics": 465, "logs": 466, "spanmetrics": 467,
        }
        if name not in offsets:
            raise AttributeError(name)
        return self.base + offsets[name]

    def flow(self, name: str) -> int:
        """The /metrics port of flow ``name``."""
        return int(getattr(self, name))


def http_get(url: str, timeout: float = 3.0) -> bytes:
    """GET ``url`` (raises OSError on any failure)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@dataclass
class Proc:
    """One supervised process: restarted when it dies unless it was stopped on purpose."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    supervise: bool = True
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    refused_starts: list[dict[str, Any]] = field(default_factory=list)
    """Exits with otelwax's "cannot start" code (2) and line: e.g. started while Kafka was
    down in an injected outage. The orchestrator restarts it, as Kubernetes would."""
    paused: bool = False
    """True between an injected stop and the restart that follows it (not a crash)."""

    def start(self) -> None:
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n=== soak: start #{self.starts + 1} at {time.time():.1f}\n".encode())
            fh.flush()
            self.popen = subprocess.Popen(
                self.args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )
        self.starts += 1
        self.paused = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; the supervisor treats the exit as injected, not as a crash."""
        self.paused = True
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Stack:
    """Start, stop and supervise every component of one soak run."""

    def __init__(
        self, run_dir: Path, ports: Ports, *, flow_snapshot_s: int = 5, idle_close_s: float = 30.0
    ) -> None:
        self.run_dir = run_dir
        self.ports = ports
        self.snapshot_s = flow_snapshot_s
        self.idle_close_s = idle_close_s
        self.procs: dict[str, Proc] = {}
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.config_path = run_dir / "otelwax.yaml"
        self.database = "soak"

    # --- services through the project's scripts --------------------------------------------

    def _service_env(self) -> dict[str, str]:
        p, d = self.ports, self.run_dir
        return dict(
            os.environ,
            PYTHON=sys.executable,
            KAFKA_PORT=str(p.kafka), KAFKA_CONTROLLER_PORT=str(p.kafka_controller),
            KAFKA_DATA=str(d / "kafka"), KAFKA_PARTITIONS="4", KAFKA_HEAP="384m",
            CH_TCP_PORT=str(p.ch_tcp), CH_HTTP_PORT=str(p.ch_http), CH_DATA=str(d / "clickhouse"),
            PROM_PORT=str(p.prom), PROM_DATA=str(d / "prometheus"),
            JAEGER_OTLP_PORT=str(p.jaeger_otlp), JAEGER_QUERY_PORT=str(p.jaeger_query),
            JAEGER_QUERY_GRPC_PORT=str(p.jaeger_query_grpc),
            JAEGER_HEALTH_PORT=str(p.jaeger_health), JAEGER_DATA=str(d / "jaeger"),
        )

    def service(self, name: str, action: str, timeout: float = 150.0) -> None:
        """``scripts/kafka.sh`` / ``scripts/services/<name>.sh`` ``action`` with this run's env."""
        script = ROOT / "scripts" / ("kafka.sh" if name == "kafka" else f"services/{name}.sh")
        with open(self.run_dir / f"service-{name}.log", "ab") as fh:
            r = subprocess.run(
                [str(script), action], cwd=ROOT, env=self._service_env(), stdout=fh,
                stderr=subprocess.STDOUT, timeout=timeout, check=False,
            )
        if r.returncode != 0:
            raise RuntimeError(f"{script.name} {action} failed (rc {r.returncode}); see log")

    def service_pid(self, name: str) -> int | None:
        """PID of a script-managed service (from its PID file), None when not running."""
        d = self.run_dir
        pidfile = {
            "kafka": d / "kafka" / "kafka.pid",
            "clickhouse": d / "clickhouse" / "clickhouse.pid",
            "prometheus": d / "prometheus" / "prometheus.pid",
            "jaeger": d / "jaeger" / "jaeger.pid",
        }[name]
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    # --- config --------------------------------------------------------------------------

    def write_config(self) -> None:
        """One deployment file: traces → the 18.16 server (+ Jaeger through the gate), logs and
        metrics → embedded chdb, metrics and span metrics → Prometheus remote-write."""
        p, d = self.ports, self.run_dir
        rw = {"url": f"http://127.0.0.1:{p.prom}/api/v1/write", "timeout_s": 10}
        server = {
            "mode": "server", "host": "127.0.0.1", "port": p.ch_tcp, "http_port": p.ch_http,
            "database": self.database, "create_schema": True, "connect_timeout_s": 3.0,
            "timeout_s": 30.0,
        }
        cfg = {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{p.kafka}"},
            "flows": {
                "traces": {
                    "clickhouse": server,
                    "source": {"batch": {"max_delay_s": 0.5}},
                    "jaeger": {
                        "enabled": True, "endpoint": f"127.0.0.1:{p.jaeger_gate}", "timeout_s": 5,
                    },
                    "operators": [
                        {
                            "module": "soak.poison_op:raise_on_marker",
                            "name": "soak-poison",
                            "config": {"marker": POISON_MARKER},
                        }
                    ],
                    "metrics_port": p.traces,
                },
                "logs": {
                    "clickhouse": {"mode": "embedded", "path": str(d / "chdb-logs"),
                                   "create_schema": True},
                    "source": {"batch": {"max_delay_s": 0.5}},
                    "metrics_port": p.logs,
                },
                "metrics": {
                    "clickhouse": {"mode": "embedded", "path": str(d / "chdb-metrics"),
                                   "create_schema": True},
                    "remote_write": rw,
                    "metrics_port": p.metrics,
                },
                "spanmetrics": {
                    "remote_write": rw, "metrics_port": p.spanmetrics,
                    "spanmetrics": {"idle_close_s": self.idle_close_s},
                },
            },
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # --- the shim and the flows ------------------------------------------------------------

    def _proc_env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OTELWAX_CONFIG=str(self.config_path))
        for k in ("OTELWAX_KAFKA_BOOTSTRAP", "OTELWAX_METRICS_PORT"):
            env.pop(k, None)
        return env

    def add_shim(self) -> Proc:
        p = self.ports
        args = [
            sys.executable, "-m", "otelwax.cli", "ingest", "--host", "127.0.0.1",
            "--grpc-port", str(p.shim_grpc), "--http-port", str(p.shim_http),
            "--metrics-port", str(p.shim_metrics), "--kafka-bootstrap", f"127.0.0.1:{p.kafka}",
        ]
        env = self._proc_env()
        env.pop("OTELWAX_CONFIG")
        return self._add(Proc("shim", args, env, self.run_dir / "shim.log"))

    def add_flow(self, name: str) -> Proc:
        """``python -m bytewax.run flows.<name>`` with bytewax recovery (its own folder)."""
        rec = self.run_dir / f"recovery-{name}"
        if not rec.exists():
            rec.mkdir(parents=True)
            subprocess.run(
                [sys.executable, "-m", "bytewax.recovery", str(rec), "1"], cwd=ROOT, check=True
            )
        args = [
            sys.executable, "-X", "faulthandler", "-m", "bytewax.run", f"flows.{name}",
            "-r", str(rec), "-s", str(self.snapshot_s), "-b", "0",
        ]
        return self._add(Proc(name, args, self._proc_env(), self.run_dir / f"flow-{name}.log"))

    def _add(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        proc.start()
        return proc

    def start_supervisor(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart a process that exited on its own (a crash), with a short backoff."""
        backoff: dict[str, float] = {}
        while not self._stop.wait(0.5):
            for proc in list(self.procs.values()):
                if not proc.supervise or proc.paused or proc.popen is None:
                    continue
                rc = proc.popen.poll()
                if rc is None:
                    continue
                delay = min(backoff.get(proc.name, 0.5) * 2, 10.0)
                backoff[proc.name] = delay
                tail = proc.tail(1500)
                event = {"t": time.time(), "rc": rc, "tail": tail}
                if rc == EXIT_CANNOT_START and "cannot start: " in tail:
                    proc.refused_starts.append(event)  # a start-up check said no, in one line
                else:
                    proc.crashes.append(event)
                log.warning("%s exited with %s; restarting in %.0fs", proc.name, rc, delay)
                proc.paused = True
                threading.Timer(delay, self._restart, (proc,)).start()

    def _restart(self, proc: Proc) -> None:
        # An injected restart may have come first: never run two copies of one process.
        if not self._stop.is_set() and proc.supervise and proc.pid is None:
            proc.start()

    def restart(self, name: str) -> None:
        """Start ``name`` again after an injected stop."""
        proc = self.procs[name]
        if proc.pid is None:
            proc.start()

    def stop_procs(self, names: list[str], timeout: float = 60.0) -> dict[str, int | None]:
        """SIGINT (bytewax's clean stop), then SIGKILL after ``timeout``; exit codes."""
        out: dict[str, int | None] = {}
        for n in names:
            p = self.procs.get(n)
            if p is not None:
                p.supervise = False  # stopped for good: not a crash, not to be restarted
            if p and p.popen and p.popen.poll() is None:
                p.paused = True
                p.popen.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for n in names:
            p = self.procs.get(n)
            if not p or not p.popen:
                continue
            try:
                out[n] = p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                out[n] = p.popen.wait()
        return out

    def shutdown(self, *, services: bool = True) -> None:
        """Stop everything this stack started (flows first, then the shim, then services)."""
        self._stop.set()
        self.stop_procs([n for n in self.procs if n != "shim"], timeout=30)
        self.stop_procs(["shim"], timeout=30)
        if services:
            self.services(("jaeger", "prometheus", "clickhouse", "kafka"), "stop", strict=False)

    def services(self, names: tuple[str, ...], action: str, *, strict: bool = True) -> None:
        """``action`` on independent services at once (each start or stop takes seconds).
        ``strict``: raise the first failure; else log each and go on."""
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {svc: pool.submit(self.service, svc, action) for svc in names}
        for svc, fut in futures.items():
            exc = fut.exception()
            if exc is not None and strict:
                raise exc
            if exc is not None:
                log.warning("%s %s: %s", action, svc, exc)
