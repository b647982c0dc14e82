"""Fixtures for the image tests (``make e2e``): the otelwax image built by scripts/e2e.sh, run
with podman (runc, cgroupfs, host network) against Kafka and a ClickHouse server started by
the project's scripts. Collected only when $OTELWAX_E2E_IMAGE names the image, so
``make test`` leaves them out."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.connectors.conftest import clickhouse_server  # noqa: F401  (shared fixture)

if not os.environ.get("OTELWAX_E2E_IMAGE"):
    collect_ignore_glob = ["test_*.py"]

PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; with ``check`` a failure shows podman's output."""
    res = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, (
            f"podman {' '.join(args)}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    return res


@dataclass
class Containers:
    """Containers started by one test (named uniquely), removed at its end."""

    image: str
    names: list[str] = field(default_factory=list)

    def run(
        self, *args: str, detach: bool = False, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """``podman run --network host`` of the image; ``args`` are run options, then the
        image's arguments after a ``"--"``."""
        opts, _, cmd = list(args), None, []
        if "--" in opts:
            i = opts.index("--")
            opts, cmd = opts[:i], opts[i + 1 :]
        name = f"otelwax-e2e-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        mode = ["-d"] if detach else []
        return podman(
            "run",
            *mode,
            "--name",
            name,
            "--network",
            "host",
            *opts,
            self.image,
            *cmd,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n{podman('logs', n, check=False).stdout[-4000:]}"
            f"{podman('logs', n, check=False).stderr[-4000:]}"
            for n in self.names
        )

    def remove_all(self) -> None:
        for n in self.names:
            podman("rm", "-f", "-t", "10", n, check=False, timeout=60)


@pytest.fixture(scope="session")
def image() -> str:
    return os.environ["OTELWAX_E2E_IMAGE"]


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    c = Containers(image)
    yield c
    c.remove_all()
