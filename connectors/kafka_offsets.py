"""Committing each partition's confirmed offset to the flow's consumer group, for visibility.

The flows resume from bytewax's snapshots and the sink's intents, never from a committed
offset (``connectors.kafka_source`` ``assign()``-s every partition to an explicit offset, so
librdkafka never reads the committed one back). The commits exist so that Kafka's own tools
(``kafka-consumer-groups.sh --describe``, Burrow, Kafka UIs) show each flow's lag: the committed
offset is the next one the flow still needs, i.e. the last confirmed offset + 1:

- flows whose sink confirms stored ranges (``RangeAcks``): everything before the oldest range the
  sink has not confirmed, committed as soon as the sink confirms;
- other flows (windows, metrics): the offset the partition's snapshot records, committed when
  bytewax takes the snapshot (the epoch's state covers everything before it).

Commits are asynchronous (``commit(asynchronous=True)`` only queues a request; the reply is
counted by :func:`commit_callback` on the next ``consume``), so a slow or failing group
coordinator never holds up a worker; a failed commit is counted and the next one supersedes it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = ["OffsetCommitter", "commit_callback"]


def commit_callback(metrics: ComponentMetrics) -> Any:
    """librdkafka's ``on_commit``: counts each partition's commit as sent or failed."""

    def on_commit(err: Any, partitions: list[Any]) -> None:
        bad = [tp for tp in partitions or () if tp.error is not None]
        if err is not None or bad:
            metrics.failed(max(1, len(bad)))
            why = err if err is not None else bad[0].error
            log.warning("kafka: committing the confirmed offset (lag visibility) failed: %s", why)
        else:
            metrics.sent(len(partitions or ()))

    return on_commit


class OffsetCommitter:
    """Commits one partition's confirmed offset through its consumer; callable from any thread
    (the sink confirms on its writer thread), a no-op once closed or disabled."""

    def __init__(
        self,
        consumer: Any,
        topic: str,
        partition: int,
        metrics: ComponentMetrics,
        enabled: bool = True,
    ) -> None:
        self._consumer = consumer if enabled else None
        self._metrics = metrics
        self._topic = topic
        self._partition = partition
        self._lock = threading.Lock()
        self._last = -1

    def commit(self, offset: int) -> None:
        """Queue a commit of ``offset`` (the next offset the flow needs) if it advanced."""
        from confluent_kafka import TopicPartition

        with self._lock:
            if self._consumer is None or offset <= self._last:
                return
            self._last = offset
            try:
                tp = TopicPartition(self._topic, self._partition, offset)
                self._consumer.commit(offsets=[tp], asynchronous=True)
            except Exception as exc:  # e.g. the local queue is full: the next one catches up
                self._metrics.failed()
                log.warning("kafka %s[%d]: no commit: %s", self._topic, self._partition, exc)

    def use(self, consumer: Any) -> None:
        """Commit through ``consumer`` from now on (the partition's consumer was replaced)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer = consumer

    def close(self) -> None:
        """Stop committing (before the consumer closes)."""
        with self._lock:
            self._consumer = None
