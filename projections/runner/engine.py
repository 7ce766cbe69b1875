"""The fold engine: keeps every projection's tables equal to a fold of the log.

It runs inside the store's write transactions (``Runner.attach(store)``): it folds each
batch the store adds and writes what changed just before the COMMIT, so events, fold
states, rows and the index move together: a node killed at any instant restarts with
projections that match its log.

Per batch: events are parsed (source.py), sorted into canonical order and handed to
each projection. For each entity touched, the stored state is loaded once; an event
that sorts after the entity's last key is applied incrementally; otherwise the entity
is re-folded from its own events, found through ``proj_index`` (entity -> events, in
buckets of arrivals: ``INDEX_BUCKET``), never from the whole log. Before the commit
each entity folded in the transaction has its rows replaced and its state saved, once
(state.py).

``rebuild`` drops everything and streams the whole log through the same path in
canonical order; ``digest`` hashes the canonical rows so two nodes can compare.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter

from eventlog.events import Envelope
from eventlog.store import fork_points, last_arrival
from projections.fold import Causality, Event, Key, Projection
from projections.log import ProjectionLog
from projections.runner import layout, state
from projections.runner.causality import LogCausality
from projections.runner.layout import (
    CHECKPOINT_KEY,
    FORKS_KEY,
    INDEX_BUCKET,
    all_projections,
    forks_mark,
    stored_meta,
)
from projections.runner.source import (
    Backlog,
    RecentEvents,
    arrivals,
    canonical_chunks,
    entity_events,
    event_lookup,
    to_event,
)
from projections.runner.state import Cached, Numbering, StateCache, load_states, write_all

REBUILD_CHUNK = 2000
STATE_CACHE_LIMIT = 20_000  # entities kept in memory during a rebuild before a write
LIVE_CACHE_LIMIT = 4_096
"""Entities whose fold state stays in memory between batches: the hot set (stock at the
busy places, this week's posts and shifts) is read from SQLite once, not every batch."""

_KEY_OF = attrgetter("hlc", "author", "seq")
"""An event's canonical key (hlc, author, seq), read in C for the sort of every batch."""


class Runner:
    """Materialises ``projections`` into SQLite tables; ``attach`` it to a store."""

    def __init__(self, projections: Sequence[Projection] | None = None) -> None:
        self.projections = tuple(projections or all_projections())
        self._forks: dict[bytes, int] = {}
        # States as committed, for the next batch. Valid while this connection is the
        # only writer (PRAGMA data_version unchanged) and no transaction rolled back.
        self._live = StateCache()
        self._data_version: int | None = None
        self._recent = RecentEvents()
        self._folded: int | None = None
        """The checkpoint this transaction moved to, written by ``before_commit``."""
        self._by_type: dict[str, tuple[Projection, ...]] = {}
        for projection in self.projections:
            for type_ in projection.TYPES:
                self._by_type[type_] = (*self._by_type.get(type_, ()), projection)

    # -- the tables (layout.py) ----------------------------------------------------

    def ready(self, db: sqlite3.Connection) -> bool:
        """Read-only: True when every table exists and every projection is at its
        version, so ``setup`` has nothing to write (it also reads the fork points).

        Why: ``setup`` needs SQLite's write lock, and every ``potluck`` command opens the
        log; beside a ``potluck serve`` busy with a large sync, taking that lock just to
        find the tables already there made a read like ``potluck board`` wait."""
        if not layout.ready(db, self.projections):
            return False
        self._forks = fork_points(db)
        return True

    def setup(self, db: sqlite3.Connection) -> bool:
        """Create missing tables and bring a layout that changes in place up to date;
        return True when a rebuild is still needed (a projection's version changed)."""
        self._forks = layout.setup(db, self.projections)
        return self.stale(db)

    def stale(self, db: sqlite3.Connection) -> bool:
        """True when a projection's rows were folded by another version of it, the
        runner's tables are of another layout, or a fork was recorded that the rows do
        not leave out yet."""
        return layout.stale(db, self.projections)

    def mark_current(self, db: sqlite3.Connection) -> None:
        """Record the layout, the projections' versions and the fork points folded."""
        layout.mark_current(db, self.projections, self._forks)

    def digest(self, db: sqlite3.Connection) -> str:
        """BLAKE2b-256 over every projection row in canonical order, as hex."""
        return state.digest(db, self.projections)

    # -- folding -------------------------------------------------------------------

    def _fold_added(self, db: sqlite3.Connection, added: Sequence[Envelope]) -> None:
        """The store hook: fold events just added to the log (or react to a new fork),
        after the backlog a receive left behind (``Store.receive(fold=False)``), so
        the folded events stay a prefix of the log in arrival order."""
        if not self._ready_to_fold(db):
            return
        top = last_arrival(db)
        self._fold_backlog(db, top - len(added))
        parsed = [e for e in map(to_event, added) if e is not None]
        self.apply(db, parsed, arrival=top)
        self._folded = top

    def behind(self, db: sqlite3.Connection) -> int:
        """Read-only: how many stored events the projections have not folded yet."""
        stored = stored_meta(db, CHECKPOINT_KEY)
        return 0 if stored is None else last_arrival(db) - stored

    def catch_up(
        self, db: sqlite3.Connection, limit: int | None = None, read: Backlog | None = None
    ) -> int:
        """Fold what the log holds beyond the projections' checkpoint, at most ``limit``
        events (all without); return how many. Run in a write transaction, as the
        store's hooks are, with ``before_commit`` before its COMMIT: the projector
        process (projections/projector.py) and a node opening after a crash do.
        ``read``: the backlog's next events, read before the transaction (``backlog``)
        so the write lock is not held for it; used if the checkpoint is where it began."""
        if not self._ready_to_fold(db):
            return 0  # rebuilt: nothing is behind
        top = last_arrival(db)
        start = self._checkpoint(db, top)
        if read is not None and read.after == start and read.last > start:
            self.apply(db, read.events, arrival=read.last)
            self._folded = read.last
            return read.last - start
        end = top if limit is None else min(top, start + limit)
        self._fold_backlog(db, end)
        return end - start

    def backlog(self, db: sqlite3.Connection, limit: int) -> Backlog:
        """Read-only: the next ``limit`` events after the checkpoint, parsed for
        ``catch_up``. Events never change, so reading them outside the write
        transaction is safe; the checkpoint is checked again inside it."""
        top = last_arrival(db)
        return arrivals(db, self._checkpoint(db, top), top, limit)

    def _ready_to_fold(self, db: sqlite3.Connection) -> bool:
        """Forget states another process may have changed; rebuild on a new fork.
        False when it rebuilt (everything is folded)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another process wrote: states may be stale
            self._live.clear()
            self._data_version = version
        forks = fork_points(db)
        stored = stored_meta(db, FORKS_KEY)
        if forks_mark(forks) != (forks_mark(self._forks) if stored is None else stored):
            # An author equivocated: their events from the fork on leave every projection
            # until people resolve it (docs/events.md §forks). Rare, so rebuild.
            self.rebuild(db)
            return False
        if forks != self._forks:  # another process rebuilt for them already
            self._forks = forks
            self._live.clear()
        return True

    def _checkpoint(self, db: sqlite3.Connection, assumed: int) -> int:
        """The arrival number up to which the log is folded: this transaction's if it
        folded already, else the stored one; ``assumed`` where none is stored (a
        runner used without ``setup``, which writes it)."""
        if self._folded is not None:
            return self._folded
        stored = stored_meta(db, CHECKPOINT_KEY)
        return assumed if stored is None else stored

    def _fold_backlog(self, db: sqlite3.Connection, end: int) -> None:
        """Fold the stored events with arrival numbers after the checkpoint up to
        ``end``, in arrival order, ``REBUILD_CHUNK`` at a time (bounded memory)."""
        after = self._checkpoint(db, end)
        while after < end:
            chunk = arrivals(db, after, end, REBUILD_CHUNK)
            if chunk.last == after:
                break
            self.apply(db, chunk.events, arrival=chunk.last)
            after = chunk.last
        self._folded = end

    def attach(self, store: ProjectionLog) -> None:
        """Fold every transaction of ``store`` that adds events, and write what each
        changed once, just before it commits (``before_commit``): an append folds its
        chunks one by one, and the busiest entities (the stock at each place) changed
        in every chunk."""
        store.add_hook(self._fold_added, self.rolled_back, self.before_commit)

    def before_commit(self, db: sqlite3.Connection) -> None:
        """Write the states and rows the transaction's folds changed; forget the least
        recently used states beyond LIVE_CACHE_LIMIT."""
        states = self._live
        if states.changed:
            write_all(db, list(states.changed.items()))
            states.changed.clear()
        if self._folded is not None:
            layout.store_meta(db, CHECKPOINT_KEY, self._folded)
            self._folded = None
        while len(states) > LIVE_CACHE_LIMIT:
            states.popitem(last=False)  # the least recently used

    def rolled_back(self) -> None:
        """The store's hook for a transaction that did not commit: forget its states."""
        self._live.clear()
        self._recent.clear()
        self._folded = None

    def _kept(self, event: Event) -> bool:
        fork = self._forks.get(event.author)
        return fork is None or event.seq < fork

    def apply(
        self,
        db: sqlite3.Connection,
        batch: Sequence[Event],
        *,
        arrival: int,
        cache: StateCache | None = None,
    ) -> None:
        """Fold ``batch`` into the live states, which ``before_commit`` writes; with
        ``cache`` (rebuild), into that cache, written when it is full or flushed.
        ``arrival``: where the batch ends in the log (a rebuild: how many events it
        has folded), which picks its bucket of ``proj_index``. Any bucket would be
        correct, since each event is folded once between rebuilds and a look-up reads
        every bucket; arrivals make the buckets fill one after another."""
        if self._forks:
            batch = [e for e in batch if self._kept(e)]
        if not batch:
            return
        ordered = sorted(batch, key=_KEY_OF)
        causality = LogCausality(db)
        recent = self._recent
        for event in ordered:
            recent.remember(event)
        lookup = event_lookup(db, recent)
        states = self._live if cache is None else cache
        mine: dict[str, list[Event]] = {p.NAME: [] for p in self.projections}
        none: tuple[Projection, ...] = ()
        for event in ordered:  # one pass sorts the batch out to the projections it concerns
            for projection in self._by_type.get(event.body.TYPE, none):
                mine[projection.NAME].append(event)
        bucket = arrival // INDEX_BUCKET
        for projection in self.projections:
            if mine[projection.NAME]:
                self._apply_one(
                    db, projection, mine[projection.NAME], causality, lookup, states, bucket
                )
        if cache is not None and len(states) > STATE_CACHE_LIMIT:
            self._flush(db, states)

    def _apply_one(
        self,
        db: sqlite3.Connection,
        projection: Projection,
        ordered: Sequence[Event],
        causality: Causality,
        lookup: Callable[[bytes], Event | None],
        states: StateCache,
        bucket: int,
    ) -> None:
        """Fold ``ordered`` (events of the projection's types) into the states."""
        late: set[str] = set()
        index: list[tuple[int, int, int, bytes, int]] = []
        entities_of, apply = projection.entities, projection.apply
        touched = [(event, tuple(entities_of(event, lookup))) for event in ordered]
        missing = {entity for _, entities in touched for entity in entities if entity not in states}
        if states.on_disk is not None:  # a rebuild: only what it wrote itself can exist
            missing &= states.on_disk
        loaded = load_states(db, projection, missing) if missing else {}
        numbers = Numbering(db)
        for event, entities in touched:
            key: Key = _KEY_OF(event)
            for entity in entities:
                cached = states.get(entity)
                if cached is None:
                    cached = loaded.pop(entity, None) or Cached(
                        projection, numbers.new(entity), None, None, ()
                    )
                    states[entity] = cached
                else:
                    states.move_to_end(entity)  # most recently used last
                index.append((bucket, cached.id, *key))
                if entity in late:
                    continue
                if cached.last is not None and key <= cached.last:
                    late.add(entity)
                    continue
                new = apply(entity, cached.state, event, causality)
                if new is None:
                    late.add(entity)
                    continue
                cached.state, cached.last = new, key
                states.changed[entity] = cached
        if not index:
            return
        numbers.save()
        state.save_index(db, index)
        for entity in late:
            cached = states[entity]
            history = [e for e in entity_events(db, cached.id) if self._kept(e)]
            cached.state = projection.fold(entity, history, causality)
            cached.last = history[-1].key if history else None
            states.changed[entity] = cached

    def _flush(self, db: sqlite3.Connection, states: StateCache) -> None:
        write_all(db, list(states.changed.items()))
        if states.on_disk is not None:
            states.on_disk.update(states)
        states.clear()

    def rebuild(self, db: sqlite3.Connection) -> int:
        """Drop every projection and fold the whole log again; return events folded.

        Canonical order means no event is late, so nothing is re-folded; states stay in
        a bounded cache (STATE_CACHE_LIMIT entities) so each is written about once.
        """
        self._live.clear()
        layout.drop(db, self.projections)
        self.setup(db)  # reads the fork points again
        folded = 0
        cache = StateCache()
        cache.on_disk = set()
        with _cyclic_gc_paused():
            for chunk in canonical_chunks(db, REBUILD_CHUNK):
                folded += len(chunk)
                self.apply(db, chunk, arrival=folded, cache=cache)
            self._flush(db, cache)
        self.mark_current(db)
        self._folded = last_arrival(db)
        return folded


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector for a bulk fold. A rebuild keeps up to
    STATE_CACHE_LIMIT states alive, every one a nest of dicts and lists, and each full
    collection walked all of them again: 15 % of a rebuild. Folds make no reference
    cycles, so reference counting frees all they drop; the collector resumes after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
