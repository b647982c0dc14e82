"""The deployment config: tables over tests/testdata/config and the ``otelwax validate`` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelwax.cli.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "testdata" / "config"
VALID = sorted((DATA / "valid").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
SHIPPED = [
    ROOT / "configs" / "otelwax.yaml",
    *sorted((ROOT / "configs" / "examples").glob("*.yaml")),
]


def expectations(path: Path) -> list[str]:
    """The ``# expect: <text>`` lines at the top of a test file."""
    return [
        line.split("# expect:", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def test_tables_are_not_empty() -> None:
    assert len(VALID) >= 4 and len(INVALID) >= 10
    assert all(expectations(p) for p in INVALID), "every invalid file states what it expects"


@pytest.mark.parametrize("path", VALID + SHIPPED, ids=lambda p: p.name)
def test_valid_files_load(path: Path) -> None:
    cfg = load_config(path, env={})
    for signal in ("traces", "metrics", "logs"):
        cfg.operator_specs(signal)  # typed specs for operators.registry


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_files_report_every_expected_problem(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = info.value.problems
    for want in expectations(path):
        assert any(want in p for p in problems), f"{want!r} not in {problems}"
    # One line per problem, nothing reported twice.
    assert len(problems) == len(set(problems))
    assert len(problems) == len(expectations(path)) or path.name in {"env-unset.yaml"}


def test_no_file_means_defaults() -> None:
    cfg = load_config(None, env={})
    assert cfg.clickhouse.mode == "embedded"
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.flows.traces.operators == []


def test_env_var_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("kafka: {bootstrap_servers: 'from-file:9092'}\n")
    cfg = load_config(None, env={"OTELWAX_CONFIG": str(f)})
    assert cfg.kafka.bootstrap_servers == "from-file:9092"


def test_env_substitution_and_shared_sections(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(
        "kafka: {bootstrap_servers: '${env:KB}'}\n"
        "clickhouse: {mode: server, host: ch, password: '${env:CH_PW}'}\n"
        "flows:\n  logs: {kafka: {bootstrap_servers: 'own:9092'}}\n"
    )
    cfg = load_config(f, env={"KB": "k1:9092,k2:9092", "CH_PW": "s3cret"})
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.ingest.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.flows.traces.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.flows.logs.kafka.bootstrap_servers == "own:9092"  # a flow's own section wins
    assert cfg.flows.traces.clickhouse.host == "ch"
    metrics = cfg.flow_settings("metrics")  # the metrics flow's own model
    assert type(metrics).__name__ == "MetricsFlowSettings"
    assert metrics.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.flow_settings("traces") is cfg.flows.traces
    # shared values are laid over a flow's own defaults, and off-by-default sinks stay off
    assert cfg.flows.traces.clickhouse.create_schema is True
    assert cfg.clickhouse.create_schema is False
    assert cfg.flow_settings("spanmetrics").clickhouse is None
    logmetrics = cfg.flow_settings("logmetrics")  # flows.logmetrics, shared kafka, no ClickHouse
    assert logmetrics.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert (logmetrics.source.topic, logmetrics.clickhouse) == ("otlp_logs", None)
    assert cfg.clickhouse.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(DATA / "does-not-exist.yaml", env={})


def _validate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "OTELWAX_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "otelwax", "validate", *args],
        capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=60,
    )  # fmt: skip


def test_cli_prints_every_problem_and_fails() -> None:
    path = DATA / "invalid" / "operator-fields.yaml"
    res = _validate(str(path))
    assert res.returncode == 1
    for want in expectations(path):
        assert want in res.stdout
    assert "6 problems" in res.stdout


def test_cli_valid_file_summary() -> None:
    res = _validate("configs/examples/pii-and-sampling.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout
    assert "traces → chdb .data/chdb/traces after 4 operators" in res.stdout


def test_cli_imports_user_modules(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(
        "flows:\n  traces:\n    operators:\n"
        "      - {module: 'no_such_pkg.ops:scrub'}\n"
        "      - {module: 'operators.example_user_ops:missing'}\n"
        "      - {module: 'tests.operators.user_ops_fixtures:NOT_CALLABLE'}\n"
        "      - {module: 'tests.operators.user_ops_fixtures:bad_factory', factory: true}\n"
    )
    res = _validate(str(f))
    assert res.returncode == 1
    out = res.stdout
    assert "flows.traces.operators.0.module: cannot import 'no_such_pkg.ops'" in out
    assert "flows.traces.operators.1.module: module 'operators.example_user_ops' has no attr" in out
    assert "flows.traces.operators.2.module: 'tests.operators.user_ops_fixtures:NOT_CALLABLE' is " \
        "not callable" in out  # fmt: skip
    assert "flows.traces.operators.3: operator step 'module.3'" in out
    assert "factory did not return a callable" in out
    # --no-imports checks only the file.
    assert _validate(str(f), "--no-imports").returncode == 0


def test_cli_show_masks_secrets(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("clickhouse: {password: '${env:PW}'}\n")
    res = _validate(str(f), "--show", env={"PW": "topsecret"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "topsecret" not in res.stdout and "**********" in res.stdout


def test_cli_refuses_an_operator_the_flow_cannot_run(tmp_path: Path) -> None:
    """What validates, runs: flows.traces runs tail_sampling only as its first operator (its
    clock is each row's Kafka record time), so validate refuses it elsewhere."""
    f = tmp_path / "x.yaml"
    f.write_text("flows:\n  traces:\n    operators:\n      - {type: redact}\n"
                 "      - {type: tail_sampling, decision_wait: 5s}\n")  # fmt: skip
    res = _validate("-c", str(f))
    assert res.returncode == 1
    assert "flows.traces.operators.1.type: tail_sampling must be the first operator" in res.stdout
    f.write_text("flows:\n  traces:\n    operators:\n      - {type: tail_sampling}\n")
    res = _validate("-c", str(f))
    assert res.returncode == 0, res.stdout
    assert "note: flows.traces: tail_sampling keeps waiting traces in bytewax" in res.stdout
    f.write_text("flows:\n  traces:\n    recovery: {directory: /tmp/r}\n    operators:\n"
                 "      - {type: tail_sampling}\n")  # fmt: skip
    res = _validate("-c", str(f))
    assert res.returncode == 0 and "note:" not in res.stdout, res.stdout


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml")), ids=str
)
def test_every_shipped_config_validates(path: Path) -> None:
    res = _validate("-c", str(path), env={"OTELWAX_CLICKHOUSE_PASSWORD": "x"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_sinks_are_shared_with_the_flows_that_write_to_them(tmp_path: Path) -> None:
    """``sinks:`` used to be validated and then ignored; now it drives the flows, and the
    summary says where each flow writes."""
    f = tmp_path / "x.yaml"
    f.write_text(
        "sinks:\n"
        "  remote_write: {url: 'http://prom:9090/api/v1/write'}\n"
        "  jaeger: {endpoint: '127.0.0.1:14317'}\n"
        "flows:\n  spanmetrics: {remote_write: null}\n"
    )
    cfg = load_config(f, env={})
    assert cfg.flow_settings("metrics").remote_write.url == "http://prom:9090/api/v1/write"
    assert cfg.flow_settings("spanmetrics").remote_write is None  # its own null wins
    jaeger = cfg.flow_settings("traces").jaeger
    assert (jaeger.enabled, jaeger.endpoint) == (True, "127.0.0.1:14317")
    out = _validate("-c", str(f)).stdout
    assert "traces → chdb .data/chdb/traces + jaeger 127.0.0.1:14317" in out
    assert "metrics → chdb .data/chdb/metrics + remote-write http://prom:9090/api/v1/write" in out
    assert "spanmetrics → nothing (no output configured)" in out


def test_each_flow_gets_its_own_embedded_folder(tmp_path: Path) -> None:
    """chdb allows one process per folder: a shared clickhouse section (or none) used to put
    every flow in one folder, so the second flow could not start."""
    for text in ("{}\n", "clickhouse: {path: '/srv/chdb/{flow}'}\n"):
        f = tmp_path / "x.yaml"
        f.write_text(text)
        cfg = load_config(f, env={})
        paths = {n: cfg.flow_settings(n).clickhouse.path for n in ("traces", "logs", "metrics")}
        assert len(set(paths.values())) == 3 and all(paths[n].endswith(n) for n in paths)


def test_validate_reads_the_environment_like_the_flows_and_blames_bad_values_on_it() -> None:
    """``OTELWAX_TRACES__source__batch__max_delay_s=fast`` used to validate; a bad value is
    blamed on the variable, and look-alike variables the flows do not read get a hint."""
    var = "OTELWAX_TRACES__source__batch__max_delay_s"
    res = _validate("-c", "configs/otelwax.yaml", env={var: "fast"})
    assert res.returncode == 1
    assert "flows.traces.source.batch.max_delay_s: Input should be a valid number" in res.stdout
    assert f"(from ${var})" in res.stdout
    res = _validate(
        "-c", "configs/otelwax.yaml",
        env={"otelwax_traces__source__topic": "x", "OTELWAX_TRACE__source__topic": "y"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout
    assert "write $OTELWAX_TRACES__source__topic" in res.stdout
    assert "$OTELWAX_TRACE__source__topic is not read: no flow 'TRACE'" in res.stdout


def test_a_flow_blames_a_bad_environment_value_on_the_variable(tmp_path: Path) -> None:
    from flows.settings import load_settings

    var = "OTELWAX_TRACES__source__batch__max_delay_s"
    with pytest.raises(ValueError, match=rf"max_delay_s: .* \(from \${var}\)"):
        load_settings(None, env={var: "fast"})
