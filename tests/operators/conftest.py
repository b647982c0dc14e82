"""Fixtures for operator tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY


@pytest.fixture
def metric() -> Callable[..., float]:
    """Read an otelwax standard counter: metric("dropped", "operator.x", reason="sampled")."""

    def read(kind: str, component: str, unit: str = "rows", **labels: str) -> float:
        value = REGISTRY.get_sample_value(
            f"otelwax_{kind}_total", {"component": component, "unit": unit, **labels}
        )
        return value or 0.0

    return read
