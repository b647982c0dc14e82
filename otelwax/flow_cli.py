"""``otelwax flow traces|metrics|logs``: run a dataflow with recovery and cluster arguments.

    otelwax flow traces -c configs/traces.yaml            # one process, 1 worker
    otelwax flow traces -c x.yaml -w 2                    # 2 worker threads
    otelwax flow traces -c x.yaml --init-recovery         # create recovery partitions first
    OTELWAX_REPLICAS=3 otelwax flow traces -c x.yaml      # StatefulSet: -i/-a from HOSTNAME

Recovery comes from the flow's settings (``recovery.directory``, ``snapshot_interval_s``,
``backup_interval_s``); the command ``exec``s ``python -m bytewax.run`` with them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from otelwax.cluster import cluster_args

log = logging.getLogger(__name__)

FLOWS = {"traces": "flows.traces", "metrics": "flows.metrics", "logs": "flows.logs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", choices=sorted(FLOWS), help="which dataflow")
    p.add_argument("-c", "--config", help="YAML config (default: $OTELWAX_CONFIG or defaults)")
    p.add_argument("-w", "--workers", type=int, default=1, help="worker threads per process")
    p.add_argument(
        "--init-recovery", action="store_true", help="create the recovery partitions if missing"
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")


def build_command(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """The ``python -m bytewax.run ...`` argv for these arguments and environment."""
    module = FLOWS[args.flow]
    target = f"{module}:build({args.config!r})" if args.config else module
    cmd = [sys.executable, "-m", "bytewax.run", target, "-w", str(args.workers)]
    if args.flow == "traces":
        from flows.settings import load_settings

        rec = load_settings(args.config, env=env).recovery
        if rec.directory:
            cmd += [
                "-r",
                rec.directory,
                "-s",
                str(max(1, round(rec.snapshot_interval_s))),
                "-b",
                str(round(rec.backup_interval_s)),
            ]
    return cmd + cluster_args(env)


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    cmd = build_command(args, env)
    if args.init_recovery and "-r" in cmd:
        from flows.settings import load_settings

        rec = load_settings(args.config, env=env).recovery
        d = Path(str(rec.directory))
        if not d.exists() or not any(d.iterdir()):
            from bytewax.recovery import init_db_dir

            d.mkdir(parents=True, exist_ok=True)
            init_db_dir(d, rec.partitions)
            log.info("recovery: initialised %d partition(s) in %s", rec.partitions, d)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    log.info("exec %s", " ".join(cmd))
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover
