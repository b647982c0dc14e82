"""Typed wrapper over the native OTLP ⇄ Arrow core ``otelwax._native`` (Rust/PyO3).

The extension is optional: ``AVAILABLE`` tells whether it was built. When it is, these functions
follow the contract in ``otelwax.codec`` exactly like ``otelwax.codec.pydecode``::

    decode_traces(payloads) -> DecodeResult     # TRACES_SCHEMA batch
    decode_logs(payloads) -> DecodeResult       # LOGS_SCHEMA batch
    decode_metrics(payloads) -> MetricsDecodeResult   # one batch per otel_metrics_* table
    encode_traces(batch) -> bytes               # serialized ExportTraceServiceRequest

The raw extension functions return ``(pyarrow.RecordBatch, errors, rows_per_payload)`` tuples
(the batch arrives through the Arrow C data interface, no copy) and release the GIL while they
decode or encode.

``encode_traces`` groups rows by (ResourceAttributes, ServiceName) and (ScopeName, ScopeVersion)
in order of first appearance. Attribute values were rendered to strings on decode, so they go
back as string AnyValues: decoding the result gives the same rows (grouped), but typed OTLP
values (ints, doubles, arrays, ...) come back as strings. Span flags, dropped counts and schema
URLs are not in the table and are not written. A SpanKind/StatusCode that is not one of the enum
names (decoded from an out-of-range number as "") is written as a number outside the enum, so it
decodes back to "".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType

import pyarrow as pa

from otelwax.codec import DecodeResult
from otelwax.codec.pymetrics import MetricsDecodeResult
from otelwax.schemas import TRACES_SCHEMA

__all__ = [
    "AVAILABLE",
    "IMPORT_ERROR",
    "decode_logs",
    "decode_metrics",
    "decode_traces",
    "encode_traces",
    "native_strings",
    "native_strings_into",
]

log = logging.getLogger(__name__)

_native: ModuleType | None
try:
    from otelwax import _native  # type: ignore[attr-defined, no-redef]

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built (no Rust toolchain at install time)
    _native = None
    IMPORT_ERROR = str(exc)

AVAILABLE: bool = _native is not None
NATIVE_STRINGS: bool = hasattr(_native, "native_strings")
"""Whether the built extension has ``native_strings`` (an older build may not)."""
NATIVE_STRINGS_INTO: bool = hasattr(_native, "native_strings_into")


def _mod() -> ModuleType:
    if _native is None:
        raise ImportError(f"otelwax._native is not built: {IMPORT_ERROR}")
    return _native


def _payload_list(payloads: Sequence[bytes]) -> list[bytes]:
    return payloads if isinstance(payloads, list) else list(payloads)


def decode_traces(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportTraceServiceRequest`` payloads into one ``TRACES_SCHEMA`` batch."""
    batch, errors, rows = _mod().decode_traces(_payload_list(payloads))
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows)


def decode_logs(payloads: Sequence[bytes]) -> DecodeResult:
    """Decode serialized ``ExportLogsServiceRequest`` payloads into one ``LOGS_SCHEMA`` batch."""
    batch, errors, rows = _mod().decode_logs(_payload_list(payloads))
    return DecodeResult(batch=batch, errors=errors, rows_per_payload=rows)


def decode_metrics(payloads: Sequence[bytes]) -> MetricsDecodeResult:
    """Decode ``ExportMetricsServiceRequest`` payloads into one batch per metrics table.

    Same result as ``otelwax.codec.pymetrics.decode_metrics``; ``rows_per_payload`` counts
    data points over all tables.
    """
    tables, errors, rows = _mod().decode_metrics(_payload_list(payloads))
    return MetricsDecodeResult(tables=tables, errors=errors, rows_per_payload=rows)


def encode_traces(data: pa.RecordBatch | pa.Table) -> bytes:
    """Encode ``TRACES_SCHEMA`` rows as one serialized ``ExportTraceServiceRequest``.

    Columns are selected by name and cast to ``TRACES_SCHEMA`` when their types differ.
    Raises ``ValueError`` on ids that are not hex of the right length.
    """
    mod = _mod()
    batches = data.to_batches() if isinstance(data, pa.Table) else [data]
    out: list[bytes] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        batch = batch.select(TRACES_SCHEMA.names)
        if not batch.schema.equals(TRACES_SCHEMA):
            batch = batch.cast(TRACES_SCHEMA)
        schema_capsule, array_capsule = batch.__arrow_c_array__()
        out.append(mod.encode_traces(schema_capsule, array_capsule))
    # Serialized requests concatenate into one request (repeated resource_spans append).
    return b"".join(out)


def native_strings(arr: pa.Array) -> bytes:
    """A string or binary array as the body of a ClickHouse ``Native`` ``String`` column: per
    row the byte length as a LEB128 varint, then the bytes; nulls as empty strings."""
    schema_capsule, array_capsule = arr.__arrow_c_array__()
    return _mod().native_strings(schema_capsule, array_capsule)


def native_strings_into(arr: pa.Array, out: bytearray, at: int) -> int:
    """:func:`native_strings`' body written into ``out[at:at + size]`` if it fits (``out`` is
    left alone if not); returns ``size`` either way."""
    schema_capsule, array_capsule = arr.__arrow_c_array__()
    return _mod().native_strings_into(schema_capsule, array_capsule, out, at)
