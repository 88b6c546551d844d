"""Unit tests of the pure domain logic: validation, ids, record mapping, notification JSON."""

from __future__ import annotations

import json
import os
import time
import unicodedata
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualstream.cloudevents import from_record, to_record, to_records
from dualstream.errors import InvalidArgumentError
from dualstream.events import (
    Event,
    EventLimits,
    Source,
    _check_event,
    prepare_batch,
    prepare_event,
)
from dualstream.ids import _UUIDv7Generator, uuid7
from dualstream.notifications import Notification, channel_for

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIMITS = EventLimits(max_payload_bytes=1024, max_batch_events=3)


def an_event(**changes: object) -> Event:
    fields: dict[str, object] = {
        "id": "",
        "type": "order.created",
        "source_type": "user",
        "source_id": "octocat",
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_prepare_fills_id_and_time() -> None:
    event = prepare_event(an_event(), "event", LIMITS, NOW)
    assert uuid.UUID(event.id).version == 7
    assert event.time == NOW


def test_prepare_keeps_given_id_and_time() -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    event = prepare_event(an_event(id="abc-1", time=moment), "event", LIMITS, NOW)
    assert (event.id, event.time) == ("abc-1", moment)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": ""}, "event.type"),
        ({"source_type": ""}, "event.source_type"),
        ({"source_id": ""}, "event.source_id"),
        ({"source_type": "us:er"}, "event.source_type"),
        ({"source_type": "user*"}, "event.source_type"),
        ({"source_id": "octo?cat"}, "event.source_id"),
        ({"source_id": "octo[cat]"}, "event.source_id"),
        ({"source_id": "octo\\cat"}, "event.source_id"),
        ({"source_id": "octo\ncat"}, "event.source_id"),
        ({"source_id": "octo cat"}, "event.source_id"),
        ({"type": "order\x00created"}, "event.type"),
        ({"type": "order*"}, "event.type"),
        ({"source_id": "x" * 513}, "event.source_id"),
        ({"id": "a b"}, "event.id"),
        ({"data": b"x" * 1025}, "event.data"),
        ({"content_type": "text/plain\x07"}, "event.content_type"),
        ({"attributes": {"Bad": "v"}}, "event.attributes['Bad']"),
        ({"attributes": {"traceparent": "v"}}, "event.attributes['traceparent']"),
        ({"attributes": {"a" * 21: "v"}}, f"event.attributes['{'a' * 21}']"),
        ({"attributes": {f"k{i}": "v" for i in range(33)}}, "event.attributes"),
    ],
)
def test_invalid_events_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        prepare_event(an_event(**changes), "event", LIMITS, NOW)
    assert caught.value.field == field


def test_colons_and_slashes_are_fine_in_source_id() -> None:
    prepare_event(an_event(source_id="owner/repo:main"), "event", LIMITS, NOW)


def test_batch_validates_everything_first() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        prepare_batch([an_event(), an_event(type="")], LIMITS, NOW)
    assert caught.value.field == "events[1].type"
    with pytest.raises(InvalidArgumentError, match="at most 3"):
        prepare_batch([an_event()] * 4, LIMITS, NOW)
    with pytest.raises(InvalidArgumentError, match="at least one"):
        prepare_batch([], LIMITS, NOW)


def test_uuid7_is_monotonic_and_versioned() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_uuid7_made_together_continue_the_order() -> None:
    """A batch's ids, more than one millisecond's counter can hold, sort after the ids before
    them and before the ids after them."""
    ids = [uuid7(), *uuid7.many(5_000), uuid7(), *uuid7.many(3)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert uuid7.many(0) == []


def test_uuid7_text_is_the_rfc_layout_of_its_bits() -> None:
    """Each id is the canonical text of the 128-bit UUIDv7 its clock, counter and entropy make:
    48 bits of milliseconds, version 7, the 12-bit counter, variant 0b10, 62 random bits."""

    class Scripted(_UUIDv7Generator):
        def __init__(self) -> None:
            super().__init__()
            self.drawn = b""

        def _random(self, size: int) -> bytes:
            self.drawn = os.urandom(size)
            return self.drawn

    generator = Scripted()
    before = time.time_ns() // 1_000_000
    ids = generator.many(5_000)  # More than one millisecond's counter: it borrows the next.
    entropy = generator.drawn
    assert len(entropy) == 8 * len(ids)
    counters = []
    for index, text in enumerate(ids):
        value = uuid.UUID(text)
        assert str(value) == text
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert value.int >> 80 >= before
        counters.append((value.int >> 80, value.int >> 64 & 0xFFF))
        random_bits = int.from_bytes(entropy[8 * index : 8 * index + 8]) & ((1 << 62) - 1)
        assert value.int & ((1 << 62) - 1) == random_bits
    assert counters == sorted(counters)
    assert len(set(counters)) == len(counters)


def test_record_round_trip() -> None:
    event = prepare_event(
        an_event(
            source_id="owner/repo",
            data=b"\x00payload",
            content_type="application/json",
            attributes={"tenant": "acme"},
        ),
        "event",
        LIMITS,
        NOW,
    )
    record = to_record(event, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    headers = dict(record.headers)
    assert record.key == b"owner/repo"
    assert record.value == b"\x00payload"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"/user/owner%2Frepo"
    assert headers["ce_time"] == b"2026-11-28T12:00:00.000000Z"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_tenant"] == b"acme"
    assert from_record(record.value, record.headers) == event


_ENCODABLE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)


@given(
    id=_ENCODABLE_TEXT,
    type=_ENCODABLE_TEXT,
    source_type=_ENCODABLE_TEXT,
    source_id=_ENCODABLE_TEXT,
    data=st.binary(max_size=6),
    content_type=_ENCODABLE_TEXT,
    time=st.none() | st.just(NOW),
    attributes=st.dictionaries(st.sampled_from(["k", "tenant"]), _ENCODABLE_TEXT, max_size=2),
    trace=st.dictionaries(st.sampled_from(["traceparent", "tracestate"]), _ENCODABLE_TEXT),
)
def test_a_records_size_counts_its_key_value_and_headers(
    trace: dict[str, str], **fields: object
) -> None:
    """The size the Kafka buffer is charged is the record's bytes, counted as they are built;
    a batch's records are the records of its events one by one."""
    event = Event(**fields)  # type: ignore[arg-type]
    record = to_record(event, trace)
    assert record.size == len(record.key) + len(record.value) + sum(
        len(name) + len(value) for name, value in record.headers
    )
    assert to_records([event, event], trace) == [record, record]


def test_notification_json_has_ids_and_no_payload() -> None:
    notification = Notification("i", "t", "user", "octocat", "events", 2, 7, "tp")
    body = json.loads(notification.to_json())
    assert body == {
        "id": "i",
        "type": "t",
        "source_type": "user",
        "source_id": "octocat",
        "topic": "events",
        "partition": 2,
        "offset": 7,
        "traceparent": "tp",
    }
    assert Notification.from_json(notification.to_json()) == notification


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"{}",
        b'{"id": 1}',
        b"not json",
        b"\xff",
        b'{"id":"i","type":"t","source_type":"s",'
        b'"source_id":"x","topic":"e","partition":"1","offset":0}',
    ],
)
def test_malformed_notifications_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        Notification.from_json(raw)


def test_channel_naming() -> None:
    assert channel_for(Source("repo", "owner/repo")) == "events:repo:owner/repo"
    assert channel_for(Source("user", "octocat"), "live") == "live:user:octocat"


@given(
    text=st.text(max_size=30),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    traceparent=st.sampled_from(["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]),
)
def test_notification_json_matches_the_json_encoder(
    text: str, partition: int, offset: int, traceparent: str
) -> None:
    notification = Notification(text, text, text, text, text, partition, offset, traceparent)
    body: dict[str, str | int] = {
        "id": text,
        "type": text,
        "source_type": text,
        "source_id": text,
        "topic": text,
        "partition": partition,
        "offset": offset,
    }
    if traceparent:
        body["traceparent"] = traceparent
    expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert notification.to_json() == expected
    assert Notification.from_json(expected) == notification


@given(st.text(max_size=12))
def test_the_ascii_fast_path_agrees_with_the_character_check(value: str) -> None:
    """The shortcut for plain ASCII accepts exactly what the per-character rules accept."""
    for field, identifier in (("source_id", True), ("content_type", False)):
        try:
            prepare_event(an_event(**{field: value}), "event", LIMITS, NOW)
        except InvalidArgumentError:
            accepted = False
        else:
            accepted = True
        expected = bool(value) or not identifier
        for char in value:
            category = unicodedata.category(char)
            if category[0] == "C" or (
                identifier and (char.isspace() or category[0] == "Z" or char in "*?[]\\")
            ):
                expected = False
        assert accepted == expected, (field, value)


_TRICKY_TEXT = st.text(alphabet=st.sampled_from('ab:.-/*?[]\\" é\t\u200b'), max_size=9)
_SMALL = EventLimits(
    max_payload_bytes=4,
    max_id_length=8,
    max_type_length=8,
    max_source_type_length=6,
    max_source_id_length=8,
    max_content_type_length=8,
    max_attributes=1,
)


@given(
    id=_TRICKY_TEXT,
    type=_TRICKY_TEXT,
    source_type=_TRICKY_TEXT,
    source_id=_TRICKY_TEXT,
    content_type=_TRICKY_TEXT,
    data=st.binary(max_size=6),
    attributes=st.dictionaries(st.sampled_from(["k", "id", "K"]), _TRICKY_TEXT, max_size=2),
)
def test_the_whole_event_shortcut_accepts_what_the_field_checks_accept(**fields: object) -> None:
    """An event is accepted, alone or in a batch, exactly when every field-by-field check
    passes: the one-match shortcut for plain events lets nothing else through."""
    event = Event(**fields)  # type: ignore[arg-type]
    try:
        _check_event(event, "event", _SMALL)
    except InvalidArgumentError:
        expected = False
    else:
        expected = True

    def alone() -> Event:
        return prepare_event(event, "event", _SMALL, NOW)

    def in_batch() -> Event:
        return prepare_batch([event], _SMALL, NOW)[0]

    for prepare in (alone, in_batch):
        try:
            prepared = prepare()
        except InvalidArgumentError:
            assert not expected, fields
        else:
            assert expected, fields
            assert prepared.id == (event.id or prepared.id)
            assert prepared.id
            assert prepared.time == NOW
