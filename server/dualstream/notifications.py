"""The Redis side of the contract: channel names and the notification JSON.

A notification names an event and where Kafka holds it; it never carries the payload.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import NamedTuple

from dualstream.events import Event, RecordPosition, Source

DEFAULT_CHANNEL_PREFIX = "events"
# The encoder's string quoting, as json.dumps(..., ensure_ascii=False) applies it.
_quote_json_string: Callable[[str], str] = json.encoder.encode_basestring


def channel_for(source: Source, prefix: str = DEFAULT_CHANNEL_PREFIX) -> str:
    """The channel ``{prefix}:{source_type}:{source_id}`` that carries a source's notifications."""
    return f"{prefix}:{source.source_type}:{source.source_id}"


class Notification(NamedTuple):
    """A published event's identity and Kafka position, as sent on its Redis channel."""

    id: str
    type: str
    source_type: str
    source_id: str
    topic: str
    partition: int
    offset: int
    traceparent: str = ""

    @classmethod
    def of(cls, event: Event, position: RecordPosition, traceparent: str = "") -> Notification:
        return cls(
            event.id,
            event.type,
            event.source_type,
            event.source_id,
            position.topic,
            position.partition,
            position.offset,
            traceparent,
        )

    @property
    def source(self) -> Source:
        return Source(self.source_type, self.source_id)

    def to_json(self) -> bytes:
        # Hand-assembled (about five times faster than json.dumps of a dict): each string goes
        # through the JSON encoder's own string quoting, so the result is the same JSON.
        quote = _quote_json_string
        trace = f',"traceparent":{quote(self.traceparent)}' if self.traceparent else ""
        return (
            f'{{"id":{quote(self.id)},"type":{quote(self.type)},'
            f'"source_type":{quote(self.source_type)},"source_id":{quote(self.source_id)},'
            f'"topic":{quote(self.topic)},"partition":{self.partition:d},'
            f'"offset":{self.offset:d}{trace}}}'
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Notification:
        """Parse a notification; raises ``ValueError`` for anything that is not one."""
        return cls.from_mapping(json.loads(raw))

    @classmethod
    def from_mapping(cls, body: object) -> Notification:
        """A notification from parsed JSON; raises ``ValueError`` for anything that is not one."""
        if not isinstance(body, dict):
            raise ValueError("a notification is a JSON object")
        try:
            notification = cls(
                id=body["id"],
                type=body["type"],
                source_type=body["source_type"],
                source_id=body["source_id"],
                topic=body["topic"],
                partition=body["partition"],
                offset=body["offset"],
                traceparent=body.get("traceparent", ""),
            )
        except KeyError as exc:
            raise ValueError(f"a notification needs the key {exc.args[0]!r}") from exc
        for name in ("id", "type", "source_type", "source_id", "topic", "traceparent"):
            if not isinstance(getattr(notification, name), str):
                raise ValueError(f"notification key {name!r} must be a string")
        for name in ("partition", "offset"):
            value = getattr(notification, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"notification key {name!r} must be an integer")
        return notification
