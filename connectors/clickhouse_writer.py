"""The ClickHouse sink's background writer: batches stored in order on one thread, with an
idle hook for what a batch leaves to be written after it (its ranges' stored marks)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from otelwax.logs import carry_step

log = logging.getLogger(__name__)

__all__ = ["OrderedWriter"]


class OrderedWriter:
    """Runs ``store`` on batches in submission order on one background thread.

    ``submit`` returns once the writer has taken the batch (the worker decodes the next one
    while it is stored; a third, queued, would only add a decoded range to the RSS), so it blocks,
    holding the worker and its Kafka partitions back, while the store is behind. The first error
    stops storing: it is logged, handed to ``on_error`` (the sources stop: a paused source
    would otherwise wait forever), and raised by the next ``submit`` or by ``close``. Log lines
    keep the step id of the submitting step.

    ``idle`` runs on the writer thread when no batch followed the last one within ``idle_s``,
    and before ``close`` returns: what a stored batch left to write (the sink's deferred
    stored marks), written with the next batch when one comes soon.
    """

    def __init__(
        self,
        store: Callable[[list[Any]], None],
        name: str,
        on_error: Callable[[BaseException], None],
        idle: Callable[[], None] | None = None,
        idle_s: float = 0.0,
    ) -> None:
        self._store = store
        self._on_error = on_error
        self._idle_fn = self._idle = idle
        self._idle_s = idle_s
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        idle_due = False  # a batch was stored since ``idle`` last ran
        while True:
            try:
                job = self._queue.get(timeout=self._idle_s if idle_due else None)
                self._queue.task_done()  # taken: the submitter may go on
            except queue.Empty:
                job, idle_due = self._idle, False
                self._do(job)
                continue
            if job is None:  # close: the last batch's leftovers first
                if idle_due:
                    self._do(self._idle)
                return
            self._do(job)
            idle_due = self._idle is not None
            # Stored and confirmed (the source reads more): not held until the next batch.
            job = None

    def _do(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            return
        try:
            job()
        except BaseException as exc:
            self._error = exc
            log.error("%s: %s; no further batches are stored", self._thread.name, exc)
            self._on_error(exc)

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self._thread.name}: {self._error}") from self._error

    def submit(self, items: list[Any]) -> None:
        self._check()
        if self._idle_fn is not None:
            self._idle = carry_step(self._idle_fn)  # its log lines name the submitting step
        self._queue.put(carry_step(lambda: self._store(items)))
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._check()
