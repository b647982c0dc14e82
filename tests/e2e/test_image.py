"""The otelwax image, run: its CLI, a flow inside it, and the compose stack's otelwax services
(topic-init, ingest, flow-traces, flow-logs as docker/compose.yaml runs them, with
docker/config/otelwax.yaml) receiving telemetry that is then found in ClickHouse.

Kafka and ClickHouse are the project's own (scripts/kafka.sh, scripts/services/clickhouse.sh,
started by scripts/e2e.sh): their images cannot be pulled here, so the otelwax containers use
the host network and the config names 127.0.0.1 instead of the compose service names."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests import otlpgen
from tests.conftest import ROOT, free_port
from tests.flows.conftest import chdb_query, produce
from tests.interop.conftest import send_grpc

from .conftest import Containers, podman

COMPOSE = ROOT / "docker" / "compose.yaml"
STACK_CONFIG = ROOT / "docker" / "config" / "otelwax.yaml"


def _shared_dir(path: Path) -> Path:
    """A host folder the image's non-root user (uid 10001) can write."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def test_cli_runs_as_the_non_root_user_with_the_native_codec(
    containers: Containers, image: str
) -> None:
    res = containers.run("--", "--help")
    assert res.returncode == 0, res.stderr
    assert "ingest" in res.stdout and "flow" in res.stdout
    res = containers.run(
        "--entrypoint",
        "python",
        "--",
        "-c",
        "import os, otelwax._native, flows.traces; print(os.getuid())",
    )
    assert res.returncode == 0 and res.stdout.strip() == "10001", res.stdout + res.stderr
    health = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
    assert "/healthz" in health.stdout and "OTELWAX_HEALTH_PORT" in health.stdout


def test_a_flow_in_the_image_stores_every_span(
    containers: Containers, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic("e2e_spans", partitions=2)
    payloads = otlpgen.trace_payloads(3, seed=7)
    produce(kafka_bootstrap, topic, payloads)
    data = _shared_dir(tmp_path / "data")
    config = {
        "flows": {
            "traces": {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "source": {"topic": topic, "stop_at_end": True},
                "dead_letters": {"topic": make_topic("e2e_dlq", partitions=1)},
                "clickhouse": {"mode": "embedded", "path": "/data/chdb", "create_schema": True},
                "metrics_port": None,
            }
        }
    }
    (data / "otelwax.yaml").write_text(yaml.safe_dump(config))
    res = containers.run(
        "-v", f"{data}:/data", "--", "flow", "traces", "-c", "/data/otelwax.yaml", timeout=300
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rows = chdb_query(data / "chdb", "SELECT count(), uniqExact(SpanId) FROM otel.otel_traces")
    assert [int(x) for x in rows[0]] == [300, 300]


def _env(service: dict[str, Any], **override: str) -> list[str]:
    """``-e`` options for a compose service's environment (``${VAR:-default}`` -> default)."""
    env = {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in (service.get("environment") or {}).items()
    }
    env.update(override)
    return [opt for k, v in env.items() for opt in ("-e", f"{k}={v}")]


def _command(service: dict[str, Any], kafka: str) -> list[str]:
    """A compose service's entrypoint and command as podman run options and arguments."""
    opts = ["--entrypoint", json.dumps(service["entrypoint"])] if "entrypoint" in service else []
    args = [a.replace("$$", "$").replace("kafka:9092", kafka) for a in service.get("command", [])]
    return [*opts, "--", *args]


def _stack_config(kafka: str, ch: Any, ports: dict[str, int]) -> dict[str, Any]:
    """docker/config/otelwax.yaml with this machine's addresses and free ports."""
    cfg = yaml.safe_load(STACK_CONFIG.read_text())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "bootstrap_servers" in node:
                node["bootstrap_servers"] = kafka
            if node.get("mode") == "server":
                node.update(host=ch.host, port=ch.port, http_port=ch.http_port, user="default")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)
    cfg["ingest"].update(
        grpc={"port": ports["grpc"]},
        http={"port": ports["http"]},
        metrics={"port": ports["ingest"]},
    )
    for flow in ("traces", "logs"):
        cfg["flows"][flow]["metrics_port"] = ports[flow]
    # The Jaeger tee needs the stack's Jaeger, which is not run here.
    cfg["flows"]["traces"]["operators"] = []
    return cfg


def test_stack_stores_the_telemetry_it_receives(
    containers: Containers, kafka_bootstrap: str, clickhouse_server: Any, tmp_path: Path
) -> None:
    from connectors.clickhouse import ClickHouseConfig, open_client

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    ports = {k: free_port() for k in ("grpc", "http", "ingest", "traces", "logs")}
    conf = _shared_dir(tmp_path / "config")
    (conf / "otelwax.yaml").write_text(
        yaml.safe_dump(_stack_config(kafka_bootstrap, clickhouse_server, ports))
    )
    mount = ["-v", f"{conf}:/etc/otelwax:ro"]
    no_password = {"OTELWAX_CLICKHOUSE_PASSWORD": ""}

    init = services["topic-init"]
    res = containers.run(*mount, *_env(init), *_command(init, kafka_bootstrap))
    assert res.returncode == 0, res.stdout + res.stderr

    ingest = services["ingest"]
    env = _env(ingest, OTELWAX_HEALTH_PORT=str(ports["ingest"]), **no_password)
    res = containers.run(*mount, *env, *_command(ingest, kafka_bootstrap), detach=True)
    assert res.returncode == 0, res.stderr
    for flow in ("traces", "logs"):
        svc = services[f"flow-{flow}"]
        recovery = _shared_dir(tmp_path / f"recovery-{flow}")
        env = _env(svc, OTELWAX_HEALTH_PORT=str(ports[flow]), **no_password)
        opts = [*mount, "-v", f"{recovery}:/var/lib/otelwax/recovery", *env]
        res = containers.run(*opts, *_command(svc, kafka_bootstrap), detach=True)
        assert res.returncode == 0, res.stderr

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{ports['ingest']}/healthz", timeout=2).is_success:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, containers.logs()
        time.sleep(0.5)

    spans = otlpgen.trace_payloads(2, seed=11)
    logs = otlpgen.logs_payloads(2, seed=11)
    send_grpc(f"127.0.0.1:{ports['grpc']}", "traces", spans)
    send_grpc(f"127.0.0.1:{ports['grpc']}", "logs", logs)
    span_ids = sorted(
        s.span_id.hex()
        for p in spans
        for rs in ExportTraceServiceRequest.FromString(p).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )
    bodies = sorted(
        r.body.string_value
        for p in logs
        for rl in ExportLogsServiceRequest.FromString(p).resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    )

    client = open_client(
        ClickHouseConfig(
            mode="server",
            host=clickhouse_server.host,
            port=clickhouse_server.port,
            http_port=clickhouse_server.http_port,
            database="otel",
        )
    )
    ids = ", ".join(f"'{s}'" for s in span_ids)
    got_spans: list[str] = []
    got_bodies: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                got_spans = sorted(
                    r[0]
                    for r in client.execute(
                        f"SELECT SpanId FROM otel.otel_traces WHERE SpanId IN ({ids})"
                    )
                )
                got_bodies = sorted(
                    r[0]
                    for r in client.execute("SELECT Body FROM otel.otel_logs")
                    if r[0] in set(bodies)
                )
            except Exception:  # tables not created yet by the flows
                time.sleep(1)
                continue
            if len(got_spans) >= len(span_ids) and len(got_bodies) >= len(bodies):
                break
            time.sleep(1)
    finally:
        client.close()
    assert got_spans == span_ids, containers.logs()
    assert got_bodies == bodies, containers.logs()
