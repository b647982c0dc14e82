"""Shared base for every component's configuration model.

Models validate with no I/O, reject unknown keys and report every problem at once with
its dotted key path (``sinks.clickhouse.batch.max_rows: must be > 0``).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

__all__ = ["SecretStr", "StrictModel", "ValidationError", "format_errors"]


class StrictModel(BaseModel):
    """Base model: unknown keys are errors, assignments are validated, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _suggest(model: type[BaseModel] | None, loc: tuple[Any, ...], key: str) -> str:
    """Return ' (did you mean "x"?)' for an unknown key when a close field name exists."""
    fields: list[str] = []
    cur: Any = model
    for part in loc[:-1]:
        if cur is None or not isinstance(part, str):
            cur = None
            break
        field = getattr(cur, "model_fields", {}).get(part)
        cur = getattr(field, "annotation", None) if field else None
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            cur = None
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        fields = list(cur.model_fields)
    match = difflib.get_close_matches(key, fields, n=1)
    return f' (did you mean "{match[0]}"?)' if match else ""


def format_errors(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """Render a pydantic ValidationError as ``dotted.key.path: message`` lines."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(model, loc, str(loc[-1]) if loc else "")
        lines.append(f"{path}: {msg}")
    return lines
