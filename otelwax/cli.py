"""The ``otelwax`` command. Each subcommand lives in its own module, imported only when used.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from otelwax.logs import ENV_LOG_FORMAT, ENV_LOG_LEVEL, configure_logging, env_log_format

# name -> (module, one-line help). Later components add their own line here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("connectors.ingest.cli", "run the OTLP ingest shim (gRPC :4317, HTTP :4318)"),
    "validate": ("otelwax.validate_cli", "check a config file and print every problem"),
    "clickhouse": ("otelwax.clickhouse_cli", "create (init) or check the ClickHouse tables"),
    "flow": (
        "otelwax.flow_cli",
        "run a dataflow (traces|logs|metrics|spanmetrics) with recovery/cluster args",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (``otelwax validate`` must not pay
    for grpc or chdb), so ``otelwax COMMAND --help`` shows that command's own options."""
    parser = argparse.ArgumentParser(prog="otelwax", description=__doc__)
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default: $OTELWAX_LOG_LEVEL or INFO)"
    )
    parser.add_argument(
        "--log-format",
        help="text or json: one JSON object per line (default: $OTELWAX_LOG_FORMAT or text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
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
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
