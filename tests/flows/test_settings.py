"""flows.settings: files, whole otelwax configs, env and keyword overrides, clear errors."""

from __future__ import annotations

import pytest

from flows.settings import load_settings


def test_defaults_are_embedded_chdb_with_schema_and_clickhouse_friendly_ranges() -> None:
    s = load_settings(env={})
    assert s.clickhouse.mode == "embedded" and s.clickhouse.create_schema
    assert s.source.topic == "otlp_spans" and s.dead_letters.topic == "otlp_dlq"
    assert s.source.batch.max_delay_s == 1.0 and s.source.batch.max_bytes >= 4 << 20


def test_flow_file_env_and_keyword_overrides(tmp_path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("source: {topic: spans_a, batch: {max_records: 10}}\nmetrics_port: 9000\n")
    env = {
        "OTELWAX_KAFKA_BOOTSTRAP": "k:1",
        "OTELWAX_METRICS_PORT": "none",
        "OTELWAX_TRACES__source__batch__max_delay_s": "0.5",
    }
    s = load_settings(str(f), env=env, source__stop_at_end=True)
    assert s.source.topic == "spans_a" and s.source.batch.max_records == 10
    assert s.source.batch.max_delay_s == 0.5 and s.source.stop_at_end
    assert s.kafka.bootstrap_servers == "k:1" and s.metrics_port is None


def test_whole_otelwax_config_shares_kafka_and_clickhouse(tmp_path) -> None:
    f = tmp_path / "otelwax.yaml"
    f.write_text(
        "kafka: {bootstrap_servers: 'shared:9092'}\n"
        "clickhouse: {mode: server, host: ch, database: otel}\n"
        "flows:\n  traces:\n    operators: [{type: redact}]\n"
    )
    s = load_settings(str(f), env={})
    assert s.kafka.bootstrap_servers == "shared:9092"
    assert (s.clickhouse.mode, s.clickhouse.host) == ("server", "ch")
    assert s.operators == [{"type": "redact"}]


def test_unknown_key_is_reported_with_its_path(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("source: {batch: {max_recrods: 5}}\n")
    with pytest.raises(ValueError, match=r"source\.batch\.max_recrods: unknown key"):
        load_settings(str(f), env={})


@pytest.mark.parametrize(
    ("clickhouse", "source", "expected_mib"),
    [
        ("{mode: embedded}", "{}", (48, 4)),
        ("{mode: server, host: ch}", "{}", (32, 2)),
        ("{mode: server, host: ch}", "{max_inflight_bytes: 67108864}", (64, 2)),
        ("{mode: server, host: ch}", "{prefetch_bytes: 8388608}", (32, 8)),
    ],
)
def test_source_memory_budget_defaults_to_where_rows_go(
    tmp_path, clickhouse: str, source: str, expected_mib: tuple[int, int]
) -> None:
    """A flow into a server buffers less (its merges run elsewhere; bench/README.md "flow
    memory"); into chdb smaller budgets cut smaller ranges, i.e. more parts to merge in the
    flow's own process. A value the user sets wins."""
    f = tmp_path / "t.yaml"
    f.write_text(f"clickhouse: {clickhouse}\nsource: {source}\n")
    s = load_settings(str(f), env={})
    got = (s.source.max_inflight_bytes >> 20, s.source.prefetch_bytes >> 20)
    assert got == expected_mib
