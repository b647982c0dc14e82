"""Operator registry: YAML specs → built operators, user modules, and the pipeline driver.

Stable interface for flows::

    OperatorSpec                     # pydantic type of one YAML entry (a tagged union)
    parse_specs(raw: list) -> list[OperatorSpec]
    build_pipeline(specs: list[OperatorSpec], signal: str) -> list[BatchOperator]
    Pipeline(ops)                    # drives stateless and stateful operators together

``signal`` is ``"traces"`` or ``"logs"`` (the schema comes from ``otelwax.schemas``).

Every ``BatchOperator`` has ``name``, ``kind``, ``stateful`` and:

- ``__call__(batch) -> batch``: stateless operators return a batch with the same schema;
  stateful ones return whatever became ready (possibly an empty batch) — prefer ``process``.
- ``process(batch, now=None) -> list[batch]``: batches ready after this input (stateless: one).
- ``flush() -> list[batch]``: what a stateful operator still holds (end of input/shutdown).
- ``next_deadline() -> None``: stateful operators decide by the records' event time
  (``now`` given to ``process``), never by the wall clock.

It counts rows on ``/metrics`` as ``component="operator.<name>", unit="rows"``: received (in),
sent (out) and dropped (reason ``filtered`` / ``sampled``), and ``failed`` for batches whose
operator raised. A failing step raises ``OperatorError`` naming the step and the function.

YAML entries (``type`` selects the operator; ``name`` defaults to ``<type>.<index>``)::

    operators:
      - {type: filter, drop: "SpanAttributes['http.route'] in ['/health']"}
      - {type: transform, actions: [...]}
      - {type: redact}
      - {type: probabilistic_sampler, sampling_percentage: 25}
      - {type: tail_sampling, decision_wait: 10s, policies: [{type: latency, threshold: 2s}]}
      - {module: "mypkg.ops:scrub", config: {field: value}}        # a user operator

A user operator is ``module.path:attr``. By default ``attr`` is a function
``(batch: pa.RecordBatch, cfg: dict) -> pa.RecordBatch``; with ``factory: true`` it is called
once as ``attr(cfg)`` and must return a ``(batch) -> batch`` callable. The returned batch must
have the input's column names and types (it is cast back to the exact input schema);
``schema_change: true`` allows a different schema (the operator must then be the last one
before a sink that accepts it).
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Union

import pyarrow as pa
from pydantic import BeforeValidator, Discriminator, Field, Tag, TypeAdapter, field_validator

from operators import filter as filter_op
from operators import redact as redact_op
from operators import sampling as sampling_op
from operators import tail_sampling as tail_op
from operators import transform as transform_op
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

__all__ = [
    "SIGNAL_SCHEMAS",
    "BatchOperator",
    "ModuleConfig",
    "OperatorError",
    "OperatorSpec",
    "Pipeline",
    "build_batch_operator",
    "build_operator",
    "build_pipeline",
    "parse_spec",
    "parse_specs",
    "spec_problems",
]

log = logging.getLogger(__name__)

SIGNAL_SCHEMAS: dict[str, pa.Schema] = {"traces": TRACES_SCHEMA, "logs": LOGS_SCHEMA}


class OperatorError(RuntimeError):
    """An operator failed to build or to process a batch; names the step and the function."""

    def __init__(self, step: str, func: str, message: str) -> None:
        self.step = step
        self.func = func
        super().__init__(f"operator step {step!r} ({func}): {message}")


# --- user modules -----------------------------------------------------------------------------


def _check_target(v: str) -> str:
    mod, sep, attr = v.partition(":")
    ident = all(p.isidentifier() for p in mod.split(".")) if mod else False
    if not sep or not ident or not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"expected 'package.module:function', got {v!r}")
    return v


class ModuleConfig(StrictModel):
    """A user operator loaded from ``module: pkg.mod:attr``."""

    type: Literal["module"] = "module"
    name: str | None = None
    module: str
    config: dict[str, Any] = Field(default_factory=dict)
    factory: bool = False
    schema_change: bool = False

    _t = field_validator("module")(_check_target)

    def problems(self, schema: pa.Schema) -> list[tuple[str, str]]:
        return []


def load_target(target: str) -> Any:
    """Import ``pkg.mod:attr`` (attr may be dotted); raises ImportError/AttributeError."""
    mod_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_problem(cfg: ModuleConfig) -> str | None:
    """Why a user module cannot be used (import error, missing attribute, not callable)."""
    try:
        obj = load_target(cfg.module)
    except ImportError as exc:
        return f"cannot import {cfg.module.partition(':')[0]!r}: {exc}"
    except AttributeError:
        mod, _, attr = cfg.module.partition(":")
        return f"module {mod!r} has no attribute {attr!r}"
    except Exception as exc:  # the user's module raised while importing
        return f"importing {cfg.module!r} raised {type(exc).__name__}: {exc}"
    if not callable(obj):
        return f"{cfg.module!r} is not callable (it is a {type(obj).__name__})"
    return None


class UserKernel:
    """Wraps a user function; checks the output type and schema of every call."""

    drop_reason = "user"

    def __init__(self, cfg: ModuleConfig, schema: pa.Schema, step: str) -> None:
        problem = import_problem(cfg)
        if problem:
            raise OperatorError(step, cfg.module, problem)
        obj = load_target(cfg.module)
        self.func_name = cfg.module
        self._step = step
        self._schema_change = cfg.schema_change
        params = dict(cfg.config)
        if cfg.factory:
            try:
                fn = obj(params)
            except Exception as exc:
                raise OperatorError(step, cfg.module, f"factory raised {exc!r}") from exc
            if not callable(fn):
                raise OperatorError(step, cfg.module, "factory did not return a callable")
            self._fn: Callable[[pa.RecordBatch], Any] = fn
        else:
            self._fn = lambda b: obj(b, params)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        try:
            out = self._fn(batch)
        except Exception as exc:
            raise OperatorError(
                self._step, self.func_name, f"raised {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(out, pa.Table):
            out = pa.RecordBatch.from_arrays(
                [c.combine_chunks() for c in out.columns], schema=out.schema
            )
        if not isinstance(out, pa.RecordBatch):
            raise OperatorError(
                self._step,
                self.func_name,
                f"returned {type(out).__name__}, expected pyarrow.RecordBatch",
            )
        if self._schema_change:
            return out
        want = batch.schema
        if out.schema.names != want.names or out.schema.types != want.types:
            diff = _schema_diff(want, out.schema)
            raise OperatorError(self._step, self.func_name, f"returned the wrong schema: {diff}")
        if not out.schema.equals(want, check_metadata=True):
            out = pa.RecordBatch.from_arrays(out.columns, schema=want)
        return out


def _schema_diff(want: pa.Schema, got: pa.Schema) -> str:
    missing = [n for n in want.names if n not in got.names]
    extra = [n for n in got.names if n not in want.names]
    typed = [
        f"{n}: {got.field(n).type} instead of {want.field(n).type}"
        for n in want.names
        if n in got.names and got.field(n).type != want.field(n).type
    ]
    parts = []
    if missing:
        parts.append("missing columns " + ", ".join(missing))
    if extra:
        parts.append("extra columns " + ", ".join(extra))
    parts.extend(typed)
    if not parts:
        parts.append("columns in a different order")
    return "; ".join(parts)


# --- specs ------------------------------------------------------------------------------------

_BUILTIN: dict[str, tuple[type[StrictModel], Callable[..., Any]]] = {
    "filter": (filter_op.FilterConfig, filter_op.build),
    "transform": (transform_op.TransformConfig, transform_op.build),
    "redact": (redact_op.RedactConfig, redact_op.build),
    "probabilistic_sampler": (sampling_op.ProbabilisticSamplerConfig, sampling_op.build_head),
    "tail_sampling": (tail_op.TailSamplingConfig, tail_op.build_tail),
}
OPERATOR_TYPES = (*_BUILTIN, "module")


def _tag(v: Any) -> str | None:
    if isinstance(v, dict):
        if "type" in v:
            return v["type"]
        if "module" in v:
            return "module"
        return None
    return getattr(v, "type", None)


def _check_type(v: Any) -> Any:
    """Friendly errors for a missing or unknown ``type`` (with a suggestion)."""
    if isinstance(v, dict):
        t = _tag(v)
        if t is None:
            raise ValueError(
                "missing 'type' (one of " + ", ".join(OPERATOR_TYPES) + ") or 'module'"
            )
        if t not in OPERATOR_TYPES:
            match = difflib.get_close_matches(str(t), OPERATOR_TYPES, n=1)
            hint = f' (did you mean "{match[0]}"?)' if match else ""
            raise ValueError(
                f"unknown operator type {t!r}{hint}; known: " + ", ".join(OPERATOR_TYPES)
            )
    elif not isinstance(v, StrictModel):
        raise ValueError("an operator must be a mapping")
    return v


OperatorSpec = Annotated[
    Union[  # noqa: UP007 - Annotated tags need the explicit Union
        Annotated[filter_op.FilterConfig, Tag("filter")],
        Annotated[transform_op.TransformConfig, Tag("transform")],
        Annotated[redact_op.RedactConfig, Tag("redact")],
        Annotated[sampling_op.ProbabilisticSamplerConfig, Tag("probabilistic_sampler")],
        Annotated[tail_op.TailSamplingConfig, Tag("tail_sampling")],
        Annotated[ModuleConfig, Tag("module")],
    ],
    Discriminator(_tag),
    BeforeValidator(_check_type),
]
"""One operator entry of a flow's ``operators:`` list (validated without I/O)."""

_SPECS = TypeAdapter(list[OperatorSpec])
_SPEC = TypeAdapter(OperatorSpec)


def parse_specs(raw: Sequence[Any]) -> list[Any]:
    """Validate raw YAML entries into specs; raises pydantic.ValidationError."""
    return _SPECS.validate_python(list(raw))


def parse_spec(raw: Any) -> Any:
    """Validate one raw YAML entry; raises pydantic.ValidationError."""
    return _SPEC.validate_python(raw)


def spec_problems(specs: Sequence[Any], signal: str) -> list[tuple[str, str]]:
    """Problems that need the signal's schema, as (``<index>.<field>``, message) pairs."""
    schema = SIGNAL_SCHEMAS[signal]
    out = [(f"{i}.{f}", m) for i, s in enumerate(specs) for f, m in s.problems(schema)]
    names: dict[str, int] = {}
    for i, s in enumerate(specs):
        n = _step_name(s, i)
        if n in names:
            out.append((f"{i}.name", f"duplicate operator name {n!r} (also step {names[n]})"))
        names[n] = i
    stateful = [i for i, s in enumerate(specs) if s.type == "tail_sampling"]
    if len(stateful) > 1:
        out.append((f"{stateful[1]}.type", "only one tail_sampling step per flow"))
    elif stateful and stateful[0] != 0:
        out.append((f"{stateful[0]}.type", TAIL_FIRST))
    return out


TAIL_FIRST = (
    "tail_sampling must be the first operator: its clock is each span's Kafka record time, "
    "which only the decoded rows carry (operators after it see the sampled spans)"
)


def _step_name(spec: Any, index: int) -> str:
    return spec.name or f"{spec.type}.{index}"


# --- operators --------------------------------------------------------------------------------


class BatchOperator:
    """A built operator step: runs a kernel and counts rows (see the module doc)."""

    def __init__(self, name: str, kind: str, kernel: Any, func: str) -> None:
        self.name = name
        self.kind = kind
        self.kernel = kernel
        self.func = func
        self.stateful = bool(getattr(kernel, "stateful", False))
        self.metrics = ComponentMetrics(component=f"operator.{name}", unit="rows")
        self.drop_reason: str = getattr(kernel, "drop_reason", None) or "operator"
        """Reason its dropped rows are counted under (``filtered``, ``sampled``, ...)."""
        self._schema: pa.Schema | None = None

    def __repr__(self) -> str:
        return f"BatchOperator({self.name!r}, kind={self.kind!r})"

    def new_kernel(self) -> Any:
        """A fresh kernel of a stateful operator (a flow keeps one per Kafka partition)."""
        return self.kernel.fresh()

    def _error(self, exc: Exception) -> OperatorError:
        if isinstance(exc, OperatorError):
            return exc
        return OperatorError(self.name, self.func, f"raised {type(exc).__name__}: {exc}")

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Stateless use without counting (the caller counts, e.g. once per range however
        often it retries); raises ``OperatorError``."""
        try:
            return self.kernel(batch) if batch.num_rows or self.kind == "module" else batch
        except Exception as exc:
            raise self._error(exc) from exc

    def process(self, batch: pa.RecordBatch, now: float | None = None) -> list[pa.RecordBatch]:
        """Feed one batch; returns the batches ready downstream."""
        n_in = batch.num_rows
        self.metrics.received(n_in)
        self._schema = batch.schema
        try:
            if self.stateful:
                if now is None:
                    raise ValueError("a stateful operator needs the event time (now=) of the "
                                     "records, never the wall clock (see operators.tail_sampling)")
                outs = self.kernel.process(batch, int(now * 1000)).to_batches()
                dropped = self.kernel.dropped_rows
                self.metrics.dropped(self.kernel.overflow_rows, "tail_overflow")
            else:
                out = self.apply(batch)
                outs = [out]
                dropped = max(n_in - out.num_rows, 0)
        except Exception as exc:
            self.metrics.failed(n_in)
            raise self._error(exc) from exc
        self.metrics.sent(sum(b.num_rows for b in outs))
        self.metrics.dropped(dropped, self.drop_reason)
        return outs

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Stateless use: batch in, batch out (stateful: what became ready, concatenated)."""
        outs = self.process(batch)
        if len(outs) == 1:
            return outs[0]
        if not outs:
            return batch.slice(0, 0)
        return pa.Table.from_batches(outs).combine_chunks().to_batches()[0]

    def flush(self) -> list[pa.RecordBatch]:
        """Emit what a stateful operator still holds (nothing for stateless ones)."""
        if not self.stateful:
            return []
        outs = self.kernel.flush().to_batches()
        self.metrics.sent(sum(b.num_rows for b in outs))
        self.metrics.dropped(self.kernel.dropped_rows, self.drop_reason)
        return outs

    def next_deadline(self) -> float | None:
        """When ``process`` should be called without input: never (decisions follow the
        records' event time, not the wall clock)."""
        return None


def build_operator(spec: Any, signal: str, index: int = 0) -> BatchOperator:
    """Build one operator from a validated spec; raises OperatorError on problems."""
    schema = SIGNAL_SCHEMAS[signal]
    name = _step_name(spec, index)
    if isinstance(spec, ModuleConfig):
        return BatchOperator(name, "module", UserKernel(spec, schema, name), spec.module)
    _cfg_cls, factory = _BUILTIN[spec.type]
    func = f"{factory.__module__}.{factory.__name__}"
    problems = spec.problems(schema)
    if problems:
        raise OperatorError(name, func, "; ".join(f"{f}: {m}" for f, m in problems))
    try:
        kernel = factory(spec, schema)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(name, func, f"cannot build: {exc}") from exc
    return BatchOperator(name, spec.type, kernel, func)


def build_pipeline(specs: Sequence[Any], signal: str) -> list[BatchOperator]:
    """Build the operators of one flow, in order. ``specs`` may be models or raw dicts."""
    if signal not in SIGNAL_SCHEMAS:
        raise ValueError(f"unknown signal {signal!r}; one of {', '.join(SIGNAL_SCHEMAS)}")
    if any(isinstance(s, dict) for s in specs):
        specs = parse_specs(specs)
    problems = spec_problems(specs, signal)
    if problems:
        raise ValueError("; ".join(f"operators.{f}: {m}" for f, m in problems))
    return [build_operator(s, signal, i) for i, s in enumerate(specs)]


class Pipeline:
    """Runs a list of operators in order, handling stateful ones.

    A flow calls ``process(batch)`` for each decoded batch and forwards the returned batches
    (zero or more); calls ``process(empty_batch)`` (or ``tick()``) at ``next_deadline()`` when
    idle; and ``flush()`` at end of input / shutdown.
    """

    def __init__(self, ops: Sequence[BatchOperator], schema: pa.Schema | None = None) -> None:
        self.ops = list(ops)
        self.schema = schema

    @property
    def stateful(self) -> bool:
        return any(op.stateful for op in self.ops)

    def _run(
        self, batches: list[pa.RecordBatch], start: int, now: float | None
    ) -> list[pa.RecordBatch]:
        for op in self.ops[start:]:
            nxt: list[pa.RecordBatch] = []
            for b in batches:
                if b.num_rows == 0 and not op.stateful:
                    continue
                nxt.extend(op.process(b, now))
            batches = [b for b in nxt if b.num_rows]
        return batches

    def process(self, batch: pa.RecordBatch, now: float | None = None) -> list[pa.RecordBatch]:
        """Run ``batch`` through every operator; returns the non-empty output batches."""
        if self.schema is None:
            self.schema = batch.schema
        if batch.num_rows == 0:
            return self.tick(now)
        return self._run([batch], 0, now)

    def tick(self, now: float | None = None) -> list[pa.RecordBatch]:
        """Let stateful operators emit what is due without new input."""
        out: list[pa.RecordBatch] = []
        for i, op in enumerate(self.ops):
            if op.stateful and self.schema is not None:
                ready = [b for b in op.process(_empty(self.schema), now) if b.num_rows]
                out.extend(self._run(ready, i + 1, now))
        return out

    def flush(self) -> list[pa.RecordBatch]:
        """Flush every stateful operator (in order) through the rest of the pipeline."""
        out: list[pa.RecordBatch] = []
        for i, op in enumerate(self.ops):
            ready = [b for b in op.flush() if b.num_rows]
            out.extend(self._run(ready, i + 1, None))
        return out

    def next_deadline(self) -> float | None:
        times = [t for t in (op.next_deadline() for op in self.ops) if t is not None]
        return min(times) if times else None


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def run_pipeline(ops: Sequence[BatchOperator], batch: pa.RecordBatch) -> pa.RecordBatch:
    """Apply stateless operators in order (a convenience for tests and simple flows)."""
    for op in ops:
        batch = op(batch)
    return batch


def build_batch_operator(spec: Any, signal: str = "traces", index: int = 0) -> BatchOperator:
    """One operator from a raw dict or a spec (what ``flows.traces.resolve_operators`` calls)."""
    if isinstance(spec, dict):
        spec = parse_spec(spec)
    problems = spec_problems([spec], signal)
    if problems:
        raise ValueError(
            "; ".join(f"operators.{index}.{f.split('.', 1)[1]}: {m}" for f, m in problems)
        )
    return build_operator(spec, signal, index)
