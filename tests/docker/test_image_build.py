"""The Dockerfile's builder step without Docker: the build context (the repository filtered by
docker/Dockerfile.dockerignore) builds the otelwax wheel with the native codec, and what the
builder checks imports from it. Slow on a cold cargo cache (~2-3 min); cached under .cache."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import CACHE, DOCKER, ROOT


def _ignore_patterns() -> list[str]:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's matching for the pattern forms this file uses: paths, globs, ``**/`` prefix."""
    for p in patterns:
        if p.startswith("**/"):
            tail = p[3:]
            if any(fnmatch.fnmatchcase(part, tail) for part in rel.split("/")):
                return True
        elif fnmatch.fnmatchcase(rel, p) or rel.startswith(p.rstrip("/") + "/"):
            return True
    return False


def build_context(dest: Path) -> list[str]:
    """Copy what `docker build -f docker/Dockerfile .` would send; returns the relative paths."""
    patterns = _ignore_patterns()
    assert all("!" not in p for p in patterns)  # exceptions are not modelled here
    sent = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not _ignored(rel_dir + d, patterns)]
        for f in filenames:
            rel = rel_dir + f
            if not _ignored(rel, patterns):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, target)
                sent.append(rel)
    return sent


def test_context_excludes_local_state_and_keeps_the_sources(tmp_path: Path) -> None:
    sent = set(build_context(tmp_path / "ctx"))
    for must in ("pyproject.toml", "README.md", "native/Cargo.toml", "otelwax/cli/__init__.py"):
        assert must in sent
    for path in sent:
        assert not path.startswith((".venv/", ".data/", ".cache/", ".git/", "tests/"))
        assert not path.endswith((".so", ".pyc"))


@pytest.mark.slow
@pytest.mark.extended
def test_builder_step_builds_the_wheel_with_the_native_codec(tmp_path: Path) -> None:
    if shutil.which("cargo") is None and not Path.home().joinpath(".cargo/bin/cargo").exists():
        pytest.skip("cargo is not installed: the native codec cannot be built here")
    ctx = tmp_path / "ctx"
    build_context(ctx)
    env = dict(os.environ, CARGO_TARGET_DIR=str(CACHE / "cargo-target"))
    env["PATH"] = f"{Path.home() / '.cargo/bin'}:{env.get('PATH', '')}"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "whl"),
            str(ctx),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "whl").glob("otelwax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "otelwax = otelwax.cli:main" in z.read(entry_points).decode()
        z.extractall(tmp_path / "site")
    assert any(n.startswith("otelwax/_native") and n.endswith(".so") for n in names)
    for pkg in (
        "flows/traces.py", "flows/metrics.py", "connectors/kafka.py", "otelwax/cli/__init__.py"
    ):
        assert pkg in names
    # The builder's own check, against the wheel's files (dependencies from this venv).
    check = "import otelwax._native, otelwax.cli, connectors.kafka, otelwax.telemetry, flows"
    run = subprocess.run(
        [sys.executable, "-c", f"{check}; import otelwax; print(otelwax.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(tmp_path / "site"))
