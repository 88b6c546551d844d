"""Protobuf's wire format, for the few messages the sidecar encodes by hand where the generated
classes cost too much per call (deliveries to many streams, spans exported over OTLP).

A message is the concatenation of its fields, each a tag (field number and wire type) and a
value; fields may come in any order and parsers merge repeated ones.
"""

from __future__ import annotations

import struct

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """A non-negative integer as a varint (negative int64 values: add 2**64 first)."""
    if 0 <= value < 0x80:
        # Tags and most lengths: every message to a stream has several.
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, body: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a message) on the wire."""
    return varint(field << 3 | LENGTH_DELIMITED) + varint(len(body)) + body


def fixed64(field: int, value: int) -> bytes:
    return tag(field, FIXED64) + _FIXED64.pack(value)


def fixed32(field: int, value: int) -> bytes:
    return tag(field, FIXED32) + _FIXED32.pack(value)


def double(field: int, value: float) -> bytes:
    return tag(field, FIXED64) + _DOUBLE.pack(value)


def int64(field: int, value: int) -> bytes:
    """An int64 or uint32 field (two's complement for negative int64 values)."""
    return tag(field, VARINT) + varint(value + (1 << 64) if value < 0 else value)
