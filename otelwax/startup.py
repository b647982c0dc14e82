"""Ending a process that cannot start, with one line that names the problem and the fix.

A flow finds most start-up problems (Kafka unreachable, topic missing, metrics port in use)
inside bytewax, where an exception surfaces as a chain of bytewax errors, a Rust panic and a
traceback. Nothing is in flight then, so the process logs one ERROR line and exits; the
traceback is logged at DEBUG (``--log-level DEBUG`` / ``$OTELWAX_LOG_LEVEL``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["EXIT_CANNOT_START", "exit_at_start"]

EXIT_CANNOT_START = 2
log = logging.getLogger("otelwax")


def exit_at_start(message: str, exc: BaseException | None = None) -> NoReturn:
    """Log ``message`` as one ERROR line (``exc``'s traceback at DEBUG) and end the process
    with exit code 2, from any thread."""
    if exc is not None:
        log.debug("cannot start: %s", message, exc_info=exc)
    if logging.getLogger().handlers:
        log.error("cannot start: %s", message)
        for h in logging.getLogger().handlers:
            h.flush()
    else:
        print(f"cannot start: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CANNOT_START)
