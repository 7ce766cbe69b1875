"""The events folds are given: envelopes just added, and the log read back.

Parsing is where the projections' tolerance lives: types this node does not know and
bodies that fail validation are skipped (they stay in the log and are relayed,
docs/events.md §forward-compatibility), and damage found in an event read back is the
disk's, reported as the repair to run. The log's tables are read only through
eventlog/log_reads.py, which owns their statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import msgpack

from eventlog import body as b
from eventlog import log_reads
from eventlog.errors import InvalidEvent, StorageError
from eventlog.events import Envelope
from projections.fold import Event
from projections.runner.state import INDEXED_KEYS

RECENT_EVENTS = 8_192  # folded events kept for lookups by hash (up to twice as many)


class Backlog(NamedTuple):
    """Events of the log after ``after`` up to ``last`` (arrival numbers), parsed."""

    after: int
    last: int
    events: list[Event]


def to_event(env: Envelope) -> Event | None:
    """Parse an envelope for folding; None for types and bodies projections skip."""
    if isinstance(env.parsed, b.BaseBody):  # validated by this node's writer already
        return Event(env.hash, env.author, env.seq, env.hlc, env.parsed)
    if env.type not in b.TYPES:
        return None
    try:
        parsed = b.parse(env.type, env.body)
    except InvalidEvent:
        return None
    if parsed is None:
        return None
    return Event(env.hash, env.author, env.seq, env.hlc, parsed)


def _unpack_event(raw: bytes, hash_: bytes) -> Event | None:
    """An event read back from the log for a re-fold (trusted: it was checked when
    stored). Damage found here is the disk's: say so, and where to go, not a traceback."""
    try:
        fields = msgpack.unpackb(raw, raw=False)
        type_, body = fields["type"], fields["body"]
        author, seq, hlc = fields["author"], fields["seq"], fields["hlc"]
    except Exception:  # msgpack raises many types; a damaged map may lack any key
        raise StorageError(
            f"the stored event {hash_.hex()[:12]} is damaged: run 'potluck "
            "doctor --repair' to set it aside"
        ) from None
    if type_ not in b.TYPES:
        return None
    try:
        parsed = b.parse(type_, body)
    except InvalidEvent:
        return None
    if parsed is None:
        return None
    return Event(hash_, author, seq, hlc, parsed)


def arrivals(db: sqlite3.Connection, after: int, end: int, limit: int) -> Backlog:
    """The events with arrival numbers after ``after`` up to ``end``, at most ``limit``,
    parsed for folding (types projections skip are left out of ``events``)."""
    rows = log_reads.arrivals(db, after, end, limit)
    parsed = [e for e in (_unpack_event(r[1], r[2]) for r in rows) if e is not None]
    return Backlog(after, rows[-1][0] if rows else after, parsed)


def entity_events(db: sqlite3.Connection, entity: int) -> Iterator[Event]:
    """One entity's events in canonical order, found through ``proj_index``; an event
    indexed twice (``INDEXED_KEYS``) is skipped the second time rather than applied
    twice."""
    last = None
    for raw, hash_ in log_reads.raw_of_keys(db, INDEXED_KEYS, (entity,)):
        if hash_ == last:
            continue
        last = hash_
        event = _unpack_event(raw, hash_)
        if event is not None:
            yield event


def stored_event(db: sqlite3.Connection, hash_: bytes) -> Event | None:
    """The log's event ``hash_`` as folds see it; None when the log lacks it or
    projections skip its type. Damage on disk is a StorageError naming the repair."""
    raw = log_reads.raw_by_hash(db, hash_)
    return None if raw is None else _unpack_event(raw, hash_)


def canonical_chunks(db: sqlite3.Connection, size: int) -> Iterable[list[Event]]:
    """The whole log in canonical order, ``size`` events at a time (bounded memory)."""
    after: tuple[int, bytes, int] = (-1, b"", 0)
    while True:
        rows = log_reads.canonical_rows(db, after, size)
        if not rows:
            return
        yield [e for e in (_unpack_event(r[0], r[1]) for r in rows) if e is not None]
        last = rows[-1]
        after = (last[2], last[3], last[4])


class RecentEvents:
    """Between RECENT_EVENTS and twice as many of the last events folded, by hash: a
    claim's steps follow it closely, and finding the claim they name was a query and a
    decode per step. Events never change, so an entry cannot go stale; the store holds
    back an event that names one it lacks, so finding one here that a rollback undid
    cannot matter. Two generations, so that forgetting is O(1)."""

    def __init__(self) -> None:
        self._new: dict[bytes, Event] = {}
        self._old: dict[bytes, Event] = {}

    def remember(self, event: Event) -> None:
        self._new[event.hash] = event
        if len(self._new) >= RECENT_EVENTS:
            self._old, self._new = self._new, {}

    def get(self, hash_: bytes) -> Event | None:
        return self._new.get(hash_) or self._old.get(hash_)

    def clear(self) -> None:
        self._new, self._old = {}, {}


def event_lookup(db: sqlite3.Connection, recent: RecentEvents) -> Callable[[bytes], Event | None]:
    """The ``Lookup`` folds are given: recent events first, then the log."""

    def lookup(hash_: bytes) -> Event | None:
        return recent.get(hash_) or stored_event(db, hash_)

    return lookup
