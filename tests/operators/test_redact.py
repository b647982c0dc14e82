"""redact: built-in and custom patterns, key allow/deny/ignore lists, log bodies."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from operators.registry import build_pipeline
from tests.operators.batches import logs_batch, spans_batch


def redact(cfg: dict, batch: pa.RecordBatch, signal: str = "traces") -> pa.RecordBatch:
    (op,) = build_pipeline([{"type": "redact", **cfg}], signal)
    out = op(batch)
    assert out.schema == batch.schema and out.num_rows == batch.num_rows
    out.validate(full=True)
    return out


def values(batch: pa.RecordBatch, col: str = "SpanAttributes") -> list:
    return [None if m is None else dict(m) for m in batch.column(col).to_pylist()]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("contact jane.doe+x@example.co.uk now", "contact **** now"),
        ("card 4111 1111 1111 1111 ok", "card **** ok"),
        ("card 4111-1111-1111-1111", "card ****"),
        ("amex 378282246310005", "amex ****"),
        ("mc 5555555555554444", "mc ****"),
        ("Authorization: Bearer abc.DEF-123_~+/==", "Authorization: Bearer ****"),
        ("bearer xyz", "bearer ****"),
        (
            "tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0."
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "tok ****",
        ),
        ("ts 1700000000000000000 stays", "ts 1700000000000000000 stays"),  # 19-digit timestamp
        ("order 123456 stays", "order 123456 stays"),
        ("ünïcödé 📧 jöhn@exämple.com", "ünïcödé 📧 ****"),  # internationalised address
        ("ünïcödé 📧 john@example.com", "ünïcödé 📧 ****"),
        ("", ""),
    ],
)
def test_builtin_patterns(value: str, expected: str) -> None:
    out = redact({}, spans_batch([{"SpanAttributes": {"v": value}}]))
    assert values(out) == [{"v": expected}]


def test_all_maps_by_default_including_events_and_resource() -> None:
    rows = [
        {
            "ResourceAttributes": {"owner": "ops@example.com"},
            "SpanAttributes": {"u": "a@b.io", "n": "1"},
            "Events.Attributes": [{"exception.message": "user x@y.org failed"}],
            "Events.Name": ["exception"],
            "Events.Timestamp": [1],
        },
        {"SpanAttributes": None},
    ]
    out = redact({}, spans_batch(rows))
    assert values(out, "ResourceAttributes")[0] == {"owner": "****"}
    assert values(out) == [{"u": "****", "n": "1"}, None]
    assert out.column("Events.Attributes").to_pylist()[0] == [
        [("exception.message", "user **** failed")]
    ]


def test_selected_maps_only() -> None:
    rows = [{"ResourceAttributes": {"o": "a@b.io"}, "SpanAttributes": {"u": "a@b.io"}}]
    out = redact({"maps": ["SpanAttributes"]}, spans_batch(rows))
    assert values(out, "ResourceAttributes") == [{"o": "a@b.io"}]
    assert values(out) == [{"u": "****"}]


def test_custom_patterns_with_groups_and_replacement() -> None:
    cfg = {
        "builtin": [],
        "patterns": [
            {"regex": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "***-**-****"},
            {"regex": r"(secret=)\w+", "replacement": r"\1<hidden>"},
        ],
        "replacement": "XX",
    }
    out = redact(cfg, spans_batch([{"SpanAttributes": {"q": "ssn 123-45-6789 secret=abc x@y.io"}}]))
    assert values(out) == [{"q": "ssn ***-**-**** secret=<hidden> x@y.io"}]


def test_allow_deny_ignore_keys() -> None:
    rows = [
        {"SpanAttributes": {"http.route": "/a", "password": "p", "note": "mail a@b.io",
                            "raw": "mail a@b.io", "other": "x"}},
        {"SpanAttributes": {}},
    ]  # fmt: skip
    out = redact(
        {
            "maps": ["SpanAttributes"],
            "allow_keys": ["http.route", "password", "note", "raw"],
            "deny_keys": ["password"],
            "ignore_keys": ["raw"],
            "replacement": "[redacted]",
        },
        spans_batch(rows),
    )
    assert values(out) == [
        {"http.route": "/a", "password": "[redacted]", "note": "mail [redacted]",
         "raw": "mail a@b.io"},
        {},
    ]  # fmt: skip


def test_log_bodies_and_attributes() -> None:
    rows = [
        {"Body": "login by bob@corp.com with Bearer t0k3n", "LogAttributes": {"e": "c@d.io"}},
        {"Body": "nothing here"},
    ]
    out = redact({}, logs_batch(rows), "logs")
    assert out.column("Body").to_pylist() == ["login by **** with Bearer ****", "nothing here"]
    assert values(out, "LogAttributes")[0] == {"e": "****"}
    out = redact({"body": False}, logs_batch(rows), "logs")
    assert out.column("Body").to_pylist()[0].startswith("login by bob@corp.com")


def test_empty_and_sliced_batches() -> None:
    assert redact({}, spans_batch([])).num_rows == 0
    big = spans_batch([{"SpanAttributes": {"e": f"u{i}@x.io", "k": str(i)}} for i in range(6)])
    out = redact({}, big.slice(2, 3))
    assert values(out) == [{"e": "****", "k": str(i)} for i in range(2, 5)]


def test_bad_config() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="invalid regular expression"):
        build_pipeline([{"type": "redact", "patterns": [{"regex": "(x"}]}], "traces")
    with pytest.raises(ValueError, match="unknown attribute map 'LogAttributes'"):
        build_pipeline([{"type": "redact", "maps": ["LogAttributes"]}], "traces")


def test_decoded_otlp_through_the_example_pipeline_leaves_no_pii() -> None:
    """OTLP requests → the flows' decoder → the operators of configs/examples/pii-and-sampling."""
    from operators.registry import run_pipeline
    from otelwax.cli.config import load_config
    from otelwax.codec import decode_traces
    from tests.operators.batches import PII_VALUES, pii_trace_payloads

    batch = decode_traces(pii_trace_payloads(10, 4)).batch
    assert any(v in str(batch.to_pylist()) for v in PII_VALUES)
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "examples" / "pii-and-sampling.yaml", env={})
    specs = cfg.operator_specs("traces")
    out = run_pipeline(build_pipeline(specs[:3], "traces"), batch)  # without the sampler
    text = str(out.to_pylist())
    assert out.num_rows == 40 - 5  # the /health spans are gone
    assert [v for v in PII_VALUES if v in text] == [] and "/health" not in text
    assert all(dict(m)["deployment.environment"] == "prod"
               for m in out.column("SpanAttributes").to_pylist())  # fmt: skip
