"""Salvage: carve a damaged ``log.db`` into a fresh log.

When SQLite cannot mend the file (its tables are damaged, or it is not a database any
more), the damaged file is kept as ``log.db.damaged-<time>`` and every event that can
still be found in it is fed to a fresh log through ``Store.receive``, the path a
peer's events take: the readable rows of ``events``, ``pending`` and ``forks``, then
anything shaped like an event in the raw bytes of the file and its WAL. Nothing
invented gets in: every candidate must decode canonically and pass the store's checks.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack

from eventlog import events
from eventlog.errors import InvalidEvent, PotluckError
from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import Store
from node.doctor.check import CHUNK
from node.doctor.database import (
    LOG_FILE,
    QUARANTINE_SCHEMA,
    REQUIRED_TABLES,
    connect,
    set_aside,
)
from projections.runner import Runner

_CORE_TABLES = {
    *REQUIRED_TABLES,
    "quarantine",
    "proj_meta",
    "proj_entities",
    "proj_state",
    "proj_index",
}
"""Tables a fresh log makes for itself: the store's, doctor's, the projection runner's."""
_EVENT_START = b"\xa6author\xc4\x20"
"""An event's wire bytes: a map of 9 or 10 keys whose first key is "author" (bin 32)."""


async def salvage(data_dir: Path, group: Group, now_ms: Callable[[], int]) -> list[str]:
    """Copy every readable, verifiable event of the damaged log into a fresh one."""
    path = data_dir / LOG_FILE
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_ms() / 1000))
    damaged = data_dir / f"{LOG_FILE}.damaged-{stamp}"
    fresh = data_dir / f"{LOG_FILE}.salvage"
    for suffix in ("", "-wal", "-shm"):
        _remove(Path(str(fresh) + suffix))
    # the damaged file and its WAL, byte for byte, before SQLite touches them
    for suffix in ("", "-wal"):
        original = Path(str(path) + suffix)
        if original.exists():
            _copy_private(original, Path(str(damaged) + suffix))
    tally: Counter[str] = Counter()
    seen: set[bytes] = set()
    store = await Store.open(fresh, group, now_ms=now_ms)
    try:
        await store.write(lambda db: db.execute(QUARANTINE_SCHEMA))
        old = _open_readable(path)
        sources: list[tuple[str, Iterator[object]]] = []
        if old is not None:
            sources += [
                ("events", _rows(old, "events", "raw")),
                ("pending", _rows(old, "pending", "raw", rowid=False)),
                ("forks", _rows(old, "forks", "raw", rowid=False)),
            ]
        sources += [("scan", _carve(Path(str(damaged) + suffix))) for suffix in ("", "-wal")]
        for source, rows in sources:
            batch: list[Envelope] = []
            for item in rows:
                raw = item[0] if isinstance(item, tuple) else item
                if not isinstance(raw, bytes):
                    continue
                digest = events.blake2b256(raw)
                if digest in seen:
                    continue
                seen.add(digest)
                try:
                    batch.append(events.decode(raw))
                except InvalidEvent as exc:
                    if source != "scan":  # a table row that was an event: keep it
                        await _quarantine(store, raw, "salvage", f"cannot be read ({exc})", now_ms)
                        tally["quarantined"] += 1
                    continue
                if len(batch) >= CHUNK:
                    await _receive(store, batch, source, tally, now_ms)
                    batch = []
            await _receive(store, batch, source, tally, now_ms)
        if old is not None:
            tally["tables"] += await _copy_extras(old, store)
            old.close()
        runner = Runner()
        await store.write(runner.setup)
        tally["folded"] = await store.write(runner.rebuild)
        counts = (await store.count(), await store.pending_count())
    finally:
        await store.close()
    for suffix in ("-wal", "-shm"):  # never let the new file meet the old one's WAL
        _remove(Path(str(path) + suffix))
    os.replace(fresh, path)
    _fsync(data_dir)
    return _salvage_report(damaged, counts, tally)


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to a new ``target`` readable by this user only, and fsync it: the
    copy holds the group's events as the log does (security review, finding 6)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def _salvage_report(damaged: Path, counts: tuple[int, int], tally: Counter[str]) -> list[str]:
    stored, held = counts
    lines = [
        f"kept the damaged database as {damaged.name}",
        f"saved {stored:,} verified events into a fresh log.db "
        f"({tally['stored-events']:,} from readable rows of the events table, "
        f"{tally['stored-scan']:,} found by scanning the damaged file's pages, "
        f"{tally['stored-pending'] + tally['stored-forks']:,} from held events)",
    ]
    if held:
        lines.append(
            f"holding {held:,} events until the events before them arrive: run "
            "'potluck sync' with a neighbour to fetch what was lost"
        )
    if tally["quarantined"]:
        lines.append(
            f"set aside {tally['quarantined']:,} events that could not be verified "
            "(table quarantine)"
        )
    if tally["forks"]:
        lines.append(f"kept {tally['forks']:,} conflicting versions as fork evidence")
    if tally["tables"]:
        lines.append(f"copied {tally['tables']:,} settings and known peers")
    lines.append(f"rebuilt the board, inventory and roster from {tally['folded']:,} events")
    return lines


async def _receive(
    store: Store, batch: list[Envelope], source: str, tally: Counter[str], now_ms: Callable[[], int]
) -> None:
    if not batch:
        return
    result = await store.receive(batch)
    tally[f"stored-{source}"] += len(result.stored)
    tally["forks"] += len(result.forks)
    for env, exc in result.rejected:
        if source == "scan" and isinstance(exc, InvalidEvent) and exc.code == "unknown-group":
            continue  # bytes of another group's event in a reused page: not ours to keep
        await _quarantine(store, env.raw, source, str(exc), now_ms, env.author, env.seq)
        tally["quarantined"] += 1


async def _quarantine(
    store: Store,
    raw: bytes,
    source: str,
    reason: str,
    now_ms: Callable[[], int],
    author: bytes | None = None,
    seq: int | None = None,
) -> None:
    await store.write(lambda db: set_aside(db, raw, author, seq, source, reason, now_ms()))


def _open_readable(path: Path) -> sqlite3.Connection | None:
    """The damaged file, if SQLite can still read its schema at all."""
    try:
        db = connect(path)
    except sqlite3.Error:
        return None
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        db.close()
        return None
    return db


def _rows(
    db: sqlite3.Connection, table: str, columns: str, *, rowid: bool = True
) -> Iterator[tuple[object, ...]]:
    """Every row of ``table`` that can still be read: ranges while they work, then one
    rowid at a time across the damaged part. WITHOUT ROWID tables: until the first error
    (the page scan finds the rest)."""
    if not rowid:
        with contextlib.suppress(sqlite3.DatabaseError):
            yield from db.execute(f"SELECT {columns} FROM {table}")
        return
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = None
    after = 0
    misses = 0
    while top is None or after < top:
        try:
            rows = db.execute(
                f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 256",
                (after,),
            ).fetchall()
        except sqlite3.DatabaseError:
            rows = None
        if rows:
            for row in rows:
                yield tuple(row[1:])
            after = rows[-1][0]
            misses = 0
            continue
        if rows == [] and top is None:
            return
        for rid in range(after + 1, after + 257):  # step over the damaged range
            try:
                row = db.execute(
                    f"SELECT {columns} FROM {table} WHERE rowid = ?", (rid,)
                ).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is not None:
                yield tuple(row)
                misses = 0
            else:
                misses += 1
        after += 256
        if top is None and misses > 100_000:
            return


def _carve(path: Path) -> Iterator[bytes]:
    """Every byte string in ``path`` that parses as one msgpack map starting like an
    event. Nothing is trusted: the caller decodes and the store verifies each one."""
    try:
        f = path.open("rb")
    except OSError:
        return
    with f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty file
            return
        with mm:
            pos = mm.find(_EVENT_START, 1)
            while pos != -1:
                start = pos - 1
                if mm[start] in (0x89, 0x8A):
                    raw = _one_object(mm, start)
                    if raw is not None:
                        yield raw
                pos = mm.find(_EVENT_START, pos + 1)


def _one_object(mm: mmap.mmap, start: int) -> bytes | None:
    """The msgpack object at ``start``: most events fit in 4 KiB, so try that first."""
    for size in (4096, events.MAX_EVENT_BYTES):
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2 * events.MAX_EVENT_BYTES)
        unpacker.feed(mm[start : start + size])
        try:
            unpacker.skip()
            return bytes(mm[start : start + unpacker.tell()])
        except msgpack.OutOfData:
            continue
        except Exception:  # garbage is expected here
            return None
    return None


async def _copy_extras(old: sqlite3.Connection, store: Store) -> int:
    """Settings (meta x-*) and tables of other modules (peers), where readable."""
    copied = 0
    try:
        extras = [
            (r[0], r[1])
            for r in old.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
            )
        ]
    except sqlite3.DatabaseError:
        extras = []
    projection_tables = {t.name for p in Runner().projections for t in p.TABLES}
    settings = [
        r
        for r in _rows(old, "meta", "key, value", rowid=False)
        if isinstance(r[0], str) and r[0].startswith("x-")
    ]
    if settings:
        await store.write(
            lambda db: db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", settings)
        )
        copied += len(settings)
    for name, sql in extras:
        if name in _CORE_TABLES or name in projection_tables or name.startswith("sqlite_"):
            continue
        rows = list(_rows(old, f'"{name}"', "*", rowid=False))

        def copy(
            db: sqlite3.Connection,
            name: str = name,
            sql: str = sql,
            rows: list[tuple[object, ...]] = rows,
        ) -> int:
            db.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                db.executemany(f'INSERT OR IGNORE INTO "{name}" VALUES ({marks})', rows)
            return len(rows)

        with contextlib.suppress(PotluckError):
            copied += await store.write(copy)
    return copied


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
