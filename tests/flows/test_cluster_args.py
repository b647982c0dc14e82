"""Process id / peer list from a StatefulSet pod's environment, and the command it runs."""

from __future__ import annotations

import argparse

import pytest

from otelwax.cluster import cluster_args, ordinal_from_hostname
from otelwax.flow_cli import build_command


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
