"""Bytewax dataflows, one module per signal; each exposes ``flow``, built on first access.

``python -m bytewax.run flows.traces`` reads ``flows.traces.flow``; importing the module does
no work (``otelwax validate`` imports flow modules for their settings models). A flow whose
settings are invalid ends with its problems and the way out, without a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import model_validator

__all__ = ["FlowConfigError", "exits_on_bad_config", "lazy_flow", "own_store"]

F = TypeVar("F", bound=Callable[..., Any])


class FlowConfigError(SystemExit, ValueError):
    """A flow cannot start with its settings.

    Uncaught (``bytewax.run`` does not catch it), Python prints the message alone and exits 1;
    callers checking settings still catch it as the ``ValueError`` it wraps.
    """

    def __init__(self, flow: str, problem: BaseException) -> None:
        if isinstance(problem, FileNotFoundError):
            text = f"config file {problem.filename} does not exist (set -c or $OTELWAX_CONFIG)"
        else:
            text = str(problem).strip() or type(problem).__name__
        super().__init__(
            f"flows.{flow}: cannot start: {text}\n"
            "  fix the config and check it with: otelwax validate -c FILE"
        )


def exits_on_bad_config(name: str) -> Callable[[F], F]:
    """Decorate a flow's ``build``: a ``ValueError`` (config and settings problems) or an
    ``OSError`` (config file missing) becomes a :class:`FlowConfigError`."""

    def decorate(build: F) -> F:
        @functools.wraps(build)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return build(*args, **kwargs)
            except FlowConfigError:
                raise
            except (ValueError, OSError) as exc:
                raise FlowConfigError(name, exc) from exc

        return checked  # type: ignore[return-value]

    return decorate


def pipeline_build(
    name: str, load: Callable[..., Any], wire: Callable[[Any, Any], Any]
) -> Callable[..., Any]:
    """The ``build`` of a pipeline flow (traces, logs): settings from a YAML file (or
    ``$OTELWAX_CONFIG``/defaults) plus overrides by ``load``, wired by ``wire(settings,
    batch_operators)``; config problems exit with one line (:func:`exits_on_bad_config`)."""

    @exits_on_bad_config(name)
    def build(
        config_path: str | None = None, *, batch_operators: Any = None, **overrides: Any
    ) -> Any:
        """Build the flow from a YAML file (or ``$OTELWAX_CONFIG``/defaults) plus overrides.

        ``overrides`` use ``__`` for nesting: ``build(source__stop_at_end=True)``.
        ``batch_operators`` (callables or ``(name, callable)``) run after the configured ones.
        """
        return wire(load(config_path, **overrides), batch_operators)

    return build


def lazy_flow(name: str, build: Callable[[], Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` building ``flow`` with ``build()`` on first access."""
    flow = functools.cache(build)

    def __getattr__(attr: str) -> Any:
        if attr == "flow":
            return flow()
        raise AttributeError(f"module 'flows.{name}' has no attribute {attr!r}")

    return __getattr__


def own_store(flow: str) -> Any:
    """A model validator for a flow's settings: ``{flow}`` in its ``clickhouse.path`` becomes
    ``flow``, so flows sharing one ``clickhouse`` section get an embedded folder each.

    Use as ``_own_store = own_store("traces")`` in the settings class body.
    """

    def resolve(self: Any) -> Any:
        ch = getattr(self, "clickhouse", None)
        if ch is not None and "{flow}" in ch.path:
            object.__setattr__(self, "clickhouse", ch.for_flow(flow))  # settings are frozen
        return self

    return model_validator(mode="after")(resolve)
