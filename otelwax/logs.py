"""otelwax's log output: one setup for the CLI and the flows, plain text or JSON lines.

    configure_logging("INFO", "json")   # otelwax CLI (--log-format / $OTELWAX_LOG_FORMAT)
    flow = instrument(flow, level="INFO", fmt="json")   # a flow module, after wiring it

A JSON line has ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg``; ``flow``, ``step_id``
and ``worker`` when known; ``exc`` (the formatted traceback) when the record carries an
exception; ``stack`` for ``stack_info``; and every ``extra=`` field (values JSON cannot encode
are written as their ``repr``). One line per record; formatting never raises.

Step ids: :func:`instrument` wraps the callables bytewax calls for each step (mappers, the
stateful logic, source and sink partitions) so that while one of them runs, the thread's
*current step* is that step's id (``otelwax_traces.dead_letters``), and every record logged
meanwhile (by otelwax or any library it calls) carries it. Components need no change; a
record may still name its step explicitly with ``extra={"step_id": ...}``. ``worker`` is the
bytewax worker index, learnt when a dynamic source or sink is built on the worker's thread
(every otelwax flow has one). Logs of threads a step starts itself carry the flow id only.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar, get_args

__all__ = [
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "StepContextFilter",
    "TextFormatter",
    "carry_step",
    "configure_logging",
    "current_step",
    "env_log_format",
    "in_step",
    "instrument",
]

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
ENV_LOG_FORMAT = "OTELWAX_LOG_FORMAT"
ENV_LOG_LEVEL = "OTELWAX_LOG_LEVEL"

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT_ATTRS = ("flow", "step_id", "worker")
_CORE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack", *_CONTEXT_ATTRS})
_NOISE = frozenset({"color_message"})  # uvicorn's ANSI-coloured copy of msg


# --- the current step -------------------------------------------------------------------------


class _Context(threading.local):
    step: str | None = None


_ctx = _Context()
# Worker index by OS thread: bytewax's worker threads are not Python threads, and the Python
# thread state (with its threading.local data) may not outlive one call from bytewax.
_workers: dict[int, int] = {}
_process_flow: str | None = None  # the flow this process runs (set by instrument)


def current_step() -> str | None:
    """The id of the step running on this thread (set by :func:`instrument`), or None."""
    return _ctx.step


@contextmanager
def in_step(step_id: str | None, worker: int | None = None) -> Iterator[None]:
    """Run the ``with`` body as step ``step_id`` (and worker ``worker`` if given)."""
    ident = threading.get_ident()
    prev, prev_worker = _ctx.step, _workers.get(ident)
    _ctx.step = step_id
    if worker is not None:
        _workers[ident] = worker
    try:
        yield
    finally:
        _ctx.step = prev
        if worker is not None:
            if prev_worker is None:
                _workers.pop(ident, None)
            else:
                _workers[ident] = prev_worker


def carry_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to the calling thread's current step and worker, to hand work to another
    thread that the caller waits for (e.g. the one thread driving an embedded chdb). Returns
    ``fn`` itself when no step is running."""
    step = _ctx.step
    if step is None:
        return fn
    worker = _workers.get(threading.get_ident())

    def run(*args: Any, **kwargs: Any) -> Any:
        with in_step(step, worker):
            return fn(*args, **kwargs)

    return run


class StepContextFilter(logging.Filter):
    """Adds ``flow``, ``step_id`` and ``worker`` to each record (``extra=`` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        step = d.get("step_id") or _ctx.step
        if "step_id" not in d:
            d["step_id"] = step
        if "flow" not in d:
            d["flow"] = step.split(".", 1)[0] if step else _process_flow
        if "worker" not in d:
            d["worker"] = _workers.get(threading.get_ident())
        return True


# --- formatters -------------------------------------------------------------------------------


def _rfc3339(created: float) -> str:
    dt = datetime.fromtimestamp(created, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _safe_repr(v: Any) -> str:
    try:
        return repr(v)
    except Exception:  # a broken __repr__ must not lose the line
        return f"<unrepresentable {type(v).__name__}>"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # wrong % arguments: keep what was meant
        return f"{_safe_repr(record.msg)} % {_safe_repr(record.args)}"


def _dumps(obj: dict[str, Any]) -> str:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_safe_repr)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them so any stream can take the line
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False, default=_safe_repr)
    return text


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v, allow_nan=False, default=_safe_repr)
        return v
    except (TypeError, ValueError, RecursionError):  # NaN, circular, odd keys, ...
        return _safe_repr(v)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._format(record)
        except Exception as exc:  # never lose a record to its formatting
            return _dumps(
                {
                    "ts": _rfc3339(getattr(record, "created", 0.0)),
                    "level": str(getattr(record, "levelname", "ERROR")),
                    "logger": str(getattr(record, "name", "")),
                    "msg": _safe_repr(getattr(record, "msg", "")),
                    "format_error": _safe_repr(exc),
                }
            )

    def _format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        d = record.__dict__
        for key in _CONTEXT_ATTRS:
            v = d.get(key)
            if v is not None:
                out[key] = v
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        extras = {
            k: v
            for k, v in d.items()
            if k not in _RECORD_ATTRS
            and k not in _CORE_KEYS
            and k not in _NOISE
            and not k.startswith("_")
        }
        try:
            return _dumps({**out, **extras})
        except (TypeError, ValueError, RecursionError):
            return _dumps({k: _jsonable(v) for k, v in {**out, **extras}.items()})


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [step_id w<worker>]: message`` (the bracket when a step is known)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(_where)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        d = record.__dict__
        step, worker = d.get("step_id"), d.get("worker")
        where = f" {step}" if step else ""
        if worker is not None:
            where += f" w{worker}"
        record._where = f" [{where.strip()}]" if where else ""
        try:
            return super().format(record)
        except Exception:
            return (
                f"{_rfc3339(record.created)} {record.levelname} {record.name}: {_message(record)}"
            )


# --- setup ------------------------------------------------------------------------------------


class _OtelwaxHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (so a second call replaces it)."""


# Libraries whose warnings repeat one of ours with a traceback: clickhouse_driver logs every
# refused connect, and the sink already logs "clickhouse not reachable ... retrying in N s".
# Their records show only at DEBUG (or ERROR and above).
_CHATTY = ("clickhouse_driver",)


def configure_logging(
    level: str | int = "INFO",
    fmt: LogFormat = "text",
    *,
    stream: IO[str] | None = None,
    force: bool = False,
) -> bool:
    """Log records of ``level`` and above to ``stream`` (stderr) as ``fmt`` lines.

    Like ``logging.basicConfig``, does nothing when the root logger already has handlers
    other than one installed here (an embedding application or pytest configured logging),
    unless ``force``. Returns whether it configured. Raises ``ValueError`` for an unknown
    level or format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"):
            raise ValueError(f"log level {level!r}: expected DEBUG, INFO, WARNING or ERROR")
        level = logging.getLevelName(name)
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _OtelwaxHandler)]
    if not force and len(ours) != len(root.handlers):
        return False
    for h in list(root.handlers) if force else ours:
        root.removeHandler(h)
    handler = _OtelwaxHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(StepContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.ERROR)
    return True


def env_log_format(env: dict[str, str] | None = None, default: LogFormat = "text") -> str:
    """``$OTELWAX_LOG_FORMAT`` lower-cased, or ``default`` when unset (not validated)."""
    import os

    value = (os.environ if env is None else env).get(ENV_LOG_FORMAT, "").strip().lower()
    return value or default


# --- step context for a dataflow --------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
_pending: tuple[str | int, str] | None = None  # logging setup waiting for the flow to run
_pending_lock = threading.Lock()


def _apply_pending() -> None:
    global _pending
    with _pending_lock:
        cfg, _pending = _pending, None
    if cfg is not None:
        try:
            configure_logging(cfg[0], cfg[1])  # type: ignore[arg-type]
        except ValueError as exc:  # settings validated it already; never stop the flow
            logging.getLogger(__name__).warning("logging setup: %s", exc)


class _Step:
    """Runs calls as one step: sets the thread's current step around each call."""

    __slots__ = ("step_id",)

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if _pending is not None:
            _apply_pending()
        prev = _ctx.step
        _ctx.step = self.step_id
        try:
            return fn(*args, **kwargs)
        finally:
            _ctx.step = prev

    def items(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Like :meth:`call` for a function returning items to emit: a lazy iterable (bytewax's
        own ``map`` returns a generator) is consumed here, inside the step."""
        return self.call(_listed, fn, *args)

    def emit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Like :meth:`items` for a stateful logic's ``(emit, is_complete)`` result."""
        return self.call(_emitted, fn, *args)

    def worker(self, index: int) -> None:
        _workers[threading.get_ident()] = index


def _listed(fn: Callable[..., Any], *args: Any) -> Any:
    out = fn(*args)
    return out if isinstance(out, list | tuple) or out is None else list(out)


def _emitted(fn: Callable[..., Any], *args: Any) -> Any:
    out = fn(*args)
    if isinstance(out, tuple) and len(out) == 2 and not isinstance(out[0], list | tuple):
        return (list(out[0]), out[1])
    return out


class _InStep:
    """A mapper (returns items), predicate or inspector that runs as its step."""

    __slots__ = ("__wrapped__", "_fn", "_items", "_step")

    def __init__(self, step: _Step, fn: Callable[..., Any], items: bool) -> None:
        self._step = step
        self._fn = fn
        self._items = items
        self.__wrapped__ = fn

    def __call__(self, *args: Any) -> Any:
        if self._items:
            return self._step.items(self._fn, *args)
        return self._step.call(self._fn, *args)


def _builder(step: _Step, builder: Callable[[Any], Any]) -> Callable[[Any], Any]:
    from bytewax.operators import StatefulBatchLogic

    class _Logic(StatefulBatchLogic):  # type: ignore[type-arg]
        __slots__ = ("_inner",)

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def on_batch(self, values: list[Any]) -> Any:
            return step.emit(self._inner.on_batch, values)

        def on_notify(self) -> Any:
            return step.emit(self._inner.on_notify)

        def on_eof(self) -> Any:
            return step.emit(self._inner.on_eof)

        def notify_at(self) -> Any:
            return step.call(self._inner.notify_at)

        def snapshot(self) -> Any:
            return step.call(self._inner.snapshot)

    def build(resume_state: Any) -> Any:
        return _Logic(step.call(builder, resume_state))

    build.__wrapped__ = builder  # type: ignore[attr-defined]
    return build


def _source(step: _Step, src: Any) -> Any:
    from bytewax.inputs import (
        DynamicSource,
        FixedPartitionedSource,
        StatefulSourcePartition,
        StatelessSourcePartition,
    )

    class _Calls:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def next_batch(self) -> Any:
            return step.items(self._inner.next_batch)

        def next_awake(self) -> Any:
            return step.call(self._inner.next_awake)

        def close(self) -> None:
            step.call(self._inner.close)

    class _Stateful(_Calls, StatefulSourcePartition):  # type: ignore[type-arg]
        def snapshot(self) -> Any:
            return step.call(self._inner.snapshot)

    class _Stateless(_Calls, StatelessSourcePartition):  # type: ignore[type-arg]
        pass

    return _outer(step, src, FixedPartitionedSource, DynamicSource, _Stateful, _Stateless)


def _sink(step: _Step, sink: Any) -> Any:
    from bytewax.outputs import (
        DynamicSink,
        FixedPartitionedSink,
        StatefulSinkPartition,
        StatelessSinkPartition,
    )

    class _Calls:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def write_batch(self, items: list[Any]) -> None:
            step.call(self._inner.write_batch, items)

        def close(self) -> None:
            step.call(self._inner.close)

    class _Stateful(_Calls, StatefulSinkPartition):  # type: ignore[type-arg]
        def snapshot(self) -> Any:
            return step.call(self._inner.snapshot)

    class _Stateless(_Calls, StatelessSinkPartition):  # type: ignore[type-arg]
        pass

    return _outer(step, sink, FixedPartitionedSink, DynamicSink, _Stateful, _Stateless)


def _outer(
    step: _Step, obj: Any, fixed: type, dynamic: type, stateful: type, stateless: type
) -> Any:
    """``obj`` (a fixed-partitioned or dynamic source or sink) wrapped so that listing and
    building its partitions run as ``step``, and its partitions are wrapped in ``stateful`` /
    ``stateless``; anything else is returned as is."""
    if isinstance(obj, fixed):

        class _Fixed(fixed):  # type: ignore[valid-type,misc]
            def __init__(self, inner: Any) -> None:
                self._inner = self.__wrapped__ = inner

            def list_parts(self) -> list[str]:
                return step.call(self._inner.list_parts)

            def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
                inner = self._inner.build_part
                return stateful(step.call(inner, step_id, for_part, resume_state))

        if hasattr(fixed, "part_fn"):  # sinks route items by key: keep the inner routing
            _Fixed.part_fn = lambda self, item_key: self._inner.part_fn(item_key)  # type: ignore[attr-defined]
        return _Fixed(obj)
    if isinstance(obj, dynamic):

        class _Dynamic(dynamic):  # type: ignore[valid-type,misc]
            def __init__(self, inner: Any) -> None:
                self._inner = self.__wrapped__ = inner

            def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
                step.worker(worker_index)
                inner = self._inner.build
                return stateless(step.call(inner, step_id, worker_index, worker_count))

        return _Dynamic(obj)
    return obj


def _instrument_step(op: Any, step: _Step) -> None:
    for sub in op.substeps:
        _instrument_step(sub, step)
    if not getattr(op, "core", False):
        return
    fields = vars(op)
    # bytewax's operators are frozen dataclasses; this is the one place that swaps a field
    # for a wrapper of it (before the flow runs, so bytewax only ever sees the wrapper).
    for name in ("mapper", "predicate", "inspector"):
        fn = fields.get(name)
        if callable(fn) and not isinstance(fn, _InStep):
            object.__setattr__(op, name, _InStep(step, fn, items=name == "mapper"))
    if callable(fields.get("builder")) and not hasattr(fields["builder"], "__wrapped__"):
        object.__setattr__(op, "builder", _builder(step, fields["builder"]))
    if "source" in fields and not hasattr(fields["source"], "__wrapped__"):
        object.__setattr__(op, "source", _source(step, fields["source"]))
    if "sink" in fields and not hasattr(fields["sink"], "__wrapped__"):
        object.__setattr__(op, "sink", _sink(step, fields["sink"]))


def instrument(flow: F, *, level: str | int | None = None, fmt: str | None = None) -> F:
    """Make every step of ``flow`` (a bytewax ``Dataflow``) log with its step id.

    Each top-level step (``otelwax_traces.decode``; a composite operator's inner steps count
    as their top-level step) becomes the thread's current step while bytewax runs any of its
    callables. When ``level``/``fmt`` are given (else ``$OTELWAX_LOG_LEVEL`` /
    ``$OTELWAX_LOG_FORMAT``), :func:`configure_logging` runs as the flow starts running
    (first step call), not now: building a flow stays free of side effects on logging.
    Returns ``flow``. Calling it twice is harmless.
    """
    import os

    global _process_flow, _pending
    _process_flow = flow.flow_id  # type: ignore[attr-defined]
    for top in flow.substeps:  # type: ignore[attr-defined]
        _instrument_step(top, _Step(top.step_id))
    lvl = level if level is not None else os.environ.get(ENV_LOG_LEVEL, "INFO").upper()
    with _pending_lock:
        _pending = (lvl, fmt if fmt is not None else env_log_format())
    return flow
