"""The append-only log in SQLite: the only package that touches the log's file.

Why one package behind one class: every write (events, heads, held events, fork
evidence, known peers and, through hooks, the projections) happens in one SQLite
transaction on one thread, so a node killed at any instant restarts with a log and
projections that agree (docs/reliability.md). aiosqlite owns that thread; ``Store._run``
hands it a whole batch at once instead of one statement at a time, because each hop
between the event loop and the thread costs more than the inserts themselves.

The modules: ``connection`` (settings, the write transaction, errors), ``schema`` (the
file's tables, created and checked in one place), ``append`` (this node's events),
``receive`` (a peer's: validity, held events, forks), ``read`` (queries), ``peer``
(the ``peers`` table); this module binds them to the database thread. ``append`` and
``receive`` return only after the commit reached the disk, so whatever they return is
acknowledged. Memory stays bounded: reads stream in chunks (``read_since``,
``iter_events``).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import aiosqlite
from nacl.signing import SigningKey

from eventlog import events
from eventlog import signer as signer_module
from eventlog.clock import HybridClock, system_ms
from eventlog.errors import StorageError
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof
from eventlog.store import append as append_module
from eventlog.store import peer, read, schema
from eventlog.store import receive as receive_module
from eventlog.store.append import Draft
from eventlog.store.connection import (
    BUSY_TIMEOUT_S,
    LOCK_POLL_S,
    WAL_CHECKPOINT_PAGES,
    WAL_KEEP_BYTES,
    begin_write,
    configure,
    connect,
    describe_error,
    in_transaction,
    read_only,
)
from eventlog.store.peer import PeerRow
from eventlog.store.read import (
    CHUNK,
    IN_CHUNK,
    MAX_AUTHOR_FILTER,
    Head,
    fork_points,
    hash_key,
    in_parts,
    last_arrival,
    resolve_prefix,
)
from eventlog.store.receive import MAX_FUTURE_MS, ReceiveResult
from eventlog.store.schema import SCHEMA_VERSION

__all__ = [
    "BULK_RECEIVE",
    "BUSY_TIMEOUT_S",
    "CHUNK",
    "IN_CHUNK",
    "LOCK_POLL_S",
    "MAX_AUTHOR_FILTER",
    "MAX_FUTURE_MS",
    "PENDING_IN_MEMORY",
    "SCHEMA_VERSION",
    "WAL_CHECKPOINT_PAGES",
    "WAL_KEEP_BYTES",
    "Draft",
    "Head",
    "PeerRow",
    "ProjectionHook",
    "ReceiveResult",
    "Store",
    "begin_write",
    "configure",
    "connect",
    "fork_points",
    "hash_key",
    "in_parts",
    "in_transaction",
    "last_arrival",
    "resolve_prefix",
]

T = TypeVar("T")

PENDING_IN_MEMORY = 50_000
"""Held events whose index ``receive`` keeps in memory; beyond, it asks SQLite."""
BULK_RECEIVE = 2_000
"""A receive of at least this many events may leave its folding to a process that folds
behind the log (``Store.fold_behind``): a cold sync, not a live event."""

ProjectionHook = Callable[[sqlite3.Connection, Sequence[Envelope]], None]
"""Called inside the write transaction with the events just added to the log."""


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
            if read_only(path.parent):
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
        schema.prepare(db, self.group.id)
        top = db.execute("SELECT max(hlc) FROM events").fetchone()[0]
        self.clock.observe(top or 0)

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
            raise StorageError(describe_error(exc)) from None

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
        written = await self._run(
            lambda db: append_module.append(
                db, self.group, self.clock, key, drafts, self._signed, self._run_hooks
            ),
            write=True,
        )
        self._changed()
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
        authentic = (
            {e.hash for e in envelopes} if authenticated else receive_module.authenticate(envelopes)
        )
        # Store in hlc order: an event's prev and deps have lower hlcs (validity rule),
        # so they come first and nothing inside one batch has to wait in pending.
        envelopes.sort(key=lambda e: e.key)
        fold = len(envelopes) < BULK_RECEIVE or self._behind is None or not self._behind()

        def store(db: sqlite3.Connection) -> ReceiveResult:
            result = receive_module.receive(
                db, self.group, self.now_ms, envelopes, authentic, PENDING_IN_MEMORY
            )
            if fold:  # else the projections take the events (and any fork) from the log later
                self._run_hooks(db, result.stored, forked=bool(result.forks))
            for env in result.stored:
                self.clock.observe(env.hlc)
            return result

        result = await self._run(store, write=True)
        if result.stored:
            self._changed()
        return result

    async def record_evidence(
        self, first: Envelope, second: Envelope, *, authenticated: bool = False
    ) -> bool:
        """Keep two versions of one (author, seq) as fork evidence; True if it was new.

        Why: a peer may prove an equivocation that no event of the log shows (both
        nodes hold the same first version), so the proof arrives without an event to
        ``receive``. As ``receive`` does on a fork, the rows go in with ``record_fork``
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
            receive_module.record_fork(db, first)
            receive_module.record_fork(db, second)
            if db.total_changes == before:
                return False
            self._run_hooks(db, [], forked=True)
            return True

        added = await self._run(record, write=True)
        if added:
            self._changed()
        return added

    # -- reading -------------------------------------------------------------------

    async def heads(self) -> dict[bytes, Head]:
        return await self._run(read.load_heads, write=False)

    async def vector(self) -> dict[bytes, tuple[int, bytes]]:
        """author -> (seq, head hash): what this node has, for sync."""
        return {a: (h.seq, h.hash) for a, h in (await self.heads()).items()}

    async def count(self) -> int:
        return await self._run(read.count, write=False)

    async def pending_count(self) -> int:
        return await self._run(read.pending_count, write=False)

    async def read_raw(self, author: bytes, from_seq: int, limit: int = CHUNK) -> list[bytes]:
        """Up to ``limit`` wire encodings of ``author``'s events from ``from_seq`` on."""
        return await self._run(
            functools.partial(read.read_raw, author=author, from_seq=from_seq, limit=limit),
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
                batch = [read.stored(raw) for raw in raws]
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
        return await self._run(
            functools.partial(read.read_arrivals, wants=wants, after_id=after_id, limit=limit),
            write=False,
        )

    async def first_arrival(self, wants: Mapping[bytes, int]) -> int | None:
        """The smallest arrival number among ``wants``' wanted events; None if none."""
        return await self._run(functools.partial(read.first_arrival, wants=wants), write=False)

    async def last_id(self) -> int:
        """The local arrival number of the newest event (0 for an empty log)."""
        return await self._run(last_arrival, write=False)

    async def read_after(
        self, last_id: int, limit: int = CHUNK
    ) -> list[tuple[int, bytes, int, bytes]]:
        """(id, author, seq, raw) of events that arrived after ``last_id``, in arrival order."""
        return await self._run(
            functools.partial(read.read_after, last_id=last_id, limit=limit), write=False
        )

    async def get(self, hash_: bytes) -> Envelope | None:
        return await self._run(functools.partial(read.get, hash_=hash_), write=False)

    async def resolve(self, prefix: str, types: Sequence[str]) -> Envelope:
        """The one event of ``types`` whose hash starts with hex ``prefix`` (>= 6 chars)."""
        return await self._run(
            functools.partial(resolve_prefix, prefix=prefix, types=types), write=False
        )

    async def iter_events(
        self, *, type_: str | None = None, author: bytes | None = None, chunk: int = CHUNK
    ) -> AsyncIterator[Envelope]:
        """Every event in canonical order (hlc, author, seq), streamed in chunks."""
        after: tuple[int, bytes, int] = (-1, b"", 0)
        while True:
            rows = await self._run(
                functools.partial(
                    read.canonical_chunk, after=after, limit=chunk, type_=type_, author=author
                ),
                write=False,
            )
            for row in rows:
                yield read.stored(row)
            if len(rows) < chunk:
                return
            last = read.stored(rows[-1])
            after = last.key

    async def forks(self) -> list[tuple[bytes, int, int]]:
        """(author, seq, number of conflicting versions) for every equivocation seen."""
        return await self._run(read.forks, write=False)

    async def fork_points(self) -> dict[bytes, int]:
        """author -> the lowest seq they equivocated at: where projections cut them off,
        and what sync tells a peer this node can prove (docs/protocol.md §evidence)."""
        return await self._run(fork_points, write=False)

    async def fork_evidence(self, author: bytes) -> tuple[bytes, bytes] | None:
        """Two versions (wire bytes) of ``author``'s event at their lowest fork point:
        the proof a peer needs to cut them off at the same place; None without a fork."""
        return await self._run(functools.partial(read.fork_versions, author=author), write=False)

    # -- settings and peers, kept with the log -------------------------------------

    async def get_meta(self, key: str) -> object:
        """A small setting kept with the log (e.g. where ``serve`` listens); None if unset."""
        return await self._run(functools.partial(schema.get_meta, key=key), write=False)

    async def set_meta(self, key: str, value: str | int | bytes) -> None:
        await self._run(functools.partial(schema.set_meta, key=key, value=value), write=True)

    async def remember_peer(self, address: str, found: str) -> None:
        """Keep ``address`` as one to dial, across restarts; a known one keeps how it
        was found (``found``: manual, invite, mdns, bundle)."""
        await self._run(functools.partial(peer.remember, address=address, found=found), write=True)

    async def known_peers(self) -> list[PeerRow]:
        """Every peer this node dials or was dialled by, ordered by address."""
        return await self._run(peer.known_peers, write=False)

    async def record_peer(
        self,
        address: str,
        key: bytes | None,
        *,
        connected: bool,
        error: str | None = None,
        behind: int | None = None,
        ahead: int | None = None,
        found: str = "inbound",
        remote: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Record what a session showed of the peer at ``address`` (added if new, as
        not dialled): ``now_ms`` is when it was last seen. None for ``key``,
        ``behind``, ``ahead``, ``remote`` or ``now_ms`` keeps the value known before;
        ``error`` is the last session's, None clearing it."""
        await self._run(
            functools.partial(
                peer.record,
                address=address,
                key=key,
                connected=connected,
                error=error,
                behind=behind,
                ahead=ahead,
                found=found,
                remote=remote,
                now_ms=now_ms,
            ),
            write=True,
        )

    async def mark_peers_disconnected(self) -> None:
        """Mark every peer not connected: sessions end with the process that ran them."""
        await self._run(peer.mark_disconnected, write=True)
