"""How the log's SQLite file is opened and written: one set of settings and one write
transaction for every process that writes it (the store, the projector), so both
wait for each other the same way and commit with the same durability.

Durability: WAL with ``synchronous=FULL``: a write returns only after its commit
reached the disk.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from eventlog.errors import StorageError

T = TypeVar("T")

WAL_CHECKPOINT_PAGES = 10_000
WAL_KEEP_BYTES = 64 << 20
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another process's transaction (``PRAGMA busy_timeout``)."""
LOCK_POLL_S = (0.0002, 0.002)
"""First and longest pause between tries for the write lock (``begin_write``)."""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection on the log at ``path`` with the store's settings, in autocommit
    mode: writes go through ``in_transaction``. For a process that works on the log
    beside the store (the projector)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        configure(db)
    except BaseException:
        db.close()
        raise
    return db


def configure(db: sqlite3.Connection) -> None:
    """The settings of every connection that writes the log: this store's, and the
    projector's (projections/projector.py)."""
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(f"the log cannot use write-ahead logging (mode {mode})")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA cache_size = -16384")  # 16 MiB: the indexes of a busy log stay hot
    # Checkpoint the WAL every ~40 MiB instead of SQLite's 4 MiB: a checkpoint copies
    # and fsyncs every page the log rewrote, and the hot pages (index roots, busy
    # entities' states) were copied again at every one of them: appends gained 10-15%
    # (docs/performance.md). The file is cut back to 64 MiB after a checkpoint.
    db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")


def in_transaction(
    db: sqlite3.Connection,
    fn: Callable[[sqlite3.Connection], T],
    before_commit: Iterable[Callable[[sqlite3.Connection], None]] = (),
    on_rollback: Iterable[Callable[[], None]] = (),
) -> T:
    """``fn`` in one write transaction: ``before_commit`` callbacks just before its
    COMMIT, ``on_rollback`` ones when it is undone (so state kept in memory can forget
    what never reached the disk). Every writer of the log: the store, the projector."""
    begin_write(db)
    try:
        result = fn(db)
        for finish in before_commit:
            finish(db)
        db.execute("COMMIT")
    except BaseException:
        for undone in on_rollback:
            undone()
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def begin_write(db: sqlite3.Connection, timeout: float = BUSY_TIMEOUT_S) -> None:
    """BEGIN IMMEDIATE, waiting up to ``timeout`` for another process's transaction.

    Why not SQLite's busy handler: it sleeps 1, 2, 5 ... 100 ms between tries, so a
    writer waiting on another process's long transaction woke up to 100 ms after the
    lock was free. With a second process folding behind the log, the two hand the lock
    to each other all through a cold sync, and those naps cost a fifth of it. Here the
    pauses grow from 0.2 to 2 ms."""
    before = db.execute("PRAGMA busy_timeout").fetchone()[0]
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + timeout
        pause = LOCK_POLL_S[0]
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # and extended
                if not busy or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_S[1])
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(before)}")


def describe_error(exc: sqlite3.Error) -> str:
    """The one line a user reads for a failed database call: the cause and what to do."""
    text = str(exc)
    if "disk is full" in text or "database or disk is full" in text:
        return "the disk is full: free some space; nothing was written"
    if "readonly" in text or "read-only" in text:
        return "the data directory is read-only: nothing was written"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (
            f"the database is damaged ({text}): run 'potluck doctor --repair' to save "
            "every event it can still verify into a fresh log"
        )
    if "locked" in text or "busy" in text:
        return f"the database is busy ({text}): try again"
    return f"database error: {text}"


def read_only(directory: Path) -> bool:
    """True when ``directory``'s filesystem is mounted read-only."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False
