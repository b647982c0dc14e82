"""The config file, below every component: YAML, ``${env:...}`` substitution, shared sections.

The typed models and the validation of a whole deployment config are the composition root's
(``otelwax.cli.config``); components that read a config file themselves (``otelwax ingest``)
use these pieces without importing the root.

- ``read_yaml``: parse a file (duplicate keys are errors) into a mapping of sections;
- ``substitute_env``: replace ``${env:VAR}`` and ``${env:VAR:-default}`` in string values
  (``$$`` is a literal ``$``); an unset variable without a default is a problem at that key;
- ``share_sections``: copy the top-level ``kafka``/``clickhouse`` sections into ``ingest`` and
  each flow, and ``sinks.remote_write``/``sinks.jaeger`` into the flows writing to them, unless
  they set their own.

``ConfigError.problems`` holds the lines ``dotted.key.path: message``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = [
    "ENV_CONFIG",
    "SIGNALS",
    "ConfigError",
    "read_yaml",
    "share_sections",
    "substitute_env",
]

ENV_CONFIG = "OTELWAX_CONFIG"
SIGNALS = ("traces", "metrics", "logs", "spanmetrics", "logmetrics")

# The settings model of ``ingest`` or of one flow (by name), None when not known.
SectionModel = Callable[[str], "type[BaseModel] | None"]


def _inherit(section: dict[str, Any], key: str, value: Any, model: Any) -> dict[str, Any] | None:
    """``section`` with the shared ``key`` section added, or None when it must not be added.

    Not added when the section sets its own, when its model has no such field, or when the
    field is off by default (``None``, e.g. ClickHouse for spanmetrics). The shared values are
    laid over the field's own default settings (e.g. ``create_schema: true`` of a flow).
    """
    if key in section or model is None:
        return None
    field = model.model_fields.get(key)
    if field is None:
        return None
    default = field.get_default(call_default_factory=True)
    if default is None:
        return None
    if isinstance(default, BaseModel) and isinstance(value, dict):
        value = {**default.model_dump(exclude_defaults=True, by_alias=True), **value}
    return {**section, key: value}


# sinks.<key> -> the flows that write to it unless they set their own (null included)
_SHARED_SINKS = {
    "remote_write": ("metrics", "spanmetrics", "logmetrics"),
    "jaeger": ("traces",),
}


def _share_sinks(data: dict[str, Any], copied: list[str]) -> dict[str, Any]:
    """Copy ``sinks.remote_write``/``sinks.jaeger`` into the flows that use them."""
    sinks, flows = data.get("sinks"), data.get("flows", {})
    if not isinstance(sinks, dict) or not isinstance(flows, dict):
        return data
    flows = dict(flows)
    for key, names in _SHARED_SINKS.items():
        if sinks.get(key) is None:
            continue
        for name in names:
            sec = flows.get(name, {})
            if isinstance(sec, dict) and key not in sec:
                value = sinks[key]
                if key == "jaeger" and isinstance(value, dict):
                    value = {"enabled": True, **value}  # listed under sinks: on
                flows[name] = {**sec, key: value}
                copied.append(f"flows.{name}.{key}")
    return {**data, "flows": flows}


def share_sections(
    data: dict[str, Any], section_model: SectionModel
) -> tuple[dict[str, Any], list[str]]:
    """Copy top-level ``kafka``/``clickhouse`` into ``ingest`` and the flows (see _inherit),
    and ``sinks.remote_write``/``sinks.jaeger`` into the flows writing to them.

    ``section_model(name)`` is the model of ``ingest`` or of a flow: a section gets a shared
    one only when its model has that field. Returns the new data and the dotted paths that
    received a copy.
    """
    copied: list[str] = []
    data = _share_sinks(dict(data), copied)
    shared = {k: data[k] for k in ("kafka", "clickhouse") if data.get(k) is not None}
    if not shared:
        return data, copied
    targets: list[tuple[str, dict[str, Any], str]] = []
    ingest = data.get("ingest", {})
    if isinstance(ingest, dict):
        targets.append(("ingest", ingest, "ingest"))
    flows = data.get("flows", {})
    if not isinstance(flows, dict):
        return data, copied
    flows = dict(flows)
    for sig in SIGNALS:
        sec = flows.get(sig, {})
        if isinstance(sec, dict):
            targets.append((sig, sec, f"flows.{sig}"))
    for name, sec, path in targets:
        model = section_model(name)
        for key, value in shared.items():
            if name == "ingest" and key != "kafka":
                continue
            new = _inherit(sec, key, value, model)
            if new is not None:
                sec = new
                copied.append(f"{path}.{key}")
        if name == "ingest":
            if sec or "ingest" in data:
                data["ingest"] = sec
        elif sec or name in flows:
            flows[name] = sec
    data["flows"] = flows
    return data, copied


# --- errors -----------------------------------------------------------------------------------


class ConfigError(ValueError):
    """The configuration has problems; ``problems`` lists ``key.path: message`` lines."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        n = len(problems)
        super().__init__(
            f"{head}{n} configuration problem{'s' if n != 1 else ''}:\n  " + "\n  ".join(problems)
        )


# --- env substitution -------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}")


def _sub_str(s: str, env: Mapping[str, str], path: str, problems: list[str]) -> tuple[str, bool]:
    used_env = False

    def repl(m: re.Match[str]) -> str:
        nonlocal used_env
        if m.group(0) == "$$":
            return "$"
        if m.group(3) is not None:
            problems.append(
                f"{path}: bad reference ${{{m.group(3)}}}; use ${{env:NAME}} or "
                "${env:NAME:-default}"
            )
            return m.group(0)
        name, default = m.group(1), m.group(2)
        used_env = True
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_RE.sub(repl, s), used_env


def substitute_env(
    data: Any, env: Mapping[str, str], path: str = "", problems: list[str] | None = None,
    from_env: set[str] | None = None,
) -> Any:  # fmt: skip
    """Replace ``${env:...}`` in every string of ``data`` (keys untouched).

    Appends a problem per unset variable; adds the dotted path of each value that used the
    environment to ``from_env``.
    """
    problems = [] if problems is None else problems
    if isinstance(data, str):
        out, used = _sub_str(data, env, path, problems)
        if used and from_env is not None:
            from_env.add(path)
        return out
    if isinstance(data, dict):
        return {
            k: substitute_env(v, env, f"{path}.{k}" if path else str(k), problems, from_env)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [
            substitute_env(v, env, f"{path}.{i}" if path else str(i), problems, from_env)
            for i, v in enumerate(data)
        ]
    return data


# --- YAML -------------------------------------------------------------------------------------


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen[key] = True
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a config file; raises ConfigError for unreadable files and YAML syntax errors."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(p)) from None
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}YAML syntax error: {problem}"], str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of sections"], str(p))
    return data
