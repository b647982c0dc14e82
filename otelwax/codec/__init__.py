"""OTLP protobuf ⇄ Arrow codecs.

Contract shared by the pure-Python reference (``otelwax.codec.pydecode``) and the native
core (``otelwax._native``, Rust/PyO3), which must give equal batches:

    decode_traces(payloads: Sequence[bytes]) -> DecodeResult
    decode_logs(payloads: Sequence[bytes]) -> DecodeResult
    decode_metrics(payloads: Sequence[bytes]) -> pymetrics.MetricsDecodeResult

``payloads`` are serialized ``Export{Trace,Logs}ServiceRequest`` messages (Kafka record values).
``DecodeResult.batch`` holds the rows of every payload that decoded, in input order, with the
schema from ``otelwax.schemas``; ``DecodeResult.errors`` lists ``(index, reason)`` for each
payload that did not decode (its rows are not in the batch), so the caller can dead-letter it.
``DecodeResult.rows_per_payload`` gives the row count contributed by each input payload (0 for
failed ones), which lets a caller map rows back to Kafka offsets. ``decode_metrics`` gives one
batch per ``otel_metrics_*`` table (``otelwax.codec.pymetrics`` is its reference; ServiceName
follows the same rule as below).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from otelwax.codec.pymetrics import MetricsDecodeResult

__all__ = ["DecodeResult", "codec_name", "decode_logs", "decode_metrics", "decode_traces"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DecodeResult:
    batch: pa.RecordBatch
    errors: list[tuple[int, str]] = field(default_factory=list)
    rows_per_payload: list[int] = field(default_factory=list)


# --- Rendering rules (both implementations must follow them exactly) -----------------------
#
# These mirror what the Collector's clickhouseexporter writes (pdata ``Value.AsString``,
# ``traceutil.SpanKindStr``/``StatusCodeStr``, hex ids), so rows are interchangeable.
#
# AnyValue → string (attribute map values, log Body, ServiceName):
#   unset/empty AnyValue → ""             string → as is             bool → "true" / "false"
#   int → decimal ("-42")                 bytes → base64 (standard alphabet, padded)
#   double → shortest round-trip digits in positional notation, never an exponent, no
#            trailing ".0": 1.0→"1", 0.1→"0.1", 1e16→"10000000000000000", 1e-7→"0.0000001",
#            NaN→"NaN", +inf→"+Inf", -inf→"-Inf"
#   array / kvlist → compact JSON of the raw value (Go encoding/json style):
#            no spaces; kvlist keys sorted; strings escaped with \" \\ \n \r \t, other control
#            chars as \u00XX, and "<" ">" "&" U+2028 U+2029 as \u003c \u003e \u0026 \u2028
#            \u2029; non-ASCII otherwise kept as UTF-8; ints as numbers; bools; empty → null;
#            bytes → base64 string; doubles: finite → if 1e-6 <= |x| < 1e21 or x == 0 the
#            positional form above, else exponent form like Go ("1e-07"→"1e-7", "1e+21");
#            NaN/±Inf → null.
# Attribute maps keep every key/value pair in input order (no de-duplication).
# Ids: lowercase hex; empty bytes or all-zero → "". A trace id that is not 0 or 16 bytes, or a
#   span id that is not 0 or 8 bytes, makes the whole payload an error.
# SpanKind: 0..5 → SPAN_KIND_UNSPECIFIED, _INTERNAL, _SERVER, _CLIENT, _PRODUCER, _CONSUMER;
#   other numbers → "". StatusCode: 0..2 → STATUS_CODE_UNSET, _OK, _ERROR; other → "".
# Traces: Timestamp = start_time_unix_nano; Duration = end - start, 0 when end < start.
# Logs: Timestamp = time_unix_nano, or observed_time_unix_nano when that is 0;
#   TraceFlags = flags & 0xFF; SeverityNumber clamped to 0..255; EventName = LogRecord.event_name;
#   ResourceSchemaUrl / ScopeSchemaUrl from ResourceLogs / ScopeLogs.schema_url.
# Unicode: strings that are not valid UTF-8 make the payload an error.
# Details both implementations also follow:
#   - AnyValue.string_value_strindex (profiles dictionary index) renders like an unset value.
#   - kvlist JSON: when a key repeats, the last value wins (Go map semantics).
#   - ServiceName: the first "service.name" resource attribute, rendered like any value.
#   - Timestamps (fixed64) >= 2^63 are reinterpreted as int64 like Go's int64(ts); Duration is
#     computed on the unsigned values.
#   - An empty/unset scope gives ScopeName = ScopeVersion = "" (and empty ScopeAttributes).
#   - Bytes that parse as a message with only unknown fields decode to 0 rows, no error.


# --- Dispatch: native core when importable, pure Python otherwise ---------------------------

_impl: tuple[str, Callable[..., object], Callable[..., object]] | None = None


def _load() -> tuple[str, Callable[..., object], Callable[..., object]]:
    """Pick the implementation once: $OTELWAX_CODEC = auto (default) | native | python."""
    global _impl
    if _impl is not None:
        return _impl
    want = os.environ.get("OTELWAX_CODEC", "auto").lower()
    if want not in ("auto", "native", "python"):
        raise ValueError(f"OTELWAX_CODEC={want!r}: want auto, native or python")
    if want != "python":
        try:
            native = importlib.import_module("otelwax._native")
            _impl = ("native", native.decode_traces, native.decode_logs)
        except ImportError as exc:
            if want == "native":
                raise
            log.info("codec: otelwax._native not importable (%s); using pure Python", exc)
    if _impl is None:
        from otelwax.codec import pydecode

        _impl = ("python", pydecode.decode_traces, pydecode.decode_logs)
    log.info("codec: using the %s OTLP decoder", _impl[0])
    return _impl


def _as_result(out: object) -> DecodeResult:
    if isinstance(out, DecodeResult):
        return out
    batch, errors, rows = out  # type: ignore[misc]  # native may return a plain tuple
    return DecodeResult(batch=batch, errors=list(errors), rows_per_payload=list(rows))


def codec_name() -> str:
    """Which decoder runs: "native" or "python"."""
    return _load()[0]


def decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode ``ExportTraceServiceRequest`` payloads into one ``TRACES_SCHEMA`` batch."""
    return _as_result(_load()[1](payloads))


def decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode ``ExportLogsServiceRequest`` payloads into one ``LOGS_SCHEMA`` batch."""
    return _as_result(_load()[2](payloads))


def decode_metrics(payloads: Sequence[bytes]) -> MetricsDecodeResult:
    """Decode ``ExportMetricsServiceRequest`` payloads into one batch per metrics table.

    Returns ``otelwax.codec.pymetrics.MetricsDecodeResult``; the native core when the same
    choice as for traces/logs picked it (``$OTELWAX_CODEC``), else ``pymetrics``.
    """
    if _load()[0] == "native":
        from otelwax.codec import native

        return native.decode_metrics(payloads)
    from otelwax.codec import pymetrics

    return pymetrics.decode_metrics(payloads)
