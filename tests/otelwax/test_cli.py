"""The ``otelwax`` command as a newcomer meets it: one dialect, a version, errors as one line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otelwax import __version__
from otelwax.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def _otelwax(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelwax", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_version_and_help_speak_to_users() -> None:
    res = _otelwax("--version")
    assert (res.returncode, res.stdout.strip()) == (0, f"otelwax {__version__}")
    res = _otelwax("--help")
    assert res.returncode == 0
    assert "OpenTelemetry stream processing" in res.stdout
    assert "subcommand module" not in res.stdout  # not the developer docstring


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_takes_dash_c_and_names_its_environment(command: str) -> None:
    extra = {"flow": ["traces"], "clickhouse": ["check"], "kafka": ["create-topics"]}
    res = _otelwax(command, *extra.get(command, []), "--help")
    assert res.returncode == 0, res.stderr
    if command == "completion":  # reads no config: prints the completion script
        return
    assert "-c CONFIG, --config CONFIG" in res.stdout
    if command == "kafka":  # the environment is listed by the command, not its actions
        res = _otelwax(command, "--help")
    assert "environment:" in res.stdout and "OTELWAX_CONFIG" in res.stdout
    if command == "clickhouse":  # every override flag says what it does
        for flag in ("--host CH_HOST", "--database CH_DATABASE"):
            line = next(ln for ln in res.stdout.splitlines() if flag in ln)
            assert line.strip() != flag


def test_validate_takes_the_file_either_way(tmp_path: Path) -> None:
    cfg = tmp_path / "otelwax.yaml"
    cfg.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    for args in (["-c", str(cfg)], ["--config", str(cfg)], [str(cfg)]):
        res = _otelwax("validate", "--no-imports", *args)
        assert res.returncode == 0 and "valid;" in res.stdout, (args, res.stdout, res.stderr)


def test_flow_dry_run_prints_a_line_bash_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "my flows (prod).yaml"
    cfg.write_text("flows: {traces: {}}\n")
    res = _otelwax("flow", "traces", "-c", str(cfg), "--dry-run")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    # bash reads the line back into exactly the argv otelwax would exec
    echoed = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True, check=True
    )
    argv = echoed.stdout.splitlines()
    assert argv[1:4] == ["-m", "bytewax.run", f"flows.traces:build({str(cfg)!r})"]
    assert shlex.split(line) == argv


def test_ingest_reads_the_kafka_bootstrap_from_the_environment(tmp_path: Path) -> None:
    from connectors.ingest.cli import build_config
    from otelwax.cli import build_parser

    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("kafka: {bootstrap_servers: 'from-file:9092'}\n")
    args = build_parser("ingest").parse_args(["ingest", "-c", str(cfg)])
    env = {"OTELWAX_KAFKA_BOOTSTRAP": "from-env:9092"}
    assert build_config(args, env).kafka.bootstrap_servers == "from-env:9092"
    args = build_parser("ingest").parse_args(["ingest", "-c", str(cfg), "--kafka-bootstrap", "x:1"])
    assert build_config(args, env).kafka.bootstrap_servers == "x:1"  # the flag wins


def test_an_unexpected_error_is_one_line_with_the_way_to_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    def fail(args: object) -> int:
        raise RuntimeError("the broker said no\nsecond detail")

    mod = types.ModuleType("failcmd")
    mod.add_arguments = lambda p: None  # type: ignore[attr-defined]
    mod.run = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "failcmd", mod)
    monkeypatch.setitem(SUBCOMMANDS, "failcmd", ("failcmd", "fails"))
    monkeypatch.setenv("OTELWAX_LOG_LEVEL", "INFO")
    assert main(["failcmd"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "otelwax failcmd: error: the broker said no; second detail"
    assert "Traceback" not in "\n".join(err) and "--log-level DEBUG" in err[1]


@pytest.mark.parametrize("flow", ["traces", "logs", "metrics", "spanmetrics", "logmetrics"])
def test_a_flow_with_a_bad_config_ends_quickly_with_the_problems_and_no_traceback(
    flow: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"flows:\n  {flow}:\n    sourse: {{}}\n")
    missing = tmp_path / "missing.yaml"
    for cfg, expect in ((bad, f"flows.{flow}.sourse: unknown key"), (missing, "does not exist")):
        t0 = time.monotonic()
        res = subprocess.run(
            [sys.executable, "-m", "bytewax.run", f"flows.{flow}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "OTELWAX_CONFIG": str(cfg)},
        )
        assert time.monotonic() - t0 < 20
        assert res.returncode == 1
        assert "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith(f"flows.{flow}: cannot start: "), res.stderr
        assert expect in res.stderr and "otelwax validate" in res.stderr
        # each problem once (the metrics flows' models used to rebuild the flow on import)
        assert res.stderr.count(expect) == 1, res.stderr


def test_the_shim_on_a_busy_grpc_port_says_which_port_and_what_to_set() -> None:
    import socket

    from tests.conftest import free_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _otelwax(
            "ingest", "--host", "127.0.0.1", "--grpc-port", str(port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--kafka-bootstrap", f"127.0.0.1:{free_port()}",
            env={"GRPC_VERBOSITY": "NONE"},
        )  # fmt: skip
    assert res.returncode == 1
    assert f"otelwax ingest: error: OTLP/gRPC port 127.0.0.1:{port} is not available" in res.stderr
    assert "Traceback" not in res.stderr and "--grpc-port" in res.stderr
