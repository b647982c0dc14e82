"""The shim's health is honest: alive (200) whatever Kafka does, ready (200) only while Kafka
is reachable. /readyz used not to exist and /healthz said 200 with "kafka": "down"."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import free_port

from .conftest import Shim, start_shim


def _wait_status(url: str, want: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    r = httpx.get(url, timeout=2)
    while r.status_code != want and time.monotonic() < deadline:
        time.sleep(0.2)
        r = httpx.get(url, timeout=2)
    return r


def test_ready_with_kafka(shim: Shim) -> None:
    for base in (shim.http_url, f"http://127.0.0.1:{shim.metrics_port}"):
        r = httpx.get(base + "/readyz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok", "kafka": "up"}
        for live in ("/livez", "/healthz"):
            assert httpx.get(base + live, timeout=5).status_code == 200


def test_unready_but_alive_without_kafka(tmp_path: Path) -> None:
    topics = {s: f"never_{s}" for s in ("traces", "metrics", "logs")}
    shim = start_shim(f"127.0.0.1:{free_port()}", topics, tmp_path)  # nothing listens there
    try:
        for base in (f"http://127.0.0.1:{shim.metrics_port}", shim.http_url):
            r = _wait_status(base + "/readyz", 503)
            assert r.status_code == 503 and r.json() == {"status": "unready", "kafka": "down"}
            live = httpx.get(base + "/livez", timeout=5)
            assert live.status_code == 200 and live.json()["kafka"] == "down"
    finally:
        assert shim.stop() == 0, shim.log()
