"""The ``peers`` table: the addresses sync dials and what it last saw of each peer.

Why in the log's file: ``potluck peers`` (another process) reads it while ``serve``
runs and writes it. The table is created with the log (eventlog/store/schema.py);
these are the only statements on it, run on the store's thread (``Store`` methods).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerRow:
    address: str
    key: bytes | None
    found: str
    dial: bool
    connected: bool
    last_seen: int | None
    behind: int | None
    ahead: int | None
    last_error: str | None
    remote: str | None


def known_peers(db: sqlite3.Connection) -> list[PeerRow]:
    """Every known peer, by address."""
    return [
        PeerRow(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5], r[6], r[7], r[8], r[9])
        for r in db.execute(
            "SELECT address, key, found, dial, connected, last_seen, "
            "behind, ahead, last_error, remote FROM peers "
            "ORDER BY address"
        )
    ]


def remember(db: sqlite3.Connection, address: str, found: str) -> None:
    """Add a dial address (kept across restarts); an existing one keeps how it was found."""
    db.execute(
        "INSERT OR IGNORE INTO peers (address, found, dial) VALUES (?, ?, 1)", (address, found)
    )


def record(
    db: sqlite3.Connection,
    address: str,
    key: bytes | None,
    *,
    connected: bool,
    error: str | None,
    behind: int | None,
    ahead: int | None,
    found: str,
    remote: str | None,
    now_ms: int | None,
) -> None:
    """Upsert what a session showed of a peer: None keeps the value known before,
    except for the error, which the latest session sets or clears."""
    db.execute(
        "INSERT INTO peers (address, key, found, dial, connected, last_seen, behind, "
        "ahead, last_error, remote) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (address) DO UPDATE SET key = coalesce(excluded.key, key), "
        "connected = excluded.connected, "
        "last_seen = coalesce(excluded.last_seen, last_seen), "
        "behind = coalesce(excluded.behind, behind), "
        "ahead = coalesce(excluded.ahead, ahead), last_error = excluded.last_error, "
        "remote = coalesce(excluded.remote, remote)",
        (address, key, found, int(connected), now_ms, behind, ahead, error, remote),
    )


def mark_disconnected(db: sqlite3.Connection) -> None:
    """No session survives its process: a node starting or stopping clears them all."""
    db.execute("UPDATE peers SET connected = 0")
