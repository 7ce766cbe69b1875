"""The append-only log in SQLite: the only module that touches the database.

Why one module: every write (events, heads, held events, fork evidence and, through
hooks, the projections) happens in one SQLite transaction on one thread, so a node
killed at any instant restarts with a log and projections that agree
(docs/reliability.md). aiosqlite owns that thread; ``Store._run`` hands it a whole
batch at once instead of one statement at a time, because each hop between the event
loop and the thread costs more than the inserts themselves.

Durability: WAL with ``synchronous=FULL``: ``append`` and ``receive`` return only after
the commit reached the disk, so whatever they return is acknowledged.

What the log accepts (docs/events.md §validity), checked here because it needs the
database: the event belongs to this group; it continues its author's chain (seq, prev,
hlc); seq 1 is a ``member.joined`` carrying a valid membership proof; every dep is
present and below the event's hlc. An event whose predecessor or deps have not arrived
is *held* in ``pending`` (not dropped) and released when they arrive. A second event
with the same (author, seq) is an *equivocation*: both are kept in ``forks`` as
evidence and the first stays in the log.

Memory stays bounded: reads stream in chunks (``read_since``, ``iter_canonical``).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiosqlite
from nacl.signing import SigningKey

from eventlog import events
from eventlog import signer as signer_module
from eventlog.body import BaseBody, references
from eventlog.clock import HybridClock, system_ms, wall_ms
from eventlog.errors import (
    AmbiguousId,
    InvalidEvent,
    NotAMember,
    NotFound,
    StorageError,
    UsageError,
)
from eventlog.events import Envelope
from eventlog.identity import Group, check_membership_proof, membership_proof

T = TypeVar("T")

SCHEMA_VERSION = 1
CHUNK = 500
MAX_AUTHOR_FILTER = 500  # authors named in one query; beyond, rows are filtered here
PENDING_IN_MEMORY = 50_000
"""Held events whose index ``receive`` keeps in memory; beyond, it asks SQLite."""
WAL_CHECKPOINT_PAGES = 10_000
WAL_KEEP_BYTES = 64 << 20
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another process's transaction (``PRAGMA busy_timeout``)."""
LOCK_POLL_S = (0.0002, 0.002)
"""First and longest pause between tries for the write lock (``begin_write``)."""
BULK_RECEIVE = 2_000
"""A receive of at least this many events may leave its folding to a process that folds
behind the log (``Store.fold_behind``): a cold sync, not a live event."""
IN_CHUNK = 500
"""Values in one ``IN (...)`` query (SQLite allows 32,766 parameters)."""
MAX_FUTURE_MS = 24 * 3600 * 1000
"""An event stamped further than this beyond our clock is held until then (a peer's
clock set a year ahead must not drag every node's clock with it)."""

ProjectionHook = Callable[[sqlite3.Connection, Sequence[Envelope]], None]
"""Called inside the write transaction with the events just added to the log."""

Draft = tuple[str, Mapping[str, object]] | BaseBody
"""An event to write: a typed body, or (type, body map) for types this node lacks."""

_SCHEMA = """
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


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes
    hlc: int


@dataclass(slots=True)
class ReceiveResult:
    """What ``Store.receive`` did with each event it was given."""

    stored: list[Envelope] = field(default_factory=list)
    duplicates: int = 0
    held: int = 0
    rejected: list[tuple[Envelope, InvalidEvent]] = field(default_factory=list)
    forks: list[tuple[bytes, int]] = field(default_factory=list)
    future: int = 0


def hash_key(hash_: bytes) -> int:
    """The first 8 bytes as a signed int whose order is the bytes' order."""
    return int.from_bytes(hash_[:8], "big") - (1 << 63)


class Store:
    """The log of one node. Open with ``await Store.open(path, group)``."""

    def __init__(
        self, conn: aiosqlite.Connection, group: Group, now_ms: Callable[[], int] = system_ms
    ) -> None:
        self._conn = conn
        self.group = group
        self.now_ms = now_ms
        self._hooks: list[ProjectionHook] = []
        self._on_rollback: list[Callable[[], None]] = []
        self._before_commit: list[Callable[[sqlite3.Connection], None]] = []
        self._listeners: list[Callable[[], None]] = []
        self._signer: signer_module.Signer | None = None
        self._behind: Callable[[], bool] | None = None
        self.clock = HybridClock(now_ms)

    @classmethod
    async def open(cls, path: Path, group: Group, now_ms: Callable[[], int] = system_ms) -> Store:
        fresh = not path.exists()
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the log at {path}: {exc}") from None
        if fresh:
            # the log holds the group's events in clear: readable by this user only
            # (SQLite gives the -wal and -shm files the same mode)
            path.chmod(0o600)
        store = cls(conn, group, now_ms)
        try:
            await store._run(store._setup, write=False)
        except StorageError:
            await conn.close()
            if _read_only(path.parent):
                raise StorageError(
                    f"the data directory {path.parent} is on a read-only disk: Potluck "
                    "writes there even to read (SQLite's write-ahead log); remount it "
                    "read-write. Nothing was written"
                ) from None
            raise
        except BaseException:
            await conn.close()
            raise
        return store

    def _setup(self, db: sqlite3.Connection) -> None:
        configure(db)
        if not self._schema_ready(db):  # the usual case needs no write lock to open
            self._create_schema(db)
        top = db.execute("SELECT max(hlc) FROM events").fetchone()[0]
        self.clock.observe(top or 0)

    def _create_schema(self, db: sqlite3.Connection) -> None:
        """Create what is missing, or refuse a log of another schema or group."""
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta VALUES ('schema', ?), ('group', ?)",
                (SCHEMA_VERSION, self.group.id),
            )
        elif row[0] != SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise StorageError(f"the log has schema {row[0]}; this Potluck reads {SCHEMA_VERSION}")
        else:
            stored = db.execute("SELECT value FROM meta WHERE key = 'group'").fetchone()
            if stored is None or stored[0] != self.group.id:
                db.execute("ROLLBACK")
                raise StorageError("the log belongs to another group than group.bin")
        db.execute("COMMIT")

    def _schema_ready(self, db: sqlite3.Connection) -> bool:
        """True when the log already has this schema and this group: tables and the
        ``meta`` rows are created in one transaction, so the rows prove the tables.
        A read, so that opening the log (every ``potluck`` command does) does not wait
        for the write lock that a busy ``potluck serve`` may hold for a while."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return False
        rows = dict(
            db.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'group')").fetchall()
        )
        return rows.get("schema") == SCHEMA_VERSION and rows.get("group") == self.group.id

    async def close(self) -> None:
        if self._signer is not None:
            self._signer.close()
            self._signer = None
        await self._conn.close()

    def add_hook(
        self,
        hook: ProjectionHook,
        on_rollback: Callable[[], None] | None = None,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Run ``hook`` inside every transaction that adds events to the log, and
        ``on_rollback`` (on the database thread) when such a transaction is undone, so
        a hook that keeps state in memory can drop what never reached the disk.

        ``before_commit`` runs at the end of every write transaction, before its
        COMMIT: a hook called several times in one transaction (an append stores and
        folds its events chunk by chunk) can write what it folded once, there."""
        self._hooks.append(hook)
        if on_rollback is not None:
            self._on_rollback.append(on_rollback)
        if before_commit is not None:
            self._before_commit.append(before_commit)

    def fold_behind(self, ready: Callable[[], bool] | None) -> None:
        """While ``ready()`` says a process folds behind the log (projections/projector.py),
        a receive of BULK_RECEIVE events or more stores them without running the hooks:
        the projections take them later, from the log, in another process, so a cold
        sync stores on one core while it folds on the other. ``on_change`` listeners
        wake that process; any write that folds takes the backlog first. None: every
        receive folds its events in its own transaction again."""
        self._behind = ready

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) after each commit that added events.

        Other processes writing the same file are not seen here: readers that must
        notice them also poll ``last_id`` (sync/peers.py does).
        """
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- the thread boundary -------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` on the database thread; with ``write``, inside one transaction.

        aiosqlite's queue is the documented-by-source way to run a callable on its
        thread (decision 0002); this is the only place that reaches for it.
        """

        def call() -> T:
            db = self._conn._conn
            if not write:
                return fn(db)
            return in_transaction(db, fn, self._before_commit, self._on_rollback)

        try:
            result: T = await self._conn._execute(call)  # type: ignore[no-untyped-call]
            return result
        except sqlite3.Error as exc:
            raise StorageError(_describe_sqlite_error(exc)) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn`` on the database thread (for projections' queries)."""
        return await self._run(fn, write=False)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (for projections' rebuild)."""
        return await self._run(fn, write=True)

    # -- writing -------------------------------------------------------------------

    async def append(self, key: SigningKey, drafts: Sequence[Draft]) -> list[Envelope]:
        """Sign and durably append this node's new events, in order; return them.

        seq, prev, deps and hlc are chosen inside the write transaction, so two
        processes appending for the same device key never fork it.
        """
        written = await self._run(lambda db: self._append(db, key, drafts), write=True)
        self._changed()
        return written

    def _append(
        self, db: sqlite3.Connection, key: SigningKey, drafts: Sequence[Draft]
    ) -> list[Envelope]:
        author = bytes(key.verify_key)
        heads = _load_heads(db)
        head = heads.get(author)
        if db.execute("SELECT 1 FROM pending WHERE author = ? LIMIT 1", (author,)).fetchone():
            # own events held for a missing predecessor (a repaired or restored log): the
            # next seq is already taken by one of them, so writing now would fork our chain
            raise UsageError(
                f"events this node wrote after #{head.seq if head else 0} are "
                "waiting for earlier ones: run 'potluck sync' with a neighbour "
                "before posting"
            )
        top = db.execute("SELECT max(hlc) FROM events").fetchone()[0]
        self.clock.observe(top or 0)
        # deps: the heads of other authors that moved since this author last wrote,
        # so that deps plus the chain give each event's full causal past (seen table).
        deps: list[bytes] = []
        dep_hlcs: list[int] = []
        for other, other_head in heads.items():
            if other == author:
                continue
            row = db.execute(
                "SELECT other_seq FROM seen WHERE author = ? AND other = ? "
                "ORDER BY seq DESC LIMIT 1",
                (author, other),
            ).fetchone()
            if row is None or row[0] < other_head.seq:
                deps.append(other_head.hash)
                dep_hlcs.append(other_head.hlc)
        deps = deps[: events.MAX_DEPS]

        def prepared() -> Iterator[events.Unsigned]:
            """The run to sign, made as it is consumed (the signing process starts on
            the first events while the rest are made)."""
            nonlocal deps, dep_hlcs
            seq, hlc = (head.seq, head.hlc) if head else (0, 0)
            for draft in drafts:
                body: Mapping[str, object]
                if isinstance(draft, BaseBody):
                    type_, body, parsed = draft.TYPE, draft.to_body(), draft
                else:
                    (type_, body), parsed = draft, None
                seq, hlc = seq + 1, self.clock.tick(hlc, *dep_hlcs)
                yield events.unsigned(seq, hlc, type_, body, deps, parsed)
                deps, dep_hlcs = [], []

        written: list[Envelope] = []
        for chunk in self._signed(key, head.hash if head else None, prepared(), len(drafts)):
            # stored and folded chunk by chunk, while the signer signs the next
            if chunk[0].seq == 1:
                _check_first(self.group, chunk[0])
            _check_named(db, chunk)
            self._insert_many(db, chunk, heads)
            self._run_hooks(db, chunk)
            written.extend(chunk)
        return written

    def _signed(
        self, key: SigningKey, prev: bytes | None, run: Iterator[events.Unsigned], length: int
    ) -> Iterator[list[Envelope]]:
        """``run`` (``length`` events) signed in order after ``prev``, in chunks: by the
        signing process (eventlog/signer.py) for a long run once it is up, else here in one
        chunk. If the process fails, what it did not sign is signed here."""
        taken: list[events.Unsigned] = []  # the part of ``run`` the signer took
        done = 0
        signer = self._signer
        if length >= signer_module.MIN_RUN and signer_module.AVAILABLE:
            # one helper, for the first key with a long run: a node writes with its own
            # device key; a store written with several (tests, the benchmarks) signs
            # for the others in place rather than start a process for each. One that
            # died is started again only if it had worked: one that cannot start
            # (no interpreter to run, a broken install) is not tried at every append
            if signer is None or (not signer.alive and signer.key == key and signer.worked):
                signer = self._signer = signer_module.Signer(key)
            if signer.key == key and signer.ready():
                try:
                    for chunk in signer.sign(self.group.id, prev, run, taken):
                        done += len(chunk)
                        prev = chunk[-1].hash
                        yield chunk
                except signer_module.SignerFailed:
                    pass  # signed here from where it stopped; started again next time
        rest = [*taken[done:], *run]
        if rest:
            yield events.seal_run(key, self.group.id, prev, rest)

    def first_event_body(self, name: str, author: bytes) -> dict[str, object]:
        """The body of ``member.joined`` with this author's membership proof."""
        return {"name": name, "proof": membership_proof(self.group, author)}

    def _insert_many(
        self,
        db: sqlite3.Connection,
        batch: Sequence[Envelope],
        heads: dict[bytes, Head],
        known: Mapping[bytes, tuple[bytes, int, int]] | None = None,
    ) -> None:
        """Insert events that are already validated, and move their authors' heads.

        ``known``: hash -> (author, seq, hlc) of events not yet in the table (the rest
        of a batch being received), so their deps resolve without a query.
        """
        db.executemany(
            "INSERT INTO events (hkey, hash, author, seq, hlc, type, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(hash_key(e.hash), e.hash, e.author, e.seq, e.hlc, e.type, e.raw) for e in batch],
        )
        moved: dict[bytes, Head] = {}
        seen: list[tuple[bytes, int, bytes, int]] = []
        for env in batch:
            moved[env.author] = heads[env.author] = Head(env.seq, env.hash, env.hlc)
            if env.deps:
                for dep_author, dep_seq, _ in _resolve(db, env.deps, known).values():
                    seen.append((env.author, env.seq, dep_author, dep_seq))
        db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)", seen)
        db.executemany(
            "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
            [(a, h.seq, h.hash, h.hlc) for a, h in moved.items()],
        )

    def _run_hooks(
        self, db: sqlite3.Connection, added: Sequence[Envelope], *, forked: bool = False
    ) -> None:
        """Run the hooks for events just added, or for a new fork (which changes what
        projections may show even when nothing was added)."""
        if added or forked:
            for hook in self._hooks:
                hook(db, added)

    async def receive(
        self, batch: Iterable[Envelope], *, authenticated: bool = False
    ) -> ReceiveResult:
        """Store events from a peer or a bundle; idempotent; durable on return.

        Signatures: a run of one author's events that chain by prev is authenticated
        by the signature of its last event (docs/protocol.md §batch); a run whose last
        signature fails falls back to checking each event. ``authenticated`` says the
        caller already did that (the sync core verifies every batch it hands over).
        """
        envelopes = sorted({e.hash: e for e in batch}.values(), key=lambda e: (e.author, e.seq))
        authentic = {e.hash for e in envelopes} if authenticated else _authenticate(envelopes)
        # Store in hlc order: an event's prev and deps have lower hlcs (validity rule),
        # so they come first and nothing inside one batch has to wait in pending.
        envelopes.sort(key=lambda e: e.key)
        fold = len(envelopes) < BULK_RECEIVE or self._behind is None or not self._behind()
        result = await self._run(
            lambda db: self._receive(db, envelopes, authentic, fold), write=True
        )
        if result.stored:
            self._changed()
        return result

    def _receive(
        self,
        db: sqlite3.Connection,
        envelopes: list[Envelope],
        authentic: set[bytes],
        fold: bool = True,
    ) -> ReceiveResult:
        run = _ReceiveRun(db, _load_heads(db))
        due = _due(db, self.now_ms())
        authentic.update(e.hash for e in due)  # what was held had been authenticated
        work = list(envelopes) + due
        while work:
            released: list[Envelope] = []
            for env in work:
                outcome = self._accept(run, env, env.hash in authentic)
                if outcome is not None:
                    released.extend(run.released_by(outcome))
            # one event can be released twice in a round (by its predecessor and by
            # the dep it waited for): take it once, or the second looks like a duplicate
            work = list({env.hash: env for env in released}.values())
            authentic.update(e.hash for e in work)  # held events were authenticated
        self._store_accepted(run)
        result = run.result
        if fold:  # else the projections take the events (and any fork) from the log later
            self._run_hooks(db, result.stored, forked=bool(result.forks))
        for env in result.stored:
            self.clock.observe(env.hlc)
        return result

    def _store_accepted(self, run: _ReceiveRun) -> None:
        """Write the accepted events not yet in the table, in one statement each."""
        if run.unwritten:
            self._insert_many(run.db, run.unwritten, run.heads, run.accepted)
            run.unwritten.clear()

    def _accept(self, run: _ReceiveRun, env: Envelope, is_authentic: bool) -> Envelope | None:
        """Accept ``env`` if it is valid and ready; hold, count or reject it otherwise.

        Accepted events wait in ``run.unwritten`` and are inserted together; any path
        that queries the events table for this author first writes them.
        """
        db, heads, result = run.db, run.heads, run.result
        try:
            events.check_group(env, self.group.id)
            if not is_authentic:
                events.verify_signature(env)
        except InvalidEvent as exc:
            result.rejected.append((env, exc))
            return None
        head = heads.get(env.author)
        if head is not None and env.seq <= head.seq:  # stored already, or an equivocation
            self._store_accepted(run)
            existing = db.execute(
                "SELECT hash FROM events WHERE author = ? AND seq = ?", (env.author, env.seq)
            ).fetchone()
            if existing is not None and existing[0] == env.hash:
                result.duplicates += 1
            else:
                _record_fork(db, env)
                result.forks.append((env.author, env.seq))
            return None
        ahead = wall_ms(env.hlc) - self.now_ms() - MAX_FUTURE_MS
        if ahead > 0:
            run.hold(env, None, not_before=self.now_ms() + ahead)
            result.future += 1
            return None
        if head is not None and env.seq == head.seq + 1 and env.prev != head.hash:
            self._store_accepted(run)
            if _forked_before(db, env.author, env.seq):
                # the other branch of a known fork: evidence, not a protocol violation,
                # so honest peers holding that branch keep syncing everything else
                _record_fork(db, env)
                result.forks.append((env.author, env.seq))
                return None
        if env.seq > (head.seq if head else 0) + 1:
            run.hold(env, None)
            result.held += 1
            return None
        try:
            if head is None:
                events.check_follows(env, None)
                _check_first(self.group, env)
            else:
                if env.prev != head.hash:
                    events.check_follows(env, _stub(head, env.author))
                events.check_hlc_above(env, head.hlc, "prev")
            named = references(env.type, env.body)
            if env.deps or named:
                wanted = (*env.deps, *named)
                found = _resolve(db, wanted, run.accepted)
                missing = [d for d in wanted if d not in found]
                if missing:
                    run.hold(env, missing[0])
                    result.held += 1
                    return None
                for dep, (_, _, dep_hlc) in found.items():  # all in the causal past
                    events.check_hlc_above(
                        env, dep_hlc, "dep" if dep in env.deps else "the event it names"
                    )
        except InvalidEvent as exc:
            result.rejected.append((env, exc))
            run.unhold(env)
            return None
        heads[env.author] = Head(env.seq, env.hash, env.hlc)
        run.accepted[env.hash] = (env.author, env.seq, env.hlc)
        run.unwritten.append(env)
        result.stored.append(env)
        run.unhold(env)
        return env

    # -- reading -------------------------------------------------------------------

    async def heads(self) -> dict[bytes, Head]:
        return await self._run(_load_heads, write=False)

    async def vector(self) -> dict[bytes, tuple[int, bytes]]:
        """author -> (seq, head hash): what this node has, for sync."""
        return {a: (h.seq, h.hash) for a, h in (await self.heads()).items()}

    async def count(self) -> int:
        return int(
            await self._run(
                lambda db: db.execute("SELECT count(*) FROM events").fetchone()[0], write=False
            )
        )

    async def read_raw(self, author: bytes, from_seq: int, limit: int = CHUNK) -> list[bytes]:
        """Up to ``limit`` wire encodings of ``author``'s events from ``from_seq`` on."""
        return await self._run(
            lambda db: [
                r[0]
                for r in db.execute(
                    "SELECT raw FROM events WHERE author = ? AND seq >= ? ORDER BY seq LIMIT ?",
                    (author, from_seq, limit),
                )
            ],
            write=False,
        )

    async def read_since(
        self, vector: Mapping[bytes, int], chunk: int = CHUNK
    ) -> AsyncIterator[list[Envelope]]:
        """Stream what a peer with ``vector`` (author -> seq) lacks, author by author."""
        for author, head in (await self.heads()).items():
            seq = vector.get(author, 0) + 1
            while seq <= head.seq:
                raws = await self.read_raw(author, seq, chunk)
                if not raws:
                    break
                batch = [_stored(raw) for raw in raws]
                yield batch
                seq = batch[-1].seq + 1

    async def read_arrivals(
        self, wants: Mapping[bytes, int], after_id: int, limit: int = CHUNK
    ) -> tuple[int, list[tuple[bytes, int, bytes]]]:
        """What a peer lacks, in the order this node stored it: (author, seq, raw) of
        ``wants``' authors from their wanted seq on, among the next ``limit`` of their
        events after arrival number ``after_id``; with the last arrival number read.

        Why arrival order: every event's prev and deps arrived here before it, so a
        receiver taking them in this order never has to hold one back (author by
        author, most of a multi-author log waited in ``pending``).
        """

        def read(db: sqlite3.Connection) -> tuple[int, list[tuple[bytes, int, bytes]]]:
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

        return await self._run(read, write=False)

    async def first_arrival(self, wants: Mapping[bytes, int]) -> int | None:
        """The smallest arrival number among ``wants``' wanted events; None if none."""

        def find(db: sqlite3.Connection) -> int | None:
            ids = [
                row[0]
                for author, seq in wants.items()
                for row in db.execute(
                    "SELECT id FROM events WHERE author = ? AND seq >= ? ORDER BY seq LIMIT 1",
                    (author, seq),
                )
            ]
            return min(ids) if ids else None

        return await self._run(find, write=False)

    async def last_id(self) -> int:
        """The local arrival number of the newest event (0 for an empty log)."""
        return await self._run(last_arrival, write=False)

    async def read_after(
        self, last_id: int, limit: int = CHUNK
    ) -> list[tuple[int, bytes, int, bytes]]:
        """(id, author, seq, raw) of events that arrived after ``last_id``, in arrival order."""
        return await self._run(
            lambda db: [
                (r[0], r[1], r[2], r[3])
                for r in db.execute(
                    "SELECT id, author, seq, raw FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (last_id, limit),
                )
            ],
            write=False,
        )

    async def get(self, hash_: bytes) -> Envelope | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT raw FROM events WHERE hkey = ? AND hash = ?", (hash_key(hash_), hash_)
            ).fetchone(),
            write=False,
        )
        return _stored(row[0]) if row else None

    async def resolve(self, prefix: str, types: Sequence[str]) -> Envelope:
        """The one event of ``types`` whose hash starts with hex ``prefix`` (>= 6 chars)."""
        return await self._run(lambda db: resolve_prefix(db, prefix, types), write=False)

    async def iter_events(
        self, *, type_: str | None = None, author: bytes | None = None, chunk: int = CHUNK
    ) -> AsyncIterator[Envelope]:
        """Every event in canonical order (hlc, author, seq), streamed in chunks."""
        after: tuple[int, bytes, int] = (-1, b"", 0)
        while True:
            rows = await self._run(
                functools.partial(
                    _canonical_chunk, after=after, limit=chunk, type_=type_, author=author
                ),
                write=False,
            )
            for row in rows:
                yield _stored(row)
            if len(rows) < chunk:
                return
            last = _stored(rows[-1])
            after = last.key

    async def forks(self) -> list[tuple[bytes, int, int]]:
        """(author, seq, number of conflicting versions) for every equivocation seen."""
        return await self._run(
            lambda db: [
                (r[0], r[1], r[2])
                for r in db.execute("SELECT author, seq, count(*) FROM forks GROUP BY author, seq")
            ],
            write=False,
        )

    async def fork_points(self) -> dict[bytes, int]:
        """author -> the lowest seq they equivocated at: where projections cut them off,
        and what sync tells a peer this node can prove (docs/protocol.md §evidence)."""
        return await self._run(fork_points, write=False)

    async def fork_evidence(self, author: bytes) -> tuple[bytes, bytes] | None:
        """Two versions (wire bytes) of ``author``'s event at their lowest fork point:
        the proof a peer needs to cut them off at the same place; None without a fork."""
        return await self._run(lambda db: _fork_versions(db, author), write=False)

    async def record_evidence(
        self, first: Envelope, second: Envelope, *, authenticated: bool = False
    ) -> bool:
        """Keep two versions of one (author, seq) as fork evidence; True if it was new.

        Why: a peer may prove an equivocation that no event of the log shows (both
        nodes hold the same first version), so the proof arrives without an event to
        ``receive``. As ``receive`` does on a fork, the rows go in with ``_record_fork``
        and the hooks run (with no events) in the same transaction, so projections
        leave the author out from the fork point on as of this commit. Evidence
        already held writes nothing and returns False: callers relay only what is new.
        ``authenticated``: the caller verified both signatures (the sync core does).
        Raises InvalidEvent for a version of another group or with a bad signature,
        ValueError when the two are not different versions of one (author, seq).
        """
        if (first.author, first.seq) != (second.author, second.seq) or first.hash == second.hash:
            raise ValueError("fork evidence is two different versions of one (author, seq)")
        for env in (first, second):
            events.check_group(env, self.group.id)
            if not authenticated:
                events.verify_signature(env)

        def record(db: sqlite3.Connection) -> bool:
            before = db.total_changes
            _record_fork(db, first)
            _record_fork(db, second)
            if db.total_changes == before:
                return False
            self._run_hooks(db, [], forked=True)
            return True

        added = await self._run(record, write=True)
        if added:
            self._changed()
        return added

    async def get_meta(self, key: str) -> object:
        """A small setting kept with the log (e.g. where ``serve`` listens); None if unset."""
        row = await self._run(
            lambda db: db.execute("SELECT value FROM meta WHERE key = ?", ("x-" + key,)).fetchone(),
            write=False,
        )
        return None if row is None else row[0]

    async def set_meta(self, key: str, value: str | int | bytes) -> None:
        await self._run(
            lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("x-" + key, value)),
            write=True,
        )

    async def pending_count(self) -> int:
        return int(
            await self._run(
                lambda db: db.execute("SELECT count(*) FROM pending").fetchone()[0], write=False
            )
        )


class _ReceiveRun:
    """One ``receive`` transaction's working set: what the log will hold at its end.

    Why: a cold sync stores hundreds of thousands of events; asking SQLite for every
    event's existence, deps and held dependants cost six statements each. Heads, the
    events accepted in this run and an index of the held events (hash, chain position,
    what each waits for; not their bytes) answer those questions from memory.

    The index is loaded only while at most PENDING_IN_MEMORY events are held: a peer
    whose clock runs a year ahead can leave any number held, and memory must not grow
    with them. Beyond that, each stored event asks the ``pending`` indexes instead.
    """

    def __init__(self, db: sqlite3.Connection, heads: dict[bytes, Head]) -> None:
        self.db = db
        self.heads = heads
        self.result = ReceiveResult()
        self.accepted: dict[bytes, tuple[bytes, int, int]] = {}
        self.unwritten: list[Envelope] = []
        self._held: set[bytes] = set()
        self._by_chain: dict[tuple[bytes, int], set[bytes]] = {}
        self._by_dep: dict[bytes, set[bytes]] = {}
        self._in_memory = (
            db.execute("SELECT 1 FROM pending LIMIT 1 OFFSET ?", (PENDING_IN_MEMORY,)).fetchone()
            is None
        )
        if self._in_memory:
            for hash_, author, seq, waiting in db.execute(
                "SELECT hash, author, seq, waiting FROM pending"
            ):
                self._index(hash_, author, seq, waiting)

    def _index(self, hash_: bytes, author: bytes, seq: int, waiting: bytes | None) -> None:
        self._held.add(hash_)
        self._by_chain.setdefault((author, seq), set()).add(hash_)
        if waiting is not None:
            self._by_dep.setdefault(waiting, set()).add(hash_)

    def hold(self, env: Envelope, waiting: bytes | None, not_before: int | None = None) -> None:
        _hold(self.db, env, waiting, not_before)
        if self._in_memory:
            self._index(env.hash, env.author, env.seq, waiting)

    def unhold(self, env: Envelope) -> None:
        if not self._in_memory or env.hash in self._held:
            self._held.discard(env.hash)
            self.db.execute("DELETE FROM pending WHERE hash = ?", (env.hash,))

    def released_by(self, stored: Envelope) -> list[Envelope]:
        """Held events that ``stored`` may unblock: the author's next, and dependants."""
        if not self._in_memory:
            rows = {
                hash_: raw
                for query, params in (
                    (
                        "SELECT hash, raw FROM pending WHERE author = ? AND seq = ?",
                        (stored.author, stored.seq + 1),
                    ),
                    ("SELECT hash, raw FROM pending WHERE waiting = ?", (stored.hash,)),
                )
                for hash_, raw in self.db.execute(query, params)
            }
            return [_stored(raw) for raw in rows.values()]
        hashes = (
            self._by_chain.pop((stored.author, stored.seq + 1), set())
            | self._by_dep.pop(stored.hash, set())
        ) & self._held
        if not hashes:
            return []
        return [
            _stored(row[0])
            for hash_ in hashes
            for row in self.db.execute("SELECT raw FROM pending WHERE hash = ?", (hash_,))
        ]


def _canonical_chunk(
    db: sqlite3.Connection,
    after: tuple[int, bytes, int],
    limit: int,
    type_: str | None,
    author: bytes | None,
) -> list[bytes]:
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
    return _stored(matches[0])


def _stored(raw: bytes) -> Envelope:
    """Decode an event read back from the log: damage there is the disk's, not a peer's."""
    try:
        return events.decode(raw)
    except InvalidEvent as exc:
        raise StorageError(
            f"an event in the log is damaged ({exc}): run 'potluck doctor --repair' to set it aside"
        ) from None


def _load_heads(db: sqlite3.Connection) -> dict[bytes, Head]:
    return {
        row[0]: Head(row[1], row[2], row[3])
        for row in db.execute("SELECT author, seq, hash, hlc FROM heads")
    }


def _resolve(
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


def _check_first(group: Group, env: Envelope) -> None:
    if env.type != "member.joined" or not check_membership_proof(
        group, env.author, env.body.get("proof")
    ):
        raise NotAMember(
            f"author {env.author.hex()[:12]} did not join with a valid membership proof"
        )


def _stub(head: Head, author: bytes) -> Envelope:
    """A stand-in for the stored head, enough for ``check_follows``."""
    return Envelope(
        group=b"",
        author=author,
        seq=head.seq,
        prev=None,
        deps=(),
        hlc=head.hlc,
        type="",
        body={},
        sig=b"",
        raw=b"",
        hash=head.hash,
    )


def _hold(
    db: sqlite3.Connection, env: Envelope, waiting: bytes | None, not_before: int | None = None
) -> None:
    # REPLACE: an event released and held again waits for something else now.
    db.execute(
        "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
        (env.hash, env.author, env.seq, waiting, env.raw, not_before),
    )


def _due(db: sqlite3.Connection, now: int) -> list[Envelope]:
    """Events held for a future stamp whose time has come."""
    rows = db.execute("SELECT raw FROM pending WHERE not_before <= ?", (now,)).fetchall()
    db.execute("UPDATE pending SET not_before = NULL WHERE not_before <= ?", (now,))
    return [_stored(row[0]) for row in rows]


def in_parts(values: Sequence[T]) -> Iterator[tuple[Sequence[T], str]]:
    """``values`` in parts of at most IN_CHUNK, each with the ``?,?,...`` of its
    ``IN (...)``: one query for a whole batch, within SQLite's parameter limit."""
    for start in range(0, len(values), IN_CHUNK):
        part = values[start : start + IN_CHUNK]
        yield part, ",".join("?" * len(part))


def _check_named(db: sqlite3.Connection, batch: Sequence[Envelope]) -> None:
    """This node's events may only name events it has (receivers would hold them).
    One query for the whole batch: a quarter of a busy append's events name one."""
    written = {env.hash for env in batch}
    naming: list[tuple[Envelope, list[bytes]]] = []
    for env in batch:
        parsed = env.parsed if isinstance(env.parsed, BaseBody) else None
        named = [h for h in references(env.type, env.body, parsed) if h not in written]
        if named:
            naming.append((env, named))
    if not naming:
        return
    wanted = {h for _, named in naming for h in named}
    present: set[bytes] = set()
    for part, marks in in_parts(list({hash_key(h) for h in wanted})):
        present.update(
            row[0]
            for row in db.execute(f"SELECT hash FROM events WHERE hkey IN ({marks})", part)
            if row[0] in wanted
        )
    for env, named in naming:
        absent = [h for h in named if h not in present]
        if absent and len(_resolve(db, absent)) < len(absent):  # fork evidence counts
            raise UsageError(f"{env.type} names an event this node does not have")


def _forked_before(db: sqlite3.Connection, author: bytes, seq: int) -> bool:
    return (
        db.execute(
            "SELECT 1 FROM forks WHERE author = ? AND seq < ? LIMIT 1", (author, seq)
        ).fetchone()
        is not None
    )


def _record_fork(db: sqlite3.Connection, env: Envelope) -> None:
    db.execute(
        "INSERT OR IGNORE INTO forks SELECT author, seq, hash, raw FROM events "
        "WHERE author = ? AND seq = ?",
        (env.author, env.seq),
    )
    db.execute(
        "INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?)", (env.author, env.seq, env.hash, env.raw)
    )


def fork_points(db: sqlite3.Connection) -> dict[bytes, int]:
    """author -> the first seq at which they equivocated."""
    return dict(db.execute("SELECT author, min(seq) FROM forks GROUP BY author").fetchall())


def _fork_versions(db: sqlite3.Connection, author: bytes) -> tuple[bytes, bytes] | None:
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


def _authenticate(envelopes: Sequence[Envelope]) -> set[bytes]:
    """Hashes whose signature is covered: by its own, or by a later event chaining to it.

    ``envelopes`` is sorted by (author, seq). Pure CPU; runs before the transaction.
    """
    good: set[bytes] = set()
    run: list[Envelope] = []

    def close_run() -> None:
        if not run:
            return
        try:
            events.verify_signature(run[-1])
            good.update(e.hash for e in run)
        except InvalidEvent:
            for env in run:  # slow path: find the events that do verify
                try:
                    events.verify_signature(env)
                    good.add(env.hash)
                except InvalidEvent:
                    pass
        run.clear()

    for env in envelopes:
        if run and not (
            env.author == run[-1].author and env.seq == run[-1].seq + 1 and env.prev == run[-1].hash
        ):
            close_run()
        run.append(env)
    close_run()
    return good


def _read_only(directory: Path) -> bool:
    """True when ``directory``'s filesystem is mounted read-only."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def last_arrival(db: sqlite3.Connection) -> int:
    """The local arrival number (``events.id``) of the newest event; 0 for an empty log."""
    return int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])


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


def _describe_sqlite_error(exc: sqlite3.Error) -> str:
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
