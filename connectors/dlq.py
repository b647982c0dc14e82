"""Dead-letter producer: records that could not be decoded go to a Kafka topic, untouched.

Each dead letter keeps the original value and says why and where it came from in headers:

    otelwax-error             the decoder's reason (UTF-8)
    otelwax-source-topic      topic of the original record
    otelwax-source-partition  partition (decimal)
    otelwax-source-offset     offset (decimal)
    otelwax-step              the flow step that rejected it

The key is ``topic:partition:offset`` so a reader can drop the duplicates a replay after a crash
may produce (dead letters are at-least-once). ``send_and_wait`` returns only when Kafka
acknowledged every record, retrying while Kafka is unavailable: a range is not done (and its rows
not inserted) before its dead letters are safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from connectors.kafka import TOPIC_DLQ, KafkaConfig
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

__all__ = ["DeadLetter", "DeadLetterConfig", "DeadLetterProducer"]

H_ERROR = "otelwax-error"
H_TOPIC = "otelwax-source-topic"
H_PARTITION = "otelwax-source-partition"
H_OFFSET = "otelwax-source-offset"
H_STEP = "otelwax-step"


class DeadLetterConfig(StrictModel):
    """Where undecodable records go."""

    enabled: bool = Field(True, description="False drops bad records (counted as dropped)")
    topic: str = Field(TOPIC_DLQ, min_length=1)
    retry_backoff_s: float = Field(1.0, gt=0, le=60, description="wait between delivery tries")
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Raw librdkafka producer properties merged last."
    )


@dataclass(slots=True)
class DeadLetter:
    """One rejected record."""

    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str
    step: str = "decode"


class DeadLetterProducer:
    """Writes :class:`DeadLetter` records; created in a flow step's build, not at import."""

    def __init__(self, kafka: KafkaConfig, cfg: DeadLetterConfig) -> None:
        from confluent_kafka import Producer

        self._cfg = cfg
        conf = kafka.client_conf()
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 30_000,
            }
        )
        conf.update(cfg.extra)
        self._producer = Producer(conf)
        self.metrics = ComponentMetrics("dlq", "records")

    def send_and_wait(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and block until all are acknowledged (retrying failures)."""
        todo = list(letters)
        if not todo:
            return
        self.metrics.received(len(todo))
        while todo:
            failed: list[DeadLetter] = []

            def _cb(
                err: object, _msg: object, letter: DeadLetter, failed: list[DeadLetter] = failed
            ) -> None:
                if err is not None:
                    failed.append(letter)

            for letter in todo:
                headers = [
                    (H_ERROR, letter.reason.encode("utf-8", "replace")),
                    (H_TOPIC, letter.topic.encode()),
                    (H_PARTITION, str(letter.partition).encode()),
                    (H_OFFSET, str(letter.offset).encode()),
                    (H_STEP, letter.step.encode()),
                ]
                key = f"{letter.topic}:{letter.partition}:{letter.offset}".encode()
                while True:
                    try:
                        self._producer.produce(
                            self._cfg.topic,
                            value=letter.value,
                            key=key,
                            headers=headers,
                            on_delivery=lambda e, m, lt=letter: _cb(e, m, lt),
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.1)
            remaining = self._producer.flush(60)
            if remaining:
                log.warning("dlq: %d record(s) still queued after 60 s, waiting", remaining)
                while self._producer.flush(60):
                    pass
            if failed:
                self.metrics.failed(len(failed))
                log.warning(
                    "dlq: %d record(s) not delivered to %s, retrying in %.1f s",
                    len(failed),
                    self._cfg.topic,
                    self._cfg.retry_backoff_s,
                )
                time.sleep(self._cfg.retry_backoff_s)
            self.metrics.sent(len(todo) - len(failed))
            todo = failed

    def close(self) -> None:
        """Flush what is queued (safe to call twice)."""
        self._producer.flush(10)
