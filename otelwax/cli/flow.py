"""``otelwax flow traces|metrics|logs|spanmetrics|logmetrics``: run a dataflow with recovery
and cluster arguments.

    otelwax flow traces -c configs/traces.yaml            # one process, 1 worker
    otelwax flow traces -c x.yaml -w 2                    # 2 worker threads
    otelwax flow traces -c x.yaml --init-recovery         # create recovery partitions first
    OTELWAX_REPLICAS=3 otelwax flow traces -c x.yaml      # StatefulSet: -i/-a from HOSTNAME

Recovery comes from the flow's settings (``recovery.directory``, ``snapshot_interval_s``,
``backup_interval_s``) or bytewax's own ``$BYTEWAX_RECOVERY_DIRECTORY``; the command
``exec``s ``python -m bytewax.run`` with them.
``--init-recovery`` creates the partitions (``recovery.partitions``, else
``$OTELWAX_RECOVERY_PARTITIONS``, default 1) when the directory has none yet; in a cluster
(``OTELWAX_REPLICAS`` > 1) only process 0 does, as the partitions are shared by every process.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from otelwax.cluster import cluster_args, process_index

if TYPE_CHECKING:
    from flows.settings import RecoverySettings

log = logging.getLogger(__name__)

FLOWS = {
    "traces": "flows.traces",
    "metrics": "flows.metrics",
    "logs": "flows.logs",
    "spanmetrics": "flows.spanmetrics",
    "logmetrics": "flows.logmetrics",
}


def _recovery_settings(args: argparse.Namespace, env: dict[str, str]) -> RecoverySettings | None:
    """``recovery`` of the flow's settings (flows with a settings model), else None."""
    from flows.settings import load_flow_settings
    from otelwax.cli.config import _section_model

    model = _section_model(args.flow)
    if model is None or "recovery" not in model.model_fields:
        return None
    if args.config and not Path(args.config).exists():
        return None  # the flow itself says so, with the way out
    return load_flow_settings(model, args.flow, args.config, env).recovery


ENV_VARS = {
    "OTELWAX_KAFKA_BOOTSTRAP": "Kafka bootstrap servers (overrides the file)",
    "OTELWAX_<FLOW>__<key>__<key>": "one flow setting, e.g. OTELWAX_TRACES__source__topic",
    "OTELWAX_REPLICAS": "processes in the cluster (StatefulSet; -i/-a from $HOSTNAME)",
    "BYTEWAX_RECOVERY_DIRECTORY": "recovery folder for flows without recovery settings",
    "OTELWAX_RECOVERY_PARTITIONS": "recovery partitions created by --init-recovery (default 1)",
}


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
    rec = _recovery_settings(args, env)
    if rec is not None and rec.directory:
        cmd += [
            "-r",
            rec.directory,
            "-s",
            str(max(1, round(rec.snapshot_interval_s))),
            "-b",
            str(round(rec.backup_interval_s)),
        ]
    return cmd + cluster_args(env)


def recovery_target(args: argparse.Namespace, env: dict[str, str]) -> tuple[Path, int] | None:
    """The recovery directory and partition count of this run (None: runs without recovery)."""
    rec = _recovery_settings(args, env)
    if rec is not None and rec.directory:
        return Path(rec.directory), rec.partitions
    directory = env.get("BYTEWAX_RECOVERY_DIRECTORY")
    if directory:
        return Path(directory), int(env.get("OTELWAX_RECOVERY_PARTITIONS") or 1)
    return None


def init_recovery(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """Create the recovery partitions when missing; True when this call created them.

    In a cluster only process 0 initialises (every process shares the partitions).
    """
    target = recovery_target(args, env)
    if target is None:
        log.warning("--init-recovery: this run has no recovery directory; nothing to do")
        return False
    directory, partitions = target
    index = process_index(env)
    if index != 0:
        log.info("recovery: process %d leaves %s to process 0", index, directory)
        return False
    if directory.exists() and any(directory.glob("part-*.sqlite3")):
        return False
    from bytewax.recovery import init_db_dir

    directory.mkdir(parents=True, exist_ok=True)
    init_db_dir(directory, partitions)
    log.info("recovery: initialised %d partition(s) in %s", partitions, directory)
    return True


def shell_line(cmd: list[str]) -> str:
    """``cmd`` as a line bash runs as is (``--dry-run``): arguments with shell characters are
    quoted, in double quotes when that is enough (``"flows.traces:build('x.yaml')"``)."""

    def quote(arg: str) -> str:
        if shlex.quote(arg) == arg:
            return arg
        if not any(c in arg for c in '"$`\\!'):
            return f'"{arg}"'
        return shlex.quote(arg)

    return " ".join(quote(a) for a in cmd)


def run(args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    cmd = build_command(args, env)
    if args.init_recovery:
        init_recovery(args, env)
    if args.dry_run:
        print(shell_line(cmd))
        return 0
    log.info("exec %s", shell_line(cmd))
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover
