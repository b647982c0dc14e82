"""Secrets only from the environment, also inside free-form maps: librdkafka properties
(``kafka.extra``) and HTTP headers (``remote_write.headers``)."""

from __future__ import annotations

import pytest

from otelwax.cli.config import ConfigError, load_config, validate_data

WAY_OUT = "secrets must come from the environment; write ${env:VARIABLE}"


def test_literal_secrets_in_kafka_extra_and_headers_are_refused_by_path() -> None:
    data = {
        "kafka": {
            "extra": {
                "sasl.username": "otelwax",  # not a secret
                "sasl.password": "hunter2",
                "ssl.key.password": "${env:KEY_PW}",  # the way out
                "sasl.oauthbearer.client.secret": "s3cr3t",
            }
        },
        "ingest": {"kafka": {"extra": {"ssl.keystore.password": "p"}}},
        "sinks": {
            "remote_write": {
                "headers": {"Authorization": "Bearer abc", "X-Scope-OrgID": "tenant-1"}
            }
        },
        "flows": {
            "spanmetrics": {"remote_write": {"headers": {"x-api-key": "k", "X-Trace": "1"}}}
        },
    }
    cfg, problems = validate_data(data, {"KEY_PW": "pw"})
    assert cfg is None
    assert sorted(p for p in problems if WAY_OUT in p) == sorted(
        f"{path}: {WAY_OUT}"
        for path in (
            "kafka.extra.sasl.password",
            "kafka.extra.sasl.oauthbearer.client.secret",
            "ingest.kafka.extra.ssl.keystore.password",
            "sinks.remote_write.headers.Authorization",
            "flows.spanmetrics.remote_write.headers.x-api-key",
        )
    ), problems


def test_secrets_from_the_environment_load() -> None:
    data = {
        "kafka": {"extra": {"sasl.password": "${env:KAFKA_PW}", "sasl.username": "u"}},
        "sinks": {
            "remote_write": {
                "url": "http://prom:9090/api/v1/write",
                "headers": {"Authorization": "Bearer ${env:PROM_TOKEN}"},
            }
        },
    }
    env = {"KAFKA_PW": "hunter2", "PROM_TOKEN": "abc"}
    cfg, problems = validate_data(data, env)
    assert problems == [] and cfg is not None
    assert cfg.kafka.client_conf()["sasl.password"] == "hunter2"
    assert cfg.sinks.remote_write is not None
    assert cfg.sinks.remote_write.headers["Authorization"] == "Bearer abc"


def test_the_loader_error_names_the_path(tmp_path) -> None:
    f = tmp_path / "otelwax.yaml"
    f.write_text("kafka: {extra: {sasl.password: hunter2}}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f, {})
    assert f"kafka.extra.sasl.password: {WAY_OUT}" in str(ei.value)
    assert "hunter2" not in str(ei.value)
