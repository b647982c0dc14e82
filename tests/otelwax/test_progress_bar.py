"""Progress of long commands: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from otelwax.cli.progress import Progress


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    with Progress("replay traces", "records", stream=out, tty=True) as bar:
        bar.update(5, 10)
    text = out.getvalue()
    assert text.startswith("\r\033[K[############------------] replay traces:  50% 5/10 records")
    assert text.endswith("\n") and text.count("\n") == 1  # the final redraw ends the line


def test_a_log_gets_a_plain_line_now_and_then_and_one_at_the_end() -> None:
    out = io.StringIO()
    with Progress("clickhouse init", "flows", stream=out, every_s=3600, tty=False) as bar:
        for i in range(1, 6):
            bar.update(i, 5)
    assert out.getvalue().splitlines() == [
        "clickhouse init:  20% 1/5 flows",
        "clickhouse init: 100% 5/5 flows",
    ]
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()


def test_quiet_shows_nothing() -> None:
    out = io.StringIO()
    with Progress("x", stream=out, tty=True, quiet=True) as bar:
        bar.update(1, 2)
    assert out.getvalue() == ""
