"""Time-ordered event ids (UUIDv7, RFC 9562), which Python 3.11's ``uuid`` module lacks."""

from __future__ import annotations

import os
import threading
import time

_COUNTER_BITS = 12
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
# Random bytes are drawn from the OS in blocks: a read per id costs a system call, which also
# gives up the GIL to gRPC's thread in the middle of the publish path.
_ENTROPY_BLOCK = 8 * 1024


class _UUIDv7Generator:
    """Within one millisecond the 12-bit ``rand_a`` field is a counter (RFC 9562, method 1),
    so ids stay monotonic even when many events arrive in the same millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._millis = 0
        self._counter = 0
        self._entropy = b""
        self._entropy_used = 0

    def _random(self, size: int) -> int:
        """``size`` bytes of OS randomness as an integer; call with the lock held."""
        start = self._entropy_used
        if start + size > len(self._entropy):
            self._entropy, start = os.urandom(_ENTROPY_BLOCK), 0
        self._entropy_used = start + size
        return int.from_bytes(self._entropy[start : start + size], "big")

    def _next(self) -> tuple[int, int, int]:
        """The millisecond, the counter and 62 random bits of the next id."""
        with self._lock:
            millis = time.time_ns() // 1_000_000
            if millis > self._millis:
                self._millis = millis
                # Start low in the counter space so a burst has room to count up.
                self._counter = self._random(2) & (_COUNTER_MAX >> 1)
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:
                # The counter is spent: borrow the next millisecond rather than repeat an id.
                self._millis += 1
                self._counter = 0
            return self._millis, self._counter, self._random(8) & ((1 << 62) - 1)

    def __call__(self) -> str:
        millis, counter, rand_b = self._next()
        value = (millis & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= counter << 64
        value |= 0b10 << 62
        value |= rand_b
        digits = f"{value:032x}"
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


uuid7 = _UUIDv7Generator()
"""Return a new UUIDv7 string; ids made by one process sort in the order they were made."""
