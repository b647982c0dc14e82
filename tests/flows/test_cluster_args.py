"""Process id / peer list from a StatefulSet pod's environment, and the command it runs."""

from __future__ import annotations

import argparse

import pytest

from otelwax.cli.flow import build_command
from otelwax.cluster import cluster_args, ordinal_from_hostname


def test_pod_ordinal_and_headless_service_peers() -> None:
    env = {"HOSTNAME": "flows-traces-2", "OTELWAX_REPLICAS": "3"}
    assert cluster_args(env) == [
        "-i",
        "2",
        "-a",
        "flows-traces-0.flows-traces:2101;flows-traces-1.flows-traces:2101;"
        "flows-traces-2.flows-traces:2101",
    ]
    env["OTELWAX_PEER_PATTERN"] = "ft-{i}.ft.otel.svc.cluster.local:3000"
    assert cluster_args(env)[3].split(";")[1] == "ft-1.ft.otel.svc.cluster.local:3000"


def test_single_replica_needs_no_cluster_args() -> None:
    assert cluster_args({"HOSTNAME": "laptop"}) == []


@pytest.mark.parametrize("bad", ["laptop", "flows-traces-x"])
def test_hostname_without_ordinal_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="ordinal"):
        ordinal_from_hostname(bad)
    with pytest.raises(ValueError, match="ordinal"):
        cluster_args({"HOSTNAME": bad, "OTELWAX_REPLICAS": "2"})


def test_flow_command_carries_recovery_from_settings(tmp_path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("recovery: {directory: /rec, snapshot_interval_s: 5, backup_interval_s: 30}\n")
    ns = argparse.Namespace(flow="traces", config=str(cfg), workers=2)
    cmd = build_command(ns, {"HOSTNAME": "flows-traces-1", "OTELWAX_REPLICAS": "2"})
    assert cmd[1:4] == ["-m", "bytewax.run", f"flows.traces:build({str(cfg)!r})"]
    assert cmd[4:] == [
        "-w",
        "2",
        "-r",
        "/rec",
        "-s",
        "5",
        "-b",
        "30",
        "-i",
        "1",
        "-a",
        "flows-traces-0.flows-traces:2101;flows-traces-1.flows-traces:2101",
    ]


def _ns(flow: str, config: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(flow=flow, config=config, workers=1, init_recovery=True, dry_run=True)


def test_init_recovery_only_on_process_zero_of_a_cluster(tmp_path, capsys) -> None:
    """Partitions are shared by the processes of a cluster: only ordinal 0 creates them."""
    from otelwax.cli.flow import run

    rec = tmp_path / "rec"
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"recovery: {{directory: {str(rec)!r}, partitions: 3}}\n")
    env = {"OTELWAX_REPLICAS": "2", "HOSTNAME": "flows-traces-1"}
    assert run(_ns("traces", str(cfg)), env) == 0
    assert not rec.exists(), "process 1 must not initialise the shared partitions"
    assert "-i 1" in capsys.readouterr().out
    env["HOSTNAME"] = "flows-traces-0"
    assert run(_ns("traces", str(cfg)), env) == 0
    assert sorted(p.name for p in rec.glob("part-*.sqlite3")) == [
        f"part-{i}.sqlite3" for i in range(3)
    ]
    before = {p: p.stat().st_mtime_ns for p in rec.iterdir()}
    assert run(_ns("traces", str(cfg)), env) == 0  # already there: left alone
    assert {p: p.stat().st_mtime_ns for p in rec.iterdir()} == before


def test_init_recovery_from_bytewax_variable_for_every_flow(tmp_path) -> None:
    from otelwax.cli.flow import init_recovery

    for i, flow in enumerate(("metrics", "logs", "spanmetrics")):
        rec = tmp_path / f"rec{i}"
        env = {"BYTEWAX_RECOVERY_DIRECTORY": str(rec), "OTELWAX_RECOVERY_PARTITIONS": "2"}
        one = {**env, "OTELWAX_REPLICAS": "3", "OTELWAX_POD_NAME": f"flows-{flow}-2"}
        assert not init_recovery(_ns(flow), one)
        assert not rec.exists()
        assert init_recovery(_ns(flow), env)
        assert len(list(rec.glob("part-*.sqlite3"))) == 2
        assert not init_recovery(_ns(flow), env)


def test_spanmetrics_is_a_flow_of_otelwax_flow() -> None:
    ns = argparse.Namespace(flow="spanmetrics", config="/etc/otelwax/otelwax.yaml", workers=1)
    cmd = build_command(ns, {})
    assert cmd[1:4] == ["-m", "bytewax.run", "flows.spanmetrics:build('/etc/otelwax/otelwax.yaml')"]


def test_logs_flow_command_carries_recovery_from_settings(tmp_path, capsys) -> None:
    """``recovery:`` of a logs config reaches bytewax (-r/-s/-b) and --init-recovery."""
    from otelwax.cli.flow import run

    rec = tmp_path / "rec"
    cfg = tmp_path / "l.yaml"
    cfg.write_text(
        f"recovery: {{directory: {str(rec)!r}, partitions: 2, snapshot_interval_s: 4, "
        "backup_interval_s: 0}\n"
    )
    assert run(_ns("logs", str(cfg)), {}) == 0
    out = capsys.readouterr().out
    assert f"flows.logs:build({str(cfg)!r})" in out
    assert f"-r {rec} -s 4 -b 0" in out
    assert len(list(rec.glob("part-*.sqlite3"))) == 2


@pytest.mark.parametrize("flow", ["metrics", "spanmetrics", "logmetrics"])
def test_every_flow_command_carries_recovery_from_its_settings(tmp_path, flow: str) -> None:
    """One settings shape: ``recovery:`` of a metrics or window flow config reaches bytewax
    like the traces flow's (those flows had no such key before)."""
    cfg = tmp_path / "m.yaml"
    rw = "remote_write: {url: 'http://127.0.0.1:9/api/v1/write'}\n"
    rec = "recovery: {directory: /rec, snapshot_interval_s: 2, backup_interval_s: 0}\n"
    cfg.write_text(rw + rec)
    cmd = build_command(argparse.Namespace(flow=flow, config=str(cfg), workers=1), {})
    assert cmd[4:] == ["-w", "1", "-r", "/rec", "-s", "2", "-b", "0"]
