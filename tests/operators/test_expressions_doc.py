"""docs/expressions.md cannot rot: every example compiles against its signal and selects rows."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from operators.expr import compile_expr
from otelwax.schemas import LOGS_SCHEMA, TRACES_SCHEMA

DOC = Path(__file__).resolve().parents[2] / "docs" / "expressions.md"
SCHEMAS = {"traces": TRACES_SCHEMA, "logs": LOGS_SCHEMA}


def _examples() -> list[tuple[str, str]]:
    block = DOC.read_text().split("## Examples", 1)[1]
    lines = re.search(r"```text\n(.*?)```", block, re.S)
    assert lines is not None
    return [tuple(ln.split(": ", 1)) for ln in lines.group(1).splitlines() if ln.strip()]


def test_the_doc_has_examples_for_both_signals() -> None:
    assert {sig for sig, _ in _examples()} == set(SCHEMAS)


@pytest.mark.parametrize(("signal", "text"), _examples())
def test_every_example_compiles_and_evaluates(signal: str, text: str) -> None:
    schema = SCHEMAS[signal]
    cond = compile_expr(text, schema)
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    assert len(cond(empty)) == 0
