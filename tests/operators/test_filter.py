"""filter and the expression language on hand-built batches."""

from __future__ import annotations

import pytest

from operators.expr import compile_expr
from operators.expr_syntax import ExprError, parse
from operators.registry import build_pipeline
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA
from tests.operators.batches import logs_batch, spans_batch


def run(cond: str, rows: list[dict], keep: bool = True, signal: str = "traces") -> list[dict]:
    spec = {"type": "filter", ("keep" if keep else "drop"): cond}
    (op,) = build_pipeline([spec], signal)
    batch = (spans_batch if signal == "traces" else logs_batch)(rows)
    out = op(batch)
    assert out.schema == batch.schema
    return out.to_pylist()


ROUTES = [
    {"SpanName": "a", "SpanAttributes": {"http.route": "/health"}},
    {"SpanName": "b", "SpanAttributes": {"http.route": "/api/cart"}},
    {"SpanName": "c", "SpanAttributes": {}},  # missing attribute
    {"SpanName": "d", "SpanAttributes": None},  # null map
    {"SpanName": "e", "SpanAttributes": {"http.route": "/ready", "x": "1"}},
]


def names(rows: list[dict]) -> list[str]:
    return [r["SpanName"] for r in rows]


def test_drop_health_checks_keeps_rows_without_the_attribute() -> None:
    out = run("SpanAttributes['http.route'] in ['/health', '/ready']", ROUTES, keep=False)
    assert names(out) == ["b", "c", "d"]


def test_missing_attribute_semantics() -> None:
    assert names(run("SpanAttributes['http.route'] == '/api/cart'", ROUTES)) == ["b"]
    # != and "not in" are true for a missing value (as in the Collector's OTTL)
    assert names(run("SpanAttributes['http.route'] != '/health'", ROUTES)) == ["b", "c", "d", "e"]
    assert names(run("SpanAttributes['http.route'] not in ['/health']", ROUTES)) == [
        "b", "c", "d", "e",
    ]  # fmt: skip
    assert names(run("SpanAttributes['http.route'] == null", ROUTES)) == ["c", "d"]
    assert names(run("exists(SpanAttributes['http.route'])", ROUTES)) == ["a", "b", "e"]
    assert names(run("not exists(SpanAttributes['x'])", ROUTES)) == ["a", "b", "c", "d"]


def test_columns_numbers_durations_and_boolean_logic() -> None:
    rows = [
        {"SpanName": "fast", "Duration": 500_000, "ServiceName": "cart"},
        {"SpanName": "slow", "Duration": 2_000_000_000, "ServiceName": "cart"},
        {
            "SpanName": "err",
            "Duration": 10,
            "ServiceName": "pay",
            "StatusCode": "STATUS_CODE_ERROR",
        },
    ]
    assert names(run("Duration > 1s", rows)) == ["slow"]
    assert names(run("Duration > 1e9", rows)) == ["slow"]
    assert names(run("Duration >= 500us and Duration < 1ms", rows)) == ["fast"]
    q = "ServiceName in ['cart'] and not (Duration > 1s) or StatusCode == 'STATUS_CODE_ERROR'"
    assert names(run(q, rows)) == ["fast", "err"]
    assert names(run("1s < Duration", rows)) == ["slow"]  # literal on the left


def test_attribute_compared_with_a_number() -> None:
    rows = [
        {"SpanName": "a", "SpanAttributes": {"code": "500"}},
        {"SpanName": "b", "SpanAttributes": {"code": "404"}},
        {"SpanName": "c", "SpanAttributes": {"code": "not-a-number"}},
        {"SpanName": "d", "SpanAttributes": {"code": "5.5e2"}},
        {"SpanName": "e", "SpanAttributes": {}},
    ]
    assert names(run("SpanAttributes['code'] >= 500", rows)) == ["a", "d"]
    assert names(run("SpanAttributes['code'] in [404, 500]", rows)) == ["a", "b"]


def test_string_predicates_and_unicode() -> None:
    rows = [
        {"SpanName": "GET /héllo/🙂", "SpanAttributes": {"ключ": "значение"}},
        {"SpanName": "POST /api", "SpanAttributes": {"k": "v"}},
    ]
    assert len(run("SpanName startswith 'GET'", rows)) == 1
    assert len(run("SpanName endswith '🙂'", rows)) == 1
    assert len(run("SpanName contains 'héllo'", rows)) == 1
    assert len(run("SpanName matches '^(GET|PUT) /h'", rows)) == 1
    assert len(run("SpanAttributes['ключ'] == 'значение'", rows)) == 1
    assert len(run('SpanName matches "(?i)^post"', rows)) == 1


def test_logs_severity_and_body() -> None:
    rows = [
        {"SeverityNumber": 5, "Body": "debug stuff"},
        {"SeverityNumber": 9, "Body": "hello"},
        {"SeverityNumber": 17, "Body": "ERROR boom"},
    ]
    out = run("SeverityNumber < 9", rows, keep=False, signal="logs")
    assert [r["SeverityNumber"] for r in out] == [9, 17]
    assert len(run("Body matches '(?i)error'", rows, signal="logs")) == 1


def test_empty_batch_and_null_columns() -> None:
    assert run("ServiceName == 'x'", []) == []
    rows = [{"SpanName": "a", "ServiceName": None}, {"SpanName": "b", "ServiceName": "x"}]
    assert names(run("ServiceName == 'x'", rows)) == ["b"]
    assert names(run("ServiceName != 'x'", rows)) == ["a"]


def test_literal_only_conditions() -> None:
    assert len(run("true", ROUTES)) == 5
    assert run("false", ROUTES) == []
    assert len(run("1 < 2", ROUTES)) == 5


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty expression", 1),
        ("Duration >", "expected a column, attribute or literal", 11),
        ("Duration > 1 and", "expected a column", 17),
        ("(Duration > 1", "expected ')'", 14),
        ("ServiceName = 'x'", "unexpected character '='", 13),
        ("SpanAttributes['a' == 'b'", "expected ']'", 20),
        ("SpanName matches '(a'", "invalid regular expression", 18),
        ("ServiceName in ['a', 1]", "only strings or only numbers", 13),
        ("Duration > 5min", "unexpected character '5'", 12),
        ("ServiceName", "expected a comparison", 12),
    ],
)
def test_syntax_errors_have_a_position(text: str, message: str, column: int) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert message in str(info.value)
    assert info.value.pos is not None and info.value.pos + 1 == column


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Durration > 1", "unknown column 'Durration' (did you mean 'Duration'?)"),
        ("SpanAttributes > 1", "use SpanAttributes['key']"),
        ("ServiceName['x'] == 'a'", "is not an attribute map"),
        ("Duration == 'x'", "cannot compare a number with a string"),
        ("Duration matches 'x'", "needs a string value"),
        ("Duration < null", "null can only be compared with == or !="),
        ("'x'", "expected a comparison"),
    ],
)
def test_type_errors(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=None) as info:
        compile_expr(text, TRACES_SCHEMA)
    assert message in str(info.value)


def test_signal_specific_columns() -> None:
    compile_expr("SeverityNumber < 9", LOGS_SCHEMA)
    with pytest.raises(ExprError, match="unknown column 'SeverityNumber'"):
        compile_expr("SeverityNumber < 9", TRACES_SCHEMA)


def test_never_evaluates_python() -> None:
    for text in ["__import__('os').system('true')", "ServiceName == open('/etc/passwd')"]:
        with pytest.raises(ExprError):
            compile_expr(text, TRACES_SCHEMA)
