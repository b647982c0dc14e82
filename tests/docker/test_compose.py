"""docker/compose.yaml through compose-go (the loader behind ``docker compose config``), and
its agreement with the code: ports, health checks, start order, config, env vars."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.ingest.config import IngestConfig
from connectors.kafka import DEFAULT_TOPICS

from .codefacts import (
    FLOW_CONFIG_FILE,
    FLOWS,
    SERVES_METRICS,
    flow_config_env,
    flow_module_exists,
    load_flow_settings,
    load_ingest_config,
)
from .conftest import DOCKER, K8S, ROOT

FLOW_SERVICES = [f"flow-{s}" for s in FLOWS]

# OTELWAX_* variables set by the deployment files but read by them, not by the Python code.
DEPLOYMENT_VARS = {
    "OTELWAX_HEALTH_PORT": "the image's HEALTHCHECK",
    "OTELWAX_HEALTH_PATH": "the image's HEALTHCHECK",
    "OTELWAX_FLOW": "the compose flow command",
    "OTELWAX_IMAGE": "compose image override",
    "OTELWAX_RECOVERY_PARTITIONS": "k8s cluster-init script",
}


def _svc(project: dict[str, Any], name: str) -> dict[str, Any]:
    return project["services"][name]


def _published(svc: dict[str, Any]) -> set[int]:
    return {int(p["target"]) for p in svc.get("ports", [])}


def test_compose_go_accepts_the_file(compose_project: dict[str, Any]) -> None:
    assert set(compose_project["services"]) == {
        "kafka",
        "topic-init",
        "clickhouse",
        "prometheus",
        "jaeger",
        "grafana",
        "ingest",
        *FLOW_SERVICES,
    }


def test_compose_go_rejects_a_broken_file(composecheck: str, tmp_path: Path) -> None:
    """The loader is real: a dependency on a missing service and an unknown key fail."""
    text = (DOCKER / "compose.yaml").read_text()
    cases = {
        'undefined service "jaeger"': text.replace("  jaeger:\n    image:", "  jaegr:\n    image:"),
        "services.kafka.restar": text.replace(
            "    restart: unless-stopped\n", "    restar: no\n", 1
        ),
    }
    (tmp_path / "otelwax.yaml").write_text("")
    for expected, broken in cases.items():
        path = tmp_path / "compose.yaml"
        path.write_text(broken)
        res = subprocess.run([composecheck, str(path)], capture_output=True, text=True)
        assert res.returncode != 0 and expected in res.stderr, res.stderr


def test_ingest_publishes_the_code_ports(compose_project: dict[str, Any]) -> None:
    d = IngestConfig()
    ingest = _svc(compose_project, "ingest")
    assert _published(ingest) == {d.grpc.port, d.http.port, d.metrics.port}
    assert ingest["environment"]["OTELWAX_HEALTH_PORT"] == str(d.metrics.port)
    assert ingest["command"][:3] == ["ingest", "--config", ingest["environment"]["OTELWAX_CONFIG"]]
    # Jaeger's own OTLP ports are not published: the host's 4317/4318 belong to the shim.
    assert not _published(_svc(compose_project, "jaeger")) & {4317, 4318}


def test_every_long_running_service_is_health_checked(compose_project: dict[str, Any]) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile  # the otelwax services inherit the image's check
    for name, svc in compose_project["services"].items():
        if name == "topic-init" or name.removeprefix("flow-") in set(FLOWS) - set(SERVES_METRICS):
            assert svc["healthcheck"]["disable"] is True  # a job, or a flow without /healthz
            continue
        built = svc.get("build") is not None
        assert built or svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if built:  # the image's check, asking readiness (otelwax.health, connectors/ingest)
            assert svc["environment"]["OTELWAX_HEALTH_PATH"] == "/readyz", name


def test_start_order(compose_project: dict[str, Any]) -> None:
    deps = {n: s.get("depends_on", {}) for n, s in compose_project["services"].items()}
    assert deps["topic-init"]["kafka"]["condition"] == "service_healthy"
    for name in ["ingest", *FLOW_SERVICES]:
        assert deps[name]["topic-init"]["condition"] == "service_completed_successfully"
        assert deps[name]["kafka"]["condition"] == "service_healthy"
    for name in FLOW_SERVICES:
        assert deps[name]["clickhouse"]["condition"] == "service_healthy"
        assert deps[name]["prometheus"]["condition"] == "service_healthy"
    assert deps["flow-traces"]["jaeger"]["condition"] == "service_healthy"
    assert deps["grafana"]["clickhouse"]["condition"] == "service_healthy"


def test_topic_init_runs_the_real_admin_command(
    compose_project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import otelwax.cli.kafka as ka

    svc = _svc(compose_project, "topic-init")
    assert svc["entrypoint"] == ["python", "-m", "otelwax.cli.kafka"]
    # Parse the command with the module's own parser (without running it).
    seen: dict[str, Any] = {}

    def fake_create(bootstrap: str, topics: list[str], partitions: int) -> list[str]:
        seen.update(bootstrap=bootstrap, topics=topics, partitions=partitions)
        return []

    # Only the command line is under test here, not the broker.
    monkeypatch.setattr(ka, "create_topics", fake_create)
    assert ka.main(svc["command"]) == 0
    assert seen["bootstrap"] == "kafka:9092"
    assert tuple(seen["topics"]) == DEFAULT_TOPICS


def _flow_argv(signal: str, svc: dict[str, Any], tmp_path: Path) -> list[str]:
    """The ``python -m bytewax.run ...`` argv the flow service's shell line ends in."""
    from otelwax.cli.flow import FLOWS as CLI_FLOWS
    from otelwax.cli.flow import add_arguments, build_command

    script, env = svc["command"][0], svc["environment"]
    last = script.split(";")[-1].split()
    assert last[0] == "exec"
    if signal not in CLI_FLOWS:
        assert last[1:4] == ["python", "-m", "bytewax.run"]
        return [sys.executable, *last[2:]]
    assert last[1:3] == ["otelwax", "flow"] and last[3] == '"$OTELWAX_FLOW"'
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([env["OTELWAX_FLOW"], *last[4:]])
    assert args.config == env["OTELWAX_CONFIG"]
    args.config = str(DOCKER / "config" / "otelwax.yaml")
    return build_command(args, {k: v for k, v in env.items() if k != "OTELWAX_REPLICAS"})


def test_flow_services(compose_project: dict[str, Any], tmp_path: Path) -> None:
    for signal, name in zip(FLOWS, FLOW_SERVICES, strict=True):
        svc = _svc(compose_project, name)
        env = svc["environment"]
        if signal in SERVES_METRICS:
            assert env["OTELWAX_HEALTH_PORT"] == "9464"
        assert svc["entrypoint"] == ["/bin/sh", "-c"]
        script = svc["command"][0]
        res = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "python -m bytewax.recovery /var/lib/otelwax/recovery 1" in script
        # The command runs the flow's module, one process, recovery from the environment.
        argv = _flow_argv(signal, svc, tmp_path)
        assert argv[1:3] == ["-m", "bytewax.run"] and argv[3].startswith(f"flows.{signal}")
        assert "-i" not in argv and "-a" not in argv
        assert env["BYTEWAX_RECOVERY_DIRECTORY"] == "/var/lib/otelwax/recovery"
        vols = {v["target"]: v for v in svc["volumes"]}
        assert vols["/var/lib/otelwax/recovery"]["type"] == "volume"
        assert vols["/etc/otelwax"]["source"] == str(DOCKER / "config")
        # The flow module finds its config file through the variable it reads.
        assert env[flow_config_env(signal)] == f"/etc/otelwax/{FLOW_CONFIG_FILE[signal]}"


def test_flow_recovery_init_command_runs(compose_project: dict[str, Any], tmp_path: Path) -> None:
    """The recovery part of the flow command, run for real (bytewax creates the partition)."""
    script = _svc(compose_project, "flow-traces")["command"][0]
    init = script.split(";")[0].replace("/var/lib/otelwax/recovery", str(tmp_path))
    init = init.replace("python -m", f"{sys.executable} -m")
    for _ in range(2):  # the second run finds the partition and does nothing
        res = subprocess.run(["sh", "-c", init], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["part-0.sqlite3"]


@pytest.mark.parametrize("signal", FLOWS)
def test_flow_modules_exist(signal: str) -> None:
    if not flow_module_exists(signal):
        pytest.xfail(f"flows.{signal} is referenced by docker/ but not in the code yet")


def test_compose_config_loads_with_the_code(compose_project: dict[str, Any]) -> None:
    from otelwax.cli.config import load_config

    conf = DOCKER / "config"
    assert load_config(conf / "otelwax.yaml").flows.traces.clickhouse.host == "clickhouse"
    ingest = load_ingest_config(conf / "otelwax.yaml")
    kafka = _svc(compose_project, "kafka")["environment"]
    assert f"PLAINTEXT://{ingest.kafka.bootstrap_servers}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert ingest.grpc.port == 4317 and ingest.http.port == 4318
    loaded = {
        s: load_flow_settings(s, conf / FLOW_CONFIG_FILE[s]) for s in FLOWS if flow_module_exists(s)
    }
    for signal, settings in loaded.items():
        assert settings.kafka.bootstrap_servers == ingest.kafka.bootstrap_servers, signal
        if signal in SERVES_METRICS:
            assert settings.metrics_port == 9464, signal
    ch = _svc(compose_project, "clickhouse")["environment"]
    traces = loaded["traces"]
    assert (traces.clickhouse.host, traces.clickhouse.user) == ("clickhouse", ch["CLICKHOUSE_USER"])
    assert traces.clickhouse.database == ch["CLICKHOUSE_DB"]
    datasources = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )["datasources"]
    grafana_ch = next(d for d in datasources if d["uid"] == "clickhouse")["jsonData"]
    assert (grafana_ch["username"], grafana_ch["defaultDatabase"]) == (
        ch["CLICKHOUSE_USER"],
        ch["CLICKHOUSE_DB"],
    )
    for signal in ("metrics", "spanmetrics"):
        if signal in loaded:
            assert loaded[signal].remote_write.url == "http://prometheus:9090/api/v1/write"
    prom = _svc(compose_project, "prometheus")["command"]
    assert "--web.enable-remote-write-receiver" in prom
    # as scripts/services/prometheus.sh, which the metrics flow's tests run against
    script = (ROOT / "scripts/services/prometheus.sh").read_text()
    for flag in re.findall(r"--enable-feature=[\w-]+", script):
        assert flag in prom
    # Spans also go to the compose Jaeger, through the traces flow's jaeger_tee operator, which
    # the operator registry builds without I/O.
    from operators.registry import build_pipeline

    cfg = load_config(conf / "otelwax.yaml")
    specs = cfg.operator_specs("traces")
    assert [s.config["endpoint"] for s in specs] == ["jaeger:4317"]
    assert specs[0].config["insecure"] is True  # compose's Jaeger speaks plaintext (opt-in)
    assert len(build_pipeline(specs, "traces")) == 1
    assert "jaeger" in compose_project["services"]


def test_every_otelwax_env_var_is_read_by_something() -> None:
    """Each OTELWAX_* variable the deployment sets is read by the code or a deployment script."""
    code = "\n".join(
        p.read_text()
        for d in ("otelwax", "connectors", "flows", "operators")
        for p in (ROOT / d).rglob("*.py")
    )
    files = [DOCKER / "Dockerfile", DOCKER / "compose.yaml", *K8S.glob("*.yaml")]
    names = set()
    for f in files:
        names |= set(re.findall(r"\b(OTELWAX_[A-Z_]+)\b", f.read_text()))
    unread = {n for n in names if n not in code and n not in DEPLOYMENT_VARS}
    assert unread == set()
    # and the deployment-only ones are used where they are set
    text = "\n".join(f.read_text() for f in files)
    for n in DEPLOYMENT_VARS:
        assert text.count(n) >= 2 or n == "OTELWAX_IMAGE", n


def test_otelwax_services_log_json(compose_project: dict[str, Any]) -> None:
    """The shim and every flow write JSON log lines (otelwax.logs), as the image does."""
    from otelwax.logs import ENV_LOG_FORMAT

    assert f"{ENV_LOG_FORMAT}=json" in (DOCKER / "Dockerfile").read_text()
    for name in ["ingest", *FLOW_SERVICES]:
        env = _svc(compose_project, name)["environment"]
        assert env.get(ENV_LOG_FORMAT) == "json", name
