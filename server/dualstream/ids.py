"""Time-ordered event ids (UUIDv7, RFC 9562), which Python 3.11's ``uuid`` module lacks."""

from __future__ import annotations

import os
import threading
import time
import uuid

_COUNTER_BITS = 12
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1


class _UUIDv7Generator:
    """Within one millisecond the 12-bit ``rand_a`` field is a counter (RFC 9562, method 1),
    so ids stay monotonic even when many events arrive in the same millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._millis = 0
        self._counter = 0

    def _next_timestamp(self) -> tuple[int, int]:
        with self._lock:
            millis = time.time_ns() // 1_000_000
            if millis > self._millis:
                self._millis = millis
                # Start low in the counter space so a burst has room to count up.
                self._counter = int.from_bytes(os.urandom(2), "big") & (_COUNTER_MAX >> 1)
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:
                # The counter is spent: borrow the next millisecond rather than repeat an id.
                self._millis += 1
                self._counter = 0
            return self._millis, self._counter

    def __call__(self) -> str:
        millis, counter = self._next_timestamp()
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (millis & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= counter << 64
        value |= 0b10 << 62
        value |= rand_b
        return str(uuid.UUID(int=value))


uuid7 = _UUIDv7Generator()
"""Return a new UUIDv7 string; ids made by one process sort in the order they were made."""
