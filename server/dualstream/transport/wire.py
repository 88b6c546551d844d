"""Finding the field at fault in a request protobuf could not parse.

protobuf rejects a whole message when one string field is not UTF-8 and does not say which;
walking the wire format against the descriptor names it, so the caller gets
``INVALID_ARGUMENT: event.source_id: is not valid UTF-8`` instead of a bare parse error.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_MAX_DEPTH = 16


def _varint(raw: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(raw) or shift > 63:
            raise ValueError("truncated varint")
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def find_invalid_field(descriptor: Any, raw: bytes, prefix: str = "", depth: int = 0) -> str:
    """The path of the first field whose bytes are malformed, or ``""`` if none is found."""
    position = 0
    try:
        while position < len(raw):
            key, position = _varint(raw, position)
            number, wire_type = key >> 3, key & 7
            field = descriptor.fields_by_number.get(number)
            name = f"{prefix}{field.name}" if field is not None else f"{prefix}#{number}"
            if wire_type == _VARINT:
                _, position = _varint(raw, position)
            elif wire_type == _FIXED64:
                position += 8
            elif wire_type == _FIXED32:
                position += 4
            elif wire_type == _LENGTH:
                length, position = _varint(raw, position)
                chunk = raw[position : position + length]
                if len(chunk) < length:
                    return name
                position += length
                if field is None:
                    continue
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return name
                elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < _MAX_DEPTH:
                    index = "[]" if field.is_repeated else ""
                    inner = find_invalid_field(
                        field.message_type, chunk, f"{name}{index}.", depth + 1
                    )
                    if inner:
                        return inner
            else:
                return name
    except ValueError:
        return prefix.rstrip(".") or "request"
    return ""
