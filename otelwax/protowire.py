"""Protobuf wire-format writing helpers shared by the hand-written encoders
(ingest split, remote-write, Arrow → OTLP), which skip the message API for speed."""

from __future__ import annotations

_SMALL = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """Base-128 varint; negative ints are written as 64-bit two's complement (int64 fields)."""
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: the encoded tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + payload
