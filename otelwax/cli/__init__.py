"""The ``otelwax`` command: the composition root, the one package that imports every layer
(flows, connectors, operators, the core; README "Architecture"). ``SUBCOMMANDS`` is the table of
components. Each subcommand lives in its own module, imported only when used.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it may set
``ENV_VARS`` (name -> what it sets), listed under its ``--help``, and ``DASH_VALUES``, flags
whose values may start with ``-`` (``replay --from -2h``). Every command that reads the config
takes it as ``-c/--config FILE`` (default ``$OTELWAX_CONFIG``).

An error a command does not handle itself ends as one line on stderr and exit code 1; the
traceback is logged at DEBUG (``--log-level DEBUG``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from otelwax import __version__
from otelwax.logs import ENV_LOG_FORMAT, ENV_LOG_LEVEL, configure_logging, env_log_format

log = logging.getLogger("otelwax")

DESCRIPTION = (
    "OpenTelemetry stream processing: an OTLP ingest shim that writes to Kafka, and dataflows "
    "that store traces, metrics and logs exactly once into ClickHouse, Prometheus and Jaeger."
)
EPILOG = (
    "first steps: otelwax validate -c configs/otelwax.yaml, then otelwax clickhouse init "
    "-c configs/otelwax.yaml, otelwax ingest -c ..., otelwax flow traces -c ...  "
    "'otelwax COMMAND --help' shows a command's options and the environment it reads."
)

# Read by every command; a command's module adds its own in ENV_VARS.
COMMON_ENV = {
    "OTELWAX_CONFIG": "config file when -c/--config is not given",
    ENV_LOG_LEVEL: "log level (--log-level wins)",
    ENV_LOG_FORMAT: "text or json (--log-format wins)",
}

# name -> (module, one-line help). Later components add their own line here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("connectors.ingest.cli", "run the OTLP ingest shim (gRPC :4317, HTTP :4318)"),
    "validate": ("otelwax.cli.validate", "check a config file and print every problem"),
    "clickhouse": ("otelwax.cli.clickhouse", "create (init) or check the ClickHouse tables"),
    "flow": (
        "otelwax.cli.flow",
        "run a dataflow (traces|logs|metrics|spanmetrics|logmetrics) with recovery/cluster args",
    ),
    "doctor": (
        "otelwax.cli.doctor",
        "check that every configured Kafka, ClickHouse, Prometheus and Jaeger answers",
    ),
    "kafka": ("otelwax.cli.kafka", "create the topics otelwax uses, or wait for the broker"),
    "query": (
        "otelwax.cli.query",
        "see what landed: row counts, services, traces, a trace, an HTML report",
    ),
    "replay": (
        "otelwax.cli.replay",
        "store a time window of a flow's Kafka topic again, exactly once (backfill)",
    ),
    "completion": ("otelwax.cli.completion", "print a bash completion script for otelwax"),
}


def _env_epilog(extra: dict[str, str]) -> str:
    rows = {**COMMON_ENV, **extra}
    width = max(len(k) for k in rows)
    return "environment:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows.items())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (``otelwax validate`` must not pay
    for grpc or chdb), so ``otelwax COMMAND --help`` shows that command's own options."""
    parser = argparse.ArgumentParser(prog="otelwax", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"otelwax {__version__}")
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default: $OTELWAX_LOG_LEVEL or INFO)"
    )
    parser.add_argument(
        "--log-format",
        help="text or json: one JSON object per line (default: $OTELWAX_LOG_FORMAT or text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == command:
            mod = importlib.import_module(module)
            p = sub.add_parser(
                name,
                help=help_text,
                description=help_text,
                epilog=_env_epilog(getattr(mod, "ENV_VARS", {})),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            mod.add_arguments(p)
        else:
            p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    if command is not None:
        argv = _join_dash_values(argv, SUBCOMMANDS[command][0])
    args = build_parser(command).parse_args(argv)
    # Given on the command line, they also apply to the processes a command starts
    # (``otelwax flow`` execs ``python -m bytewax.run``, whose flow reads the variables).
    for value, var in ((args.log_level, ENV_LOG_LEVEL), (args.log_format, ENV_LOG_FORMAT)):
        if value:
            os.environ[var] = value
    try:
        configure_logging(os.environ.get(ENV_LOG_LEVEL, "INFO"), env_log_format())
    except ValueError as exc:
        build_parser().error(str(exc))
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("otelwax %s failed", args.command, exc_info=True)
        print(f"otelwax {args.command}: error: {one_line(exc)}", file=sys.stderr)
        if not log.isEnabledFor(logging.DEBUG):
            print("  (run with --log-level DEBUG for the traceback)", file=sys.stderr)
        return 1


def _join_dash_values(argv: list[str], module: str) -> list[str]:
    """``--from -2h`` as ``--from=-2h``: argparse takes a value starting with ``-`` for an
    option. A module lists the flags whose values may (``DASH_VALUES``)."""
    flags = getattr(importlib.import_module(module), "DASH_VALUES", ())
    out: list[str] = []
    it = iter(argv)
    for a in it:
        nxt = next(it, None) if a in flags else None
        out.append(f"{a}={nxt}" if nxt is not None else a)
    return out


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its message (first line of each of up to 5 problems), or its
    type when it has none."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = lines[0].rstrip(":") + (": " if len(lines) > 1 and lines[0].endswith(":") else "")
    rest = "; ".join(lines[1:6])
    more = f" (+{len(lines) - 6} more)" if len(lines) > 6 else ""
    return (head + rest if head.endswith(": ") else "; ".join([head, *lines[1:6]])) + more

