"""The pieces every dashboard of docker/grafana/dashboards is built from: a grid layout,
Prometheus and ClickHouse queries, panels with every option Grafana's schema requires, template
variables and the dashboard itself.

Datasource uids (``prometheus``, ``clickhouse``) are the ones of
provisioning/datasources/datasources.yaml.
"""

from __future__ import annotations

from typing import Any

PROM = {"type": "prometheus", "uid": "prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}

# Formats of the ClickHouse plugin's queries.
CH_TIME_SERIES, CH_TABLE, CH_LOGS, CH_TRACE = 0, 1, 2, 3


class Layout:
    """Places panels left to right on a 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, panel: dict[str, Any], w: int, h: int) -> dict[str, Any]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"type": "row", "title": title, "collapsed": False, "panels": []}
        panel = self.place(panel, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0
        return panel


def prom_target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": PROM, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}


def ch_target(sql: str, fmt: int, ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": CH,
        "refId": ref,
        "editorType": "sql",
        "format": fmt,
        "queryType": {CH_TIME_SERIES: "timeseries", CH_TABLE: "table", CH_LOGS: "logs"}.get(
            fmt, "traces"
        ),
        "rawSql": " ".join(sql.split()),
    }


def ch_panel(kind: str, title: str, sql: str, **options: Any) -> dict[str, Any]:
    """A panel of one ClickHouse query, in the format its kind shows (a table otherwise)."""
    fmt = {"timeseries": CH_TIME_SERIES, "logs": CH_LOGS, "traces": CH_TRACE}.get(kind, CH_TABLE)
    return panel(kind, title, [ch_target(sql, fmt)], **options)


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    description: str = "",
    **options: Any,
) -> dict[str, Any]:
    ds = targets[0]["datasource"]
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": ds,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options,
    }
    # Every option the panel schema requires is written out (as Grafana exports it), so the
    # JSON passes the Grafana Foundation SDK's strict decoding (tests/docker/grafanacheck).
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 10, "lineWidth": 1}
        p["options"].setdefault("legend", legend)
        p["options"].setdefault("tooltip", {"mode": "multi", "sort": "desc"})
    elif kind == "table":
        p["options"].setdefault("frameIndex", 0)
    elif kind == "bargauge":
        defaults = {
            "valueMode": "color",
            "namePlacement": "auto",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizWidth": 8,
            "minVizHeight": 16,
            "maxVizHeight": 300,
            "legend": {**legend, "showLegend": False},
        }
        p["options"] = {**defaults, **p["options"]}
    elif kind == "logs":
        defaults = {
            "showLabels": False,
            "showCommonLabels": False,
            "showLogContextToggle": False,
            "prettifyLogMessage": False,
            "dedupStrategy": "none",
        }
        p["options"] = {**defaults, **p["options"]}
    elif kind == "stat":
        defaults = {
            "justifyMode": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
            "orientation": "auto",
        }
        p["options"] = {**defaults, **p["options"]}
    return p


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]], tags
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["otelwax", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["otelwax"],
                "asDropdown": True,
                "title": "otelwax",
                "icon": "external link",
                "tooltip": "",
                "targetBlank": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def prom_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def ch_var(name: str, label: str, sql: str) -> dict[str, Any]:
    sql = " ".join(sql.split())
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": CH,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def textbox(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "textbox",
        "query": "",
        "current": {"text": "", "value": ""},
    }
