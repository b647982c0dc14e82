"""What the code says, for checking the deployment files against it.

- metric families and their label names: from prometheus_client's registry after importing
  every module of the otelwax packages (the flows are not imported: they build a dataflow);
- component and operation names: from ``ComponentMetrics("...")`` / ``.latency("...")`` calls
  in the source (f-string parts become wildcards);
- PromQL helpers: the metric names and label matchers an expression uses.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("otelwax", "connectors", "operators")
SOURCE_DIRS = ("otelwax", "connectors", "operators", "flows")

# Span metrics as the Collector's spanmetrics connector names them (the flows' RED output).
SPAN_METRIC_LABELS = {"service_name", "span_name", "span_kind", "status_code"}
SPAN_METRICS = {
    "traces_span_metrics_calls_total": SPAN_METRIC_LABELS,
    "traces_span_metrics_duration_milliseconds_bucket": SPAN_METRIC_LABELS | {"le"},
    "traces_span_metrics_duration_milliseconds_sum": SPAN_METRIC_LABELS,
    "traces_span_metrics_duration_milliseconds_count": SPAN_METRIC_LABELS,
}
# Log record counts of flows.logmetrics (operators.log_counts), without extra dimensions.
LOG_METRICS = {"otelwax_log_records_total": {"service_name", "severity"}}
# Labels Prometheus adds to every scraped or remote-written series.
TARGET_LABELS = {"job", "instance"}
BUILTIN = {"up": set()}


@dataclass
class CodeMetrics:
    labels: dict[str, set[str]] = field(default_factory=dict)  # sample name -> label names
    import_errors: dict[str, str] = field(default_factory=dict)


@cache
def code_metrics() -> CodeMetrics:
    """Every sample name the code can export, with its labels."""
    from prometheus_client import REGISTRY

    out = CodeMetrics()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            if mod.name.endswith(".__main__"):
                continue
            try:
                importlib.import_module(mod.name)
            except Exception as exc:  # reported when a name is missing
                out.import_errors[mod.name] = f"{type(exc).__name__}: {exc}"
    for name, collector in REGISTRY._names_to_collectors.items():  # type: ignore[attr-defined]
        labels = set(getattr(collector, "_labelnames", ()))
        if name.endswith("_bucket"):
            labels.add("le")
        out.labels[name] = labels
    return out


def _literal_patterns(regex: str) -> list[str]:
    pats = []
    for path in sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")):
        for m in re.finditer(regex, path.read_text()):
            fstring, text = m.group(1), m.group(3)
            pats.append(re.sub(r"\{[^}]*\}", "*", text) if fstring else text)
    return sorted(set(pats))


@cache
def component_patterns() -> list[str]:
    """Component names in the code; ``*`` where an f-string inserts a value."""
    calls = _literal_patterns(r"ComponentMetrics\(\s*(f?)(['\"])(.+?)\2")
    defaults = _literal_patterns(r"component: str = ()(['\"])(.+?)\2")
    return sorted(set(calls) | set(defaults))


@cache
def operation_names() -> list[str]:
    """Operation names of latency histograms in the code."""
    return _literal_patterns(r"\.latency\(\s*(f?)(['\"])(.+?)\2")


def value_known(value: str, patterns: list[str]) -> bool:
    """An exact label value that a code pattern can produce."""
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def regex_known(regex: str, patterns: list[str]) -> bool:
    """A label regex that matches at least one value the code can produce."""
    rx = re.compile(f"^(?:{regex})$")
    return any(rx.match(p.replace("*", "x")) for p in patterns)


# --- PromQL ---------------------------------------------------------------------------------

_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]]  # (label, op, value)


def promql_selectors(expr: str) -> list[Selector]:
    """Every vector selector of ``expr``: metric name (or None) and label matchers."""
    sels = []
    for m in _SELECTOR.finditer(expr):
        matchers = [(a, op, v) for a, op, v in _MATCHER.findall(m.group(2))]
        sels.append(Selector(m.group(1), matchers))
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = _SELECTOR.sub(lambda m: (m.group(1) or "") + " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range / subquery durations
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare):
        name = m.group(1)
        if name.lower() in _KEYWORDS:
            continue
        sels.append(Selector(name, []))
    return sels


def check_promql(expr: str, recorded: set[str], where: str) -> list[str]:
    """Problems of ``expr`` against the code: unknown metrics, labels, components, operations."""
    problems = []
    cm = code_metrics()
    known = {**BUILTIN, **SPAN_METRICS, **LOG_METRICS, **cm.labels}
    comps, ops = component_patterns(), operation_names()
    for sel in promql_selectors(expr):
        if sel.metric is None:
            problems.append(f"{where}: selector without a metric name in {expr!r}")
            continue
        if sel.metric in recorded:
            continue
        if sel.metric not in known:
            hint = (
                f" (modules that failed to import: {cm.import_errors})" if cm.import_errors else ""
            )
            problems.append(f"{where}: metric {sel.metric} is not exported by the code{hint}")
            continue
        allowed = known[sel.metric] | TARGET_LABELS
        for label, op, value in sel.matchers:
            if label not in allowed:
                problems.append(f"{where}: {sel.metric} has no label {label}")
            if label in ("component", "operation") and op in ("=", "=~"):
                pats = comps if label == "component" else ops
                ok = value_known(value, pats) if op == "=" else regex_known(value, pats)
                if not ok:
                    problems.append(
                        f"{where}: {label}{op}{value!r} matches nothing the code emits ({pats})"
                    )
    return problems


# --- config files ---------------------------------------------------------------------------

SIGNALS = ("traces", "metrics", "logs")
FLOWS = (*SIGNALS, "spanmetrics")
# Which file of docker/config (and key of the k8s ConfigMap) each flow reads.
FLOW_CONFIG_FILE = dict.fromkeys(FLOWS, "otelwax.yaml")
# Flows that serve /metrics (and so /healthz) on their metrics_port.
SERVES_METRICS = ("traces", "metrics", "logs", "spanmetrics")


def flow_config_env(signal: str) -> str:
    """The environment variable naming the flow's config file, as the flow module reads it."""
    names = [f"flows.{signal}"] if flow_module_exists(signal) else []
    for name in [*names, "flows.settings"]:
        mod = importlib.import_module(name)
        if hasattr(mod, "ENV_CONFIG"):
            return mod.ENV_CONFIG
    return "OTELWAX_CONFIG"


def flow_module_exists(signal: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"flows.{signal}") is not None


def load_flow_settings(signal: str, path: Path):
    """The flow's settings from ``path`` through the flow module's own ``load_settings``."""
    mod = importlib.import_module(f"flows.{signal}")
    return mod.load_settings(path)


def load_ingest_config(path: Path):
    """IngestConfig from ``path`` exactly as ``otelwax ingest --config path`` builds it."""
    import argparse

    from connectors.ingest.cli import add_arguments, build_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    return build_config(p.parse_args(["--config", str(path)]))
