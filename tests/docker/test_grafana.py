"""docker/grafana: dashboards and provisioning parse, agree with each other and with the code.

Prometheus queries are checked against the metrics the code exports; ClickHouse queries run for
real (chdb) on the tables the sinks create, with Grafana's macros expanded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .codefacts import check_promql
from .conftest import GRAFANA, ROOT

DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def _datasources() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())
    return {d["uid"]: d for d in doc["datasources"]}


def test_committed_json_is_what_the_builder_writes() -> None:
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboards
    finally:
        sys.path.remove(str(GRAFANA))
    assert sorted(build_dashboards.DASHBOARDS) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == build_dashboards.render(path.name), (
            f"{path.name} is stale: run python docker/grafana/build_dashboards.py"
        )


def test_dashboards_pass_the_grafana_schema(grafanacheck: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [grafanacheck, *map(str, DASHBOARDS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(": ok (") == len(DASHBOARDS)
    # The check is strict: a misspelt option and a wrong type are both reported.
    dash = _load(DASHBOARDS[0])
    panel = _panels(dash)[0]
    panel["options"]["legendd"] = {}
    panel["gridPos"]["w"] = "wide"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dash))
    res = subprocess.run([grafanacheck, str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "unexpected field 'legendd'" in res.stdout and "gridPos.w" in res.stdout


def test_the_four_dashboards_exist() -> None:
    titles = {_load(p)["title"] for p in DASHBOARDS}
    assert titles == {
        "Services overview (RED)",
        "Traces (ClickHouse)",
        "Logs (ClickHouse)",
        "otelwax health",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = _load(path)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    sources = _datasources()
    for p in _panels(dash):
        assert p["targets"], p["title"]
        for t in p["targets"]:
            ds = t["datasource"]
            assert ds["uid"] in sources and sources[ds["uid"]]["type"] == ds["type"], p["title"]
    for v in dash["templating"]["list"]:
        if "datasource" in v:
            assert v["datasource"]["uid"] in sources


def test_uids_are_unique_and_home_dashboard_exists() -> None:
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert (GRAFANA / "dashboards" / Path(home).name).exists()


def test_provisioning_points_at_the_mounted_dashboards() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['providers'][0]['options']['path']}:ro" in mounts
    ds = _datasources()
    assert ds["clickhouse"]["type"] == "grafana-clickhouse-datasource"
    assert (
        "grafana-clickhouse-datasource"
        in compose["services"]["grafana"]["environment"]["GF_PLUGINS_PREINSTALL"]
    )
    assert ds["clickhouse"]["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"


def test_prometheus_queries_use_metrics_the_code_exports() -> None:
    problems = []
    for path in DASHBOARDS:
        dash = _load(path)
        for p in _panels(dash):
            for t in p["targets"]:
                if t["datasource"]["type"] == "prometheus":
                    problems += check_promql(t["expr"], set(), f"{path.name} '{p['title']}'")
        for v in dash["templating"]["list"]:
            if v.get("datasource", {}).get("type") == "prometheus":
                q = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"])
                problems += check_promql(q, set(), f"{path.name} variable {v['name']}")
    assert problems == []


def _expand(sql: str, now: int) -> str:
    """Grafana + ClickHouse-plugin macros and variables, as the plugin would expand them."""
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 >= toDateTime({now - 3600}) AND \1 <= toDateTime({now + 60})",
        sql,
    )
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 60 second)", sql)
    sql = sql.replace("$__interval_s", "60")
    values = {
        "service": "'checkout'",
        "severity": "'ERROR'",
        "span_filter": "''",
        "text": "''",
        "trace_id": "'abc'",
    }
    sql = re.sub(r"\$\{(\w+):(?:singlequote|sqlstring)\}", lambda m: values[m.group(1)], sql)
    assert "$" not in sql, sql
    return sql


@pytest.mark.parametrize(
    "tables",
    [
        {},
        {"text_indexes": "off"},
        {"logs_layout": "timestamp_time"},
        {"json": True},
        {"trace_copy": "on"},  # what a server gets: the by_trace projection
    ],
    ids=["five_minutes-text", "five_minutes-bloom", "timestamp_time", "json", "trace_copy"],
)
def test_clickhouse_queries_run_on_the_sink_tables(tmp_path: Path, tables: dict) -> None:
    now = int(time.time())
    named: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dash = _load(path)
        for p in _panels(dash):
            for t in p["targets"]:
                if t["datasource"]["type"] == "grafana-clickhouse-datasource":
                    named.append((f"{path.name} '{p['title']}'", _expand(t["rawSql"], now)))
        for v in dash["templating"]["list"]:
            if v.get("datasource", {}).get("type") == "grafana-clickhouse-datasource":
                named.append((f"{path.name} variable {v['name']}", _expand(v["query"], now)))
    assert len(named) >= 8
    res = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("chdb_queries.py")),
            str(tmp_path / "ch"),
            json.dumps(tables),
        ],
        input=json.dumps([sql for _, sql in named]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    failed = {name: err for (name, _), err in zip(named, out["errors"], strict=True) if err}
    assert failed == {}
    rows = {name: r for (name, _), r in zip(named, out["results"], strict=True)}
    # The seeded span and log record show up where a user would look for them.
    slow = rows["traces.json 'Slowest root spans (click a trace id, then look it up below)'"]
    assert [(r["TraceId"], r["duration_ms"]) for r in slow] == [("abc", 5)]
    trace = rows["traces.json 'Trace ${trace_id}'"]
    assert trace[0]["serviceName"] == "checkout" and trace[0]["operationName"] == "GET /cart"
    assert {"key": "http.method", "value": "GET"} in trace[0]["tags"]
    by_severity = rows["logs.json 'Records by severity'"]
    assert [(r["SeverityText"], int(r["records"])) for r in by_severity] == [("ERROR", 1)]
    assert rows["logs.json 'Latest records'"][0]["body"] == "payment failed"
    assert rows["traces.json variable service"] == [{"ServiceName": "checkout"}]


def test_error_log_panel_counts_what_the_alert_counts() -> None:
    """The service overview shows the error-log rate the ServiceErrorLogs alert fires on."""
    dash = _load(GRAFANA / "dashboards" / "service-overview.json")
    (p,) = [p for p in _panels(dash) if p["title"] == "Error logs per second"]
    expr = p["targets"][0]["expr"]
    assert expr.startswith("sum by (service_name) (rate(otelwax_log_records_total{")
    rules = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())["groups"]
    name = "service:log_errors:rate5m"
    (rec,) = [r for g in rules for r in g["rules"] if r.get("record") == name]
    for matcher in re.findall(r'severity=~"[^"]*"', rec["expr"]):
        assert matcher in expr
