"""docker/Dockerfile: hadolint, structure, and agreement with the code (ports, entry point,
health check, dependency list)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from connectors.ingest.config import IngestConfig
from flows.settings import TracesFlowSettings
from tests.conftest import free_port, port_open

from .conftest import DOCKER, K8S, ROOT

DOCKERFILE = DOCKER / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + "\n"
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _final(word: str) -> list[str]:
    return [a for w, a in _stages()[-1] if w == word]


def test_hadolint_passes(hadolint: str) -> None:
    res = subprocess.run(
        [hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_is_real(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install foo\n")
    res = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout  # 'latest' tag


def _default_froms() -> list[str]:
    """The FROM lines with the global ARG defaults substituted (what a plain build uses)."""
    args: dict[str, str] = {}
    froms: list[str] = []
    for word, rest in _instructions():
        if word == "ARG" and not froms and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], default)
        elif word == "FROM":
            froms.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest))
    return froms


def test_multi_stage_with_a_rust_toolchain_in_the_builder() -> None:
    froms = _default_froms()
    assert len(froms) >= 3
    assert froms[-1].endswith(" AS runtime") and "-slim" in froms[-1]
    assert froms[0].startswith("rust:1.") and froms[0].endswith(" AS rust")
    # One base for the builder and the runtime: the virtualenv's interpreter is the same.
    assert froms[-2].split()[0] == froms[-1].split()[0] == "python:3.11-slim-trixie"
    builder = next(s for s in _stages() if s[0][1].endswith(" AS builder"))
    copies = [a for w, a in builder if w == "COPY"]
    assert any(a.startswith("--from=rust /usr/local/cargo") for a in copies)
    runs = "\n".join(a for w, a in builder if w == "RUN")
    assert "pip install --no-deps ." in runs and 'python -P -c "import otelwax._native"' in runs
    # The runtime takes only the virtualenv (and configs) from the builder: no toolchain.
    runtime_copies = _final("COPY")
    assert all(a.startswith("--from=builder") for a in runtime_copies)


def test_runs_as_a_non_root_user_with_the_k8s_uid() -> None:
    users = _final("USER")
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    words = [w for w, _ in _stages()[-1]]
    assert words.index("USER") < words.index("ENTRYPOINT")
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            sc = (
                (doc or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("securityContext")
            )
            if sc:
                assert str(sc["runAsUser"]) == uid, path.name


def test_exposes_the_ports_the_code_listens_on() -> None:
    exposed = {int(p.split("/")[0]) for a in _final("EXPOSE") for p in a.split()}
    ingest = IngestConfig()
    flow_port = TracesFlowSettings().metrics_port
    assert {ingest.grpc.port, ingest.http.port, ingest.metrics.port, flow_port} <= exposed
    sts = yaml.safe_load_all((K8S / "flow-traces.yaml").read_text())
    ports = {
        p["containerPort"]
        for d in sts
        if d["kind"] == "StatefulSet"
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    assert ports <= exposed


def test_entrypoint_is_the_console_script() -> None:
    entry = json.loads(_final("ENTRYPOINT")[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["otelwax"] and "otelwax" in scripts
    cmd = json.loads(_final("CMD")[-1])
    from otelwax.cli import SUBCOMMANDS

    assert cmd[0] in SUBCOMMANDS


def _healthcheck_cmd() -> list[str]:
    hc = _final("HEALTHCHECK")[-1]
    return json.loads(hc[hc.index("CMD") + 3 :].strip())


def test_default_health_port_is_the_shim_metrics_port() -> None:
    env = " ".join(_final("ENV"))
    port = re.search(r"OTELWAX_HEALTH_PORT=(\d+)", env)
    assert port and int(port.group(1)) == IngestConfig().metrics.port
    assert "/healthz" in " ".join(_healthcheck_cmd())


@contextlib.contextmanager
def _metrics_server(port: int, setup: str = "pass") -> Iterator[None]:
    """``serve_metrics`` on ``port`` in a child process, after running ``setup`` there."""
    code = (
        f"import time; from otelwax.telemetry import serve_metrics; {setup}; "
        f"serve_metrics({port}, '127.0.0.1'); time.sleep(60)"
    )
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield
    finally:
        server.kill()
        server.wait()


def test_healthcheck_command_works_against_a_real_metrics_server() -> None:
    """The HEALTHCHECK command succeeds on a live /healthz and fails on a closed port."""
    cmd = [sys.executable if c == "python" else c for c in _healthcheck_cmd()]
    port = free_port()
    with _metrics_server(port):
        ok = subprocess.run(cmd, env={**os.environ, "OTELWAX_HEALTH_PORT": str(port)}, timeout=30)
        assert ok.returncode == 0
    env = {**os.environ, "OTELWAX_HEALTH_PORT": str(free_port())}
    bad = subprocess.run(cmd, env=env, capture_output=True, timeout=30)
    assert bad.returncode != 0


def test_healthcheck_command_with_the_readiness_path_fails_on_503() -> None:
    """Compose sets OTELWAX_HEALTH_PATH=/readyz: the same command then fails while a flow's
    sink breaker is open (alive, not ready), and liveness still passes."""
    cmd = [sys.executable if c == "python" else c for c in _healthcheck_cmd()]
    port = free_port()
    open_breaker = (
        "from otelwax.resilience import BreakerConfig, CircuitBreaker; "
        "br = CircuitBreaker(BreakerConfig(failure_threshold=1), name='sink.x'); "
        "br.record_failure()"
    )
    with _metrics_server(port, open_breaker):
        env = {**os.environ, "OTELWAX_HEALTH_PORT": str(port)}
        ready = subprocess.run(
            cmd, env={**env, "OTELWAX_HEALTH_PATH": "/readyz"}, capture_output=True, timeout=30
        )
        assert ready.returncode != 0 and b"503" in ready.stderr
        assert subprocess.run(cmd, env=env, timeout=30).returncode == 0


def test_requirements_step_installs_the_pyproject_dependencies(tmp_path: Path) -> None:
    """Runs the builder's dependency-extraction command as written, in sh."""
    run = next(a for w, a in _instructions() if w == "RUN" and "requirements.txt" in a)
    first = run.split("\n")[0].strip().rstrip("\\").strip()
    first = first.replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    first = first.replace("python -c", f"{sys.executable} -c", 1)
    res = subprocess.run(["sh", "-c", first], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "req.txt").read_text().splitlines() == deps


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for p in (".venv", ".data", ".cache", ".git", "native/target"):
        assert p in ignored
    # What the build needs is not ignored.
    for p in ("pyproject.toml", "README.md", "native", "otelwax", "configs"):
        assert p not in ignored


@pytest.mark.parametrize("module", ["otelwax.cli", "otelwax.cli.kafka", "bytewax.run"])
def test_modules_the_image_runs_exist(module: str) -> None:
    import importlib.util

    assert importlib.util.find_spec(module) is not None
