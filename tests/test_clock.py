"""The hybrid logical clock with an injected wall clock (eventlog/clock.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventlog.clock import COUNTER_BITS, COUNTER_MAX, HybridClock, pack, unpack, wall_ms

MS = 1_700_000_000_000


class FakeWall:
    """Wall time the test sets by hand."""

    def __init__(self, ms: int = MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_tick_uses_wall_time_with_counter_zero_when_wall_time_moves() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    assert clock.tick() == pack(MS, 0)
    wall.ms += 5
    assert clock.tick() == pack(MS + 5, 0)
    assert clock.last == pack(MS + 5, 0)


def test_tick_is_strictly_monotonic_when_wall_time_stands_still_or_goes_back() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    stamps = [clock.tick() for _ in range(10)]
    wall.ms -= 60_000  # the system clock is set back a minute
    stamps += [clock.tick() for _ in range(10)]
    assert stamps == sorted(set(stamps))
    assert unpack(stamps[-1]) == (MS, 19)


@given(
    st.lists(
        st.tuples(
            st.integers(-1000, 1000),
            st.lists(st.integers(1, pack(MS + 10_000, COUNTER_MAX)), max_size=3),
        ),
        max_size=50,
    )
)
def test_tick_exceeds_the_last_stamp_and_every_argument(steps: list[tuple[int, list[int]]]) -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    last = 0
    for jump, after in steps:
        wall.ms += jump
        stamp = clock.tick(*after)
        assert stamp > last
        assert all(stamp > hlc for hlc in after)
        assert clock.last == stamp
        last = stamp


def test_clock_behind_a_peer_stays_above_the_peer() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    peer = pack(MS + 3_600_000, 42)  # a peer one hour ahead
    clock.observe(peer)
    first = clock.tick()
    assert first > peer
    assert unpack(first) == (MS + 3_600_000, 43)
    wall.ms += 1000  # our time moves but is still behind the peer's
    second = clock.tick()
    assert second > first
    assert wall_ms(second) == MS + 3_600_000


def test_tick_with_a_peer_ahead_passed_as_argument_stays_above_it() -> None:
    clock = HybridClock(FakeWall())
    peer = pack(MS + 500, 7)
    assert clock.tick(peer) == peer + 1
    assert clock.tick() == peer + 2


def test_observe_ignores_older_stamps() -> None:
    clock = HybridClock(FakeWall(), last=pack(MS, 9))
    clock.observe(pack(MS - 1, 0))
    assert clock.last == pack(MS, 9)
    assert clock.tick() == pack(MS, 10)


def test_counter_overflow_borrows_the_next_millisecond() -> None:
    wall = FakeWall()
    clock = HybridClock(wall, last=pack(MS, COUNTER_MAX - 1))
    assert clock.tick() == pack(MS, COUNTER_MAX)
    assert clock.tick() == pack(MS + 1, 0)
    assert clock.tick() == pack(MS + 1, 1)
    wall.ms = MS + 2
    assert clock.tick() == pack(MS + 2, 0)


def test_counter_overflow_on_an_argument_borrows_the_next_millisecond() -> None:
    clock = HybridClock(FakeWall())
    assert clock.tick(pack(MS + 9, COUNTER_MAX)) == pack(MS + 10, 0)


@given(st.integers(0, (1 << (63 - COUNTER_BITS)) - 1), st.integers(0, COUNTER_MAX))
def test_pack_then_unpack_gives_back_ms_and_counter(ms: int, counter: int) -> None:
    hlc = pack(ms, counter)
    assert 0 <= hlc < (1 << 63)
    assert unpack(hlc) == (ms, counter)
    assert wall_ms(hlc) == ms


@given(
    st.tuples(st.integers(0, 1 << 40), st.integers(0, COUNTER_MAX)),
    st.tuples(st.integers(0, 1 << 40), st.integers(0, COUNTER_MAX)),
)
def test_pack_preserves_the_order_of_ms_then_counter(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)


@pytest.mark.parametrize(
    ("ms", "counter"),
    [
        (MS, -1),
        (MS, COUNTER_MAX + 1),
        (-1, 0),
        (1 << (64 - COUNTER_BITS), 0),
    ],
)
def test_pack_raises_value_error_out_of_range(ms: int, counter: int) -> None:
    with pytest.raises(ValueError):
        pack(ms, counter)
