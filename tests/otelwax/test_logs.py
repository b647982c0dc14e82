"""otelwax.logs: JSON lines (one per record, never raising), step ids from a running dataflow,
and the CLI / shim writing JSON when asked."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otelwax.logs import (
    JsonFormatter,
    StepContextFilter,
    TextFormatter,
    carry_step,
    configure_logging,
    in_step,
    instrument,
)

ROOT = Path(__file__).resolve().parents[2]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, Callable[[], list[str]]]]:
    """A logger writing through otelwax's filter + JSON formatter into a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(StepContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test_logs.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, lambda: buf.getvalue().splitlines()
    logger.removeHandler(handler)


def _records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def test_one_valid_json_line_per_record_with_the_standard_fields(capture) -> None:
    log, lines = capture
    log.info("first line\nsecond line")
    log.warning("%s=%d", "n", 3, extra={"topic": "otlp_spans", "offset": 7})
    out = lines()
    assert len(out) == 2
    a, b = _records(out)
    assert TS.match(a["ts"]) and a["level"] == "INFO" and a["logger"] == log.name
    assert a["msg"] == "first line\nsecond line"
    assert "step_id" not in a and "exc" not in a  # unknown context is left out, not null
    assert (b["level"], b["msg"], b["topic"], b["offset"]) == ("WARNING", "n=3", "otlp_spans", 7)


def test_exception_is_one_field_of_one_line(capture) -> None:
    log, lines = capture
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("sink failed")
    (line,) = lines()
    rec = json.loads(line)
    assert rec["level"] == "ERROR" and rec["msg"] == "sink failed"
    assert rec["exc"].startswith("Traceback") and "ZeroDivisionError" in rec["exc"]


def test_unicode_and_lone_surrogates(capture) -> None:
    log, lines = capture
    log.info("héllo ☃ 日本語 🚀")
    log.info("bad bytes: %s", b"\xff\xfe".decode("utf-8", "surrogateescape"))
    a, b = _records(lines())
    assert a["msg"] == "héllo ☃ 日本語 🚀"
    assert b["msg"].startswith("bad bytes: ")
    for line in lines():
        line.encode("utf-8")  # writable to any UTF-8 stream


def test_odd_extras_and_arguments_never_raise(capture) -> None:
    log, lines = capture

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    circular: dict[str, Any] = {}
    circular["self"] = circular
    log.info(
        "odd",
        extra={
            "obj": object(),
            "a_set": {1},
            "nan": math.nan,
            "circular": circular,
            "tuple_keys": {(1, 2): "x"},
            "bad": BadRepr(),
            "ok": {"n": [1, 2]},
        },
    )
    (rec,) = _records(lines())
    assert rec["msg"] == "odd" and rec["ok"] == {"n": [1, 2]}
    for key in ("obj", "a_set", "nan", "circular", "tuple_keys", "bad"):
        assert isinstance(rec[key], str), key
    # wrong % arguments (other handlers would complain; this one keeps the line)
    fmt = JsonFormatter()
    for msg, args in (("%d items", ("not a number",)), ("%s %s", ("only one",))):
        r = logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)
        assert args[0] in json.loads(fmt.format(r))["msg"]
    r = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    r.worker = math.nan  # even a context field JSON cannot encode
    assert json.loads(fmt.format(r)) | {"ts": 0} == {
        "ts": 0,
        "level": "INFO",
        "logger": "x",
        "msg": "m",
        "worker": "nan",
    }


def test_step_context_and_explicit_step_id(capture) -> None:
    log, lines = capture
    with in_step("otelwax_traces.decode", worker=3):
        log.warning("bad record")
        log.warning("named", extra={"step_id": "otelwax_logs.dead_letters"})
    log.info("outside")
    inside, named, outside = _records(lines())
    assert (inside["flow"], inside["step_id"], inside["worker"]) == (
        "otelwax_traces",
        "otelwax_traces.decode",
        3,
    )
    assert (named["flow"], named["step_id"]) == ("otelwax_logs", "otelwax_logs.dead_letters")
    assert "step_id" not in outside


def test_carry_step_to_a_worker_thread(capture) -> None:
    """Work handed to another thread (as the embedded chdb client does) logs as the step."""
    from concurrent.futures import ThreadPoolExecutor

    log, lines = capture
    with ThreadPoolExecutor(1) as pool:
        with in_step("f.clickhouse", worker=2):
            pool.submit(carry_step(log.info), "inside").result()
        pool.submit(carry_step(log.info), "after").result()
    inside, after = _records(lines())
    assert (inside["step_id"], inside["worker"]) == ("f.clickhouse", 2)
    assert "step_id" not in after and "worker" not in after


def test_text_format_names_the_step() -> None:
    rec = logging.LogRecord("connectors.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None)
    with in_step("f.sink", worker=1):
        StepContextFilter().filter(rec)
    line = TextFormatter().format(rec)
    assert line.endswith("WARNING connectors.x [f.sink w1]: hi there"), line


def test_every_step_of_a_running_dataflow_logs_with_its_step_id(capture) -> None:
    """A real bytewax run: map, stateful and sink records carry the step that emitted them."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    log, lines = capture

    class Part(StatelessSinkPartition):
        def write_batch(self, items: list[Any]) -> None:
            log.info("wrote %d", len(items))

    class Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    def check(x: int) -> int:
        if x < 0:
            log.error("bad input %d", x)
        return x

    def total(state: int | None, x: int) -> tuple[int, int]:
        log.debug("add %d", x)
        return (state or 0) + x, x

    flow = Dataflow("logflow")
    nums = op.map("check", op.input("inp", flow, TestingSource([1, -2, 3])), check)
    summed = op.stateful_map("total", op.key_on("key", nums, lambda _: "k"), total)
    op.output("out", summed, Sink())
    assert instrument(flow) is flow
    instrument(flow)  # a second call does not wrap twice
    run_main(flow)
    recs = _records(lines())
    steps = {r["msg"].split()[0]: r["step_id"] for r in recs}
    assert steps == {"bad": "logflow.check", "add": "logflow.total", "wrote": "logflow.out"}
    bad = next(r for r in recs if r["msg"].startswith("bad"))
    assert (bad["level"], bad["flow"], bad["worker"]) == ("ERROR", "logflow", 0)


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_configure_logging_like_basicconfig() -> None:
    res = _run(
        "import logging; from otelwax.logs import configure_logging as c\n"
        "assert c('debug', 'json') and c('INFO', 'json')  # replaces its own handler\n"
        "logging.getLogger('a.b').info('hello')\n"
        "logging.getLogger('a.b').debug('hidden')\n"
        "logging.getLogger().addHandler(logging.NullHandler())\n"
        "assert not c('DEBUG', 'text')  # someone else configured logging\n"
    )
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.splitlines()
    assert json.loads(line)["msg"] == "hello" and json.loads(line)["logger"] == "a.b"
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "json")


def test_a_refused_clickhouse_connection_is_not_a_traceback_per_retry() -> None:
    """clickhouse_driver logs every failed connect as a WARNING with a traceback; the sink's
    own "clickhouse not reachable ... retrying" line already says it, so at INFO the driver's
    is hidden and at DEBUG it is there."""
    from tests.conftest import free_port

    code = (
        "import sys, clickhouse_driver\n"
        "from otelwax.logs import configure_logging as c\n"
        "c(sys.argv[1], 'text')\n"
        f"cl = clickhouse_driver.Client('127.0.0.1', port={free_port()}, connect_timeout=1)\n"
        "try:\n"
        "    cl.execute('SELECT 1')\n"
        "except Exception:\n"
        "    pass\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code, "INFO"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run(
        [sys.executable, "-c", code, "DEBUG"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "Failed to connect" in loud.stderr


_FAKE_COMMAND = """
import logging, os, sys, types
from otelwax import cli
m = types.ModuleType("fakecmd")
m.add_arguments = lambda p: None
m.run = lambda args: logging.getLogger("fake").warning(
    "from the command", extra={"child_env": os.environ.get("OTELWAX_LOG_FORMAT")}
) or 0
sys.modules["fakecmd"] = m
cli.SUBCOMMANDS["fake"] = ("fakecmd", "logs one line")
sys.exit(cli.main(ARGS + ["fake"]))
"""


def test_cli_log_format_option_and_env() -> None:
    """``otelwax --log-format json`` / ``$OTELWAX_LOG_FORMAT``; an unknown format is an error."""
    for env, args in (({"OTELWAX_LOG_FORMAT": "json"}, []), ({}, ["--log-format", "json"])):
        res = _run(_FAKE_COMMAND.replace("ARGS", repr(args)), env)
        assert res.returncode == 0, res.stderr
        (line,) = res.stderr.splitlines()
        rec = json.loads(line)
        assert (rec["logger"], rec["msg"]) == ("fake", "from the command")
        assert rec["child_env"] == "json"  # what `otelwax flow` passes to bytewax.run
    res = _run(_FAKE_COMMAND.replace("ARGS", "[]"), {"OTELWAX_LOG_FORMAT": "TEXT"})
    assert res.returncode == 0 and res.stderr.rstrip().endswith("WARNING fake: from the command")
    res = _run(_FAKE_COMMAND.replace("ARGS", "[]"), {"OTELWAX_LOG_FORMAT": "xml"})
    assert res.returncode == 2 and "log format 'xml'" in res.stderr


def test_shim_writes_json_lines(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    """``otelwax ingest`` with ``$OTELWAX_LOG_FORMAT=json``: every line it logs is JSON."""
    from tests.connectors.ingest.conftest import start_shim

    topics = {s: make_topic(f"logs_{s}", partitions=1) for s in ("traces", "metrics")}
    topics["logs"] = f"missing_{uuid.uuid4().hex[:8]}"  # logged as an error at start
    shim = start_shim(kafka_bootstrap, topics, tmp_path, env={"OTELWAX_LOG_FORMAT": "json"})
    assert shim.stop() == 0, shim.log()
    lines = [line for line in shim.log().splitlines() if line.strip()]
    recs = _records(lines)  # each line parses
    assert any(
        r["logger"] == "connectors.ingest.server" and r["msg"] == "ingest: ready" for r in recs
    )
    err = next(r for r in recs if r["level"] == "ERROR")
    assert topics["logs"] in err["msg"] and TS.match(err["ts"])
