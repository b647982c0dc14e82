"""docker/prometheus: promtool checks and unit tests, and consistency with the code's metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from connectors.ingest.config import IngestConfig

from .codefacts import (
    FLOW_CONFIG_FILE,
    SERVES_METRICS,
    check_promql,
    flow_module_exists,
    load_flow_settings,
)
from .conftest import DOCKER, PROM


def _promtool(promtool: str, *args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    res = _promtool(promtool, "check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in res.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    res = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The unit tests are real: raising a threshold makes them fail."""
    rules = (PROM / "alerts.yml").read_text().replace("> 0.05", "> 0.5")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "alerts_test.yml").write_text((PROM / "alerts_test.yml").read_text())
    res = _promtool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert res.returncode != 0
    assert "ServiceHighErrorRate" in res.stdout + res.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts - tested == set()
    for t in tests:
        # Each alert is shown to fire at least once, not only to stay silent.
        for a in t.get("alert_rule_test", []):
            assert a["alertname"] in alerts
    firing = {
        a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]
    }
    assert alerts - firing == set()


def test_every_alert_has_severity_and_text() -> None:
    for r in _rules():
        if "alert" in r:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_promtool_check_config(promtool: str) -> None:
    res = _promtool(promtool, "check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_use_metrics_the_code_exports() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    problems = []
    for r in _rules():
        problems += check_promql(r["expr"], recorded, f"alerts.yml {r.get('alert') or r['record']}")
    assert problems == []


def test_scrape_targets_match_the_code_ports() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    ingest = [t for sc in jobs["otelwax-ingest"]["static_configs"] for t in sc["targets"]]
    assert ingest == [f"ingest:{IngestConfig().metrics.port}"]
    flows = [t for sc in jobs["otelwax-flows"]["static_configs"] for t in sc["targets"]]
    assert flows == [f"flow-{s}:9464" for s in SERVES_METRICS]
    for s in SERVES_METRICS:
        if flow_module_exists(s):
            settings = load_flow_settings(s, DOCKER / "config" / FLOW_CONFIG_FILE[s])
            assert settings.metrics_port == 9464
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for target in ingest + flows:
        assert target.split(":")[0] in compose["services"], target
