"""``otelwax validate [-c FILE]``: check a deployment config without touching any service.

Prints every problem as ``dotted.key.path: message`` and exits 1, or prints a one-line
summary and exits 0. Without a file it checks ``$OTELWAX_CONFIG`` (or the defaults). Unless
``--no-imports`` is given, user operator modules are imported and every operator pipeline is
built (expressions compiled, factories called) — still no network or database I/O.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from flows.settings import blame_env, env_hints, env_origins
from otelwax.cli.config import ENV_CONFIG, ConfigError, OtelwaxConfig, read_yaml, validate_data
from otelwax.configfile import SIGNALS

ENV_VARS = {"OTELWAX_<FLOW>__<key>__<key>": "one flow setting, e.g. OTELWAX_TRACES__source__topic"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help=f"YAML config (default: ${ENV_CONFIG})")
    # The file used to be positional: still accepted, not advertised.
    parser.add_argument("file", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-imports", action="store_true", help="do not import user operator modules"
    )
    parser.add_argument(
        "--show", action="store_true", help="print the effective config (secrets masked)"
    )


def _build_problems(cfg: OtelwaxConfig) -> list[str]:
    """Import user modules and build every pipeline; problems with their key paths."""
    from operators.registry import (
        SIGNAL_SCHEMAS,
        ModuleConfig,
        OperatorError,
        build_operator,
        import_problem,
    )

    out: list[str] = []
    for sig in SIGNAL_SCHEMAS:
        for i, spec in enumerate(cfg.operator_specs(sig)):
            where = f"flows.{sig}.operators.{i}"
            if isinstance(spec, ModuleConfig):
                problem = import_problem(spec)
                if problem:
                    out.append(f"{where}.module: {problem}")
                    continue
            try:
                build_operator(spec, sig, i)
            except OperatorError as exc:
                out.append(f"{where}: {exc}")
                continue
    return out


def _store(ch: Any) -> str:
    if ch is None:
        return ""
    if ch.mode == "embedded":
        return f"chdb {ch.path}"
    return f"clickhouse {ch.host}:{ch.port}/{ch.database}"


def _flow_summary(cfg: OtelwaxConfig, name: str) -> str:
    """``name: <where it writes> (+ operators)`` from the flow's own (shared-in) settings."""
    try:
        s = cfg.flow_settings(name)
    except ConfigError:
        return f"{name}: (settings model not importable)"
    outs = [_store(getattr(s, "clickhouse", None))]
    rw = getattr(s, "remote_write", None)
    if rw is not None:
        outs.append(f"remote-write {rw.url}")
    jaeger = getattr(s, "jaeger", None)
    if jaeger is not None and jaeger.enabled:
        outs.append(f"jaeger {jaeger.endpoint}")
    outs = [o for o in outs if o]
    text = f"{name} → " + (" + ".join(outs) if outs else "nothing (no output configured)")
    if name in ("traces", "logs"):
        specs = cfg.operator_specs(name)
        if specs:
            text += f" after {len(specs)} operator{'s' if len(specs) != 1 else ''} ("
            text += ", ".join(sp.name or sp.type for sp in specs) + ")"
    return text


def _recovery_notes(cfg: OtelwaxConfig) -> list[str]:
    """tail_sampling without a recovery directory works, but replays a lot after restarts."""
    try:
        tail = any(sp.type == "tail_sampling" for sp in cfg.operator_specs("traces"))
        recovery = cfg.flow_settings("traces").recovery.directory
    except ConfigError:
        return []
    if not tail or recovery is not None:
        return []
    return [
        "flows.traces: tail_sampling keeps waiting traces in bytewax snapshots; without "
        "flows.traces.recovery.directory (or -r when run by bytewax.run) every restart replays "
        "each partition from its first recorded range"
    ]


def _summary(cfg: OtelwaxConfig) -> str:
    flows = "\n  ".join(_flow_summary(cfg, n) for n in SIGNALS)
    return f"kafka {cfg.ingest.kafka.bootstrap_servers}\n  {flows}"


def _with_env_overrides(
    data: dict[str, Any], env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with each flow's ``OTELWAX_<FLOW>__a__b`` variables laid over its section, as
    the flow does when it starts; and dotted path → variable, to blame bad values on it."""
    import yaml

    flows = dict(data.get("flows") or {}) if isinstance(data.get("flows", {}), dict) else None
    origins: dict[str, str] = {}
    if flows is None:
        return data, origins
    for section in SIGNALS:
        found = env_origins(env, section)
        if not found:
            continue
        sec = dict(flows.get(section) or {})
        for dotted, var in found.items():
            cur = sec
            *parents, last = dotted.split(".")
            for part in parents:
                cur[part] = dict(cur.get(part) or {}) if isinstance(cur.get(part), dict) else {}
                cur = cur[part]
            cur[last] = yaml.safe_load(env[var])
            origins[f"flows.{section}.{dotted}"] = var
        flows[section] = sec
    return {**data, "flows": flows}, origins


def run(args: Any) -> int:
    if args.config and args.file and args.config != args.file:
        print(f"otelwax validate: give the file once (-c {args.config} or {args.file})")
        return 2
    source = args.config or args.file or os.environ.get(ENV_CONFIG)
    label = source or "(no file: defaults)"
    try:
        data = read_yaml(source) if source else {}
    except ConfigError as exc:
        for p in exc.problems:
            print(f"{label}: {p}")
        return 1
    data, origins = _with_env_overrides(data, dict(os.environ))
    cfg, problems = validate_data(data)
    if cfg is not None and not args.no_imports:
        problems = _build_problems(cfg)
    problems = blame_env(problems, origins)
    for hint in env_hints(dict(os.environ), SIGNALS) + (_recovery_notes(cfg) if cfg else []):
        print(f"{label}: note: {hint}")
    if problems or cfg is None:
        n = len(problems)
        print(f"{label}: {n} problem{'s' if n != 1 else ''}")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"{label}: valid; {_summary(cfg)}")
    if args.show:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="otelwax validate")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
