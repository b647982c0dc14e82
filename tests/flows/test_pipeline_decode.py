"""flows.pipeline's decode and dead-letter steps on one batch of ranges, as bytewax runs them
(each step on the whole batch): a range's payloads are freed once it is decoded, not when the
next step has run on every range of the batch (they would sit beside the decoded rows of all
of them), and what reaches the sink still counts every record, bad ones included."""

from __future__ import annotations

from collections.abc import Sequence

from connectors.kafka_ranges import KafkaRange
from flows.pipeline import TRACES, DeadLetterOutbox, _DeadLetters, _Decode
from tests.otlpgen import trace_payloads


class _Letters(DeadLetterOutbox):
    """The DLQ outbox, keeping what it is sent instead of producing it to Kafka."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, letters: Sequence, drop_reason: str) -> None:
        self.sent.extend(letters)


def test_payloads_are_freed_once_decoded_and_records_still_counted() -> None:
    payloads = [[*trace_payloads(4, seed=s), b"\xff not otlp"] for s in (1, 2, 3)]
    ranges = [KafkaRange("spans", p, 0, 4, v, list(range(5))) for p, v in enumerate(payloads)]
    decode, outbox = _Decode(TRACES), _Letters()
    decoded = [decode(r) for r in ranges]  # bytewax: the decode step on the whole batch first
    assert all(r.values == [] for r in ranges), "payloads kept after decode"
    stored = [_DeadLetters(outbox)(d) for d in decoded]  # type: ignore[arg-type]
    assert [s.records for s in stored] == [5, 5, 5]
    assert [s.batch.num_rows > 0 for s in stored] == [True] * 3
    assert [(x.partition, x.offset, x.value) for x in outbox.sent] == [
        (p, 4, b"\xff not otlp") for p in range(3)
    ]
