"""This machine's raw ceilings, to quote next to Potluck's own figures in the same run.

Each function times one primitive the node is built on, with nothing of Potluck around
it: SQLite inserts in the log's shape, Ed25519 sign/verify, msgpack pack/unpack of an
event-sized map. A Potluck figure is then read as a ratio to the ceiling measured on the
same machine in the same run (the design's ``limits.md``: these machines are
noisy, 1.5x between passes is normal, so absolute numbers from another run mean little).

Usable as a module (``from bench.ceiling import sqlite_insert_rate, median_of``) and as a
script::

    python bench/ceiling.py [--rows 100000] [--runs 3]

which prints one ``NAME: VALUE UNIT`` line per figure, each the median of ``--runs`` runs.
Only the standard library, msgpack and PyNaCl are used.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

import msgpack
from nacl.signing import SigningKey

BLOB_SIZE = 200
"""Bytes per stored row and per signed message: about one small event."""

ROWS_PER_TRANSACTION = 1_000
AUTHORS = 10
"""Rows are written author by author in seq order, the way sync delivers them."""

POOL = 1_000
"""Distinct random payloads cycled through, so building input costs little and RAM stays flat."""

_SCHEMA = """
CREATE TABLE event (
    id     INTEGER PRIMARY KEY,
    author BLOB    NOT NULL,
    seq    INTEGER NOT NULL,
    raw    BLOB    NOT NULL,
    UNIQUE (author, seq)
)
"""


def sqlite_insert_rate(n: int) -> float:
    """Rows per second for ``n`` inserts of ~200 B into a fresh file in a temp directory.

    Rowid primary key plus ``UNIQUE(author, seq)``, WAL, ``synchronous=FULL``, one
    transaction per 1,000 rows. Timed from the first ``BEGIN`` to the last ``COMMIT``;
    creating the file and the table is not timed.
    """
    _require_positive(n)
    blobs = [os.urandom(BLOB_SIZE) for _ in range(POOL)]
    authors = [os.urandom(32) for _ in range(AUTHORS)]
    per_author = -(-n // AUTHORS)
    with tempfile.TemporaryDirectory(prefix="potluck-ceiling-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            insert = "INSERT INTO event (author, seq, raw) VALUES (?, ?, ?)"
            batch: list[tuple[bytes, int, bytes]] = []
            written = 0
            start = time.perf_counter()
            for author in authors:
                for seq in range(1, per_author + 1):
                    if written == n:
                        break
                    batch.append((author, seq, blobs[written % POOL]))
                    written += 1
                    if len(batch) == ROWS_PER_TRANSACTION:
                        _commit(conn, insert, batch)
                        batch = []
            if batch:
                _commit(conn, insert, batch)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
    return n / elapsed


def _commit(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[bytes, int, bytes]]) -> None:
    conn.execute("BEGIN")
    conn.executemany(sql, rows)
    conn.execute("COMMIT")


def ed25519_rates(n: int) -> tuple[float, float]:
    """(signatures per second, verifications per second) for ``n`` 200 B messages.

    Detached signatures, as ``node.events`` makes them; one key, one ``VerifyKey``
    object reused, so this is the primitive's cost without key parsing.
    """
    _require_positive(n)
    key = SigningKey.generate()
    verify_key = key.verify_key
    messages = [os.urandom(BLOB_SIZE) for _ in range(min(n, POOL))]
    count = len(messages)

    start = time.perf_counter()
    for i in range(n):
        key.sign(messages[i % count])
    sign_elapsed = time.perf_counter() - start

    signatures = [key.sign(m).signature for m in messages]
    start = time.perf_counter()
    for i in range(n):
        verify_key.verify(messages[i % count], signatures[i % count])
    verify_elapsed = time.perf_counter() - start
    return n / sign_elapsed, n / verify_elapsed


def event_like_map() -> dict[str, object]:
    """A map shaped like a signed event envelope, about 260 B when packed."""
    return {
        "author": os.urandom(32),
        "body": {"item": "rice", "qty": 12},
        "deps": [],
        "group": os.urandom(32),
        "hlc": 0x0193_0A1B_2C3D_0004,
        "prev": os.urandom(32),
        "seq": 4_211,
        "sig": os.urandom(64),
        "type": "stock.adjusted",
        "v": 1,
    }


def msgpack_rates(n: int) -> tuple[float, float]:
    """(packs per second, unpacks per second) of ``event_like_map()``, ``n`` times each.

    Options as in ``node.events``: ``use_bin_type=True`` to pack, ``raw=False`` and
    ``strict_map_key=True`` to unpack.
    """
    _require_positive(n)
    value = event_like_map()
    packb = msgpack.packb
    unpackb = msgpack.unpackb

    start = time.perf_counter()
    for _ in range(n):
        packb(value, use_bin_type=True)
    pack_elapsed = time.perf_counter() - start

    packed = packb(value, use_bin_type=True)
    start = time.perf_counter()
    for _ in range(n):
        unpackb(packed, raw=False, strict_map_key=True)
    unpack_elapsed = time.perf_counter() - start
    return n / pack_elapsed, n / unpack_elapsed


@overload
def median_of(fn: Callable[[], float], runs: int) -> float: ...


@overload
def median_of(fn: Callable[[], tuple[float, float]], runs: int) -> tuple[float, float]: ...


def median_of(
    fn: Callable[[], float] | Callable[[], tuple[float, float]], runs: int
) -> float | tuple[float, float]:
    """Call ``fn`` ``runs`` times; the median result (per position when it returns a pair)."""
    _require_positive(runs)
    results = [fn() for _ in range(runs)]
    first = results[0]
    if isinstance(first, tuple):
        pairs = [r for r in results if isinstance(r, tuple)]
        return (
            statistics.median(p[0] for p in pairs),
            statistics.median(p[1] for p in pairs),
        )
    return statistics.median(r for r in results if not isinstance(r, tuple))


def _require_positive(value: int) -> None:
    if value < 1:
        raise ValueError(f"expected a positive count, got {value}")


def _line(name: str, value: float, unit: str) -> str:
    return f"{name}: {value:,.0f} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="SQLite rows per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--sigs", type=int, default=20_000, help="Ed25519 ops per run")
    parser.add_argument("--maps", type=int, default=200_000, help="msgpack ops per run")
    args = parser.parse_args(argv)
    for name in ("rows", "runs", "sigs", "maps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    rows = median_of(lambda: sqlite_insert_rate(args.rows), args.runs)
    print(_line("sqlite insert (raw)", rows, "rows/s"), flush=True)
    sign, verify = median_of(lambda: ed25519_rates(args.sigs), args.runs)
    print(_line("ed25519 sign", sign, "sigs/s"), flush=True)
    print(_line("ed25519 verify", verify, "verifies/s"), flush=True)
    pack, unpack = median_of(lambda: msgpack_rates(args.maps), args.runs)
    print(_line("msgpack pack", pack, "maps/s"), flush=True)
    print(_line("msgpack unpack", unpack, "maps/s"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
