"""Hybrid logical clock (Kulkarni et al., 2014), packed into one unsigned 64-bit int.

Why: projections order events by (hlc, author, seq). That order must extend causal
order (an event's hlc is above its prev and every dep, docs/events.md §validity) while
staying close to wall time so people read sensible dates. The top 48 bits are Unix
milliseconds, the low 16 bits a logical counter that breaks ties inside one millisecond
and absorbs a peer whose clock runs ahead.

Pure: the wall clock is injected, so tests control time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

COUNTER_BITS = 16
COUNTER_MAX = (1 << COUNTER_BITS) - 1
HLC_MAX = (1 << 63) - 1  # an SQLite integer: 47 bits of ms (to the year 6429), 16 of counter


def pack(wall_ms: int, counter: int) -> int:
    """Combine milliseconds and counter into one sortable int."""
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError(f"hlc counter {counter} out of range 0..{COUNTER_MAX}")
    if not 0 <= wall_ms < (1 << (63 - COUNTER_BITS)):
        raise ValueError(f"hlc milliseconds {wall_ms} out of range")
    return (wall_ms << COUNTER_BITS) | counter


def unpack(hlc: int) -> tuple[int, int]:
    """Split an hlc into (milliseconds, counter)."""
    return hlc >> COUNTER_BITS, hlc & COUNTER_MAX


def wall_ms(hlc: int) -> int:
    """The physical part, in Unix milliseconds."""
    return hlc >> COUNTER_BITS


def system_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """Issues strictly increasing timestamps that stay above everything observed.

    ``tick(*after)`` returns a timestamp greater than the last one issued and greater
    than every hlc passed in (the prev and deps of the event being written).
    """

    __slots__ = ("_last", "_now_ms")

    def __init__(self, now_ms: Callable[[], int] = system_ms, last: int = 0) -> None:
        self._now_ms = now_ms
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def observe(self, hlc: int) -> None:
        """Remember a timestamp seen on a received event, so later ticks exceed it."""
        if hlc > self._last:
            self._last = hlc

    def tick(self, *after: int) -> int:
        floor = max(self._last, *after) if after else self._last
        now = self._now_ms()
        floor_ms, floor_counter = unpack(floor)
        if now > floor_ms:
            stamp = pack(now, 0)
        elif floor_counter < COUNTER_MAX:
            stamp = floor + 1
        else:
            # 65,536 events in one millisecond: borrow the next millisecond.
            stamp = pack(floor_ms + 1, 0)
        self._last = stamp
        return stamp
