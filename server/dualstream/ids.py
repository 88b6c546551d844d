"""Time-ordered event ids (UUIDv7, RFC 9562), which Python 3.11's ``uuid`` module lacks."""

from __future__ import annotations

import os
import threading
import time

_COUNTER_BITS = 12
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_MILLIS_MASK = (1 << 48) - 1
# A random hex digit's low two bits under the variant bits 0b10: rand_b's first digit.
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 0b11] for digit in "0123456789abcdef"}
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

    def _random(self, size: int) -> bytes:
        """``size`` bytes of OS randomness; call with the lock held."""
        start = self._entropy_used
        if start + size > len(self._entropy):
            self._entropy, start = os.urandom(max(_ENTROPY_BLOCK, size)), 0
        self._entropy_used = start + size
        return self._entropy[start : start + size]

    def __call__(self) -> str:
        return self.many(1)[0]

    def many(self, count: int) -> list[str]:
        """``count`` new ids in order, made together: a batch pays for the lock, the clock
        and the entropy once, and an id is assembled from hex text (the same id as the 128-bit
        integer's, at about half the cost)."""
        with self._lock:
            millis = time.time_ns() // 1_000_000
            if millis > self._millis:
                # Start low in the counter space so a burst has room to count up; the first id
                # below counts it up once more.
                counter = (int.from_bytes(self._random(2)) & (_COUNTER_MAX >> 1)) - 1
            else:
                millis, counter = self._millis, self._counter
            entropy = self._random(8 * count).hex()
            made = []
            prefix = _time_prefix(millis)
            for start in range(0, 16 * count, 16):
                if counter < _COUNTER_MAX:
                    counter += 1
                else:
                    # The counter is spent: borrow the next millisecond rather than repeat an id.
                    millis += 1
                    counter = 0
                    prefix = _time_prefix(millis)
                # rand_a is the counter after the version (7); rand_b is 62 random bits after
                # the variant (0b10), whose first hex digit keeps two random bits.
                random = entropy[start : start + 16]
                made.append(
                    f"{prefix}{counter:03x}-{_VARIANT_DIGIT[random[0]]}{random[1:4]}-{random[4:]}"
                )
            self._millis, self._counter = millis, counter
        return made


def _time_prefix(millis: int) -> str:
    """An id's text up to its counter: 48 bits of milliseconds, then the version."""
    digits = f"{millis & _MILLIS_MASK:012x}"
    return f"{digits[:8]}-{digits[8:]}-7"


uuid7 = _UUIDv7Generator()
"""Return a new UUIDv7 string; ids made by one process sort in the order they were made."""
