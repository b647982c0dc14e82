"""The deployment configuration: one YAML file, validated completely before any I/O.

Part of the composition root: it imports every component's settings model. The file-level
steps (YAML, ``${env:...}``, shared sections) are ``otelwax.configfile``, in the core.

    from otelwax.cli.config import load_config
    cfg = load_config()              # $OTELWAX_CONFIG, or defaults when unset
    cfg = load_config("configs/otelwax.yaml")
    cfg.flows.traces                 # the traces flow settings (flows.settings)
    cfg.operator_specs("traces")     # validated operator specs for operators.registry

Layout (Collector-like; every section optional, see ``configs/otelwax.yaml``)::

    kafka:      connectors.kafka.KafkaConfig          shared by the shim and every flow
    clickhouse: connectors.clickhouse.ClickHouseConfig shared by every flow
    ingest:     connectors.ingest.config.IngestConfig
    flows:      {traces: ..., metrics: ..., logs: ...}  each with ``operators: [...]``
    sinks:      {remote_write: ..., jaeger: ...}

The top-level ``kafka`` and ``clickhouse`` sections are copied into ``ingest`` and each flow
unless that section sets its own.

Loading, in order, collecting every problem before reporting:

1. YAML is parsed (duplicate keys are errors);
2. ``${env:VAR}`` and ``${env:VAR:-default}`` are replaced in string values (``$$`` is a
   literal ``$``); an unset variable without a default is a problem at that key;
3. the typed models validate (unknown keys rejected with a "did you mean");
4. operator specs validate against their flow's signal (columns, regexes, expressions);
5. secret fields (``SecretStr``) must come from the environment: a literal in the file is a
   problem (write ``password: ${env:CLICKHOUSE_PASSWORD}``); so must the secret entries of
   free-form maps (``settings.secret_keys``: ``kafka.extra.sasl.password``,
   ``remote_write.headers.Authorization``...).

``ConfigError.problems`` holds the lines ``dotted.key.path: message``.
"""

from __future__ import annotations

import logging
import os
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from connectors.clickhouse import ClickHouseConfig
from connectors.ingest.config import IngestConfig
from connectors.kafka import KafkaConfig
from connectors.otlp_export import JaegerExporterConfig as JaegerSinkConfig
from connectors.remote_write import RemoteWriteConfig
from flows.settings import TracesFlowSettings
from otelwax import configfile
from otelwax.configfile import (  # re-exported: the loader's API in one place
    ENV_CONFIG,
    SIGNALS,
    ConfigError,
    read_yaml,
    substitute_env,
)
from otelwax.settings import StrictModel, format_errors, union_members, union_tag

__all__ = [
    "ENV_CONFIG",
    "SIGNALS",
    "ConfigError",
    "OtelwaxConfig",
    "load_config",
    "read_yaml",
    "share_sections",
    "substitute_env",
    "validate_data",
]

log = logging.getLogger(__name__)

# Flows kept as raw mappings here and validated with their real model, imported lazily (only
# when validating; see ``flow_model``): the metrics flows' models live in their flow modules,
# which build a dataflow when imported; the logs flow's is ``flows.settings.LogsFlowSettings``.
_LAZY_FLOWS: dict[str, tuple[tuple[str, str], ...]] = {
    "logs": (("flows.settings", "LogsFlowSettings"),),
    "metrics": (
        ("flows.settings", "MetricsFlowSettings"),
        ("flows.metrics", "MetricsFlowSettings"),
    ),
    "spanmetrics": (
        ("flows.settings", "SpanMetricsFlowSettings"),
        ("flows.spanmetrics", "SpanMetricsFlowSettings"),
    ),
    "logmetrics": (("flows.logmetrics", "LogMetricsFlowSettings"),),
}


def flow_model(name: str) -> type[BaseModel] | None:
    """The settings model of a lazily validated flow (None when it cannot be imported)."""
    import importlib

    for mod, attr in _LAZY_FLOWS.get(name, ()):
        try:
            model = getattr(importlib.import_module(mod), attr, None)
        except Exception as exc:  # an import error in that flow must not break validation
            log.warning("cannot import %s to check flows.%s: %s", mod, name, exc)
            continue
        if model is not None:
            return model
    return None


def _lazy_flow(name: str) -> Any:
    """A validator turning a raw flow section into its flow's model (when importable).

    An invalid section stays a mapping here; ``validate_data`` reports its problems with their
    key paths.
    """

    def validate(raw: Any) -> Any:
        if isinstance(raw, BaseModel):
            return raw
        if not isinstance(raw, dict):
            raise ValueError("must be a mapping")
        model = flow_model(name)
        if model is None:
            return raw
        try:
            return model.model_validate(raw)
        except ValidationError:
            return raw

    return validate


class FlowsConfig(StrictModel):
    """The dataflows (``traces`` and ``logs`` with operator pipelines). All but ``traces`` are
    validated with their flow's own model, imported when validating (see ``flow_model``)."""

    traces: TracesFlowSettings = Field(default_factory=TracesFlowSettings)
    logs: Annotated[Any, BeforeValidator(_lazy_flow("logs"))] = Field(default_factory=dict)
    metrics: Annotated[Any, BeforeValidator(_lazy_flow("metrics"))] = Field(default_factory=dict)
    spanmetrics: Annotated[Any, BeforeValidator(_lazy_flow("spanmetrics"))] = Field({})
    logmetrics: Annotated[Any, BeforeValidator(_lazy_flow("logmetrics"))] = Field({})


class SinksConfig(StrictModel):
    """Sinks besides ClickHouse (off unless configured), shared like the top-level sections:
    ``remote_write`` goes to the metrics flows (metrics, spanmetrics, logmetrics), ``jaeger`` to
    flows.traces, unless a flow sets its own (``null`` turns it off for that flow)."""

    remote_write: RemoteWriteConfig | None = None
    jaeger: JaegerSinkConfig | None = None


def _section_model(name: str) -> type[BaseModel] | None:
    """The settings model of ``ingest`` or of one flow (None when not available)."""
    if name == "ingest":
        return IngestConfig
    if name == "traces":
        return TracesFlowSettings
    return flow_model(name)


def share_sections(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``otelwax.configfile.share_sections`` with the models of ingest and the flows."""
    return configfile.share_sections(data, _section_model)


class OtelwaxConfig(StrictModel):
    """The whole deployment. Every section has defaults: no file runs embedded chdb and a
    local Kafka."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    clickhouse: ClickHouseConfig = Field(default_factory=ClickHouseConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    flows: FlowsConfig = Field(default_factory=FlowsConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)

    @model_validator(mode="before")
    @classmethod
    def _share_sections(cls, data: Any) -> Any:
        """Copy top-level kafka/clickhouse into ingest and each flow unless they set their own."""
        if not isinstance(data, dict):
            return data
        return share_sections(data)[0]

    def flow_settings(self, name: str) -> Any:
        """The validated settings of one flow (``traces``, ``logs``, ``metrics``, ...)."""
        value = getattr(self.flows, name)
        if isinstance(value, dict):
            raise ConfigError([f"flows.{name}: the {name} flow's settings model is not available"])
        return value

    def operator_specs(self, signal: str) -> list[Any]:
        """The validated operator specs of one flow (``operators.registry.OperatorSpec``)."""
        from operators.registry import parse_specs

        flow = getattr(self.flows, signal)
        return parse_specs(getattr(flow, "operators", None) or [])


# --- error rendering --------------------------------------------------------------------------


def _render(exc: ValidationError, prefix: str, model: Any, drop_tags: bool = False) -> list[str]:
    """``format_errors`` plus: no "Value error," noise, and
    discriminator tags removed from paths (``operators.0.keep``, not ``operators.0.filter.keep``).
    """
    base = format_errors(exc, prefix=prefix, model=model)
    lines = []
    for err, line in zip(exc.errors(), base, strict=True):
        loc = tuple(err["loc"])
        shown = loc
        if drop_tags:
            shown = tuple(
                p
                for i, p in enumerate(loc)
                if not (
                    isinstance(p, str)
                    and p in _ALL_TAGS
                    and (i == 0 or isinstance(loc[i - 1], int))
                )
            )
        path = ".".join(str(p) for p in shown)
        path = f"{prefix}.{path}" if prefix and path else (prefix or path)
        msg = line.split(": ", 1)[1] if ": " in line else line
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    return lines


def _all_tags() -> set[str]:
    from operators.registry import OPERATOR_TYPES

    return {*OPERATOR_TYPES, "set", "copy", "rename", "delete", "hash", "truncate"}


_ALL_TAGS: set[str] = set()


# --- validation -------------------------------------------------------------------------------


_FROM_ENV = "secrets must come from the environment; write ${env:VARIABLE}"


def _secret_problems(tp: Any, raw: Any, path: str, from_env: set[str], out: list[str]) -> None:
    """Walk raw data along the model types: a SecretStr given literally in the file is a problem.

    Works on raw data, so it also reports when other parts of the file are invalid.
    """
    cands = union_members(tp)
    if any(c is SecretStr for c in cands):
        if isinstance(raw, str) and raw and path not in from_env:
            out.append(f"{path}: {_FROM_ENV}")
        return
    models = [c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)]
    if isinstance(raw, dict) and models:
        if len(models) > 1:  # a tagged union: pick the member by its tag
            tag = raw.get("type") or raw.get("action") or ("module" if "module" in raw else None)
            models = [m for m in models if union_tag(m) == tag] or models[:1]
        model = models[0]
        for name, field in model.model_fields.items():
            key = field.alias or name
            if key in raw:
                sub = f"{path}.{key}" if path else key
                _secret_problems(field.annotation, raw[key], sub, from_env, out)
                extra = field.json_schema_extra
                if isinstance(extra, dict) and isinstance(raw[key], dict):
                    keys = str(extra.get("secret_keys") or "")
                    _secret_entries(keys, raw[key], sub, from_env, out)
        return
    for c in cands:
        origin = typing.get_origin(c)
        if origin is list and isinstance(raw, list):
            for i, r in enumerate(raw):
                _secret_problems(typing.get_args(c)[0], r, f"{path}.{i}", from_env, out)
            return
        if origin is dict and isinstance(raw, dict):
            for k, r in raw.items():
                _secret_problems(typing.get_args(c)[1], r, f"{path}.{k}", from_env, out)
            return


def _secret_entries(
    pattern: str, raw: dict[Any, Any], path: str, from_env: set[str], out: list[str]
) -> None:
    """The entries of a free-form map whose key says they are secrets must be ``${env:...}``."""
    if not pattern:
        return
    for k, v in raw.items():
        sub = f"{path}.{k}"
        secret = re.search(pattern, str(k), re.IGNORECASE)
        if secret and isinstance(v, str) and v and sub not in from_env:
            out.append(f"{sub}: {_FROM_ENV}")


def _operator_problems(data: dict[str, Any], problems: list[str], from_env: set[str]) -> None:
    """Validate every flow's operator entries one by one (so all problems are found)."""
    from operators.registry import SIGNAL_SCHEMAS, TAIL_FIRST, OperatorSpec, parse_spec

    global _ALL_TAGS
    if not _ALL_TAGS:
        _ALL_TAGS = _all_tags()
    flows = data.get("flows")
    if not isinstance(flows, dict):
        return
    for sig in SIGNAL_SCHEMAS:
        sec = flows.get(sig)
        if not isinstance(sec, dict) or not isinstance(sec.get("operators"), list):
            continue
        prefix = f"flows.{sig}.operators"
        schema = SIGNAL_SCHEMAS[sig]
        names: dict[str, int] = {}
        tails: list[int] = []
        for i, raw in enumerate(sec["operators"]):
            where = f"{prefix}.{i}"
            _secret_problems(OperatorSpec, raw, where, from_env, problems)
            try:
                spec = parse_spec(raw)
            except ValidationError as exc:
                problems.extend(_render(exc, where, OperatorSpec, drop_tags=True))
                continue
            problems.extend(f"{where}.{f}: {m}" for f, m in spec.problems(schema))
            name = spec.name or f"{spec.type}.{i}"
            if name in names:
                problems.append(
                    f"{where}.name: duplicate operator name {name!r} (also step {names[name]})"
                )
            names[name] = i
            if spec.type == "tail_sampling":
                tails.append(i)
        if len(tails) > 1:
            problems.append(f"{prefix}.{tails[1]}.type: only one tail_sampling step per flow")
        elif tails and tails[0] != 0:
            problems.append(f"{prefix}.{tails[0]}.type: {TAIL_FIRST}")


def validate_data(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> tuple[OtelwaxConfig | None, list[str]]:
    """Validate raw (parsed YAML) data; returns (config or None, every problem found)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    from_env: set[str] = set()
    subst = substitute_env(dict(data), env, "", problems, from_env)
    cfg: OtelwaxConfig | None = None
    shared_data, copied = share_sections(subst)
    shared = tuple(p + "." for p in copied)
    # A value whose variable is unset is reported once, not again as an invalid value.
    unset = tuple(p.split(": ", 1)[0] + ": " for p in problems)
    try:
        cfg = OtelwaxConfig.model_validate(subst)
    except ValidationError as exc:
        problems.extend(
            p
            for p in _render(exc, "", OtelwaxConfig)
            if not p.startswith(shared) and not p.startswith(unset)
        )
    _secret_problems(OtelwaxConfig, subst, "", from_env, problems)
    _operator_problems(subst, problems, from_env)
    flows = shared_data.get("flows")
    for name in _LAZY_FLOWS:
        raw = flows.get(name) if isinstance(flows, dict) else None
        if not isinstance(raw, dict) or not raw:
            continue
        model = flow_model(name)
        if model is None:
            continue
        own = subst.get("flows", {}).get(name) if isinstance(subst.get("flows"), dict) else None
        if isinstance(own, dict):  # shared sections were checked where they are written
            _secret_problems(model, own, f"flows.{name}", from_env, problems)
        try:
            model.model_validate(raw)
        except ValidationError as exc:
            problems.extend(
                p
                for p in _render(exc, f"flows.{name}", model)
                if not p.startswith(shared) and not p.startswith(unset)
            )
    # One line per problem, in file order is not knowable here: keep pydantic's, de-duplicated.
    seen: set[str] = set()
    unique = [p for p in problems if not (p in seen or seen.add(p))]
    return (cfg if not unique else None), unique


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> OtelwaxConfig:
    """Load the deployment config from ``path``, else ``$OTELWAX_CONFIG``, else defaults.

    Raises ConfigError listing every problem (no I/O happens before this returns).
    """
    env = os.environ if env is None else env
    source = str(path) if path else env.get(ENV_CONFIG) or None
    data = read_yaml(source) if source else {}
    cfg, problems = validate_data(data, env)
    if problems or cfg is None:
        raise ConfigError(problems, source)
    return cfg
