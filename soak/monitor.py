"""Once a second: peak RSS of every process, and each flow's consumer lag and stored counters.

A flow *stalls* while it has work and its stored counters do not move: work is consumer lag,
being down, or input the shim accepted for its signal since the flow last stored something (a
flow whose source read everything but whose sink is stuck shows no lag). The longest stall of
each flow is reported. Counters restart at zero when a flow restarts, so
totals here add the increases seen between samples of one process, and the whole first sample
of a new process (its pid tells, not whether a counter went down: a restarted flow that
replays quickly passes its predecessor's value before it is first scraped).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from typing import Any

import psutil

from soak.load import Telemetrygen
from soak.stack import FLOWS, Stack, http_get

LINE = re.compile(r'^(otelwax_\w+?)(?:_total)?\{([^}]*)\} ([0-9.eE+-]+|NaN)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
# Components whose sent counter means "stored": sinks, and the window flows' remote-write
# (component named after the flow).
STORED = re.compile(r"clickhouse|remote_write|jaeger|^spanmetrics$|^logmetrics$")
INPUT = {"traces": "traces", "spanmetrics": "traces", "logs": "logs", "metrics": "metrics"}
"""The shim's input (``ingest_<signal>``) each flow stores."""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """otelwax_* samples of a /metrics page by (name, labels); None when it does not answer."""
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2).decode()
    except OSError:
        return None
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and not m.group(1).endswith("_created"):
            out[(m.group(1), tuple(sorted(LABEL.findall(m.group(2)))))] = float(m.group(3))
    return out


class FlowWatch:
    """Lag, progress and stalls of one flow."""

    def __init__(self) -> None:
        self.lag = 0.0
        self.up = False
        self.last: dict[Any, float] = {}
        self.pid = 0
        self.totals: dict[Any, float] = defaultdict(float)
        """(name, component, reason) → increases summed across restarts."""
        self.last_progress = time.monotonic()
        self.longest_stall = 0.0
        self.caught_up = time.monotonic()
        self.longest_behind = 0.0
        """Longest time without once being caught up (a crash loop progresses, never catches up)."""
        self.max_lag = 0.0

    def update(
        self, samples: dict[Any, float] | None, now: float, input_at: float = 0.0, pid: int = 0
    ) -> None:
        """Take one scrape (None: down) of process ``pid``; ``input_at``: when the shim last
        accepted its input."""
        progressed = False
        self.up = samples is not None
        if samples is not None and pid != self.pid:
            self.pid, self.last = pid, {}  # a new process: its counters started at zero
        if samples is not None:
            self.lag = sum(v for (n, _), v in samples.items() if n == "otelwax_kafka_consumer_lag")
            self.max_lag = max(self.max_lag, self.lag)
            for key, v in samples.items():
                name, labels = key
                if name not in ("otelwax_sent", "otelwax_dropped", "otelwax_failed"):
                    continue
                lab = dict(labels)
                prev = self.last.get(key, 0.0)
                inc = v - prev if v >= prev else v
                self.last[key] = v
                if inc > 0:
                    self.totals[(name, lab.get("component", ""), lab.get("reason", ""))] += inc
                    if name == "otelwax_sent" and STORED.search(lab.get("component", "")):
                        progressed = True
        pending = not self.up or self.lag > 0 or input_at > self.last_progress
        if self.up and self.lag <= 0:
            self.caught_up = now
        self.longest_behind = max(self.longest_behind, now - self.caught_up)
        if progressed or not pending:
            self.last_progress = now
        else:
            self.longest_stall = max(self.longest_stall, now - self.last_progress)

    def total(self, name: str, component_re: str, reason: str | None = None) -> float:
        pat = re.compile(component_re)
        return sum(
            v
            for (n, c, r), v in self.totals.items()
            if n == name and pat.search(c) and (reason is None or r == reason)
        )


class Monitor(threading.Thread):
    """Samples the stack every ``interval`` seconds until stopped."""

    def __init__(self, stack: Stack, tgen: Telemetrygen, interval: float = 1.0) -> None:
        super().__init__(name="monitor", daemon=True)
        self.stack, self.tgen, self.interval = stack, tgen, interval
        self.flows = {f: FlowWatch() for f in FLOWS}
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.shim: FlowWatch = FlowWatch()
        self.input_at: dict[str, float] = defaultdict(float)
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}

    def pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name, proc in self.stack.procs.items():
            if proc.pid:
                out[name] = [proc.pid]
        for svc in ("kafka", "clickhouse", "prometheus", "jaeger"):
            pid = self.stack.service_pid(svc)
            if pid:
                out[svc] = [pid]
        out["telemetrygen"] = self.tgen.pids
        out["soak (load, gate)"] = [psutil.Process().pid]
        return out

    def _rss(self, pid: int) -> int:
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            return int(p.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0

    def sample(self) -> None:
        now = time.monotonic()
        for role, pids in self.pids().items():
            total = sum(self._rss(pid) for pid in pids)
            self.peak_rss[role] = max(self.peak_rss[role], total)
        before = {c: self.shim.total("otelwax_sent", f"^ingest_{c}$") for c in INPUT.values()}
        samples, pid = self._scrape("shim", self.stack.ports.shim_metrics)
        self.shim.update(samples, now, pid=pid)
        for c, n in before.items():
            if self.shim.total("otelwax_sent", f"^ingest_{c}$") > n:
                self.input_at[c] = now
        for name, watch in self.flows.items():
            samples, pid = self._scrape(name, self.stack.ports.flow(name))
            watch.update(samples, now, self.input_at[INPUT[name]], pid)

    def _scrape(self, name: str, port: int) -> tuple[dict[Any, float] | None, int]:
        """(samples, pid) of process ``name``; None when it does not answer or was replaced
        while it was scraped."""
        proc = self.stack.procs.get(name)
        pid = (proc.pid or 0) if proc is not None else 0
        samples = scrape(port)
        if proc is not None and (proc.pid or 0) != pid:
            return None, pid
        return samples, pid

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.sample()
            except Exception:  # sampling is best effort; never end the soak
                pass

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def drained(self) -> bool:
        """Every flow answers with zero lag."""
        return all(w.up and w.lag <= 0 for w in self.flows.values())
