"""Event <-> Kafka record, per the CloudEvents 1.0 Kafka protocol binding, binary content mode.

The record value is ``Event.data`` unchanged and the key is ``source_id``. Headers:

================  =========================================================
``ce_specversion``  ``1.0``
``ce_id``           ``Event.id``
``ce_type``         ``Event.type``
``ce_source``       ``/{source_type}/{source_id}``, each part percent-encoded
``ce_time``         ``Event.time`` as RFC 3339 UTC with microseconds
``content-type``    ``Event.content_type`` (omitted when empty)
``ce_<name>``       each extension attribute
``traceparent``     W3C trace context of the publish (and ``tracestate`` if any)
================  =========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import quote, unquote

from dualstream.events import Event

SPEC_VERSION = "1.0"
Headers = list[tuple[str, bytes]]


class KafkaRecord(NamedTuple):
    key: bytes
    value: bytes
    headers: Headers
    # Bytes the record holds in memory until Kafka acknowledges it (roughly).
    size: int


@functools.lru_cache(maxsize=4096)
def source_uri(source_type: str, source_id: str) -> str:
    # Cached: a busy sidecar sees the same few sources over and over, and quote() is slow.
    return f"/{quote(source_type, safe='')}/{quote(source_id, safe='')}"


def format_time(moment: datetime) -> str:
    # isoformat is several times faster than strftime; "+00:00" becomes the shorter "Z".
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_SPEC_VERSION_HEADER = ("ce_specversion", SPEC_VERSION.encode())
# The bytes of the headers every record has that do not depend on the event: their names,
# and the spec version's value.
_FIXED_HEADERS_SIZE = sum(
    map(len, ("ce_specversion", SPEC_VERSION, "ce_id", "ce_type", "ce_source"))
)


@functools.lru_cache(maxsize=4096)
def _source_header(source_type: str, source_id: str) -> tuple[str, bytes]:
    return ("ce_source", source_uri(source_type, source_id).encode())


@functools.lru_cache(maxsize=64)
def _time_header(moment: datetime) -> tuple[str, bytes]:
    # Cached: the events of a batch share the time it was received.
    return ("ce_time", format_time(moment).encode())


def to_record(event: Event, trace_headers: Mapping[str, str]) -> KafkaRecord:
    trace, trace_size = _encoded(trace_headers)
    return _record(event, trace, trace_size)


def to_records(events: Sequence[Event], trace_headers: Mapping[str, str]) -> list[KafkaRecord]:
    """The records of a batch, whose events share one publish and so one trace context."""
    trace, trace_size = _encoded(trace_headers)
    return [_record(event, trace, trace_size) for event in events]


def _encoded(headers: Mapping[str, str]) -> tuple[Headers, int]:
    encoded = [(name, value.encode()) for name, value in headers.items()]
    return encoded, sum(len(name) + len(value) for name, value in encoded)


def _record(event: Event, trace: Headers, trace_size: int) -> KafkaRecord:
    event_id = event.id.encode()
    event_type = event.type.encode()
    source = _source_header(event.source_type, event.source_id)
    headers: Headers = [_SPEC_VERSION_HEADER, ("ce_id", event_id), ("ce_type", event_type), source]
    key = event.source_id.encode()
    data = event.data
    size = (
        _FIXED_HEADERS_SIZE
        + len(event_id)
        + len(event_type)
        + len(source[1])
        + len(key)
        + len(data)
        + trace_size
    )
    if event.time is not None:
        time = _time_header(event.time)
        headers.append(time)
        size += len(time[0]) + len(time[1])
    if event.content_type:
        content_type = event.content_type.encode()
        headers.append(("content-type", content_type))
        size += len("content-type") + len(content_type)
    if event.attributes:
        for name, value in event.attributes.items():
            attribute = (f"ce_{name}", value.encode())
            headers.append(attribute)
            size += len(attribute[0]) + len(attribute[1])
    if trace:
        headers += trace
    return KafkaRecord(key, data, headers, size)


def from_record(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Event:
    """Rebuild the Event a record was written from; raises ``ValueError`` if it is not one."""
    ce: dict[str, str] = {}
    content_type = ""
    for name, raw in headers:
        if name == "content-type":
            content_type = raw.decode()
        elif name.startswith("ce_"):
            ce[name[3:]] = raw.decode()
    try:
        source = ce.pop("source")
        _, source_type, source_id = source.split("/", 2)
        event_id, event_type = ce.pop("id"), ce.pop("type")
    except (KeyError, ValueError) as exc:
        raise ValueError("not a dualstream CloudEvents record") from exc
    ce.pop("specversion", None)
    time = ce.pop("time", None)
    return Event(
        id=event_id,
        type=event_type,
        source_type=unquote(source_type),
        source_id=unquote(source_id),
        data=value or b"",
        content_type=content_type,
        time=datetime.fromisoformat(time) if time else None,
        attributes=ce,
    )
