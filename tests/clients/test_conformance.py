"""The properties every client must have against a real sidecar, run through each registered
conformance app (tests/clients/apps.py; the contract is in clients/README.md)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from stack.localstack import SidecarProcess
from tests.clients.apps import APPS
from tests.clients.conftest import AppProcess, ConformanceApps, Line

pytestmark = pytest.mark.integration

LANGUAGES = sorted(APPS)
SOURCES = ("a", "b")
# Enough that the publishers are still running when the sidecar is killed after KILL_AFTER
# acknowledgements each, even when one is far faster than the test notices.
EVENTS_PER_SOURCE = 1000
KILL_AFTER = 20
# Each wait's limit; the test's own (pytest-timeout) is longer than all of them together, so a
# wait that fails says what the app printed instead of being cut short.
FINISH_TIMEOUT = 150.0


def notifications(lines: list[Line]) -> list[Line]:
    return [line for line in lines if line["kind"] == "notification"]


def positions(lines: list[Line]) -> set[tuple[int, int]]:
    return {(line["partition"], line["offset"]) for line in lines}


def subscribe(apps: ConformanceApps, language: str, target: str, *arguments: str) -> AppProcess:
    """A subscriber that has printed `subscribed`: live from here on."""
    subscriber = apps.start(language, "subscribe", "--target", target, *arguments)
    first = subscriber.wait_for(bool, "`subscribed`")[0]
    assert first["kind"] == "subscribed", first
    assert first["cursor"], first
    return subscriber


def publish(
    apps: ConformanceApps, language: str, target: str, source_type: str, count: int
) -> list[AppProcess]:
    publishers = []
    for source in SOURCES:
        arguments = [
            "--target", target, "--source", f"{source_type}:{source}",
            "--type", "conformance", "--count", str(count), "--id-prefix", source,
        ]  # fmt: skip
        publishers.append(apps.start(language, "publish", *arguments))
    return publishers


@pytest.mark.timeout(4 * FINISH_TIMEOUT)
@pytest.mark.parametrize("language", LANGUAGES)
def test_resume_across_a_sidecar_kill_delivers_every_acknowledged_event_once_in_order(
    language: str, apps: ConformanceApps, sidecar_process: SidecarProcess, source_type: str
) -> None:
    target = sidecar_process.listen
    subscriber = subscribe(
        apps, language, target, "--source", f"{source_type}:*", "--policy", "replay"
    )
    publishers = publish(apps, language, target, source_type, EVENTS_PER_SOURCE)
    for publisher in publishers:
        publisher.wait_for(lambda lines: len(lines) >= KILL_AFTER, f"{KILL_AFTER} acks")
    sidecar_process.kill()  # SIGKILL: no goodbye to any stream or call.
    acked_at_kill = [len(publisher.snapshot()) for publisher in publishers]
    sidecar_process.start()  # Same port, same topic.
    acknowledged = [line for p in publishers for line in p.wait_exit(FINISH_TIMEOUT)]
    wanted = positions(acknowledged)
    # A resume that replays ends with `caught_up`, which may come after the last event it
    # replayed: wait for both. One that finds nothing to replay (the stream had every record
    # Kafka held, and nothing was published before it resumed) goes live at once, with no
    # `caught_up`.
    subscriber.wait_for(
        lambda lines: (
            wanted <= positions(notifications(lines))
            and (
                any(line["kind"] == "caught_up" for line in lines)
                or not any(line["replayed"] for line in notifications(lines))
            )
        ),
        "every acknowledged event, and a replay's `caught_up`",
        FINISH_TIMEOUT,
    )
    lines = subscriber.stop()

    assert all(count < EVENTS_PER_SOURCE for count in acked_at_kill), (
        f"the publishers had finished ({acked_at_kill}) before the kill: nothing was tested"
    )
    for source, publisher in zip(SOURCES, publishers, strict=True):
        ids = [line["id"] for line in publisher.snapshot()]
        assert ids == [f"{source}-{n}" for n in range(EVENTS_PER_SOURCE)], "publisher lost events"
    received = notifications(lines)
    seen = [(line["partition"], line["offset"]) for line in received]
    assert len(seen) == len(set(seen)), "a record was delivered twice"
    assert wanted <= set(seen)
    # A record nobody acknowledged is a retry's first write whose answer the kill lost: the
    # same id as an acknowledged event, which consumers deduplicate. Anything else is a bug.
    acknowledged_ids = {line["id"] for line in acknowledged}
    extra = [line for line in received if (line["partition"], line["offset"]) not in wanted]
    assert {line["id"] for line in extra} <= acknowledged_ids, extra
    assert len(extra) <= len(SOURCES), f"more retried duplicates than kills can explain: {extra}"
    by_source: dict[str, list[int]] = defaultdict(list)
    for line in received:
        by_source[line["source_id"]].append(line["offset"])
    for source, offsets in by_source.items():
        assert offsets == sorted(offsets), f"source {source} out of order"
    assert not [line for line in lines if line["kind"] == "gap"], "policy replay misses nothing"


def per_source(lines: list[Line]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = defaultdict(list)
    for line in notifications(lines):
        ids[line["source_id"]].append(line["id"])
    return dict(ids)


CROSS_EVENTS_PER_SOURCE = 40


def test_go_publishes_every_language_subscribes_python_resumes_from_each_ones_cursor(
    apps: ConformanceApps, sidecar_process: SidecarProcess, source_type: str
) -> None:
    """Go publishes; every registered language (TypeScript and Java among them) subscribes;
    Python resumes from a cursor each of them took midway. All see the same ids in the same
    per-source order."""
    target = sidecar_process.listen
    total = CROSS_EVENTS_PER_SOURCE * len(SOURCES)
    subscribers = {
        language: subscribe(
            apps, language, target, "--source", f"{source_type}:*", "--limit", str(total)
        )
        for language in LANGUAGES
    }
    publishers = publish(apps, "go", target, source_type, CROSS_EVENTS_PER_SOURCE)
    # Each publisher's lines are its source's events in acknowledgement order.
    published = {
        source: [line["id"] for line in publisher.wait_exit()]
        for source, publisher in zip(SOURCES, publishers, strict=True)
    }
    assert [len(ids) for ids in published.values()] == [CROSS_EVENTS_PER_SOURCE] * len(SOURCES)
    streams = {language: app.wait_exit() for language, app in subscribers.items()}
    for language, lines in streams.items():
        assert per_source(lines) == published, f"{language} saw other ids or another order"

    midway = total // 2
    for language, lines in streams.items():
        delivered = notifications(lines)
        cursor = delivered[midway - 1]["cursor"]
        arguments = ["--source", f"{source_type}:*", "--resume", cursor]
        arguments += ["--limit", str(total - midway)]
        resumed = subscribe(apps, "python", target, *arguments).wait_exit()
        assert per_source(resumed) == per_source(delivered[midway:]), (
            f"python resuming from {language}'s cursor saw other ids or another order"
        )


OVERLOAD_EVENTS = 2000
OVERLOAD_CONCURRENCY = 32


@pytest.mark.parametrize("language", LANGUAGES)
def test_past_capacity_the_client_holds_calls_back_itself(
    language: str, apps: ConformanceApps, one_call_sidecar: SidecarProcess, source_type: str
) -> None:
    """With the sidecar refusing most calls as past capacity, every client's throttle refuses
    some calls itself, unsent, and every call ends acknowledged, refused with a retry hint, or
    held back: nothing else (clients/README.md, *Overload*)."""
    overload = apps.start(
        language, "overload", "--target", one_call_sidecar.listen,
        "--source", f"{source_type}:a", "--count", str(OVERLOAD_EVENTS),
        "--concurrency", str(OVERLOAD_CONCURRENCY),
    )  # fmt: skip
    (summary,) = overload.wait_exit()
    assert summary["kind"] == "overload", summary
    assert summary["errors"] == {}, summary
    assert min(summary["ok"], summary["refused"], summary["throttled"]) > 0, summary
    assert summary["ok"] + summary["refused"] + summary["throttled"] == OVERLOAD_EVENTS, summary
