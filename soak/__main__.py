"""``python -m soak``: start a private stack, load it, inject faults, drain, reconcile.

Exit 0 when nothing acknowledged was lost or duplicated and no flow stalled or crashed; 1 with
the violations listed otherwise; 2 when the stack itself could not be set up.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from pathlib import Path

from soak.faults import FAULTS, Context, FaultRunner, JaegerGate, schedule
from soak.load import Ledger, Rates, SdkLoad, Telemetrygen
from soak.monitor import Monitor
from soak.reconcile import reconcile
from soak.stack import FLOWS, ROOT, Ports, Stack, http_get

log = logging.getLogger("soak")

SMOKE_FAULTS = ["kill_flows", "clickhouse_restart", "poison_records", "skewed_spans", "burst"]


def seconds(text: str) -> float:
    """``600``, ``90s``, ``10m`` → seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    ap.add_argument("--duration", type=seconds, default=600.0, help="load time (10m)")
    ap.add_argument("--seed", type=int, default=None, help="fault schedule seed (random)")
    ap.add_argument("--faults", default="all",
                    help=f"comma list, 'all', 'smoke' or 'none' (known: {', '.join(FAULTS)})")
    ap.add_argument("--each", type=int, default=8, help="times each fault is injected")
    ap.add_argument("--outage", type=seconds, default=15.0, help="how long a service stays down")
    ap.add_argument("--traces-per-s", type=float, default=50.0, help="SDK traces/s (4 spans)")
    ap.add_argument("--drain", type=seconds, default=180.0, help="bound on the final drain")
    ap.add_argument("--idle-close", type=seconds, default=30.0,
                    help="span metrics close their windows after this long without spans (the "
                    "drain waits for it)")
    ap.add_argument("--stuck-after", type=seconds, default=120.0,
                    help="a stall longer than this is a stuck flow")
    ap.add_argument("--port-base", type=int, default=27000, help="private port range start")
    ap.add_argument("--out", type=Path, default=None, help="run folder (.data/soak/<time>)")
    ap.add_argument("--json", type=Path, default=None, help="result file (<out>/result.json)")
    ap.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    return ap.parse_args(argv)


def fault_names(spec: str) -> list[str]:
    if spec == "all":
        return list(FAULTS)
    if spec == "none":
        return []
    names = SMOKE_FAULTS if spec == "smoke" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    return names


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http_get(url, 2)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def start_stack(stack: Stack) -> None:
    log.info("starting kafka, clickhouse, prometheus, jaeger")
    stack.services(("kafka", "clickhouse", "prometheus", "jaeger"), "start")
    stack.write_config()
    stack.add_shim()
    if not wait_http(f"http://127.0.0.1:{stack.ports.shim_metrics}/healthz", 60):
        raise RuntimeError("the shim did not answer /healthz")
    for name in FLOWS:
        stack.add_flow(name)
    for name in FLOWS:
        if not wait_http(f"http://127.0.0.1:{stack.ports.flow(name)}/metrics", 120):
            raise RuntimeError(f"flows.{name} did not serve /metrics; see its log")
    stack.start_supervisor()


def drain(mon: Monitor, bound: float) -> bool:
    """Wait until every flow answers with zero lag for 5 s in a row (bounded)."""
    deadline, quiet = time.monotonic() + bound, 0
    time.sleep(5)
    while time.monotonic() < deadline:
        quiet = quiet + 1 if mon.drained() else 0
        if quiet >= 5:
            return True
        time.sleep(1)
    return False


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    names = fault_names(args.faults)
    out = args.out or ROOT / ".data" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    if out.is_dir() and any(out.iterdir()):
        # Its Kafka, ClickHouse and recovery folders would be reused: the flows resume from the
        # old run's snapshots and the reconciliation counts the old run's records as lost.
        print(f"soak: run folder {out} is not empty (an earlier run's data): give a new --out "
              "or remove it", flush=True)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"soak: seed {seed}, {args.duration:.0f}s, faults {names or 'none'} x{args.each}, "
          f"run folder {out}", flush=True)
    rng = random.Random(seed)
    ports = Ports(args.port_base)
    stack = Stack(out, ports, idle_close_s=args.idle_close)
    ledger = Ledger()
    gate = JaegerGate(ports.jaeger_gate, f"127.0.0.1:{ports.jaeger_otlp}")
    tgen = Telemetrygen(ROOT / ".cache" / "bin" / "telemetrygen", f"127.0.0.1:{ports.shim_grpc}",
                        out)
    result: dict = {"seed": seed, "duration_s": args.duration, "faults": names, "run_dir": str(out)}
    try:
        gate.start()
        try:
            start_stack(stack)
        except Exception as exc:
            print(f"soak: stack did not start: {exc}", file=sys.stderr)
            return 2
        load = SdkLoad(f"127.0.0.1:{ports.shim_grpc}", ledger,
                       Rates(traces_per_s=args.traces_per_s), seed)
        mon = Monitor(stack, tgen)
        mon.start()
        ctx = Context(stack, load, ledger, tgen, gate, rng, outage_s=args.outage,
                      jaeger_started_at=time.time())
        if not tgen.available:
            print("soak: telemetrygen not built (scripts/go-tools.sh telemetrygen): SDK load only")
        t0 = time.time()
        load.start()
        tgen.steady(args.duration)
        plan = schedule(rng, names, args.duration, args.each)
        print("soak: schedule " + ", ".join(f"{t:.0f}s {n}" for t, n in plan), flush=True)
        faults = FaultRunner(ctx, plan, t0)
        faults.start()
        while time.time() - t0 < args.duration:
            time.sleep(min(10.0, max(0.1, args.duration - (time.time() - t0))))
            print(f"soak: t={time.time() - t0:.0f}s " + "  ".join(
                f"{f}: lag {int(w.lag)}{'' if w.up else ' (down)'}" for f, w in mon.flows.items()),
                flush=True)
        faults.join(timeout=4 * args.outage + 60)
        faults.stopping.set()
        print("soak: stopping load, draining", flush=True)
        load.stop()
        tgen.stop()
        drained = drain(mon, args.drain)
        # Span metrics close their windows after idle_close_s without spans.
        time.sleep(args.idle_close + 5)
        mon.sample()
        mon.stop()
        stack.stop_procs(list(FLOWS), timeout=60)
        report = reconcile(stack, ctx, mon, rng)
        if not drained:
            lagging = {f: int(w.lag) for f, w in mon.flows.items() if not (w.up and w.lag <= 0)}
            report.violate("drain.stuck", f"not drained after {args.drain:.0f}s: {lagging}")
        for f, w in mon.flows.items():
            if w.longest_stall > args.stuck_after:
                report.violate(f"{f}.stalled", f"no progress with lag for {w.longest_stall:.0f}s")
            elif w.longest_behind > args.stuck_after:
                report.violate(f"{f}.behind", f"not caught up once in {w.longest_behind:.0f}s")
        report.add("soak", "seed", str(seed))
        report.add("soak", "shim requests", ", ".join(f"{k}={v}" for k, v in
                                                       sorted(ledger.stats.items())))
        for e in sorted(ctx.events, key=lambda e: e["t"]):
            report.add("faults", f"t={e['t']:>5}s {e['fault']}", e.get("error") or e.get("detail"))
        print(report.text(), flush=True)
        result.update(
            violations=report.violations,
            table=[list(r) for r in report.rows],
            events=ctx.events,
            hostile=ctx.hostile,
            crashes={n: [{k: c[k] for k in ("t", "rc")} for c in p.crashes]
                     for n, p in stack.procs.items()},
            peak_rss_mib={k: round(v / 2**20) for k, v in mon.peak_rss.items()},
            stalls_s={f: round(w.longest_stall, 1) for f, w in mon.flows.items()},
            behind_s={f: round(w.longest_behind, 1) for f, w in mon.flows.items()},
        )
        return 1 if report.violations else 0
    finally:
        path = args.json or out / "result.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"soak: result {path}", flush=True)
        gate.stop()
        if args.keep:
            print(f"soak: --keep: stack left running (ports {ports.base}-{ports.base + 999})")
        else:
            stack.shutdown()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
