"""A self-contained HTML page of what landed: no script, no network, charts drawn as inline SVG.

``render_report(data)`` takes plain rows (what ``connectors.clickhouse_query`` returns as
dicts) so it can be tested and produced without a database::

    {"generated": "2026-12-06 10:00:00 UTC", "source": "chdb .data/chdb-traces",
     "counts": [{"table": ..., "rows": ...}], "services": [...], "timeline": [...],
     "traces": [...], "trace": {"trace_id": ..., "spans": [...]}, "lag": [...]}

Elements carry ids (``counts``, ``services``, ``chart-spans``, ``chart-errors``, ``chart-p99``,
``waterfall``, ``lag``) that tests and users can find.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["render_report"]

_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#666}table{border-collapse:collapse;margin:4px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}.empty{color:#999;font-style:italic}
.err{color:#c0392b;font-weight:600}svg{background:#fafafa;border:1px solid #eee}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _table(tid: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return f'<p id="{tid}" class="empty">nothing yet</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f'<table id="{tid}"><tr>{head}</tr>{body}</table>'


def _chart(cid: str, title: str, timeline: Sequence[dict[str, Any]], metric: str) -> str:
    """One line per service over the minutes of ``timeline``."""
    w, h, pad = 720, 180, 36
    minutes = sorted({int(r["minute"]) for r in timeline})
    if not minutes:
        return f'<p id="{cid}" class="empty">{escape(title)}: no data</p>'
    series: dict[str, dict[int, float]] = {}
    for r in timeline:
        series.setdefault(str(r["service"]), {})[int(r["minute"])] = float(r[metric] or 0)
    top = max((v for s in series.values() for v in s.values()), default=0.0) or 1.0
    span = max(minutes[-1] - minutes[0], 60)

    def xy(minute: int, value: float) -> str:
        x = pad + (w - 2 * pad) * (minute - minutes[0]) / span
        y = h - pad / 2 - (h - pad) * value / top
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for i, (svc, points) in enumerate(sorted(series.items())):
        color = _PALETTE[i % len(_PALETTE)]
        coords = [xy(m, points.get(m, 0.0)) for m in minutes]
        lines.append(
            f'<polyline class="series" data-service="{escape(svc)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{" ".join(coords)}"/>'
        )
        # a dot per minute: a run shorter than two minutes still shows its values
        lines += [
            f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="3" fill="{color}"/>'
            for c in coords
        ]
        legend.append(f'<span><i style="background:{color}"></i>{escape(svc)}</span>')
    axis = (
        f'<text x="4" y="14" font-size="11">{top:g}</text>'
        f'<text x="4" y="{h - 6}" font-size="11">0</text>'
    )
    return (
        f"<h3>{escape(title)}</h3>"
        f'<svg id="{cid}" width="{w}" height="{h}" role="img" aria-label="{escape(title)}">'
        f'{axis}{"".join(lines)}</svg><div class="legend">{"".join(legend)}</div>'
    )


def _waterfall(trace: dict[str, Any] | None) -> str:
    spans = (trace or {}).get("spans") or []
    if not spans:
        return '<p id="waterfall" class="empty">no trace yet</p>'
    t0 = min(int(s["start_ns"]) for s in spans)
    end = max(int(s["start_ns"]) + float(s["duration_ms"]) * 1e6 for s in spans)
    total = max(end - t0, 1.0)
    depth = _depths(spans)
    w, row, label = 900, 20, 300
    track = w - label - 70  # room for the duration after the longest bar
    bars = []
    for i, s in enumerate(spans):
        x = label + track * (int(s["start_ns"]) - t0) / total
        bw = max(track * float(s["duration_ms"]) * 1e6 / total, 1.5)
        color = "#e15759" if s.get("status") == "STATUS_CODE_ERROR" else "#4e79a7"
        name = f'{"  " * depth.get(s["span_id"], 0)}{s["service"]}: {s["span"]}'
        y = i * row
        bars.append(
            f'<g class="span" data-span-id="{escape(str(s["span_id"]))}">'
            f'<text x="{4 + 10 * depth.get(s["span_id"], 0)}" y="{y + 14}" font-size="12">'
            f"{escape(name.strip()[:48])}</text>"
            f'<rect x="{x:.1f}" y="{y + 3}" width="{bw:.1f}" height="{row - 6}" fill="{color}"/>'
            f'<text x="{x + bw + 4:.1f}" y="{y + 14}" font-size="11">'
            f'{float(s["duration_ms"]):g} ms</text></g>'
        )
    tid = escape(str(trace.get("trace_id", "")))  # type: ignore[union-attr]
    return (
        f'<p class="meta">trace {tid}, {len(spans)} spans, {total / 1e6:g} ms</p>'
        f'<svg id="waterfall" width="{w}" height="{len(spans) * row + 4}">{"".join(bars)}</svg>'
    )


def _depths(spans: Sequence[dict[str, Any]]) -> dict[str, int]:
    parent = {s["span_id"]: s.get("parent_span_id") or "" for s in spans}
    out: dict[str, int] = {}
    for sid in parent:
        d, cur, seen = 0, parent[sid], {sid}
        while cur in parent and cur not in seen:
            seen.add(cur)
            d, cur = d + 1, parent[cur]
        out[sid] = d
    return out


def render_report(data: dict[str, Any]) -> str:
    """The whole page as one HTML string."""
    services = data.get("services") or []
    timeline = data.get("timeline") or []
    failing = [s for s in services if float(s.get("error_rate") or 0) > 0]
    alert = (
        f'<p class="err">errors in {len(failing)} service(s): '
        + escape(", ".join(str(s["service"]) for s in failing))
        + "</p>"
        if failing
        else ""
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>otelwax: what landed</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>otelwax: what landed</h1>",
        f'<p class="meta">{escape(str(data.get("source", "")))} · '
        f"generated {escape(str(data.get('generated', '')))}</p>",
        "<h2>Rows per table</h2>",
        _table("counts", data.get("counts") or [], ["table", "rows"]),
        "<h2>Services (worst p99 first)</h2>",
        alert,
        _table(
            "services", services, ["service", "spans", "errors", "error_rate", "p50_ms", "p99_ms"]
        ),
        "<h2>Over time (per minute)</h2>",
        _chart("chart-spans", "spans per minute", timeline, "spans"),
        _chart("chart-errors", "errors per minute", timeline, "errors"),
        _chart("chart-p99", "p99 latency (ms)", timeline, "p99_ms"),
        "<h2>Slowest recent traces</h2>",
        _table(
            "traces",
            data.get("traces") or [],
            ["trace_id", "root_service", "root_span", "spans", "errors", "duration_ms"],
        ),
        "<h2>Waterfall of the slowest trace</h2>",
        _waterfall(data.get("trace")),
        "<h2>Consumer lag per flow</h2>",
        _table("lag", data.get("lag") or [], ["flow", "topic", "lag"]),
        "</body></html>",
    ]
    return "\n".join(parts)
