"""Issue 14's six efficiency goals, read from the benchmarks' JSON in ``bench/results``.

``make bench`` prints this table last: one row per goal with its target, what the last run
measured (the Collector beside it where it has a counterpart, as a ratio of spans per
CPU-second from the same interleaved run), and whether the target was reached. A goal whose
benchmark did not run (or failed) says so. Not a test: it measures nothing itself.

    python bench/goals.py [bench/results] [--fresh name,name,...]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1 << 20
Row = tuple[str, str, str, str]  # goal, target, measured, status


FRESH: set[str] | None = None
"""Benchmarks that succeeded in this run (``--fresh``); the others' older JSON is not read."""


def _load(res: Path, name: str) -> dict[str, Any] | None:
    p = res / f"{name}.json"
    if FRESH is not None and name not in FRESH:
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _status(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "not met"


def _paired_ratio(ours: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Median of the per-round ratios (runs are interleaved, so round i of each system saw the
    same machine); the ratio of the medians when the runs do not pair up."""
    a, b = ours.get("spans_per_core_s_all") or [], base.get("spans_per_core_s_all") or []
    if a and len(a) == len(b) and all(a) and all(b):
        return statistics.median(x / y for x, y in zip(a, b, strict=True))
    if ours.get("spans_per_core_s") and base.get("spans_per_core_s"):
        return ours["spans_per_core_s"] / base["spans_per_core_s"]
    return None


def _sbs_rows(res: Path) -> list[Row]:
    d = _load(res, "side_by_side")
    rows: list[Row] = []
    results = d["results"] if d else []

    def stage(prefix: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        rs = [r for r in results if r.get("stage", "").startswith(prefix)]
        base = next((r for r in rs if r["system"].startswith("Collector")), None)
        return base, [r for r in rs if r is not base]

    for prefix, goal, target in (
        ("1 ingest:", "1 ingest, telemetrygen", 1.2),
        ("1 ingest otlpgen", "1 ingest, otlpgen (reported)", 0.0),
        ("4 Kafka", "2 Kafka → Null engine", 2.5),
    ):
        base, ours = stage(prefix)
        if base is None or not ours:
            rows.append((goal, f"≥ {target}x the Collector" if target else "reported", "—",
                         "not measured"))  # fmt: skip
            continue
        for r in ours:
            ratio = _paired_ratio(r, base)
            where = r["system"].split("→")[-1].replace("(Null engine)", "").strip()
            measured = (
                f"{r['spans_per_core_s']:,.0f} vs {base['spans_per_core_s']:,.0f} spans per "
                f"CPU-s = {ratio:.2f}x" if ratio is not None else "—"
            )
            status = _status(ratio, target) if target else "reported"
            rows.append((f"{goal}, {where}", f"≥ {target}x" if target else "—", measured, status))
    return rows


def _mergetree_row(res: Path) -> list[Row]:
    d = _load(res, "mergetree")
    base = next((r for r in (d or {}).get("results", []) if r.get("variant") == "base"), None)
    value = base.get("spans_per_cpu_s") if base else None
    measured = f"{value:,.0f} spans per CPU-s, merges included" if value else "—"
    return [("3 MergeTree, chdb, one core", "≥ 150,000 spans/s", measured, _status(value, 150e3))]


def _memory_rows(res: Path) -> list[Row]:
    d = _load(res, "flow_memory")
    rows: list[Row] = []
    for target, limit in (("server", 400), ("chdb", 600)):
        rs = [
            run
            for v in (d or {}).get("results", [])
            if v["variant"].split(" ", 1)[0] == target
            for run in v.get("runs", [])
        ]
        peak = max((r["peak"]["rss"] / MIB for r in rs), default=None)
        measured = f"{peak:.0f} MiB peak at {d['spans']:,} spans" if peak and d else "—"
        rows.append((f"4 flow RSS, {target}", f"≤ {limit} MiB", measured,
                     _status(peak, limit, at_most=True)))  # fmt: skip
    return rows


def _metrics_rows(res: Path) -> list[Row]:
    rows: list[Row] = []
    for sink, goal, target in (("chdb", "chdb", 500e3), ("rw", "remote-write", 300e3)):
        d = _load(res, f"metrics_flow_{sink}")
        value = d.get("dp_per_cpu_s") if d else None
        measured = f"{value:,.0f} data points per CPU-s" if value else "—"
        rows.append((f"5 flows.metrics → {goal}", f"≥ {target:,.0f} dp/s", measured,
                     _status(value, target)))  # fmt: skip
    return rows


def _lookup_row(res: Path) -> list[Row]:
    d = _load(res, "query")
    best: tuple[float, int] | None = None
    for r in (d or {}).get("rows", []):
        one = r.get("lookup1") or {}
        if "server" in r.get("target", "") and one.get("qps"):
            best = max(best or (0.0, 0), (one["qps"], r["clients"]))
    measured = f"{best[0]:,.0f} lookups/s ({best[1]} clients)" if best else "—"
    return [("6 trace lookup, server, default schema", "≥ 1,000/s", measured,
             _status(best[0] if best else None, 1000))]  # fmt: skip


SOURCES: list[Callable[[Path], list[Row]]] = [
    _sbs_rows, _mergetree_row, _memory_rows, _metrics_rows, _lookup_row,
]  # fmt: skip


def goals_table(res: Path) -> str:
    """The markdown table of the six goals from the JSON files under ``res``."""
    lines = ["| goal | target | measured | status |", "|---|---|---|---|"]
    for source in SOURCES:
        lines += [f"| {' | '.join(row)} |" for row in source(res)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    global FRESH
    args = argv[1:]
    if "--fresh" in args:
        i = args.index("--fresh")
        FRESH = set(filter(None, args[i + 1].split(","))) if i + 1 < len(args) else set()
        del args[i : i + 2]
    res = Path(args[0]) if args else Path(__file__).parent / "results"
    print("Issue 14 goals (from this run's bench/results/*.json):")
    print(goals_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
