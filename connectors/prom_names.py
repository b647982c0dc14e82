"""OpenTelemetry → Prometheus names and labels, per the OpenTelemetry "Prometheus and
OpenMetrics compatibility" specification (the Collector's ``pkg/translator/prometheus`` with
metric suffixes enabled).

- metric names: characters outside ``[a-zA-Z0-9_:]`` become ``_`` (runs collapse), a leading
  digit gets a ``_`` prefix; the unit is appended as a word (``s`` → ``_seconds``, ``By`` →
  ``_bytes``, ``ms`` → ``_milliseconds``, ``m/s`` → ``_meters_per_second``; ``{annotations}``
  are dropped) unless the name already contains it; gauges with unit ``1`` get ``_ratio``;
  monotonic sums are counters and get ``_total`` (moved to the end when already present);
- label names: invalid characters → ``_``, a leading digit gets ``key_``, a single leading
  ``_`` gets ``key``; when two attributes map to the same label their values are joined with
  ``;`` in key order; labels with an empty value are left out (Prometheus treats them as
  absent);
- ``job`` = ``service.namespace/service.name`` (or ``service.name``), ``instance`` =
  ``service.instance.id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache

__all__ = [
    "KIND_COUNTER",
    "KIND_GAUGE",
    "KIND_HISTOGRAM",
    "KIND_SUMMARY",
    "RESOURCE_JOB_KEYS",
    "format_float",
    "job_instance",
    "labels_from_pairs",
    "metric_name",
    "sanitize_label_name",
]

UNIT_WORDS: dict[str, str] = {
    # time
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    # bytes
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    # SI
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    # misc
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNIT_WORDS: dict[str, str] = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}

_NON_NAME = re.compile(r"[^a-zA-Z0-9]+")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_ANNOTATION = re.compile(r"\{[^}]*\}")

KIND_GAUGE = "gauge"
KIND_COUNTER = "counter"
KIND_HISTOGRAM = "histogram"
KIND_SUMMARY = "summary"

RESOURCE_JOB_KEYS = ("service.name", "service.namespace", "service.instance.id")


def _unit_tokens(unit: str) -> tuple[list[str], list[str]]:
    """(main unit words, per-unit words) for a UCUM unit string."""
    unit = _ANNOTATION.sub("", unit or "").strip()
    if not unit:
        return [], []
    main, _, per = unit.partition("/")
    main_word = _unit_word(main, UNIT_WORDS)
    per_word = _unit_word(per, PER_UNIT_WORDS)
    return ([main_word] if main_word else []), (["per", per_word] if per_word else [])


def _unit_word(part: str, words: dict[str, str]) -> str:
    """The word of one side of a unit: a known one, else its characters as a name."""
    part = part.strip()
    if not part:
        return ""
    word = words.get(part)
    return word if word is not None else "_".join(t for t in _NON_NAME.split(part) if t)


@lru_cache(maxsize=65536)
def metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus base metric name for an OTel metric (before ``_bucket``/``_sum``/...).

    ``kind`` is one of ``gauge``, ``counter`` (monotonic sum), ``histogram``, ``summary``.
    """
    tokens = [t for t in _NON_NAME.split(name) if t]
    main_words, per_words = _unit_tokens(unit)
    for word in main_words:
        if word not in tokens:
            tokens.append(word)
    if per_words and per_words[1] not in tokens:
        tokens.extend(per_words)
    if kind == KIND_COUNTER:
        tokens = [t for t in tokens if t != "total"]
        tokens.append("total")
    if kind == KIND_GAUGE and (unit or "").strip() == "1" and "ratio" not in tokens:
        tokens.append("ratio")
    out = "_".join(tokens) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out


@lru_cache(maxsize=65536)
def sanitize_label_name(name: str) -> str:
    """A valid Prometheus label name for an attribute key."""
    if not name:
        return "key_"
    out = _BAD_LABEL.sub("_", name)
    if out[0].isdigit():
        out = "key_" + out
    elif out.startswith("_") and not out.startswith("__"):
        out = "key" + out
    return out



def labels_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Sanitized label dict; colliding names have their values joined with ';' in key order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in pairs:
        groups.setdefault(sanitize_label_name(key), []).append((key, value))
    out: dict[str, str] = {}
    for label, kvs in groups.items():
        value = kvs[0][1] if len(kvs) == 1 else ";".join(v for _, v in sorted(kvs))
        if value:  # Prometheus: an empty label value is the same as no label
            out[label] = value
    return out


def job_instance(resource: Mapping[str, str]) -> tuple[str, str]:
    """(job, instance) from resource attributes, per the compatibility spec."""
    svc = resource.get("service.name", "")
    ns = resource.get("service.namespace", "")
    job = f"{ns}/{svc}" if ns and svc else (svc or ns)
    return job, resource.get("service.instance.id", "")


def format_float(x: float) -> str:
    """Prometheus label value for a bound or quantile (Go ``strconv.FormatFloat(f, 'f', -1)``)."""
    if x == float("inf"):
        return "+Inf"
    if x == float("-inf"):
        return "-Inf"
    if x != x:
        return "NaN"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    if "e" in r or "E" in r:
        r = format(Decimal(r), "f")
    return r
