"""Progress of a long command (replay, ``clickhouse migrate --apply``, ``clickhouse init``).

On a terminal: one bar redrawn in place on stderr. Otherwise (CI logs, ``| tee``, a pod's
log): a plain line every ``every_s`` seconds, and one at the end, so logs stay readable.
No dependency: a bar is one line of text.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_BAR = 24
_REDRAW_S = 0.1


class Progress:
    """``update(done, total)`` as work goes on, ``close()`` at the end (also as a context
    manager). ``unit`` names what is counted (records, statements)."""

    def __init__(
        self,
        label: str,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        every_s: float = 5.0,
        tty: bool | None = None,
        quiet: bool = False,
    ) -> None:
        """``quiet``: show nothing (a command with too little work for a bar)."""
        self.quiet = quiet
        self.label = label
        self.unit = unit
        self._out = stream or sys.stderr
        self._tty = self._out.isatty() if tty is None else tty
        self._every = every_s if not self._tty else _REDRAW_S
        self._t0 = time.monotonic()
        self._shown_at = -1e9
        self._done = 0
        self._total = 0
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        now = time.monotonic()
        if not self.quiet and now - self._shown_at >= self._every:
            self._shown_at = now
            self._show()

    def _text(self) -> str:
        done, total = self._done, self._total
        unit = f" {self.unit}" if self.unit else ""
        pct = f"{100 * done / total:3.0f}% " if total else ""
        elapsed = time.monotonic() - self._t0
        rate = f", {done / elapsed:,.0f}/s" if elapsed >= 1 and done else ""
        return f"{self.label}: {pct}{done:,}/{total:,}{unit}{rate}"

    def _show(self) -> None:
        if self._tty:
            filled = int(_BAR * self._done / self._total) if self._total else 0
            bar = "#" * filled + "-" * (_BAR - filled)
            self._out.write(f"\r\033[K[{bar}] {self._text()}")
            self._drawn = True
        else:
            self._out.write(self._text() + "\n")
        self._out.flush()

    def close(self) -> None:
        """Show the final state (the bar ends its line)."""
        if self.quiet:
            return
        if self._tty:
            self._show()
            if self._drawn:
                self._out.write("\n")
                self._out.flush()
        elif self._total:
            self._show()
