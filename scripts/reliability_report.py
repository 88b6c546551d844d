"""Writes docs/reliability.md from the figures the fault tests left in build/faults/."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "build" / "faults"

PROPERTIES = [
    (
        "redis_killed",
        "1. Redis dies during load",
        "`tests/faults/test_redis_faults.py::test_redis_killed_during_10k_publishes_loses_nothing`"
        " — 10,000 publishes from 32 workers; `kill -9` Redis after 2,000, restart it after 6,000;"
        " read the topic back.",
    ),
    (
        "redis_blackholed",
        "2. Redis blackholed (SIGSTOP)",
        "`test_redis_blackholed_is_noticed_and_nothing_hangs` — SIGSTOP Redis under an open "
        "stream; time until the hub notices; GetStatus; 20 publishes with a 5 s bound each.",
    ),
    (
        "redis_refuses_subscriber_requirepass",
        "2b. Redis refuses the subscriber: a password appears",
        "`test_redis_refusing_the_subscriber_for_a_while_does_not_wedge_the_hub[requirepass]` — "
        "a stream open; `CONFIG SET requirepass x`, `CLIENT KILL TYPE pubsub`; every reconnect "
        'hears NOAUTH for 5 s; `CONFIG SET requirepass ""`; the stream gets its gap and goes on '
        "live, a new stream subscribes, GetStatus is SERVING.",
    ),
    (
        "redis_refuses_subscriber_acl_channels",
        "2c. Redis refuses the subscriber: channel permissions revoked",
        "`test_redis_refusing_the_subscriber_for_a_while_does_not_wedge_the_hub[acl-channels]` — "
        "`ACL SETUSER default resetchannels` (Redis kills the subscriber; every SUBSCRIBE then "
        "answers NOPERM, an error reply on a working connection) for 5 s; `allchannels`; as "
        "above.",
    ),
    (
        "notification_holes",
        "2d. Events not notified behind a live delivery",
        "`tests/faults/test_notification_holes.py::"
        "test_an_event_not_notified_behind_a_live_delivery_is_never_skipped` — two sidecars: one "
        "publishes as an ACL user that loses `publish` for a while (its events are not "
        "notified), the other delivers a later event live, moving every stream's frontier past "
        "them; once Redis takes the first one's commands again it announces them: GAP, REPLAY "
        "and CLOSE streams and a resumed one each get every event or a cursor that replays it.",
    ),
    (
        "kafka_leader_killed",
        "3. Kafka partition leader killed, brokers bounced",
        "`tests/faults/test_kafka_faults.py::test_partition_leader_killed_and_brokers_bounced_under_load`"
        " — 3-broker KRaft cluster, RF 3, `min.insync.replicas=2`; 8,000 publishes over 10 keys; "
        "SIGKILL the leader of partition 0, restart it, bounce another broker; check every "
        "acknowledged event once and per-key order.",
    ),
    (
        "kafka_down",
        "4a. Kafka unavailable (broker stopped)",
        "`test_kafka_down_answers_unavailable_then_recovers_by_itself` — stop the only broker; "
        "publishes answer UNAVAILABLE (at once once the probe has noticed, at most within the "
        "delivery timeout); start it; the sidecar recovers.",
    ),
    (
        "kafka_too_few_replicas",
        "4b. Too few in-sync replicas",
        "`test_too_few_in_sync_replicas_is_unavailable_never_ok` — stop 2 of 3 brokers "
        "(`min.insync.replicas=2`); every publish answers UNAVAILABLE, never OK.",
    ),
    (
        "kafka_killed_health",
        "4c. Kafka killed: health tells, publishes fail fast",
        "`test_kafka_killed_health_tells_and_publish_fails_fast` — SIGKILL the only broker; time "
        "until gRPC health says NOT_SERVING (required: 5 s) and GetStatus `kafka.connected` is "
        "false; 5 publishes must answer UNAVAILABLE far below the 10 s delivery timeout; start "
        "the broker; time until SERVING (required: 5 s).",
    ),
    (
        "kafka_killed_then_sigterm",
        "4d. Kafka killed under load, then SIGTERM",
        "`test_kafka_killed_under_load_then_sigterm_stops_cleanly` — sidecar process under 32 "
        "publishers; SIGKILL the broker after 1,500 calls; every call ends OK or UNAVAILABLE; "
        "SIGTERM with records still pending: the sidecar gives up on them after the delivery "
        "timeout and exits 0.",
    ),
    (
        "retention_expired",
        "4e. Retention deleted what a resume was to replay",
        "`tests/faults/test_kafka_retention.py` — 10 events of one source; `DeleteRecords` moves "
        "the partition's log start past the first 3, as retention would; resume from a cursor "
        "before them with GAP, REPLAY and CLOSE (figures: GAP): a gap `EXPIRED` with the count "
        "lost comes first, then the other 7 and `caught_up`; resuming from that gap's cursor "
        "replays the 7 without another gap.",
    ),
    (
        "kafka_stalled",
        "5. Kafka stalled (SIGSTOP the broker)",
        "`test_kafka_stalled_fills_a_bounded_buffer_then_fails_fast` — sidecar process with a "
        "500-event / 8 MiB buffer and 0.2 s wait; SIGSTOP the broker; 4 waves of 1,000 "
        "concurrent 10 kB publishes; sample the sidecar's RSS. Every call answers: "
        "RESOURCE_EXHAUSTED while the buffer is full, UNAVAILABLE at once after the probe "
        "noticed the stall; none OK.",
    ),
    (
        "kafka_stalled_cancelled_calls",
        "5b. Callers give up while Kafka is stalled",
        "`test_cancelled_calls_while_kafka_is_stalled_stay_within_the_buffer` — 50 kB buffer; "
        "SIGSTOP the broker; 10 waves of 100 concurrent 10 kB publishes with a 0.3 s deadline; "
        "resume; count what Kafka received from the stall: every record queued then, so at most "
        "the buffer.",
    ),
    (
        "sigterm_under_load",
        "6. SIGTERM under load",
        "`tests/faults/test_shutdown.py` — sidecar process under 64 concurrent publishers; "
        "SIGTERM; watch health; read the topic back.",
    ),
]


def main() -> None:
    lines = [
        "# Reliability",
        "",
        "Each property is a test that kills, stops or restarts real processes (Apache Kafka in",
        "KRaft mode, Debian's redis-server, the sidecar) with real signals, then checks what Kafka",
        "holds. Every one of them also fails if the sidecar logged a traceback meanwhile",
        "(`tests/faults/conftest.py`). `make faults` runs them and rewrites this page from their",
        "figures; `make test` (and so CI) runs them too.",
        "",
        f"Last run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, on a 2-core machine.",
        "",
        "| property | how it is tested | figures from the last run |",
        "| --- | --- | --- |",
    ]
    for key, title, how in PROPERTIES:
        path = RESULTS / f"{key}.json"
        figures = json.loads(path.read_text()) if path.exists() else {"result": "not run"}
        shown = "<br>".join(f"`{name}`: {json.dumps(value)}" for name, value in figures.items())
        lines.append(f"| {title} | {how} | {shown} |")
    lines += [
        "",
        "7. Slow and vanishing clients are covered by `tests/test_streams.py` (a stream that",
        "never reads under 1,000 events/s; 10,000 subscribe/cancel cycles return `PUBSUB NUMSUB`",
        "and `NUMPAT` to baseline with no leaked tasks) and `tests/test_access.py` (deadlines",
        "mid-stream free the stream and its Redis subscription).",
        "",
        "8. Streams leaving and joining one channel at once: `tests/test_subscribe.py::",
        "test_subscribe_and_unsubscribe_racing_on_one_channel_miss_nothing` runs 10,000",
        "interleavings against real Redis (one stream leaving before or after Redis confirmed it,",
        "another joining, publishes in between) and every message published once the new stream",
        "is live reaches it. `tests/test_hub_connection.py` replays the exact race against a",
        "scripted peer (an answer to a SUBSCRIBE sent before an UNSUBSCRIBE must not make the",
        "channel live), and every kind of bad answer on the hub's connection.",
        "",
        "9. Notifications that fail, in any interleaving: `tests/test_seam_property.py::",
        "test_no_stream_silently_skips_an_event_whose_notification_failed` runs hypothesis",
        "scenarios for the GAP, REPLAY and CLOSE policies (two sidecars; one loses `publish`",
        "through an ACL change and gets it back, the other keeps delivering live; streams open",
        "live, resumed or lagging at any point) and checks that every stream delivers each event",
        "of its sources that its starting cursor does not claim, or sends a gap (or ends with a",
        "cursor) that replays it, with nothing twice.",
        "",
    ]
    target = REPO / "docs" / "reliability.md"
    existing = target.read_text() if target.exists() else ""
    marker = "## Bad input"
    tail = existing[existing.index(marker) :] if marker in existing else ""
    target.write_text("\n".join(lines) + ("\n" + tail if tail else ""))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
