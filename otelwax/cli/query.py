"""``otelwax query``: see what landed without stopping a flow.

    otelwax query counts                          # rows per table
    otelwax query services --since 15m            # spans, error rate, p50/p99 per service
    otelwax query traces --slowest --limit 5      # recent (or slowest) traces
    otelwax query trace 5b8efff798038103d269b633813fc60c
    otelwax query report --html report.html       # all of it as one self-contained page
    otelwax query services --flow http://127.0.0.1:9464   # ask a running flow

The ClickHouse connection is the traces flow's (``flows.traces.clickhouse``, else the top-level
``clickhouse`` section of ``-c FILE``). An embedded chdb folder can be opened by one process
only, so while a flow runs on it, ask that flow (``--flow URL`` of its metrics port, which
answers ``/query/NAME``); a server can be asked directly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ENV_VARS = {"OTELWAX_CLICKHOUSE_PASSWORD": "server password (default of clickhouse.password)"}
_ACTIONS = ("counts", "services", "traces", "trace", "timeline", "report")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: want e.g. 90s, 15m, 2h, 1d")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("action", choices=_ACTIONS, help="what to show")
    a("trace_id", nargs="?", help="trace: the 32-hex trace id")
    a("-c", "--config", help="deployment YAML (default: $OTELWAX_CONFIG)")
    a("--flow", metavar="URL", help="ask the flow serving this metrics URL (embedded chdb)")
    a("--since", type=_duration, default=3600, help="time window: 90s, 15m, 2h (default 1h)")
    a("--limit", type=int, default=20, help="rows at most (default 20)")
    a("--slowest", action="store_true", help="traces: slowest first instead of newest")
    a("--json", action="store_true", help="print JSON instead of a table")
    a("--html", metavar="FILE", help="report: write the page here (default otelwax-report.html)")
    a(
        "--lag",
        metavar="[NAME=]URL",
        action="append",
        default=[],
        help="report: a flow's metrics URL to read consumer lag from (repeatable)",
    )


class _Remote:
    """Named queries answered by a running flow's metrics port."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def close(self) -> None:
        pass

    def run(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        qs = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/query/{name}?{qs}", timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace").strip()
            raise RuntimeError(f"{self.url}: {exc.code} {body}") from None
        except OSError as exc:
            raise RuntimeError(f"cannot reach the flow at {self.url}: {exc}") from None


class _Local:
    """Named queries run here on the configured client."""

    def __init__(self, cfg: Any) -> None:
        from connectors.clickhouse import open_client
        from connectors.clickhouse_query import Tables

        self.cfg = cfg.model_copy(update={"create_schema": False})
        self.tables = Tables.of(cfg)
        self.client = open_client(self.cfg)

    def run(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        from connectors.clickhouse_query import run_query

        return run_query(self.client, self.tables, name, params).to_json()

    def close(self) -> None:
        self.client.close()


def _clickhouse(config: str | None) -> Any:
    from otelwax.cli.config import load_config

    cfg = load_config(config)
    traces = getattr(cfg.flows, "traces", None)
    return getattr(traces, "clickhouse", None) or cfg.clickhouse


def _source(args: argparse.Namespace) -> tuple[Any, str]:
    if args.flow:
        return _Remote(args.flow), f"flow at {args.flow}"
    ch = _clickhouse(args.config)
    where = f"chdb {ch.path}" if ch.mode == "embedded" else f"server {ch.host}:{ch.port}"
    try:
        return _Local(ch), where
    except Exception as exc:
        if ch.mode == "embedded":
            raise RuntimeError(
                f"{exc}. While a flow runs on it, ask the flow: otelwax query ... "
                "--flow http://127.0.0.1:<its metrics port>"
            ) from exc
        raise


def lag_rows(specs: list[str]) -> list[dict[str, Any]]:
    """Consumer lag per topic from each ``[NAME=]URL`` flow metrics endpoint; a flow that
    cannot be reached or publishes no lag gets a row saying so."""
    rows: list[dict[str, Any]] = []
    pat = re.compile(r'^otelwax_kafka_consumer_lag\{([^}]*)\}\s+([0-9.eE+-]+)$')
    for spec in specs:
        name, _, url = spec.rpartition("=") if "=" in spec.split("://")[0] else ("", "", spec)
        name = name or urllib.parse.urlparse(url).netloc
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError as exc:
            rows.append({"flow": name, "topic": f"unreachable: {exc}", "lag": ""})
            continue
        per_topic: dict[str, float] = {}
        for line in text.splitlines():
            m = pat.match(line)
            if m:
                topic = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("topic", "")
                per_topic[topic] = per_topic.get(topic, 0.0) + float(m.group(2))
        rows += [{"flow": name, "topic": t, "lag": int(v)} for t, v in sorted(per_topic.items())]
        if not per_topic:  # answered, but no partition reading yet: say so, not nothing
            why = "no consumer lag published (its Kafka partitions have not started yet)"
            rows.append({"flow": name, "topic": why, "lag": ""})
    return rows


def _print(result: dict[str, Any]) -> None:
    cols, rows = result["columns"], result["rows"]
    cells = [[str(c) for c in cols]] + [[str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if not rows:
        print("(no rows)")


def _report(src: Any, where: str, args: argparse.Namespace) -> int:
    from otelwax.report import render_report

    def dicts(name: str, **params: Any) -> list[dict[str, Any]]:
        res = src.run(name, params)
        return [dict(zip(res["columns"], r, strict=True)) for r in res["rows"]]

    window = {"since_s": args.since}
    slowest = dicts("traces", slowest=1, limit=10, **window)
    trace = None
    if slowest:
        tid = args.trace_id or slowest[0]["trace_id"]
        trace = {"trace_id": tid, "spans": dicts("trace", id=tid)}
    data = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "source": where,
        "counts": dicts("counts"),
        "services": dicts("services", limit=args.limit, **window),
        "timeline": dicts("timeline", since_s=max(args.since, 60)),
        "traces": slowest,
        "trace": trace,
        "lag": lag_rows(args.lag),
    }
    out = Path(args.html or "otelwax-report.html")
    out.write_text(render_report(data))
    print(f"report: {out.resolve()}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "trace" and not args.trace_id:
        print("otelwax query trace: give the trace id", file=sys.stderr)
        return 2
    src, where = _source(args)
    try:
        return _run(src, where, args)
    finally:
        src.close()  # an embedded chdb folder is free again for the flow


def _run(src: Any, where: str, args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(src, where, args)
    params: dict[str, Any] = {"since_s": args.since, "limit": args.limit}
    if args.action == "traces":
        params["slowest"] = int(args.slowest)
    if args.action == "trace":
        params = {"id": args.trace_id}
    if args.action == "counts":
        params = {}
    result = src.run(args.action, params)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0
