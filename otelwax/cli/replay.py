"""``otelwax replay traces|logs|metrics``: store a time window of a flow's Kafka topic again,
exactly once (a backfill), with a progress bar and a summary.

    otelwax replay traces -c otelwax.yaml --from -2h                    # the last two hours
    otelwax replay logs -c otelwax.yaml --from 2026-12-06T09:00:00Z --to 2026-12-06T10:00:00Z
    otelwax replay traces -c otelwax.yaml --from -1d --table otel_traces_backfill

TIME is RFC 3339 (``2026-12-06T09:00:00Z``, ``...+01:00``), ``now``, or relative to now
(``-90s``, ``-30m``, ``-2h``, ``-1d``, ``-1w``); it is matched against the records' Kafka
timestamps (when the shim wrote them). The window goes through the flow's exactly-once path
(``flows.replay``): ranges the flow or an earlier replay stored are skipped, only the gaps are
cut anew, so replaying what is stored stores nothing and a second run is a no-op; a replay
that was killed is finished by running it again. Into the flow's own table, records the flow
has not reached yet are left to it (the summary counts them); ``--table`` replays into another
table (created like the flow's when missing), whose deduplication is its own. Metrics are
replayed into the ``otel_metrics_*`` tables only (not to Prometheus remote-write).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

ENV_VARS = {
    "OTELWAX_KAFKA_BOOTSTRAP": "Kafka bootstrap servers (overrides the file)",
    "OTELWAX_<FLOW>__<key>__<key>": "one flow setting, e.g. OTELWAX_TRACES__source__topic",
}

SIGNALS = ("traces", "logs", "metrics")
DASH_VALUES = ("--from", "--to")
"""Relative times start with ``-`` (``--from -2h``)."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")


def parse_time(text: str, now_ms: int) -> int:
    """``text`` (RFC 3339, ``now`` or ``-2h``) as Unix milliseconds; ValueError says why."""
    t = text.strip()
    if t.lower() == "now":
        return now_ms
    m = _RELATIVE.match(t)
    if m:
        return now_ms - int(float(m.group(1)) * _UNITS[m.group(2)] * 1000)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give RFC 3339 (2026-12-06T09:00:00Z) or relative "
            "to now (-90s, -30m, -2h, -1d, -1w, now)"
        ) from None
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset like +01:00")
    return int(dt.timestamp() * 1000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("signal", choices=SIGNALS, help="which flow's topic and table")
    p.add_argument("-c", "--config", help="YAML config (default: $OTELWAX_CONFIG or defaults)")
    p.add_argument("--from", dest="from_", required=True, metavar="TIME", help="window start")
    p.add_argument("--to", default="now", metavar="TIME", help="window end (default: now)")
    p.add_argument(
        "--table",
        help="store into this table of the flow's database instead (created when missing)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="S",
        help="without a terminal: a progress line every S seconds (default 5)",
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )


def _target(args: argparse.Namespace) -> tuple[Any, str, str]:
    """The replay target of ``args``, where it stores and the topic it reads."""
    from flows import pipeline, replay

    if args.signal == "metrics":
        from flows.metrics import load_settings as load_metrics

        m = load_metrics(args.config)
        db = m.clickhouse.database if m.clickhouse is not None else "?"
        return replay.metrics_target(m), f"{db}.otel_metrics_*", m.source.topic
    if args.signal == "traces":
        from flows.traces import load_settings
    else:
        from flows.logs import load_settings  # type: ignore[assignment]
    settings = load_settings(args.config)
    signal = pipeline.TRACES if args.signal == "traces" else pipeline.LOGS
    table = args.table or getattr(settings.clickhouse, signal.table_field)
    where = f"{settings.clickhouse.database}.{table}"
    return replay.pipeline_target(settings, signal, args.table), where, settings.source.topic


def run(args: argparse.Namespace) -> int:
    now_ms = int(time.time() * 1000)
    try:
        from_ms = parse_time(args.from_, now_ms)
        to_ms = parse_time(args.to, now_ms)
        if from_ms >= to_ms:
            raise ValueError(f"--from ({_iso(from_ms)}) must be before --to ({_iso(to_ms)})")
        if args.table is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.table):
            raise ValueError(f"--table {args.table!r}: letters, digits and _ only")
        if args.table is not None and args.signal == "metrics":
            raise ValueError("--table: the metrics flow writes several tables; replay into them")
    except ValueError as exc:
        print(f"otelwax replay: error: {exc}", file=sys.stderr)
        return 2

    import logging
    import os

    from flows import replay
    from otelwax.cli.progress import Progress
    from otelwax.logs import ENV_LOG_LEVEL

    if not os.environ.get(ENV_LOG_LEVEL):  # the bar and the summary say it; warnings still show
        for name in ("connectors", "flows", "otelwax.codec"):
            logging.getLogger(name).setLevel(logging.WARNING)
    target, where, topic = _target(args)
    print(
        f"replay {args.signal}: {topic} from {_iso(from_ms)} to {_iso(to_ms)} into {where}",
        file=sys.stderr,
    )
    try:
        with Progress(f"replay {args.signal}", "records", every_s=args.progress_every) as bar:
            s = replay.replay(target, from_ms, to_ms, bar.update)
    except RuntimeError as exc:
        if "one process per folder" not in str(exc):
            raise
        raise RuntimeError(
            f"the embedded chdb folder of {where} is in use, most likely by the running "
            f"flows.{args.signal}: stop it for the replay (chdb opens a folder in one process "
            "at a time), or store into a ClickHouse server"
        ) from exc
    windows = ", ".join(f"{p}:{a}..{b - 1}" for p, (a, b) in sorted(s.windows.items()) if b > a)
    print(
        f"replay {args.signal}: {s.records_in_window} records in the window "
        f"({s.partitions} partitions{': ' + windows if windows else ''}); "
        f"{s.ranges_new} new range(s) and {s.ranges_recut} unfinished one(s) stored "
        f"({s.records_read} records, {s.rows_stored} rows), {s.ranges_skipped} range(s) "
        f"already stored skipped; {s.left_to_flow} records left to the flow; "
        f"{s.seconds:.1f} s"
    )
    if s.left_to_flow:
        print(
            f"  note: flows.{args.signal} has not stored {s.left_to_flow} records of the window "
            f"yet; it stores them when it runs (or replay into another table with --table)",
            file=sys.stderr,
        )
    return 0
