"""Writes the Grafana dashboards of docker/grafana/dashboards/*.json.

The JSON files are committed (Grafana provisions them as they are); this script and the
modules it imports (grafana_kit, dashboards_prometheus, dashboards_clickhouse) are their source.
After editing them run ``python docker/grafana/build_dashboards.py``; tests/docker/test_grafana.py
fails when the committed JSON differs from what it builds.
"""

from __future__ import annotations

import json
from pathlib import Path

from dashboards_clickhouse import logs, traces
from dashboards_prometheus import health, service_overview

OUT = Path(__file__).resolve().parent / "dashboards"

DASHBOARDS = {
    "service-overview.json": service_overview,
    "traces.json": traces,
    "logs.json": logs,
    "otelwax-health.json": health,
}


def render(name: str) -> str:
    """The JSON text of one dashboard file."""
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=False) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name))


if __name__ == "__main__":
    main()
