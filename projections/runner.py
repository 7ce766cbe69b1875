"""The runner: keeps every projection's tables equal to a fold of the log.

It runs inside the store's write transactions (``Runner.attach(store)``): it folds each
batch the store adds and writes what changed just before the COMMIT, so events, fold
states, rows and the index move together: a node killed at any instant restarts with
projections that match its log.

Per batch: events are parsed (unknown types and bodies that fail validation are
skipped: they stay in the log and are relayed, docs/events.md §forward-compatibility),
sorted into canonical order and handed to each projection. For each entity touched, the
stored state is loaded once; an event that sorts after the entity's last key is applied
incrementally; otherwise the entity is re-folded from its own events, found through
``proj_index`` (entity -> events, in buckets of arrivals: ``INDEX_BUCKET``), never from
the whole log. Before the commit each entity folded in the transaction has its rows
replaced and its state saved, once.

``rebuild`` drops everything and streams the whole log through the same path in
canonical order; ``digest`` hashes the canonical rows so two nodes can compare.
"""

from __future__ import annotations

import gc
import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import attrgetter
from typing import NamedTuple

import msgpack

from eventlog import body as b
from eventlog.errors import InvalidEvent, StorageError
from eventlog.events import Envelope
from eventlog.store import Store, fork_points, hash_key, in_parts, last_arrival
from projections.board import Board
from projections.catalog import Catalog
from projections.fold import Causality, Event, Key, Projection, State, Table
from projections.inventory import Inventory
from projections.roster import Roster

REBUILD_CHUNK = 2000
STATE_CACHE_LIMIT = 20_000  # entities kept in memory during a rebuild before a write
LIVE_CACHE_LIMIT = 4_096
"""Entities whose fold state stays in memory between batches: the hot set (stock at the
busy places, this week's posts and shifts) is read from SQLite once, not every batch."""
RECENT_EVENTS = 8_192  # folded events kept for lookups by hash (up to twice as many)
ENTITY_COLUMN = "_entity"
NUMBER_OF = "(SELECT id FROM proj_entities WHERE key = ? AND name = ?)"
"""SQL for an entity's number on this node, given ``number_of(name)`` as its two
parameters: how the views find one entity's rows through the tables' primary key."""

_INTERNAL: tuple[tuple[str, str], ...] = (
    (
        "proj_meta",
        "CREATE TABLE IF NOT EXISTS proj_meta (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    ),
    (
        "proj_entities",
        """CREATE TABLE IF NOT EXISTS proj_entities (
    id INTEGER PRIMARY KEY,        -- this node's number for it, in order of first fold
    name TEXT NOT NULL,            -- the projection's name: 'board:<hash>', 'stock:...'
    key INTEGER NOT NULL           -- name_key(name): what look-ups by name seek
)""",
    ),
    (
        "proj_state",
        """CREATE TABLE IF NOT EXISTS proj_state (
    entity INTEGER PRIMARY KEY, last BLOB NOT NULL, state BLOB NOT NULL,
    tables TEXT NOT NULL           -- the projection tables holding its rows
)""",
    ),
    (
        "proj_index",
        """CREATE TABLE IF NOT EXISTS proj_index (
    bucket INTEGER NOT NULL,       -- arrival number // INDEX_BUCKET when folded
    entity INTEGER NOT NULL, hlc INTEGER NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (bucket, entity, hlc, author, seq)
) WITHOUT ROWID""",
    ),
)
"""The runner's own tables, (name, statement)."""
_INTERNAL_INDEXES: tuple[tuple[str, str], ...] = (
    # Not a unique index of names: a name is mostly an event hash in hex, so such an
    # index took a page of its own for most entities a commit numbered. The key is 8
    # bytes, and a node never numbers a name it finds (``_load_states``).
    ("proj_entities_key", "CREATE INDEX IF NOT EXISTS proj_entities_key ON proj_entities (key)"),
)

LAYOUT = 6
"""Version of the runner's own layout, kept in proj_meta under ``LAYOUT_KEY``; a node
that finds another rebuilds. 2: entities are numbered (``proj_entities``), so the states,
index and rows of entities folded together sit together on disk (decision 0010).
3: projection tables are clustered by entity number (WITHOUT ROWID). 4: without a
second, unique index on each table's key. 5: ``proj_index`` in buckets of arrivals
(``INDEX_BUCKET``). 6: ``proj_entities`` found by an 8-byte key of the name, not a unique
index of names. 3 to 5 are brought to 6 in place (``_migrate``)."""
INDEX_BUCKET = 4_096
"""Arrivals per bucket of ``proj_index``, whose key starts with the bucket. Keyed by
entity alone, every commit added a row at the end of each busy entity's run of rows,
and those runs are far apart: a third of a page per event appended (the stock at every
place), a third of all an append wrote. A bucket's rows sit together at the end of the
index, so a commit rewrites a few dozen pages; re-folding one entity seeks once per
bucket (250 for a million events) instead of once (decision 0013)."""
LAYOUT_KEY = "(runner)"
FORKS_KEY = "(forks)"
"""proj_meta row: ``forks_mark`` of the fork points the projections leave authors out
from. A fork recorded without a fold (a receive left to the projector) shows as a
difference: the next fold, in whichever process, rebuilds, and so does a node that
opens (``stale``); a runner that finds the mark already matching adopts the fork points
another process rebuilt for, without rebuilding again."""
CHECKPOINT_KEY = "(folded)"
"""proj_meta row: the arrival number (``events.id``) up to which the log is folded.
Events after it are the backlog a receive left to a process folding behind the log;
every fold takes the backlog first, so the folded events are always a prefix."""


def all_projections() -> tuple[Projection, ...]:
    """Every projection, in the fixed order the digest uses."""
    projections: tuple[Projection, ...] = (Catalog(), Board(), Inventory(), Roster())
    return projections


_ONE_ROW = frozenset(
    table.name
    for projection in all_projections()
    for table in projection.TABLES
    if table.key == (table.entity_column,)
)
"""Tables whose key is the entity: an entity's new row replaces its old one in place."""


def _insert_statement(table: Table) -> str:
    """INSERT for rows of ``table``; in a table of one row per entity, an upsert that
    changes the row in place (a REPLACE deleted and re-inserted it)."""
    marks = ", ".join("?" * (len(table.columns) + 1))
    statement = f'INSERT INTO "{table.name}" VALUES ({marks})'
    if table.name not in _ONE_ROW:
        return statement
    target = ", ".join(f'"{k}"' for k in (ENTITY_COLUMN, *table.key))
    changes = ", ".join(
        f'"{name}" = excluded."{name}"' for name, _ in table.columns if name not in table.key
    )
    if not changes:
        return f"{statement} ON CONFLICT ({target}) DO NOTHING"
    return f"{statement} ON CONFLICT ({target}) DO UPDATE SET {changes}"


_INSERTS = {
    table.name: _insert_statement(table)
    for projection in all_projections()
    for table in projection.TABLES
}


def to_event(env: Envelope) -> Event | None:
    """Parse an envelope for folding; None for types and bodies projections skip."""
    if isinstance(env.parsed, b.BaseBody):  # validated by this node's writer already
        return Event(env.hash, env.author, env.seq, env.hlc, env.parsed)
    if env.type not in b.TYPES:
        return None
    try:
        parsed = b.parse(env.type, env.body)
    except InvalidEvent:
        return None
    if parsed is None:
        return None
    return Event(env.hash, env.author, env.seq, env.hlc, parsed)


def _unpack_event(raw: bytes, hash_: bytes) -> Event | None:
    """An event read back from the log for a re-fold (trusted: it was checked when
    stored). Damage found here is the disk's: say so, and where to go, not a traceback."""
    try:
        fields = msgpack.unpackb(raw, raw=False)
        type_, body = fields["type"], fields["body"]
        author, seq, hlc = fields["author"], fields["seq"], fields["hlc"]
    except Exception:  # msgpack raises many types; a damaged map may lack any key
        raise StorageError(
            f"the stored event {hash_.hex()[:12]} is damaged: run 'potluck "
            "doctor --repair' to set it aside"
        ) from None
    if type_ not in b.TYPES:
        return None
    try:
        parsed = b.parse(type_, body)
    except InvalidEvent:
        return None
    if parsed is None:
        return None
    return Event(hash_, author, seq, hlc, parsed)


class Backlog(NamedTuple):
    """Events of the log after ``after`` up to ``last`` (arrival numbers), parsed."""

    after: int
    last: int
    events: list[Event]


class LogCausality:
    """``Causality`` from the store's ``seen`` table: deps give each author's knowledge.

    Answers are remembered as spans: what ``author`` knew of ``other`` holds from one
    ``seen`` row up to the next, and a batch asks about one author's consecutive events
    many times (every delta against the same count), so most questions need no query.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._spans: dict[tuple[object, object], tuple[int, int, int]] = {}

    def happened_before(self, earlier: Sequence[object], later: Sequence[object]) -> bool:
        _, e_author, e_seq = earlier
        _, l_author, l_seq = later
        assert isinstance(e_seq, int) and isinstance(l_seq, int)
        if e_author == l_author:
            return e_seq < l_seq
        return self._known(l_author, e_author, l_seq) >= e_seq

    def _known(self, author: object, other: object, seq: int) -> int:
        """The highest seq of ``other`` that ``author`` had seen when writing ``seq``."""
        span = self._spans.get((author, other))
        if span is not None and span[0] <= seq < span[1]:
            return span[2]
        row = self._db.execute(
            "SELECT seq, other_seq FROM seen WHERE author = ? AND other = ? AND seq <= ? "
            "ORDER BY seq DESC LIMIT 1",
            (author, other, seq),
        ).fetchone()
        after = self._db.execute(
            "SELECT seq FROM seen WHERE author = ? AND other = ? AND seq > ? ORDER BY seq LIMIT 1",
            (author, other, seq),
        ).fetchone()
        low, known = (row[0], row[1]) if row else (0, 0)
        self._spans[(author, other)] = (low, after[0] if after else 1 << 63, known)
        return int(known)


class Runner:
    """Materialises ``projections`` into SQLite tables; ``attach`` it to a store."""

    def __init__(self, projections: Sequence[Projection] | None = None) -> None:
        self.projections = tuple(projections or all_projections())
        self._forks: dict[bytes, int] = {}
        # States as committed, for the next batch. Valid while this connection is the
        # only writer (PRAGMA data_version unchanged) and no transaction rolled back.
        self._live = _StateCache()
        self._data_version: int | None = None
        self._recent = _RecentEvents()
        self._folded: int | None = None
        """The checkpoint this transaction moved to, written by ``before_commit``."""
        self._by_type: dict[str, tuple[Projection, ...]] = {}
        for projection in self.projections:
            for type_ in projection.TYPES:
                self._by_type[type_] = (*self._by_type.get(type_, ()), projection)

    # -- schema --------------------------------------------------------------------

    def ready(self, db: sqlite3.Connection) -> bool:
        """Read-only: True when every table exists and every projection is at its
        version, so ``setup`` has nothing to write (it also reads the fork points).

        Why: ``setup`` needs SQLite's write lock, and every ``potluck`` command opens the
        log; beside a ``potluck serve`` busy with a large sync, taking that lock just to
        find the tables already there made a read like ``potluck board`` wait."""
        present = {
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
        }
        names = [name for name, _ in (*self._schema(), *_INTERNAL_INDEXES)]
        if any(name not in present for name in names) or self.stale(db):
            return False
        if _stored_meta(db, CHECKPOINT_KEY) is None or _stored_meta(db, FORKS_KEY) is None:
            return False  # a node from before the checkpoint: ``setup`` writes them
        self._forks = fork_points(db)
        return True

    def setup(self, db: sqlite3.Connection) -> bool:
        """Create missing tables and bring a layout that changes in place up to date;
        return True when a rebuild is still needed (a projection's version changed)."""
        for _, statement in self._schema():
            db.execute(statement)
        self._migrate(db)
        for _, statement in _INTERNAL_INDEXES:
            db.execute(statement)
        self._forks = fork_points(db)
        # Before the checkpoint every write folded its own events (and rebuilt on a
        # fork), so the whole log is folded as of its forks; for a log whose projections
        # are stale, the rebuild that follows sets both.
        db.executemany(
            "INSERT OR IGNORE INTO proj_meta VALUES (?, ?)",
            [(CHECKPOINT_KEY, last_arrival(db)), (FORKS_KEY, forks_mark(self._forks))],
        )
        return self.stale(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring layouts 3 to 5 up to 6 where they are, rather than rebuild every
        projection (a minute for a large log, holding the write lock): 3 → 4 only
        dropped the index on each table's key; 4 → 5 put ``proj_index`` in buckets,
        and its rows so far all go in bucket 0, where they keep their order; 5 → 6
        gave ``proj_entities`` its keys in place of the unique index of names."""
        row = db.execute("SELECT version FROM proj_meta WHERE name = ?", (LAYOUT_KEY,)).fetchone()
        if row is None or row[0] not in (3, 4, 5):
            columns = {r[1] for r in db.execute("PRAGMA table_info(proj_entities)")}
            if "key" not in columns:  # an older layout, rebuilt next: start it afresh
                self._drop(db)
                for _, statement in self._schema():
                    db.execute(statement)
            return
        if row[0] == 3:
            for projection in self.projections:
                for table in projection.TABLES:
                    db.execute(f'DROP INDEX IF EXISTS "{table.name}_by_key"')
        if row[0] <= 4:
            _recreate(db, "proj_index", "SELECT 0, entity, hlc, author, seq FROM old")
        _recreate(db, "proj_entities", "SELECT id, name, name_key(name) FROM old")
        db.execute("INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", (LAYOUT_KEY, LAYOUT))

    def _schema(self) -> list[tuple[str, str]]:
        """(name, statement) of every table the runner keeps, its own first (their
        indexes: ``_INTERNAL_INDEXES``)."""
        schema = list(_INTERNAL)
        for projection in self.projections:
            for table in projection.TABLES:
                columns = ", ".join(f'"{name}" {kind}' for name, kind in table.columns)
                key = ", ".join(f'"{k}"' for k in table.key)
                # Clustered by entity number, so an entity's rows are replaced where
                # they sit, beside those of entities folded at the same time. No second
                # index on the key: every key names its entity (an entity's own id or
                # slug, or a row of it such as a claim of an offer), so the primary key
                # already keeps keys unique, and a second index of hashes took a page
                # of its own for most rows a commit wrote (LAYOUT 4). Look-ups by key
                # go through the entity (views.board_entry, views.claim).
                schema.append(
                    (
                        table.name,
                        f'CREATE TABLE IF NOT EXISTS "{table.name}" ('
                        f"{ENTITY_COLUMN} INTEGER NOT NULL, {columns}, "
                        f"PRIMARY KEY ({ENTITY_COLUMN}, {key})) WITHOUT ROWID",
                    )
                )
        return schema

    def stale(self, db: sqlite3.Connection) -> bool:
        """True when a projection's rows were folded by another version of it, the
        runner's tables are of another layout, or a fork was recorded that the rows do
        not leave out yet (``FORKS_KEY``)."""
        versions = dict(db.execute("SELECT name, version FROM proj_meta").fetchall())
        forks = versions.get(FORKS_KEY)
        return (
            versions.get(LAYOUT_KEY) != LAYOUT
            or any(versions.get(p.NAME) != p.VERSION for p in self.projections)
            or (forks is not None and forks != forks_mark(fork_points(db)))
        )

    def _drop(self, db: sqlite3.Connection) -> None:
        for projection in self.projections:
            for table in projection.TABLES:
                db.execute(f'DROP TABLE IF EXISTS "{table.name}"')
        for name, _ in _INTERNAL:
            db.execute(f"DROP TABLE IF EXISTS {name}")

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
        stored = _stored_meta(db, CHECKPOINT_KEY)
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
        return _arrivals(db, self._checkpoint(db, top), top, limit)

    def _ready_to_fold(self, db: sqlite3.Connection) -> bool:
        """Forget states another process may have changed; rebuild on a new fork.
        False when it rebuilt (everything is folded)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another process wrote: states may be stale
            self._live.clear()
            self._data_version = version
        forks = fork_points(db)
        stored = _stored_meta(db, FORKS_KEY)
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
        stored = _stored_meta(db, CHECKPOINT_KEY)
        return assumed if stored is None else stored

    def _fold_backlog(self, db: sqlite3.Connection, end: int) -> None:
        """Fold the stored events with arrival numbers after the checkpoint up to
        ``end``, in arrival order, ``REBUILD_CHUNK`` at a time (bounded memory)."""
        after = self._checkpoint(db, end)
        while after < end:
            chunk = _arrivals(db, after, end, REBUILD_CHUNK)
            if chunk.last == after:
                break
            self.apply(db, chunk.events, arrival=chunk.last)
            after = chunk.last
        self._folded = end

    def attach(self, store: Store) -> None:
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
            _write_all(db, list(states.changed.items()))
            states.changed.clear()
        if self._folded is not None:
            db.execute(
                "INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", (CHECKPOINT_KEY, self._folded)
            )
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
        cache: _StateCache | None = None,
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
        lookup = _event_lookup(db, recent)
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
        states: _StateCache,
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
        loaded = _load_states(db, projection, missing) if missing else {}
        numbers = _Numbering(db)
        for event, entities in touched:
            key: Key = _KEY_OF(event)
            for entity in entities:
                cached = states.get(entity)
                if cached is None:
                    cached = loaded.pop(entity, None) or _Cached(
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
        db.executemany("INSERT OR IGNORE INTO proj_index VALUES (?, ?, ?, ?, ?)", index)
        for entity in late:
            cached = states[entity]
            history = [e for e in _entity_events(db, cached.id) if self._kept(e)]
            cached.state = projection.fold(entity, history, causality)
            cached.last = history[-1].key if history else None
            states.changed[entity] = cached

    def _flush(self, db: sqlite3.Connection, states: _StateCache) -> None:
        _write_all(db, list(states.changed.items()))
        if states.on_disk is not None:
            states.on_disk.update(states)
        states.clear()

    def rebuild(self, db: sqlite3.Connection) -> int:
        """Drop every projection and fold the whole log again; return events folded.

        Canonical order means no event is late, so nothing is re-folded; states stay in
        a bounded cache (STATE_CACHE_LIMIT entities) so each is written about once.
        """
        self._live.clear()
        self._drop(db)
        self.setup(db)  # reads the fork points again
        folded = 0
        cache = _StateCache()
        cache.on_disk = set()
        with _cyclic_gc_paused():
            for chunk in _canonical_chunks(db, REBUILD_CHUNK):
                folded += len(chunk)
                self.apply(db, chunk, arrival=folded, cache=cache)
            self._flush(db, cache)
        self.mark_current(db)
        self._folded = last_arrival(db)
        return folded

    def mark_current(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO proj_meta VALUES (?, ?)",
            [
                (LAYOUT_KEY, LAYOUT),
                (FORKS_KEY, forks_mark(self._forks)),
                *((p.NAME, p.VERSION) for p in self.projections),
            ],
        )

    def digest(self, db: sqlite3.Connection) -> str:
        """BLAKE2b-256 over every projection row in canonical order, as hex."""
        h = hashlib.blake2b(digest_size=32)
        for projection in self.projections:
            for table in projection.TABLES:
                columns = ", ".join(f'"{name}"' for name, _ in table.columns)
                order = ", ".join(f'"{k}"' for k in table.key)
                h.update(_pack(table.name))
                for row in db.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY {order}'):
                    h.update(_pack(list(row)))
        return h.hexdigest()


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


def _pack(value: object) -> bytes:
    """msgpack bytes of ``value``, by a Packer kept for each thread (``packb`` builds
    one per call: a third of the cost of packing a fold state)."""
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(value)
    return packed


_packers = threading.local()


class _Numbering:
    """Numbers for entities seen for the first time, saved in ``proj_entities``.

    Why numbers: entity names are mostly event hashes, random, and keying the states,
    the index and the rows by them put each entity a batch touched on a page of its
    own, so a commit wrote about 2.4 pages an event. Numbered in order of first fold,
    the posts, claims and shifts people are busy with sit together at the end of each
    table. Read from the table each time, so another process's numbers or a rolled
    back transaction cannot leave a stale counter behind."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._next: int | None = None
        self._new: list[tuple[int, str]] = []

    def new(self, name: str) -> int:
        if self._next is None:
            self._next = self._db.execute(
                "SELECT coalesce(max(id), 0) + 1 FROM proj_entities"
            ).fetchone()[0]
            assert self._next is not None
        number = self._next
        self._next += 1
        self._new.append((number, name))
        return number

    def save(self) -> None:
        if self._new:
            self._db.executemany(
                "INSERT INTO proj_entities VALUES (?, ?, ?)",
                [(number, name, name_key(name)) for number, name in self._new],
            )
            self._new = []


class _Cached:
    """One entity's fold state between the batch that loads it and the write."""

    __slots__ = ("id", "last", "projection", "state", "tables")

    def __init__(
        self,
        projection: Projection,
        id_: int,
        state: State | None,
        last: Key | None,
        tables: tuple[str, ...],
    ) -> None:
        self.projection = projection
        self.id = id_  # its number in proj_entities
        self.state = state
        self.last = last
        self.tables = tables  # tables holding its rows now: the only ones to clear


class _StateCache(OrderedDict[str, _Cached]):
    """Fold states by entity, least recently used first (an OrderedDict: taking the
    first key of a plain dict after many deletions scans every deleted slot).

    ``on_disk``, during a rebuild, names the entities whose state was written since the
    rebuild dropped everything: any other has none, so a miss needs no query (a third
    of a rebuild's statements were such misses)."""

    on_disk: set[str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.changed: dict[str, _Cached] = {}
        """Entities folded since their state was last written: the next write's work
        (finding them by a flag meant walking every cached state, 3 % of an append)."""

    def clear(self) -> None:
        super().clear()
        self.changed.clear()


def _load_states(
    db: sqlite3.Connection, projection: Projection, entities: Iterable[str]
) -> dict[str, _Cached]:
    """The numbers and stored states of ``entities`` (those that have a number), a few
    queries for a whole batch: most entities a batch touches first are new, and asking
    for each one alone was a sixth of the statements of a sync."""
    found: dict[str, _Cached] = {}
    wanted = set(entities)
    for part, marks in in_parts([name_key(name) for name in wanted]):
        for name, id_, last, state, tables in db.execute(
            "SELECT e.name, e.id, s.last, s.state, s.tables FROM proj_entities e "
            f"LEFT JOIN proj_state s ON s.entity = e.id WHERE e.key IN ({marks})",
            part,
        ):
            if name not in wanted:  # another name with the same key
                continue
            if last is None:  # numbered, but its events left the projections (a fork)
                found[name] = _Cached(projection, id_, None, None, ())
                continue
            hlc, author, seq = msgpack.unpackb(last, raw=False)
            found[name] = _Cached(
                projection,
                id_,
                msgpack.unpackb(state, raw=False),
                (hlc, author, seq),
                tuple(t for t in tables.split(",") if t),
            )
    return found


def _write_all(db: sqlite3.Connection, dirty: Sequence[tuple[str, _Cached]]) -> None:
    """Replace the rows and save the states of ``dirty`` entities, in the caller's
    transaction, with one statement per table rather than per entity."""
    deletes: dict[str, list[tuple[int]]] = {}
    inserts: dict[str, list[tuple[object, ...]]] = {}
    saved: list[tuple[int, bytes, bytes, str]] = []
    dropped: list[tuple[int]] = []
    for entity, cached in dirty:
        number = cached.id
        if cached.state is None or cached.last is None:
            for table_name in cached.tables:
                deletes.setdefault(table_name, []).append((number,))
            dropped.append((number,))
            cached.tables = ()
            continue
        written = []
        for table_name, rows in cached.projection.rows(entity, cached.state).items():
            if rows:
                inserts.setdefault(table_name, []).extend((number, *row) for row in rows)
                written.append(table_name)
        for table_name in cached.tables:
            # a table of one row per entity is overwritten by its upsert below
            if table_name not in _ONE_ROW or table_name not in written:
                deletes.setdefault(table_name, []).append((number,))
        cached.tables = tuple(written)
        saved.append((number, _pack(list(cached.last)), _pack(cached.state), ",".join(written)))
    for table_name, keys in deletes.items():
        db.executemany(f'DELETE FROM "{table_name}" WHERE {ENTITY_COLUMN} = ?', keys)
    for table_name, rows in inserts.items():
        db.executemany(_INSERTS[table_name], rows)
    db.executemany("INSERT OR REPLACE INTO proj_state VALUES (?, ?, ?, ?)", saved)
    db.executemany("DELETE FROM proj_state WHERE entity = ?", dropped)


def _recreate(db: sqlite3.Connection, table: str, rows: str) -> None:
    """Give one of the runner's tables its current shape, filled by ``rows``: a SELECT
    from the table as it was (``old``), where ``name_key`` can be called."""
    db.execute(f"ALTER TABLE {table} RENAME TO old")
    db.execute(dict(_INTERNAL)[table])
    db.create_function("name_key", 1, name_key, deterministic=True)
    try:
        db.execute(f"INSERT INTO {table} {rows}")
    finally:
        db.create_function("name_key", 1, None)
    db.execute("DROP TABLE old")


def name_key(name: str) -> int:
    """The 8-byte key ``proj_entities`` finds an entity's name by (signed, as SQLite's
    integers are). Names may collide on it: a look-up compares the name too."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def number_of(name: str) -> tuple[int, str]:
    """The parameters of ``NUMBER_OF`` for the entity ``name``."""
    return name_key(name), name


def forks_mark(forks: Mapping[bytes, int]) -> int:
    """A 63-bit fingerprint of fork points (author -> seq), for ``FORKS_KEY``."""
    h = hashlib.blake2b(digest_size=8)
    for author, seq in sorted(forks.items()):
        h.update(author)
        h.update(seq.to_bytes(8, "big"))
    return int.from_bytes(h.digest(), "big") >> 1


def folded_through(db: sqlite3.Connection) -> int:
    """The arrival number up to which the projections are folded: what a page showing
    them compares to notice a change (node/web/page.py)."""
    stored = _stored_meta(db, CHECKPOINT_KEY)
    return last_arrival(db) if stored is None else stored


def _stored_meta(db: sqlite3.Connection, name: str) -> int | None:
    row = db.execute("SELECT version FROM proj_meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def _arrivals(db: sqlite3.Connection, after: int, end: int, limit: int) -> Backlog:
    """The events with arrival numbers after ``after`` up to ``end``, at most ``limit``,
    parsed for folding (types projections skip are left out of ``events``)."""
    rows = db.execute(
        "SELECT id, raw, hash FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        (after, end, limit),
    ).fetchall()
    parsed = [e for e in (_unpack_event(r[1], r[2]) for r in rows) if e is not None]
    return Backlog(after, rows[-1][0] if rows else after, parsed)


def _entity_events(db: sqlite3.Connection, entity: int) -> Iterator[Event]:
    """One entity's events in canonical order: one seek in each bucket of the index.

    Each event is folded once between rebuilds, so it has one row; should one be folded
    again, at another arrival, its second row is skipped here rather than applied twice
    (keyed by entity alone, the index used to absorb that itself)."""
    rows = db.execute(
        "WITH RECURSIVE buckets(n) AS (SELECT (SELECT min(bucket) FROM proj_index) "
        "UNION ALL SELECT n + 1 FROM buckets WHERE n < (SELECT max(bucket) FROM proj_index)) "
        "SELECT e.raw, e.hash FROM buckets CROSS JOIN proj_index i ON i.bucket = buckets.n "
        "AND i.entity = ? JOIN events e ON e.author = i.author AND e.seq = i.seq "
        "ORDER BY i.hlc, i.author, i.seq",
        (entity,),
    )
    last = None
    for raw, hash_ in rows:
        if hash_ == last:
            continue
        last = hash_
        event = _unpack_event(raw, hash_)
        if event is not None:
            yield event


def _event_lookup(db: sqlite3.Connection, recent: _RecentEvents) -> Callable[[bytes], Event | None]:
    def lookup(hash_: bytes) -> Event | None:
        return recent.get(hash_) or stored_event(db, hash_)

    return lookup


def stored_event(db: sqlite3.Connection, hash_: bytes) -> Event | None:
    """The log's event ``hash_`` as folds see it; None when the log lacks it or
    projections skip its type. Damage on disk is a StorageError naming the repair."""
    row = db.execute(
        "SELECT raw FROM events WHERE hkey = ? AND hash = ?", (hash_key(hash_), hash_)
    ).fetchone()
    return _unpack_event(row[0], hash_) if row else None


_KEY_OF = attrgetter("hlc", "author", "seq")
"""An event's canonical key (hlc, author, seq), read in C for the sort of every batch."""


class _RecentEvents:
    """Between RECENT_EVENTS and twice as many of the last events folded, by hash: a
    claim's steps follow it closely, and finding the claim they name was a query and a
    decode per step. Events never change, so an entry cannot go stale; the store holds
    back an event that names one it lacks, so finding one here that a rollback undid
    cannot matter. Two generations, so that forgetting is O(1)."""

    def __init__(self) -> None:
        self._new: dict[bytes, Event] = {}
        self._old: dict[bytes, Event] = {}

    def remember(self, event: Event) -> None:
        self._new[event.hash] = event
        if len(self._new) >= RECENT_EVENTS:
            self._old, self._new = self._new, {}

    def get(self, hash_: bytes) -> Event | None:
        return self._new.get(hash_) or self._old.get(hash_)

    def clear(self) -> None:
        self._new, self._old = {}, {}


def _canonical_chunks(db: sqlite3.Connection, size: int) -> Iterable[list[Event]]:
    """The whole log in canonical order, ``size`` events at a time (bounded memory)."""
    after: tuple[int, bytes, int] = (-1, b"", 0)
    while True:
        rows = db.execute(
            "SELECT raw, hash, hlc, author, seq FROM events WHERE (hlc, author, seq) > "
            "(?, ?, ?) ORDER BY hlc, author, seq LIMIT ?",
            (*after, size),
        ).fetchall()
        if not rows:
            return
        chunk = [e for e in (_unpack_event(r[0], r[1]) for r in rows) if e is not None]
        yield chunk
        last = rows[-1]
        after = (last[2], last[3], last[4])
