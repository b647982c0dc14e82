"""docker/k8s: API-schema validation (kubernetes-validate, strict), kustomize build, and
consistency with the code: ports, probes, module names, config, bytewax cluster wiring."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.ingest.config import IngestConfig

from .codefacts import (
    FLOW_CONFIG_FILE,
    FLOWS,
    SERVES_METRICS,
    flow_config_env,
    flow_module_exists,
    load_flow_settings,
    load_ingest_config,
)
from .conftest import DOCKER, K8S, ROOT, find_k8s, k8s_documents

K8S_VERSIONS = ("1.30", None)  # oldest supported here, and the validator's latest

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")


def _container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    cs = workload["spec"]["template"]["spec"]["containers"]
    return cs[0] if name is None else next(c for c in cs if c["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_every_object_passes_the_api_schema(version: str | None) -> None:
    ver = version or kv.latest_version()
    docs = k8s_documents()
    assert {d["kind"] for _, d in docs} >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "Namespace",
    }
    for fname, doc in docs:
        try:
            kv.validate(doc, ver, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{fname} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_schema_validation_is_strict() -> None:
    """The validator is real: an unknown field or a wrong type is rejected."""
    _, sts = next((f, d) for f, d in k8s_documents() if d["kind"] == "StatefulSet")
    bad = copy.deepcopy(sts)
    _container(bad)["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)
    bad = copy.deepcopy(sts)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_kustomization_builds_every_file() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed on this machine")
    res = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    built = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert len(built) == len(k8s_documents())
    assert all(
        d["metadata"].get("namespace") == "otelwax" for d in built if d["kind"] != "Namespace"
    )
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_ingest_deployment_matches_the_brief_and_the_code() -> None:
    docs = k8s_documents()
    dep = find_k8s(docs, "Deployment", "otelwax-ingest")
    assert dep["spec"]["replicas"] == 3
    c = _container(dep)
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    defaults = IngestConfig()
    assert _port(c, "otlp-grpc") == defaults.grpc.port == 4317
    assert _port(c, "otlp-http") == defaults.http.port == 4318
    assert _port(c, "metrics") == defaults.metrics.port
    # Both ports serve the health paths (connectors/ingest/http.py); readiness is the one that
    # turns 503 while Kafka is down, liveness stays 200 while the process serves.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("otlp-http", "metrics")
    assert c["args"][:1] == ["ingest"]
    sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    svc = find_k8s(docs, "Service", "otelwax-ingest")
    assert {p["port"] for p in svc["spec"]["ports"]} == {4317, 4318, defaults.metrics.port}
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_ingest_args_parse_with_the_real_cli() -> None:
    from connectors.ingest.cli import add_arguments

    c = _container(find_k8s(k8s_documents(), "Deployment", "otelwax-ingest"))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(c["args"][1:])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert str(args.config).startswith(mount + "/")


def _flow_argv(signal: str, env: dict[str, str], config: str) -> list[str]:
    """The ``python -m bytewax.run ...`` argv the flow container ends up running, with the
    mounted config file replaced by ``config`` (a local copy of the ConfigMap's file)."""
    from otelwax.cli.flow import FLOWS as CLI_FLOWS
    from otelwax.cli.flow import add_arguments, build_command
    from otelwax.cluster import cluster_args

    flow = _container(find_k8s(k8s_documents(), "StatefulSet", f"otelwax-flow-{signal}"), "flow")
    if signal in CLI_FLOWS:
        assert "command" not in flow  # the image's entry point: otelwax
        p = argparse.ArgumentParser()
        add_arguments(p)
        args = p.parse_args(flow["args"][1:])
        mount = next(m for m in flow["volumeMounts"] if m["name"] == "config")["mountPath"]
        assert args.config == f"{mount}/otelwax.yaml"
        args.config = config
        return build_command(args, env)
    # No `otelwax flow` for it yet: the shell line runs bytewax.run with cluster_args.
    line = flow["args"][0]
    assert flow["command"] == ["/bin/sh", "-c"] and "cluster_args(os.environ)" in line
    module = line.split("bytewax.run", 1)[1].split()[0]
    return [sys.executable, "-m", "bytewax.run", module, *cluster_args(env)]


@pytest.mark.parametrize("signal", FLOWS)
def test_flow_statefulset_forms_a_bytewax_cluster(signal: str, tmp_path: Path) -> None:
    docs = k8s_documents()
    name = f"otelwax-flow-{signal}"
    sts = find_k8s(docs, "StatefulSet", name)
    svc = find_k8s(docs, "Service", sts["spec"]["serviceName"])
    # otelwax.cluster's default peers are <statefulset>-<i>.<statefulset>: same names.
    assert svc["metadata"]["name"] == name
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    flow = _container(sts, "flow")
    ienv, fenv = _env(init), _env(flow)
    replicas = sts["spec"]["replicas"]
    assert int(ienv["OTELWAX_REPLICAS"]) == int(fenv["OTELWAX_REPLICAS"]) == replicas
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    assert ienv["OTELWAX_POD_NAME"] == fenv["OTELWAX_POD_NAME"] == pod_name
    assert ienv["BYTEWAX_RECOVERY_DIRECTORY"] == fenv["BYTEWAX_RECOVERY_DIRECTORY"]
    # The command the container runs: module, process id and peers for pod 1.
    mount = next(m for m in flow["volumeMounts"] if m["name"] == "config")["mountPath"]
    env = {k: v for k, v in fenv.items() if isinstance(v, str)} | {"OTELWAX_POD_NAME": f"{name}-1"}
    cm = find_k8s(docs, "ConfigMap", "otelwax-config")
    (tmp_path / "otelwax.yaml").write_text(cm["data"]["otelwax.yaml"])
    argv = _flow_argv(signal, env, str(tmp_path / "otelwax.yaml"))
    assert argv[1:3] == ["-m", "bytewax.run"] and argv[3].startswith(f"flows.{signal}")
    port = _port(flow, "bytewax")
    peers = ";".join(f"{name}-{i}.{name}:{port}" for i in range(replicas))
    assert argv[argv.index("-i") + 1] == "1" and argv[argv.index("-a") + 1] == peers
    # The flow module finds the config file through the variable it reads.
    assert fenv[flow_config_env(signal)] == f"{mount}/{FLOW_CONFIG_FILE[signal]}"
    # The recovery volume claim is mounted where bytewax looks for partitions.
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    rec = next(m for m in flow["volumeMounts"] if m["name"] in claims)
    assert rec["mountPath"] == fenv["BYTEWAX_RECOVERY_DIRECTORY"]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    if signal not in SERVES_METRICS:
        assert ports == {"bytewax": port}
        assert "livenessProbe" not in flow and "readinessProbe" not in flow
        return
    assert ports == {"bytewax": port, "metrics": _port(flow, "metrics")}
    # Metrics and probes on the port the flow serves /metrics on (set in its config file).
    assert _port(flow, "metrics") == int(fenv["OTELWAX_HEALTH_PORT"]) == 9464
    assert flow["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert flow["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(_port(flow, "metrics"))


@pytest.mark.parametrize("signal", FLOWS)
def test_flow_module_exists(signal: str) -> None:
    module = f"flows.{signal}"
    if importlib.util.find_spec(module) is None:
        pytest.xfail(f"{module} is referenced by docker/ but not in the code yet")
    assert importlib.util.find_spec(module) is not None


def test_secret_refs_and_config_maps_exist_and_secrets_are_placeholders() -> None:
    docs = k8s_documents()
    secret = find_k8s(docs, "Secret", "otelwax-credentials")
    assert set(secret["stringData"].values()) == {"CHANGE_ME"}
    for _, d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "otelwax-credentials"
                    assert ref["key"] in secret["stringData"]
        for v in spec["volumes"]:
            if "configMap" in v:
                find_k8s(docs, "ConfigMap", v["configMap"]["name"])


def test_configmap_is_the_compose_config_with_cluster_addresses() -> None:
    sys.path.insert(0, str(K8S))
    try:
        import build_configmap
    finally:
        sys.path.remove(str(K8S))
    assert (K8S / "configmap.yaml").read_text() == build_configmap.render(), (
        "configmap.yaml is stale: run python docker/k8s/build_configmap.py"
    )
    cm = find_k8s(k8s_documents(), "ConfigMap", "otelwax-config")
    assert set(cm["data"]) == {p.name for p in (DOCKER / "config").glob("*.yaml")}
    text = cm["data"]["otelwax.yaml"]
    assert "kafka:9092" not in text.replace("kafka-bootstrap.kafka.svc:9092", "")
    assert "jaeger" not in yaml.safe_load(text)["flows"]["traces"].get("operators", [])


def test_configmap_config_loads_with_the_code(tmp_path: Path) -> None:
    cm = find_k8s(k8s_documents(), "ConfigMap", "otelwax-config")
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    main = tmp_path / "otelwax.yaml"
    from otelwax.cli.config import load_config

    load_config(main)  # what `otelwax validate` checks
    ingest = load_ingest_config(main)
    assert ingest.grpc.port == 4317 and ingest.http.port == 4318
    assert ingest.kafka.bootstrap_servers == "kafka-bootstrap.kafka.svc:9092"
    loaded = {
        s: load_flow_settings(s, tmp_path / FLOW_CONFIG_FILE[s])
        for s in FLOWS
        if flow_module_exists(s)
    }
    assert {"traces", "metrics", "spanmetrics"} <= set(loaded)
    for signal, settings in loaded.items():
        assert settings.kafka.bootstrap_servers == ingest.kafka.bootstrap_servers, signal
        if signal in SERVES_METRICS:
            assert settings.metrics_port == 9464, signal
    traces = loaded["traces"]
    assert traces.clickhouse.mode == "server"
    assert traces.clickhouse.host == "clickhouse.clickhouse.svc"
    assert traces.clickhouse.password.get_secret_value() == ""  # secrets come from the Secret
    for signal in ("metrics", "spanmetrics"):
        assert loaded[signal].remote_write.url.startswith("http://prometheus.monitoring.svc:9090/")


def _init_script(signal: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    sts = find_k8s(k8s_documents(), "StatefulSet", f"otelwax-flow-{signal}")
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-c"]
    return init["args"][0], _env(init), _env(_container(sts, "flow"))


def _run_init(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _init_pods(tmp_path: Path, signal: str = "traces") -> dict[int, Path]:
    """Run the init container's script once per pod (twice: a restart must not re-init)."""
    script, ienv, _ = _init_script(signal)
    pods = {}
    for ordinal in range(int(ienv["OTELWAX_REPLICAS"])):
        d = tmp_path / f"pod{ordinal}"
        (d / "recovery").mkdir(parents=True)
        env = {k: v for k, v in ienv.items() if isinstance(v, str)}
        env |= {
            "OTELWAX_POD_NAME": f"otelwax-flow-{signal}-{ordinal}",
            "BYTEWAX_RECOVERY_DIRECTORY": str(d / "recovery"),
        }
        for _ in range(2):
            res = _run_init(script, env)
            assert res.returncode == 0, res.stderr
        pods[ordinal] = d
    return pods


def test_cluster_init_and_bytewax_run_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The init container's script puts the recovery partitions on pod 0 only; bytewax.run's
    own argument parsing of the container's command gives the process id, the peers, the
    recovery directory and the snapshot intervals."""
    _, ienv, fenv = _init_script("traces")
    pods = _init_pods(tmp_path)
    parts = int(ienv["OTELWAX_RECOVERY_PARTITIONS"])
    assert len(list((pods[0] / "recovery").glob("part-*.sqlite3"))) == parts
    assert list((pods[1] / "recovery").iterdir()) == []

    from bytewax import run as bw_run

    cm = find_k8s(k8s_documents(), "ConfigMap", "otelwax-config")
    (tmp_path / "otelwax.yaml").write_text(cm["data"]["otelwax.yaml"])
    env = {k: v for k, v in fenv.items() if isinstance(v, str)}
    env |= {
        "OTELWAX_POD_NAME": "otelwax-flow-traces-1",
        "BYTEWAX_RECOVERY_DIRECTORY": str(pods[1] / "recovery"),
    }
    argv = _flow_argv("traces", env, str(tmp_path / "otelwax.yaml"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv[3:]])
    args = bw_run._parse_args()
    n = int(ienv["OTELWAX_REPLICAS"])
    assert args.process_id == 1
    assert args.addresses == ";".join(
        f"otelwax-flow-traces-{i}.otelwax-flow-traces:2101" for i in range(n)
    )
    assert args.workers_per_process == 1
    assert args.recovery_directory == pods[1] / "recovery"
    assert args.snapshot_interval == timedelta(seconds=10)
    assert args.backup_interval == timedelta(seconds=60)


def test_cluster_init_refuses_an_ordinal_beyond_the_replicas(tmp_path: Path) -> None:
    script, ienv, _ = _init_script("traces")
    env = {k: v for k, v in ienv.items() if isinstance(v, str)}
    env |= {
        "OTELWAX_POD_NAME": f"otelwax-flow-traces-{ienv['OTELWAX_REPLICAS']}",
        "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path),
    }
    res = _run_init(script, env)
    assert res.returncode != 0 and "OTELWAX_REPLICAS" in res.stderr


def test_readme_explains_scaling() -> None:
    text = (ROOT / "docker" / "README.md").read_text()
    assert "## Scaling the flows" in text
    assert "partition" in text and "OTELWAX_REPLICAS" in text


def test_init_job_commands_work_with_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The topic step parses with otelwax.cli.kafka; the table step runs `otelwax clickhouse
    init --dry-run` for real on the ConfigMap's file and prints the DDL of both tables."""
    import otelwax.cli.kafka as ka
    from connectors.kafka import DEFAULT_TOPICS

    job = find_k8s(k8s_documents(), "Job", "otelwax-init")
    spec = job["spec"]["template"]["spec"]
    topics = spec["initContainers"][0]["command"]
    assert topics[:3] == ["python", "-m", "otelwax.cli.kafka"]
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ka, "create_topics", lambda b, t, p: seen.update(b=b, t=t, p=p) or [])
    assert ka.main(topics[3:]) == 0
    assert tuple(seen["t"]) == DEFAULT_TOPICS and seen["p"] == 12
    cm = find_k8s(k8s_documents(), "ConfigMap", "otelwax-config")
    assert seen["b"] == yaml.safe_load(cm["data"]["otelwax.yaml"])["kafka"]["bootstrap_servers"]

    tables = spec["containers"][0]
    mount = next(m for m in tables["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert tables["args"][:2] == ["clickhouse", "init"]
    assert tables["args"][3] == f"{mount}/otelwax.yaml"
    (tmp_path / "otelwax.yaml").write_text(cm["data"]["otelwax.yaml"])
    args = [*tables["args"][:3], str(tmp_path / "otelwax.yaml"), "--dry-run"]
    res = subprocess.run(
        [sys.executable, "-m", "otelwax", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OTELWAX_CLICKHOUSE_PASSWORD": "x"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces`" in res.stdout
    assert "CREATE TABLE IF NOT EXISTS `otel`.`otel_logs`" in res.stdout


def _run_cluster(argvs: dict[int, list[str]], envs: dict[int, dict[str, str]]) -> list[Any]:
    procs = [
        subprocess.Popen(
            argvs[i],
            cwd=ROOT,
            env=envs[i],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in sorted(argvs)
    ]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_pods_run_one_bytewax_cluster_with_recovery_on_pod_0(tmp_path: Path) -> None:
    """Two processes started the way the StatefulSet starts them (init script, then the flow
    container's command and environment, with the flow module swapped for a small one and the
    peers on loopback) form one cluster: process ids from the pod names, recovery partitions
    on pod 0 only, and a second run resumes from the snapshot (nothing is processed twice)."""
    from tests.conftest import free_port

    _, _, fenv = _init_script("traces")
    pods = _init_pods(tmp_path)
    cm = find_k8s(k8s_documents(), "ConfigMap", "otelwax-config")
    (tmp_path / "otelwax.yaml").write_text(cm["data"]["otelwax.yaml"])
    # The stable DNS names only resolve inside a cluster: one loopback address per pod.
    pattern = f"127.0.0.1{{i}}:{free_port()}"
    argvs, envs = {}, {}
    for ordinal, d in pods.items():
        env = {k: v for k, v in fenv.items() if isinstance(v, str)}
        env |= {
            "OTELWAX_POD_NAME": f"otelwax-flow-traces-{ordinal}",
            "OTELWAX_PEER_PATTERN": pattern,
            "BYTEWAX_RECOVERY_DIRECTORY": str(d / "recovery"),
        }
        argv = _flow_argv("traces", env, str(tmp_path / "otelwax.yaml"))
        argv[3] = "tests.docker.tinyflow"
        argvs[ordinal] = argv
        envs[ordinal] = {**os.environ, **env}
        for k in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH"):
            envs[ordinal].pop(k, None)

    def outputs(runs: list[subprocess.CompletedProcess[str]]) -> list[str]:
        # bytewax also prints connection retries while the processes find each other
        return [ln for r in runs for ln in r.stdout.splitlines() if re.fullmatch(r"\d=\d+", ln)]

    first = _run_cluster(argvs, envs)
    for r in first:
        assert r.returncode == 0, r.stderr[-2000:]
    lines = outputs(first)
    assert len(lines) == 200
    finals: dict[str, int] = {}
    for ln in lines:
        k, v = ln.split("=")
        finals[k] = max(finals.get(k, 0), int(v))
    assert finals == {str(k): sum(range(k, 200, 4)) for k in range(4)}
    assert list((pods[1] / "recovery").iterdir()) == []

    second = _run_cluster(argvs, envs)
    for r in second:
        assert r.returncode == 0, r.stderr[-2000:]
    assert outputs(second) == []


def test_shim_and_flows_log_json() -> None:
    """OTELWAX_LOG_FORMAT=json on the shim and every flow, and the flows' settings accept it."""
    from flows.settings import load_settings
    from otelwax.logs import ENV_LOG_FORMAT

    docs = k8s_documents()
    workloads = [find_k8s(docs, "Deployment", "otelwax-ingest")]
    workloads += [find_k8s(docs, "StatefulSet", f"otelwax-flow-{s}") for s in FLOWS]
    for w in workloads:
        env = _env(_container(w))
        assert env.get(ENV_LOG_FORMAT) == "json", w["metadata"]["name"]
    assert load_settings(None, env={ENV_LOG_FORMAT: "json"}).log_format == "json"
