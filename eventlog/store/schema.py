"""The tables of the log file, and the one place that creates and checks them.

Why one owner: every table of the file (the log's, and ``peers``, which sync keeps
there so ``potluck peers`` can read it while ``serve`` runs) is created here, in one
transaction, when a log opens; no other module issues DDL on the log's own tables.
The projections' tables are the runner's (projections/runner.py), versioned apart.
"""

from __future__ import annotations

import re
import sqlite3

from eventlog.errors import StorageError

SCHEMA_VERSION = 1

_LOG = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,   -- local arrival order: the projections' checkpoint
    hkey   INTEGER NOT NULL,      -- first 8 bytes of hash, order-preserving: prefix search
    hash   BLOB NOT NULL,
    author BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    hlc    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    raw    BLOB NOT NULL,
    UNIQUE (author, seq)
);
CREATE INDEX IF NOT EXISTS events_by_hkey ON events (hkey);
CREATE INDEX IF NOT EXISTS events_by_order ON events (hlc, author, seq);
CREATE TABLE IF NOT EXISTS heads (
    author BLOB PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL, hlc INTEGER NOT NULL
) WITHOUT ROWID;
-- What each author had seen of each other author when writing (from deps): the
-- causal knowledge that lets projections tell "after" from "concurrent".
CREATE TABLE IF NOT EXISTS seen (
    author BLOB NOT NULL, seq INTEGER NOT NULL, other BLOB NOT NULL, other_seq INTEGER NOT NULL,
    PRIMARY KEY (author, other, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    hash    BLOB PRIMARY KEY,
    author  BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    waiting BLOB,                -- the dep hash it waits for, NULL when it waits for seq-1
    raw     BLOB NOT NULL,
    not_before INTEGER           -- unix ms: stamped too far in the future until then
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_time ON pending (not_before);
CREATE INDEX IF NOT EXISTS pending_by_chain ON pending (author, seq);
CREATE INDEX IF NOT EXISTS pending_by_dep ON pending (waiting);
CREATE TABLE IF NOT EXISTS forks (
    author BLOB NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, raw BLOB NOT NULL,
    PRIMARY KEY (author, seq, hash)
) WITHOUT ROWID;
"""

_PEERS = """
CREATE TABLE IF NOT EXISTS peers (
    address   TEXT PRIMARY KEY,      -- host:port we dial, or 'inbound:<key hex>'
    key       BLOB,                  -- the peer's device key, once authenticated
    found     TEXT NOT NULL,         -- manual, invite, mdns, bundle, inbound
    dial      INTEGER NOT NULL,      -- 1 when we dial this address ourselves
    connected INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER,               -- unix ms of the last frame or connect
    behind    INTEGER,               -- events we hold that the peer lacks
    ahead     INTEGER,               -- events the peer holds that we lack
    last_error TEXT,
    remote    TEXT                   -- where the last session came from
)
"""
"""Known peers (eventlog/store/peer.py). Created with the log since this version; a
log from before has it only if it ever synced, so it is made on the next open."""

LOG_TABLES: tuple[str, ...] = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _LOG))
"""The tables of the log itself (not the remembered peers): what a log must hold."""
_TABLES = ("meta", "peers")
"""Tables whose presence, with the ``meta`` rows, proves the schema complete."""


def prepare(db: sqlite3.Connection, group_id: bytes) -> None:
    """Make sure the log has this schema and belongs to ``group_id``: create what is
    missing, or raise StorageError for a log of another schema or group."""
    if not _ready(db, group_id):  # the usual case needs no write lock to open
        _create(db, group_id)


def _create(db: sqlite3.Connection, group_id: bytes) -> None:
    """Create what is missing, or refuse a log of another schema or group."""
    db.execute("BEGIN IMMEDIATE")
    for statement in (*_LOG.split(";"), _PEERS):
        if statement.strip():
            db.execute(statement)
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        db.execute(
            "INSERT INTO meta VALUES ('schema', ?), ('group', ?)", (SCHEMA_VERSION, group_id)
        )
    elif row[0] != SCHEMA_VERSION:
        db.execute("ROLLBACK")
        raise StorageError(f"the log has schema {row[0]}; this Potluck reads {SCHEMA_VERSION}")
    else:
        stored = db.execute("SELECT value FROM meta WHERE key = 'group'").fetchone()
        if stored is None or stored[0] != group_id:
            db.execute("ROLLBACK")
            raise StorageError("the log belongs to another group than group.bin")
    db.execute("COMMIT")


def _ready(db: sqlite3.Connection, group_id: bytes) -> bool:
    """True when the log already has this schema and this group: tables and the
    ``meta`` rows are created in one transaction, so the rows (and ``peers``, which
    older logs may lack) prove the tables. A read, so that opening the log (every
    ``potluck`` command does) does not wait for the write lock that a busy
    ``potluck serve`` may hold for a while."""
    marks = ",".join("?" * len(_TABLES))
    present = db.execute(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
        _TABLES,
    ).fetchone()[0]
    if present < len(_TABLES):
        return False
    rows = dict(
        db.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'group')").fetchall()
    )
    return rows.get("schema") == SCHEMA_VERSION and rows.get("group") == group_id


def get_meta(db: sqlite3.Connection, key: str) -> object:
    """A setting kept with the log, as ``x-<key>`` beside the schema's rows; None if unset."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", ("x-" + key,)).fetchone()
    return None if row is None else row[0]


def set_meta(db: sqlite3.Connection, key: str, value: str | int | bytes) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("x-" + key, value))
