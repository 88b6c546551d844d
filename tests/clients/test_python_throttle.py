"""The Python client's overload logic on its own: the adaptive throttle, driven by a clock and
random draws the test gives, and the reading of the sidecar's retry hint from trailers. The
same logic against a fake and a real sidecar is in test_python_client.py."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from dualstream_client import (
    DualstreamClientError,
    InvalidArgumentError,
    ResourceExhaustedError,
    Throttle,
    UnavailableError,
)
from dualstream_client.errors import retry_hint
from dualstream_client.throttle import DEFAULT_RETRY_AFTER, AdaptiveThrottle

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MESSAGE = re.compile(
    r"^not sent: the sidecar refused (\d+) of this client's last (\d+) calls as past capacity, "
    r"so the client holds calls back \(client-side throttling\); retry in (\d+) ms$"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Draw:
    """The throttle's random draws: it holds a call back when the draw is below p. 1.0 (the
    start) never holds one back, so a test can build up counts first."""

    def __init__(self) -> None:
        self.value = 1.0

    def __call__(self) -> float:
        return self.value


def refusal(retry_after: float = 0.25) -> ResourceExhaustedError:
    return ResourceExhaustedError(EXHAUSTED, "past capacity", retry_after=retry_after)


DEADLINE = DualstreamClientError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


def admitted(state: AdaptiveThrottle) -> bool:
    try:
        state.admit()
    except ResourceExhaustedError as exc:
        if not exc.throttled:
            raise
        return False
    return True


def history(
    answers: list[DualstreamClientError | None], policy: Throttle | None = None
) -> tuple[AdaptiveThrottle, Draw, Clock]:
    """A throttle that has admitted one attempt per answer and counted the answer."""
    draw, clock = Draw(), Clock()
    state = AdaptiveThrottle(policy or Throttle(), clock=clock, draw=draw)
    for answer in answers:
        assert admitted(state)
        state.record(answer)
    return state, draw, clock


def test_under_min_requests_nothing_is_held_back() -> None:
    state, draw, _ = history([refusal()] * 19)
    draw.value = 0.0
    assert admitted(state), "19 requests: under min_requests"
    state.record(refusal())
    assert state.refusal_probability() == pytest.approx(20 / 21)
    assert not admitted(state)


def test_a_burst_not_yet_answered_is_sent_then_calls_still_waiting_count_against() -> None:
    draw, clock = Draw(), Clock()
    state = AdaptiveThrottle(Throttle(), clock=clock, draw=draw)
    draw.value = 0.0
    assert all(admitted(state) for _ in range(40)), "no answer yet: nothing is held back"
    for _ in range(20):
        state.record(None)
    # 40 requests, 20 accepted: the 20 still waiting weigh against the sidecar.
    assert state.refusal_probability() == pytest.approx((40 - 1.2 * 20) / 41)
    assert not admitted(state)


def test_a_sidecar_that_accepts_everything_is_never_throttled() -> None:
    answers: list[DualstreamClientError | None] = [
        None,
        UnavailableError(grpc.StatusCode.UNAVAILABLE, "Kafka is not connected"),
        InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "event.type: empty"),
        # Over a size limit: RESOURCE_EXHAUSTED without a hint is an answer, not a refusal.
        ResourceExhaustedError(EXHAUSTED, "request too large"),
    ]
    state, draw, _ = history(answers * 250)
    draw.value = 0.0
    assert state.refusal_probability() == 0.0
    assert admitted(state)


@pytest.mark.parametrize(("drawn", "sent"), [(0.98, False), (0.995, True)])
def test_all_refused_holds_back_nearly_everything(drawn: float, sent: bool) -> None:
    state, draw, _ = history([refusal()] * 100)
    assert state.refusal_probability() == pytest.approx(100 / 101)  # ~0.99
    draw.value = drawn
    assert admitted(state) is sent


def test_the_ratio_lets_through_a_little_more_than_is_accepted() -> None:
    half: list[DualstreamClientError | None] = [None, refusal()] * 50
    state, _, _ = history(half, Throttle(ratio=2.0))
    assert state.refusal_probability() == 0.0, "100 requests, 2 x 50 accepts"
    quarter: list[DualstreamClientError | None] = [None, refusal(), refusal(), refusal()] * 25
    state, _, _ = history(quarter, Throttle(ratio=1.2))
    assert state.refusal_probability() == pytest.approx((100 - 1.2 * 25) / 101)


def test_deadline_exceeded_counts_as_a_request_without_an_accept() -> None:
    state, _, _ = history([DEADLINE] * 30)
    assert state.refusal_probability() == pytest.approx(30 / 31)


def test_counts_older_than_the_window_drop_out_a_tenth_at_a_time() -> None:
    state, _, clock = history([refusal()] * 40, Throttle(window=5.0))
    clock.now += 2.5
    for _ in range(20):
        assert admitted(state)
        state.record(None)
    assert state.refusal_probability() == pytest.approx((60 - 1.2 * 20) / 61)
    clock.now += 2.4
    assert state.refusal_probability() == pytest.approx((60 - 1.2 * 20) / 61)
    clock.now += 0.2  # The refusals' tenth is now more than a window old; the accepts' is not.
    assert state.refusal_probability() == 0.0
    clock.now += 5.0  # Everything is old: under min_requests again.
    state.record(refusal())
    assert state.refusal_probability() == 0.0


def test_a_throttled_call_says_why_and_when_to_retry() -> None:
    state, draw, _ = history([refusal(0.35)] * 25 + [None] * 5)
    draw.value = 0.0
    with pytest.raises(ResourceExhaustedError) as caught:
        state.admit()
    error = caught.value
    assert (error.code, error.throttled, error.retry_after) == (EXHAUSTED, True, 0.35)
    numbers = MESSAGE.match(error.details)
    assert numbers is not None, error.details
    assert numbers.groups() == ("25", "30", "350")
    # The held-back call counts as a request (not an accept): the next message counts it.
    with pytest.raises(ResourceExhaustedError) as caught:
        state.admit()
    numbers = MESSAGE.match(caught.value.details)
    assert numbers is not None
    assert numbers.groups() == ("25", "31", "350")


def test_before_any_hint_a_throttled_call_suggests_a_tenth_of_a_second() -> None:
    state, draw, _ = history([DEADLINE] * 30)
    draw.value = 0.0
    with pytest.raises(ResourceExhaustedError) as caught:
        state.admit()
    assert caught.value.retry_after == DEFAULT_RETRY_AFTER == 0.1
    numbers = MESSAGE.match(caught.value.details)
    assert numbers is not None
    assert numbers.groups() == ("0", "30", "100")


def test_a_bad_policy_names_its_field() -> None:
    with pytest.raises(ValueError, match=r"Throttle\.ratio"):
        Throttle(ratio=0.0)
    with pytest.raises(ValueError, match=r"Throttle\.window"):
        Throttle(window=-1.0)
    with pytest.raises(ValueError, match=r"Throttle\.min_requests"):
        Throttle(min_requests=-1)


def status_details(*details: any_pb2.Any) -> bytes:
    status = status_pb2.Status(code=EXHAUSTED.value[0], message="busy", details=details)
    serialized: bytes = status.SerializeToString()
    return serialized


def retry_info(milliseconds: int) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(milliseconds)
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return packed


def test_the_retry_hint_is_read_from_retry_info_first() -> None:
    other = any_pb2.Any()
    other.Pack(error_details_pb2.ErrorInfo(reason="OVERLOADED"))
    trailers: list[tuple[str, str | bytes]] = [
        ("grpc-retry-pushback-ms", "900"),
        ("grpc-status-details-bin", status_details(other, retry_info(250))),
    ]
    assert retry_hint(trailers) == 0.25


def test_the_pushback_trailer_alone_is_a_hint() -> None:
    assert retry_hint([("grpc-retry-pushback-ms", "120")]) == 0.12
    assert retry_hint([("grpc-retry-pushback-ms", b"0")]) == 0.0
    # A status without RetryInfo leaves the pushback to say it.
    assert (
        retry_hint(
            [("grpc-status-details-bin", status_details()), ("grpc-retry-pushback-ms", "40")]
        )
        == 0.04
    )


@pytest.mark.parametrize(
    "trailers",
    [
        [],
        [("grpc-retry-pushback-ms", "-1")],  # gRPC's "do not retry".
        [("grpc-retry-pushback-ms", "soon")],
        [("grpc-status-details-bin", b"\xff\xff not a status")],
        [("other", "1")],
    ],
)
def test_no_readable_hint_is_no_hint(trailers: list[tuple[str, str | bytes]]) -> None:
    assert retry_hint(trailers) is None
