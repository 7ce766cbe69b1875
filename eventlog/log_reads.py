"""Reads of the log's own tables (``events``, ``seen``) for the layers above it.

Why a module of its own: the log's schema has one owner, eventlog/store.py, and the
projections that fold the log read it too. Every statement they run on the log's
tables lives here, beside the schema's owner, so a change of the log's layout is made
and checked in one package. Plain functions on a ``sqlite3.Connection``: callers run
them on the store's database thread, inside or outside a write transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from eventlog.store import hash_key

NEVER = 1 << 63
"""The end of a span of knowledge no later ``seen`` row bounds (``known_of``)."""


def arrivals(
    db: sqlite3.Connection, after: int, end: int, limit: int
) -> list[tuple[int, bytes, bytes]]:
    """(id, raw, hash) of the events with arrival numbers after ``after`` up to ``end``,
    at most ``limit``, in arrival order: the backlog a fold behind the log takes."""
    rows: list[tuple[int, bytes, bytes]] = db.execute(
        "SELECT id, raw, hash FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        (after, end, limit),
    ).fetchall()
    return rows


def canonical_rows(
    db: sqlite3.Connection, after: tuple[int, bytes, int], limit: int
) -> list[tuple[bytes, bytes, int, bytes, int]]:
    """(raw, hash, hlc, author, seq) of at most ``limit`` events after the canonical key
    ``after`` (hlc, author, seq), in canonical order: a rebuild's next chunk, read
    through ``events_by_order`` so memory stays bounded however long the log."""
    rows: list[tuple[bytes, bytes, int, bytes, int]] = db.execute(
        "SELECT raw, hash, hlc, author, seq FROM events WHERE (hlc, author, seq) > "
        "(?, ?, ?) ORDER BY hlc, author, seq LIMIT ?",
        (*after, limit),
    ).fetchall()
    return rows


def raw_by_hash(db: sqlite3.Connection, hash_: bytes) -> bytes | None:
    """The stored bytes of the event ``hash_``; None when the log lacks it (found
    through ``hkey``, the hash's first 8 bytes, as prefix look-ups are)."""
    row = db.execute(
        "SELECT raw FROM events WHERE hkey = ? AND hash = ?", (hash_key(hash_), hash_)
    ).fetchone()
    if row is None:
        return None
    raw: bytes = row[0]
    return raw


def raw_of_keys(
    db: sqlite3.Connection, keys: str, params: Sequence[object]
) -> Iterator[tuple[bytes, bytes]]:
    """(raw, hash) of the events named by ``keys``, in canonical order: ``keys`` is a
    SELECT of (hlc, author, seq) rows, with ``params``, from an index of the log kept
    above it (projections/runner/state.py: ``INDEXED_KEYS``); a row named twice comes
    twice, one after the other.

    Why a query rather than a list of keys: as one statement, SQLite joins the index
    to ``events`` one seek at a time; fetching the keys first and then their events
    took twice as long for an entity with a long history."""
    rows: Iterator[tuple[bytes, bytes]] = db.execute(
        f"WITH k(hlc, author, seq) AS ({keys}) SELECT e.raw, e.hash FROM k "
        "JOIN events e ON e.author = k.author AND e.seq = k.seq ORDER BY k.hlc, k.author, k.seq",
        params,
    )
    return rows


def known_of(
    db: sqlite3.Connection, author: object, other: object, seq: int
) -> tuple[int, int, int]:
    """What ``author`` knew of ``other`` when writing ``seq``, from ``seen`` (their
    deps): (low, high, known), where ``known`` is the highest seq of ``other`` they had
    seen, and it holds for every seq of ``author`` from ``low`` up to, not including,
    ``high`` (the next ``seen`` row; NEVER when there is none), so a caller asking
    about consecutive events can remember the answer as a span."""
    row = db.execute(
        "SELECT seq, other_seq FROM seen WHERE author = ? AND other = ? AND seq <= ? "
        "ORDER BY seq DESC LIMIT 1",
        (author, other, seq),
    ).fetchone()
    after = db.execute(
        "SELECT seq FROM seen WHERE author = ? AND other = ? AND seq > ? ORDER BY seq LIMIT 1",
        (author, other, seq),
    ).fetchone()
    low, known = (int(row[0]), int(row[1])) if row else (0, 0)
    return low, int(after[0]) if after else NEVER, known
