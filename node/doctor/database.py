"""The log's file as doctor sees it: opened raw, and the ``quarantine`` table.

Doctor reads and writes ``log.db`` with the standard ``sqlite3`` module, not through
``Store``: ``Store.open`` sets the file up (WAL, missing tables) and refuses one that is
damaged or of another schema, and those are exactly the files doctor must read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eventlog import events
from eventlog.store import BUSY_TIMEOUT_S
from eventlog.store.schema import LOG_TABLES

LOG_FILE = "log.db"  # the same name as node.app.LOG_FILE
SQLITE_HEADER = b"SQLite format 3\x00"
REQUIRED_TABLES = LOG_TABLES
"""The store's tables, read from its schema: a log without one of them is damaged."""

QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    raw_hash BLOB PRIMARY KEY,   -- BLAKE2b-256 of raw: what was set aside
    author   BLOB,               -- as the damaged row said: may itself be wrong
    seq      INTEGER,
    source   TEXT NOT NULL,      -- events, pending, forks or salvage
    reason   TEXT NOT NULL,
    at       INTEGER NOT NULL,   -- unix ms
    raw      BLOB NOT NULL
) WITHOUT ROWID
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with the standard ``sqlite3`` module: the one place doctor does.

    Why not ``Store.open``: it refuses a damaged file, and it writes to open one
    (journal mode, schema), while examine must change nothing. Transactions are the
    caller's (``isolation_level=None``); a writer elsewhere is waited for as the store
    waits. Raises ``sqlite3.Error`` when SQLite cannot open the file at all.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    except BaseException:
        db.close()
        raise
    return db


def set_aside(
    db: sqlite3.Connection,
    raw: object,
    author: object,
    seq: object,
    source: str,
    reason: str,
    at: int,
) -> None:
    """Keep what cannot be verified in ``quarantine``, with the reason: doctor never
    deletes an event. ``author`` and ``seq`` are kept only where they have the right
    type (a damaged row's columns may hold anything)."""
    data = raw if isinstance(raw, bytes) else (str(raw).encode() if raw is not None else b"")
    db.execute(
        "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            events.blake2b256(data),
            author if isinstance(author, bytes) else None,
            seq if isinstance(seq, int) else None,
            source,
            reason,
            at,
            data,
        ),
    )
