"""filter: keep or drop rows by a condition on columns and attributes.

YAML::

    - type: filter
      name: drop-health-checks
      drop: "SpanAttributes['http.route'] in ['/health', '/ready']"
    - type: filter
      keep: "ServiceName in ['cart', 'checkout'] and Duration > 1ms"

Exactly one of ``keep`` / ``drop``. The condition language is ``operators.expr`` (parsed, never
evaluated as Python); a missing attribute behaves as described there (``!=`` and ``not in``
are true for it, everything else false). Evaluation is one ``pyarrow.compute`` expression per
batch plus ``RecordBatch.filter``.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import field_validator, model_validator

from operators.arrow_kernels import filter_batch
from operators.expr import compile_expr
from operators.expr_syntax import ExprError, columns_of, parse
from otelwax.settings import StrictModel

__all__ = ["FilterConfig", "build"]


class FilterConfig(StrictModel):
    """A filter step: ``keep`` rows matching a condition, or ``drop`` them."""

    type: Literal["filter"]
    name: str | None = None
    keep: str | None = None
    drop: str | None = None

    @field_validator("keep", "drop")
    @classmethod
    def _parse(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse(v)
            except ExprError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _one(self) -> FilterConfig:
        if (self.keep is None) == (self.drop is None):
            raise ValueError("give exactly one of keep or drop")
        return self

    @property
    def condition(self) -> str:
        return self.keep if self.keep is not None else self.drop  # type: ignore[return-value]

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        """Unknown columns and type mismatches for ``schema`` as (field, message)."""
        field = "keep" if self.keep is not None else "drop"
        try:
            compile_expr(self.condition, schema)
        except ExprError as exc:
            return [(field, str(exc))]
        return []


class FilterKernel:
    """Stateless kernel: evaluates the condition and filters the batch."""

    drop_reason = "filtered"

    def __init__(self, cfg: FilterConfig, schema: pa.Schema) -> None:
        node = parse(cfg.condition)
        self.columns = columns_of(node)
        self._cond = compile_expr(node, schema)
        self._keep = cfg.keep is not None

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return batch
        mask = self._cond(batch)
        if not self._keep:
            mask = pc.invert(mask)
        return filter_batch(batch, mask)


def build(cfg: FilterConfig, schema: pa.Schema) -> FilterKernel:
    """Factory used by the registry."""
    return FilterKernel(cfg, schema)
