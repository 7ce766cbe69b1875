"""Storing events from a peer or a bundle: what the log accepts, holds or keeps as
fork evidence (docs/events.md §validity), checked here because it needs the database.

The event belongs to this group; it continues its author's chain (seq, prev, hlc);
seq 1 is a ``member.joined`` carrying a valid membership proof; every dep is present
and below the event's hlc. An event whose predecessor or deps have not arrived is
*held* in ``pending`` (not dropped) and released when they arrive. A second event
with the same (author, seq) is an *equivocation*: both are kept in ``forks`` as
evidence and the first stays in the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventlog import events
from eventlog.body import references
from eventlog.clock import wall_ms
from eventlog.errors import InvalidEvent
from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store.append import check_first, insert_many
from eventlog.store.read import Head, load_heads, resolve, stored

MAX_FUTURE_MS = 24 * 3600 * 1000
"""An event stamped further than this beyond our clock is held until then (a peer's
clock set a year ahead must not drag every node's clock with it)."""


@dataclass(slots=True)
class ReceiveResult:
    """What ``Store.receive`` did with each event it was given."""

    stored: list[Envelope] = field(default_factory=list)
    duplicates: int = 0
    held: int = 0
    rejected: list[tuple[Envelope, InvalidEvent]] = field(default_factory=list)
    forks: list[tuple[bytes, int]] = field(default_factory=list)
    future: int = 0


def receive(
    db: sqlite3.Connection,
    group: Group,
    now_ms: Callable[[], int],
    envelopes: Sequence[Envelope],
    authentic: set[bytes],
    pending_in_memory: int,
) -> ReceiveResult:
    """Store ``envelopes`` (in hlc order; ``authentic``: the hashes whose signature is
    covered) and every held event they release, in the caller's transaction. The
    held events' index stays in memory while at most ``pending_in_memory`` are held."""
    run = _ReceiveRun(db, load_heads(db), pending_in_memory)
    due = _due(db, now_ms())
    authentic.update(e.hash for e in due)  # what was held had been authenticated
    work = list(envelopes) + due
    while work:
        released: list[Envelope] = []
        for env in work:
            outcome = _accept(run, group, now_ms, env, env.hash in authentic)
            if outcome is not None:
                released.extend(run.released_by(outcome))
        # one event can be released twice in a round (by its predecessor and by
        # the dep it waited for): take it once, or the second looks like a duplicate
        work = list({env.hash: env for env in released}.values())
        authentic.update(e.hash for e in work)  # held events were authenticated
    _store_accepted(run)
    return run.result


def authenticate(envelopes: Sequence[Envelope]) -> set[bytes]:
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


def hold(
    db: sqlite3.Connection, env: Envelope, waiting: bytes | None, not_before: int | None = None
) -> None:
    """Keep ``env`` in ``pending`` until ``waiting`` (a dep; None: its predecessor)
    arrives, or until ``not_before`` (unix ms) for one stamped too far ahead. The doctor
    holds an event back the same way when it finds a log that broke this rule."""
    # REPLACE: an event released and held again waits for something else now.
    db.execute(
        "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
        (env.hash, env.author, env.seq, waiting, env.raw, not_before),
    )


def record_fork(db: sqlite3.Connection, env: Envelope) -> None:
    """Keep ``env`` and the log's version of its (author, seq) as fork evidence."""
    db.execute(
        "INSERT OR IGNORE INTO forks SELECT author, seq, hash, raw FROM events "
        "WHERE author = ? AND seq = ?",
        (env.author, env.seq),
    )
    db.execute(
        "INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?)", (env.author, env.seq, env.hash, env.raw)
    )


class _ReceiveRun:
    """One ``receive`` transaction's working set: what the log will hold at its end.

    Why: a cold sync stores hundreds of thousands of events; asking SQLite for every
    event's existence, deps and held dependants cost six statements each. Heads, the
    events accepted in this run and an index of the held events (hash, chain position,
    what each waits for; not their bytes) answer those questions from memory.

    The index is loaded only while at most ``in_memory`` events are held: a peer whose
    clock runs a year ahead can leave any number held, and memory must not grow with
    them. Beyond that, each stored event asks the ``pending`` indexes instead.
    """

    def __init__(self, db: sqlite3.Connection, heads: dict[bytes, Head], in_memory: int) -> None:
        self.db = db
        self.heads = heads
        self.result = ReceiveResult()
        self.accepted: dict[bytes, tuple[bytes, int, int]] = {}
        self.unwritten: list[Envelope] = []
        self._held: set[bytes] = set()
        self._by_chain: dict[tuple[bytes, int], set[bytes]] = {}
        self._by_dep: dict[bytes, set[bytes]] = {}
        self._in_memory = (
            db.execute("SELECT 1 FROM pending LIMIT 1 OFFSET ?", (in_memory,)).fetchone() is None
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
        hold(self.db, env, waiting, not_before)
        if self._in_memory:
            self._index(env.hash, env.author, env.seq, waiting)

    def unhold(self, env: Envelope) -> None:
        if not self._in_memory or env.hash in self._held:
            self._held.discard(env.hash)
            self.db.execute("DELETE FROM pending WHERE hash = ?", (env.hash,))

    def released_by(self, stored_: Envelope) -> list[Envelope]:
        """Held events that ``stored_`` may unblock: the author's next, and dependants."""
        if not self._in_memory:
            rows = {
                hash_: raw
                for query, params in (
                    (
                        "SELECT hash, raw FROM pending WHERE author = ? AND seq = ?",
                        (stored_.author, stored_.seq + 1),
                    ),
                    ("SELECT hash, raw FROM pending WHERE waiting = ?", (stored_.hash,)),
                )
                for hash_, raw in self.db.execute(query, params)
            }
            return [stored(raw) for raw in rows.values()]
        hashes = (
            self._by_chain.pop((stored_.author, stored_.seq + 1), set())
            | self._by_dep.pop(stored_.hash, set())
        ) & self._held
        if not hashes:
            return []
        return [
            stored(row[0])
            for hash_ in hashes
            for row in self.db.execute("SELECT raw FROM pending WHERE hash = ?", (hash_,))
        ]


def _store_accepted(run: _ReceiveRun) -> None:
    """Write the accepted events not yet in the table, in one statement each."""
    if run.unwritten:
        insert_many(run.db, run.unwritten, run.heads, run.accepted)
        run.unwritten.clear()


def _accept(
    run: _ReceiveRun, group: Group, now_ms: Callable[[], int], env: Envelope, is_authentic: bool
) -> Envelope | None:
    """Accept ``env`` if it is valid and ready; hold, count or reject it otherwise.

    Accepted events wait in ``run.unwritten`` and are inserted together; any path
    that queries the events table for this author first writes them.
    """
    db, heads, result = run.db, run.heads, run.result
    try:
        events.check_group(env, group.id)
        if not is_authentic:
            events.verify_signature(env)
    except InvalidEvent as exc:
        result.rejected.append((env, exc))
        return None
    head = heads.get(env.author)
    if head is not None and env.seq <= head.seq:  # stored already, or an equivocation
        _store_accepted(run)
        existing = db.execute(
            "SELECT hash FROM events WHERE author = ? AND seq = ?", (env.author, env.seq)
        ).fetchone()
        if existing is not None and existing[0] == env.hash:
            result.duplicates += 1
        else:
            record_fork(db, env)
            result.forks.append((env.author, env.seq))
        return None
    ahead = wall_ms(env.hlc) - now_ms() - MAX_FUTURE_MS
    if ahead > 0:
        run.hold(env, None, not_before=now_ms() + ahead)
        result.future += 1
        return None
    if head is not None and env.seq == head.seq + 1 and env.prev != head.hash:
        _store_accepted(run)
        if _forked_before(db, env.author, env.seq):
            # the other branch of a known fork: evidence, not a protocol violation,
            # so honest peers holding that branch keep syncing everything else
            record_fork(db, env)
            result.forks.append((env.author, env.seq))
            return None
    if env.seq > (head.seq if head else 0) + 1:
        run.hold(env, None)
        result.held += 1
        return None
    try:
        if head is None:
            events.check_follows(env, None)
            check_first(group, env)
        else:
            if env.prev != head.hash:
                events.check_follows(env, _stub(head, env.author))
            events.check_hlc_above(env, head.hlc, "prev")
        named = references(env.type, env.body)
        if env.deps or named:
            wanted = (*env.deps, *named)
            found = resolve(db, wanted, run.accepted)
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


def _due(db: sqlite3.Connection, now: int) -> list[Envelope]:
    """Events held for a future stamp whose time has come."""
    rows = db.execute("SELECT raw FROM pending WHERE not_before <= ?", (now,)).fetchall()
    db.execute("UPDATE pending SET not_before = NULL WHERE not_before <= ?", (now,))
    return [stored(row[0]) for row in rows]


def _forked_before(db: sqlite3.Connection, author: bytes, seq: int) -> bool:
    return (
        db.execute(
            "SELECT 1 FROM forks WHERE author = ? AND seq < ? LIMIT 1", (author, seq)
        ).fetchone()
        is not None
    )
