"""Shared base for every component's configuration model.

Models validate with no I/O, reject unknown keys and report every problem at once with
its dotted key path (``sinks.clickhouse.batch.max_rows: must be > 0``).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

__all__ = [
    "SecretStr",
    "StrictModel",
    "ValidationError",
    "format_errors",
    "secret_keys",
    "union_members",
    "union_tag",
]


class StrictModel(BaseModel):
    """Base model: unknown keys are errors, assignments are validated, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def secret_keys(pattern: str) -> dict[str, Any]:
    """``json_schema_extra`` of a free-form ``dict`` field (librdkafka properties, HTTP
    headers) whose entries with a key matching ``pattern`` (case-insensitive regex) are
    secrets: ``otelwax.cli.config`` refuses them as literals, like ``SecretStr`` fields."""
    return {"secret_keys": pattern}


def union_members(tp: Any) -> list[Any]:
    """The candidate types inside Optional/Union/Annotated."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return union_members(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for a in typing.get_args(tp):
            out.extend(union_members(a))
        return out
    return [tp]


def _model_at(model: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc`` (for "did you mean")."""
    cur: list[Any] = [model]
    for part in loc[:-1]:
        nxt: list[Any] = []
        for tp in cur:
            for t in union_members(tp):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    f = t.model_fields.get(part)
                    if f is None:
                        f = next((x for x in t.model_fields.values() if x.alias == part), None)
                    if f is not None:
                        nxt.append(f.annotation)
                elif origin is list and isinstance(part, int):
                    nxt.append(typing.get_args(t)[0])
                elif origin is dict and isinstance(part, str):
                    nxt.append(typing.get_args(t)[1])
        # Discriminated unions put the tag in the path: keep the member with that tag.
        if not nxt and isinstance(part, str):
            for tp in cur:
                for t in union_members(tp):
                    if isinstance(t, type) and issubclass(t, BaseModel):
                        tag = union_tag(t)
                        if tag == part:
                            nxt.append(t)
        cur = nxt or []
        if not cur:
            return None
    models = [
        t
        for tp in cur
        for t in union_members(tp)
        if isinstance(t, type) and issubclass(t, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def union_tag(model: type[BaseModel]) -> str | None:
    """The value of a model's Literal ``type``/``action`` field (its tag in a tagged union)."""
    for name in ("type", "action"):
        f = model.model_fields.get(name)
        if f is not None and typing.get_origin(f.annotation) is Literal:
            return typing.get_args(f.annotation)[0]
    return None


def _suggestion(model: Any, loc: tuple[Any, ...], path: str = "") -> str:
    """' (did you mean "x"?)' for an unknown key when its owner has a close field name or
    lists the key in its ``other_names`` (another system's name for a field, e.g. the
    Collector's), or ': moved to a.b' when the owner lists it in its ``moved_keys`` (a renamed
    setting)."""
    owner = _model_at(model, loc)
    if owner is None or not loc:
        return ""
    other: dict[str, tuple[str, str]] = getattr(owner, "other_names", {})
    if str(loc[-1]) in other:
        field, whose = other[str(loc[-1])]
        return f' (did you mean "{field}"? {whose})'
    moved: dict[str, str] = getattr(owner, "moved_keys", {})
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    if str(loc[-1]) in moved:
        return f": moved to {parent}{moved[str(loc[-1])]}"
    names = [f.alias or n for n, f in owner.model_fields.items()]
    match = difflib.get_close_matches(str(loc[-1]), [*names, *moved], n=1)
    if match and match[0] in moved:
        return f' (did you mean "{match[0]}"? it moved to {parent}{moved[match[0]]})'
    return f' (did you mean "{match[0]}"?)' if match else ""


def format_errors(exc: ValidationError, prefix: str = "", model: Any = None) -> list[str]:
    """Render a pydantic ValidationError as ``dotted.key.path: message`` lines.

    ``model`` (the validated model, or a union of models) lets an unknown key get a "did you
    mean" with the closest field of the model that owns it, through nested models, lists, dicts,
    optionals and discriminated unions; a key the owner lists in its ``moved_keys`` class
    attribute (``{"old": "new.dotted.key"}``) gets "moved to <new dotted path>" instead.
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggestion(model, loc, path)
        lines.append(f"{path}: {msg}")
    return lines
