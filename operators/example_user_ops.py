"""Example user operators, loaded from YAML by ``module: operators.example_user_ops:<name>``.

A user operator is a plain function ``(batch: pa.RecordBatch, cfg: dict) -> pa.RecordBatch``
(``cfg`` is the entry's ``config:`` mapping), or — with ``factory: true`` — a function
``(cfg: dict) -> Callable[[pa.RecordBatch], pa.RecordBatch]`` called once when the flow
starts. Return a batch with the same columns and types; keep the work in ``pyarrow.compute``.

    operators:
      - module: operators.example_user_ops:template_span_names
        config: {pattern: "[0-9]+", replacement: "{id}"}
      - module: operators.example_user_ops:keep_services
        factory: true
        config: {services: [cart, checkout]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def template_span_names(batch: pa.RecordBatch, cfg: dict[str, Any]) -> pa.RecordBatch:
    """Replace ids in span names (``GET /users/42`` → ``GET /users/{id}``) to cut cardinality."""
    column = cfg.get("column", "SpanName")
    pattern = cfg.get("pattern", "[0-9]+")
    replacement = cfg.get("replacement", "{id}")
    i = batch.schema.get_field_index(column)
    new = pc.replace_substring_regex(batch.column(i), pattern, replacement)
    return batch.set_column(i, batch.schema.field(i), new)


def keep_services(cfg: dict[str, Any]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """Factory: a filter keeping the rows of the services listed in ``cfg['services']``."""
    services = pa.array([str(s) for s in cfg.get("services", [])], pa.string())

    def run(batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch.filter(pc.is_in(batch.column("ServiceName"), value_set=services))

    return run
