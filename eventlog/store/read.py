"""Queries on the log, as plain functions of a ``sqlite3.Connection``.

Why plain functions: the store runs them on its thread (``Store`` methods of the same
names), and the projections' runner runs some of them inside its own transactions,
in this process or in the projector's; neither needs the other's connection.
Memory stays bounded: reads return at most a chunk of rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from eventlog import events
from eventlog.errors import AmbiguousId, InvalidEvent, NotFound, StorageError, UsageError
from eventlog.events import Envelope

T = TypeVar("T")

CHUNK = 500
MAX_AUTHOR_FILTER = 500  # authors named in one query; beyond, rows are filtered here
IN_CHUNK = 500
"""Values in one ``IN (...)`` query (SQLite allows 32,766 parameters)."""


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes
    hlc: int


def hash_key(hash_: bytes) -> int:
    """The first 8 bytes as a signed int whose order is the bytes' order."""
    return int.from_bytes(hash_[:8], "big") - (1 << 63)


def in_parts(values: Sequence[T]) -> Iterator[tuple[Sequence[T], str]]:
    """``values`` in parts of at most IN_CHUNK, each with the ``?,?,...`` of its
    ``IN (...)``: one query for a whole batch, within SQLite's parameter limit."""
    for start in range(0, len(values), IN_CHUNK):
        part = values[start : start + IN_CHUNK]
        yield part, ",".join("?" * len(part))


def stored(raw: bytes) -> Envelope:
    """Decode an event read back from the log: damage there is the disk's, not a peer's."""
    try:
        return events.decode(raw)
    except InvalidEvent as exc:
        raise StorageError(
            f"an event in the log is damaged ({exc}): run 'potluck doctor --repair' to set it aside"
        ) from None


def load_heads(db: sqlite3.Connection) -> dict[bytes, Head]:
    return {
        row[0]: Head(row[1], row[2], row[3])
        for row in db.execute("SELECT author, seq, hash, hlc FROM heads")
    }


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def pending_count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM pending").fetchone()[0])


def last_arrival(db: sqlite3.Connection) -> int:
    """The local arrival number (``events.id``) of the newest event; 0 for an empty log."""
    return int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])


def get(db: sqlite3.Connection, hash_: bytes) -> Envelope | None:
    row = db.execute(
        "SELECT raw FROM events WHERE hkey = ? AND hash = ?", (hash_key(hash_), hash_)
    ).fetchone()
    return stored(row[0]) if row else None


def read_raw(db: sqlite3.Connection, author: bytes, from_seq: int, limit: int) -> list[bytes]:
    """Up to ``limit`` wire encodings of ``author``'s events from ``from_seq`` on."""
    return [
        r[0]
        for r in db.execute(
            "SELECT raw FROM events WHERE author = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (author, from_seq, limit),
        )
    ]


def read_after(
    db: sqlite3.Connection, last_id: int, limit: int
) -> list[tuple[int, bytes, int, bytes]]:
    """(id, author, seq, raw) of events that arrived after ``last_id``, in arrival order."""
    return [
        (r[0], r[1], r[2], r[3])
        for r in db.execute(
            "SELECT id, author, seq, raw FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (last_id, limit),
        )
    ]


def read_arrivals(
    db: sqlite3.Connection, wants: Mapping[bytes, int], after_id: int, limit: int
) -> tuple[int, list[tuple[bytes, int, bytes]]]:
    """(author, seq, raw) of ``wants``' authors from their wanted seq on, among the
    next ``limit`` of their events after arrival ``after_id``; with the last id read
    (``Store.read_arrivals`` says why arrival order)."""
    if len(wants) <= MAX_AUTHOR_FILTER:
        # "+author": without it SQLite took every event of those authors through
        # the (author, seq) index and sorted them by id for each slice: 20-37 ms
        # a slice of a 200,000-event log instead of 2-3 ms along the ids
        marks = ",".join("?" * len(wants))
        rows = db.execute(
            f"SELECT id, author, seq, raw FROM events WHERE id > ? "
            f"AND +author IN ({marks}) ORDER BY id LIMIT ?",
            (after_id, *wants, limit),
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT id, author, seq, raw FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
    last = rows[-1][0] if rows else after_id
    return last, [(r[1], r[2], r[3]) for r in rows if r[1] in wants and r[2] >= wants[r[1]]]


def first_arrival(db: sqlite3.Connection, wants: Mapping[bytes, int]) -> int | None:
    """The smallest arrival number among ``wants``' wanted events; None if none."""
    ids = [
        row[0]
        for author, seq in wants.items()
        for row in db.execute(
            "SELECT id FROM events WHERE author = ? AND seq >= ? ORDER BY seq LIMIT 1",
            (author, seq),
        )
    ]
    return min(ids) if ids else None


def canonical_chunk(
    db: sqlite3.Connection,
    after: tuple[int, bytes, int],
    limit: int,
    type_: str | None,
    author: bytes | None,
) -> list[bytes]:
    """The next ``limit`` events after ``after`` in canonical order (hlc, author, seq)."""
    sql = "SELECT raw FROM events WHERE (hlc, author, seq) > (?, ?, ?)"
    params: list[object] = list(after)
    if type_ is not None:
        sql += " AND type = ?"
        params.append(type_)
    if author is not None:
        sql += " AND author = ?"
        params.append(author)
    sql += " ORDER BY hlc, author, seq LIMIT ?"
    params.append(limit)
    return [row[0] for row in db.execute(sql, params)]


def resolve_prefix(db: sqlite3.Connection, prefix: str, types: Sequence[str]) -> Envelope:
    """Find the event whose hash begins with ``prefix``, as git finds a commit."""
    text = prefix.strip().lower()
    if len(text) < 6 or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(f"'{prefix}' is not an id: ids are at least 6 hex characters")
    low = bytes.fromhex((text + "0" * 64)[:64])
    high = bytes.fromhex((text + "f" * 64)[:64])
    marks = ",".join("?" * len(types))
    rows = db.execute(
        f"SELECT raw, hash FROM events WHERE hkey BETWEEN ? AND ? AND type IN ({marks}) LIMIT 50",
        (hash_key(low), hash_key(high), *types),
    ).fetchall()
    matches = [raw for raw, hash_ in rows if hash_.hex().startswith(text)]
    if not matches:
        raise NotFound(f"no {' or '.join(t.split('.')[0] for t in types)} with id {prefix}")
    if len(matches) > 1:
        raise AmbiguousId(f"id {prefix} matches {len(matches)} entries: give more characters")
    return stored(matches[0])


def resolve(
    db: sqlite3.Connection,
    hashes: Sequence[bytes],
    known: Mapping[bytes, tuple[bytes, int, int]] | None = None,
) -> dict[bytes, tuple[bytes, int, int]]:
    """Map the present ones among ``hashes`` to (author, seq, hlc).

    ``known`` answers first (events accepted but not yet inserted). Fork evidence counts
    as present: once a member equivocates, honest events name whichever branch their
    writer saw, and a node holding the other branch must still store them (the forked
    member's events are out of projections anyway).
    """
    found: dict[bytes, tuple[bytes, int, int]] = {}
    for hash_ in hashes:
        position = known.get(hash_) if known else None
        if position is not None:
            found[hash_] = position
            continue
        row = db.execute(
            "SELECT author, seq, hlc FROM events WHERE hkey = ? AND hash = ?",
            (hash_key(hash_), hash_),
        ).fetchone()
        if row is None:
            evidence = db.execute("SELECT raw FROM forks WHERE hash = ?", (hash_,)).fetchone()
            if evidence is not None:
                forked = events.decode(evidence[0])
                row = (forked.author, forked.seq, forked.hlc)
        if row is not None:
            found[hash_] = (row[0], row[1], row[2])
    return found


def forks(db: sqlite3.Connection) -> list[tuple[bytes, int, int]]:
    """(author, seq, number of conflicting versions) for every equivocation seen."""
    return [
        (r[0], r[1], r[2])
        for r in db.execute("SELECT author, seq, count(*) FROM forks GROUP BY author, seq")
    ]


def fork_points(db: sqlite3.Connection) -> dict[bytes, int]:
    """author -> the first seq at which they equivocated."""
    return dict(db.execute("SELECT author, min(seq) FROM forks GROUP BY author").fetchall())


def fork_versions(db: sqlite3.Connection, author: bytes) -> tuple[bytes, bytes] | None:
    """Two different versions of ``author``'s event at their lowest forked seq; the
    log's own version stands in if ``forks`` holds only one there."""
    row = db.execute("SELECT min(seq) FROM forks WHERE author = ?", (author,)).fetchone()
    if row is None or row[0] is None:
        return None
    seq = row[0]
    raws = {
        hash_: raw
        for hash_, raw in db.execute(
            "SELECT hash, raw FROM forks WHERE author = ? AND seq = ? ORDER BY hash LIMIT 2",
            (author, seq),
        )
    }
    if len(raws) < 2:
        logged = db.execute(
            "SELECT hash, raw FROM events WHERE author = ? AND seq = ?", (author, seq)
        ).fetchone()
        if logged is not None:
            raws.setdefault(logged[0], logged[1])
    if len(raws) < 2:
        return None
    first, second = list(raws.values())[:2]
    return first, second
