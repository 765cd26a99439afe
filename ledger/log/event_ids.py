"""Event ids: time-ordered UUIDv7 strings (RFC 9562), strictly increasing per process.

Ordered ids keep inserts into the ``events.event_id`` UNIQUE index at its right edge:
random (v4) ids dirtied one random index page per event, which every group commit then
wrote to the WAL and fsynced. Uniqueness across processes and restarts comes from the
millisecond clock plus 74 random bits; within a process the value only ever grows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

_RAND_BITS: Final = 74  # 12 bits rand_a + 62 bits rand_b
_RAND_B_BITS: Final = 62


class EventIds:
    """Callable returning the next id, e.g. ``019ab2c4-7d1e-7a3f-9c2b-4e5f6a7b8c9d``."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        # uniqueness, not secrecy: a fast generator, seeded from the OS
        self._random = random.Random(random.SystemRandom().getrandbits(128))
        self._last = 0
        self._clock_ns = clock_ns

    def __call__(self) -> str:
        value = ((self._clock_ns() // 1_000_000) << _RAND_BITS) | self._random.getrandbits(
            _RAND_BITS)
        if value <= self._last:  # same millisecond (or the clock stepped back)
            value = self._last + 1
        self._last = value
        rand_a = (value >> _RAND_B_BITS) & 0xFFF
        raw = ((value >> _RAND_BITS) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62
               | value & ((1 << _RAND_B_BITS) - 1))
        h = f"{raw:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
