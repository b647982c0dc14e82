"""transform on hand-built batches: sliced batches, null maps, unicode, list-of-map columns."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from operators.registry import build_pipeline
from tests.operators.batches import logs_batch, spans_batch


def apply(actions: list[dict], batch: pa.RecordBatch, signal: str = "traces") -> pa.RecordBatch:
    (op,) = build_pipeline([{"type": "transform", "actions": actions}], signal)
    out = op(batch)
    assert out.schema == batch.schema
    assert out.num_rows == batch.num_rows
    out.validate(full=True)
    return out


def attrs(batch: pa.RecordBatch, col: str = "SpanAttributes") -> list:
    return [None if m is None else dict(m) for m in batch.column(col).to_pylist()]


ROWS = [
    {"SpanAttributes": {"a": "1", "env": "dev"}},
    {"SpanAttributes": {}},
    {"SpanAttributes": None},
    {"SpanAttributes": {"b": "ü🙂"}},
]


def test_set_attribute_overwrites_and_fills_null_maps() -> None:
    out = apply(
        [{"action": "set", "to": "SpanAttributes['env']", "value": "prod"}], spans_batch(ROWS)
    )
    assert attrs(out) == [
        {"a": "1", "env": "prod"}, {"env": "prod"}, {"env": "prod"}, {"b": "ü🙂", "env": "prod"},
    ]  # fmt: skip
    # the replaced key is not duplicated
    assert [len(m) for m in out.column("SpanAttributes").to_pylist()] == [2, 1, 1, 2]


def test_set_only_if_missing() -> None:
    out = apply(
        [
            {
                "action": "set",
                "to": "SpanAttributes['env']",
                "value": "prod",
                "only_if_missing": True,
            }
        ],
        spans_batch(ROWS),
    )
    assert [m["env"] for m in attrs(out)] == ["dev", "prod", "prod", "prod"]


def test_set_and_copy_columns() -> None:
    rows = [
        {"ServiceName": "", "ResourceAttributes": {"k8s.pod.name": "pod-1"}},
        {"ServiceName": "cart", "ResourceAttributes": {}},
    ]
    out = apply(
        [
            {"action": "set", "to": "ServiceName", "value": "unknown", "only_if_missing": True},
            {"action": "copy", "from": "ResourceAttributes['k8s.pod.name']", "to": "SpanName"},
            {"action": "copy", "from": "ServiceName", "to": "SpanAttributes['svc']"},
        ],
        spans_batch(rows),
    )
    assert out.column("ServiceName").to_pylist() == ["unknown", "cart"]
    # an absent source leaves the target alone
    assert out.column("SpanName").to_pylist() == ["pod-1", "GET /"]
    assert [m["svc"] for m in attrs(out)] == ["unknown", "cart"]


def test_rename_replaces_an_existing_target_key() -> None:
    rows = [
        {"SpanAttributes": {"http.method": "GET", "http.request.method": "old"}},
        {"SpanAttributes": {"http.request.method": "keep-me"}},
        {"SpanAttributes": None},
    ]
    out = apply(
        [{"action": "rename", "map": "SpanAttributes", "key": "http.method",
          "to": "http.request.method"}],
        spans_batch(rows),
    )  # fmt: skip
    assert attrs(out) == [{"http.request.method": "GET"}, {"http.request.method": "keep-me"}, None]
    assert [None if m is None else len(m) for m in out.column("SpanAttributes").to_pylist()] == [
        1, 1, None,
    ]  # fmt: skip


def test_delete_keys_and_pattern() -> None:
    rows = [{"SpanAttributes": {"password": "x", "internal.a": "1", "keep": "2", "internal": "3"}}]
    out = apply(
        [{"action": "delete", "map": "SpanAttributes", "keys": ["password"],
          "key_pattern": "^internal\\."}],
        spans_batch(rows * 3),
    )  # fmt: skip
    assert attrs(out) == [{"keep": "2", "internal": "3"}] * 3


def test_hash_matches_sha256_and_leaves_other_keys() -> None:
    rows = [
        {"SpanAttributes": {"user.id": "alice", "x": "alice"}},
        {"SpanAttributes": {"user.id": "bób"}},
        {"SpanAttributes": {"x": "y"}},
    ]
    out = apply(
        [{"action": "hash", "map": "SpanAttributes", "keys": ["user.id"]}], spans_batch(rows)
    )
    got = attrs(out)
    assert got[0] == {"user.id": hashlib.sha256(b"alice").hexdigest(), "x": "alice"}
    assert got[1] == {"user.id": hashlib.sha256("bób".encode()).hexdigest()}
    assert got[2] == {"x": "y"}


def test_hash_with_salt_from_env(tmp_path) -> None:
    from otelwax.cli.config import load_config

    f = tmp_path / "c.yaml"
    f.write_text(
        "flows:\n  traces:\n    operators:\n      - type: transform\n        actions:\n"
        "          - {action: hash, map: SpanAttributes, keys: [u], salt: '${env:SALT}'}\n"
    )
    specs = load_config(f, env={"SALT": "pepper"}).operator_specs("traces")
    (op,) = build_pipeline(specs, "traces")
    out = op(spans_batch([{"SpanAttributes": {"u": "alice"}}]))
    assert attrs(out)[0]["u"] == hashlib.sha256(b"pepperalice").hexdigest()


def test_truncate_counts_characters_not_bytes() -> None:
    rows = [{"SpanAttributes": {"q": "ünïcödé🙂🙂", "short": "ab"}, "StatusMessage": "é" * 10}]
    out = apply(
        [
            {"action": "truncate", "map": "SpanAttributes", "max_length": 3},
            {"action": "truncate", "column": "StatusMessage", "max_length": 4},
        ],
        spans_batch(rows),
    )
    assert attrs(out) == [{"q": "ünï", "short": "ab"}]
    assert out.column("StatusMessage").to_pylist() == ["éééé"]


def test_list_of_maps_columns() -> None:
    rows = [
        {"Events.Attributes": [{"secret": "s", "k": "v"}, {}], "Events.Name": ["e1", "e2"],
         "Events.Timestamp": [1, 2]},
        {"Events.Attributes": []},
    ]  # fmt: skip
    out = apply(
        [{"action": "delete", "map": "Events.Attributes", "keys": ["secret"]}], spans_batch(rows)
    )
    assert out.column("Events.Attributes").to_pylist() == [[[("k", "v")], []], []]


def test_sliced_batches_and_empty_batches() -> None:
    big = spans_batch([{"SpanAttributes": {"i": str(i), "drop": "x"}} for i in range(10)])
    part = big.slice(3, 4)
    out = apply(
        [
            {"action": "delete", "map": "SpanAttributes", "keys": ["drop"]},
            {"action": "set", "to": "SpanAttributes['n']", "value": "1"},
        ],
        part,
    )
    assert attrs(out) == [{"i": str(i), "n": "1"} for i in range(3, 7)]
    empty = spans_batch([])
    assert apply([{"action": "set", "to": "ServiceName", "value": "x"}], empty).num_rows == 0


def test_logs_maps() -> None:
    out = apply(
        [{"action": "set", "to": "LogAttributes['a']", "value": "b"}],
        logs_batch([{"LogAttributes": {}}]),
        signal="logs",
    )
    assert attrs(out, "LogAttributes") == [{"a": "b"}]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"action": "set", "to": "Duration", "value": "1"}, "only string columns can be set"),
        ({"action": "rename", "map": "ServiceName", "key": "a", "to": "b"}, "not an attribute map"),
        ({"action": "delete", "map": "SpanAttributes"}, "give keys or key_pattern"),
        ({"action": "truncate", "max_length": 3}, "give exactly one of map or column"),
    ],
)
def test_build_errors_name_the_action(action: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"operators\.0\.actions\.0") as info:
        build_pipeline([{"type": "transform", "actions": [action]}], "traces")
    assert message in str(info.value)
