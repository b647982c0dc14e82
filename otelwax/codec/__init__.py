"""OTLP protobuf ⇄ Arrow codecs.

Contract shared by the pure-Python reference (``otelwax.codec.pydecode``) and the native
core (``otelwax._native``, Rust/PyO3), which must give equal batches:

    decode_traces(payloads: Sequence[bytes]) -> DecodeResult
    decode_logs(payloads: Sequence[bytes]) -> DecodeResult

``payloads`` are serialized ``Export{Trace,Logs}ServiceRequest`` messages (Kafka record values).
``DecodeResult.batch`` holds the rows of every payload that decoded, in input order, with the
schema from ``otelwax.schemas``; ``DecodeResult.errors`` lists ``(index, reason)`` for each
payload that did not decode (its rows are not in the batch), so the caller can dead-letter it.
``DecodeResult.rows_per_payload`` gives the row count contributed by each input payload (0 for
failed ones), which lets a caller map rows back to Kafka offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(slots=True)
class DecodeResult:
    batch: pa.RecordBatch
    errors: list[tuple[int, str]] = field(default_factory=list)
    rows_per_payload: list[int] = field(default_factory=list)
