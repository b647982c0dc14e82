"""Shared fixtures for real services. Each service is started once per session (or reused)."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker (KRaft, local jars).

    Uses $OTELWAX_TEST_KAFKA when set (scripts/test.sh starts it); otherwise starts a
    broker on 19092 with its own data folder and stops it at the end of the session.
    """
    addr = os.environ.get("OTELWAX_TEST_KAFKA")
    if addr:
        yield addr
        return
    port = 19092
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(port + 1),
        KAFKA_DATA=str(ROOT / ".data" / "kafka-test"),
    )
    started = not port_open("127.0.0.1", port)
    if started:
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "start"], check=True, env=env)
    yield f"127.0.0.1:{port}"
    if started:
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "stop"], check=False, env=env)


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory for fresh, uniquely named topics; they are deleted after the test."""
    from connectors.kafka import create_topics, delete_topics

    made: list[str] = []

    def _make(prefix: str = "t", partitions: int = 4) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        create_topics(kafka_bootstrap, [name], partitions=partitions)
        made.append(name)
        return name

    yield _make
    if made:
        delete_topics(kafka_bootstrap, made)
