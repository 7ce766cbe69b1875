"""Writing this node's own events: choosing seq, prev, deps and hlc inside the write
transaction, and inserting events into the log (``insert_many``, which ``receive``
uses too: the one way events enter the ``events`` table).

Why inside the transaction: two processes appending for the same device key (a
``potluck offer post`` beside a running ``serve``) never fork it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence

from nacl.signing import SigningKey

from eventlog import events
from eventlog.body import BaseBody, references
from eventlog.clock import HybridClock
from eventlog.errors import NotAMember, UsageError
from eventlog.events import Envelope
from eventlog.identity import Group, check_membership_proof
from eventlog.store.read import Head, hash_key, in_parts, load_heads, resolve

Draft = tuple[str, Mapping[str, object]] | BaseBody
"""An event to write: a typed body, or (type, body map) for types this node lacks."""

Sign = Callable[
    [SigningKey, bytes | None, Iterator[events.Unsigned], int], Iterator[list[Envelope]]
]
"""(key, prev, run, length of run) -> the run signed in order after prev, in chunks."""

Fold = Callable[[sqlite3.Connection, Sequence[Envelope]], None]
"""Called in the transaction with each chunk of events just added (the hooks)."""


def append(
    db: sqlite3.Connection,
    group: Group,
    clock: HybridClock,
    key: SigningKey,
    drafts: Sequence[Draft],
    sign: Sign,
    fold: Fold,
) -> list[Envelope]:
    """Sign ``drafts`` as the next events of ``key``'s chain, store and ``fold`` them
    chunk by chunk (while the next chunk is signed); return them."""
    author = bytes(key.verify_key)
    heads = load_heads(db)
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
    clock.observe(top or 0)
    # deps: the heads of other authors that moved since this author last wrote,
    # so that deps plus the chain give each event's full causal past (seen table).
    deps: list[bytes] = []
    dep_hlcs: list[int] = []
    for other, other_head in heads.items():
        if other == author:
            continue
        row = db.execute(
            "SELECT other_seq FROM seen WHERE author = ? AND other = ? ORDER BY seq DESC LIMIT 1",
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
            seq, hlc = seq + 1, clock.tick(hlc, *dep_hlcs)
            yield events.unsigned(seq, hlc, type_, body, deps, parsed)
            deps, dep_hlcs = [], []

    written: list[Envelope] = []
    for chunk in sign(key, head.hash if head else None, prepared(), len(drafts)):
        # stored and folded chunk by chunk, while the signer signs the next
        if chunk[0].seq == 1:
            check_first(group, chunk[0])
        _check_named(db, chunk)
        insert_many(db, chunk, heads)
        fold(db, chunk)
        written.extend(chunk)
    return written


def insert_many(
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
        "INSERT INTO events (hkey, hash, author, seq, hlc, type, raw) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(hash_key(e.hash), e.hash, e.author, e.seq, e.hlc, e.type, e.raw) for e in batch],
    )
    moved: dict[bytes, Head] = {}
    seen: list[tuple[bytes, int, bytes, int]] = []
    for env in batch:
        moved[env.author] = heads[env.author] = Head(env.seq, env.hash, env.hlc)
        if env.deps:
            for dep_author, dep_seq, _ in resolve(db, env.deps, known).values():
                seen.append((env.author, env.seq, dep_author, dep_seq))
    db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)", seen)
    db.executemany(
        "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
        [(a, h.seq, h.hash, h.hlc) for a, h in moved.items()],
    )


def check_first(group: Group, env: Envelope) -> None:
    """An author's first event is a ``member.joined`` with a valid membership proof."""
    if env.type != "member.joined" or not check_membership_proof(
        group, env.author, env.body.get("proof")
    ):
        raise NotAMember(
            f"author {env.author.hex()[:12]} did not join with a valid membership proof"
        )


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
        if absent and len(resolve(db, absent)) < len(absent):  # fork evidence counts
            raise UsageError(f"{env.type} names an event this node does not have")
