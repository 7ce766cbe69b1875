"""Fold states, projection rows and the index, as the runner keeps them in SQLite.

Entities are numbered on this node (``proj_entities``); by number, ``proj_state`` holds
each entity's fold state and the key of the last event in it, the projection tables
hold its rows, and ``proj_index`` the events it was folded from, so that one entity can
be re-folded from its own events. Loaded a batch at a time, written a transaction at a
time (``write_all``): the statements, not the folds, are what a busy node pays for.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import msgpack

from eventlog.store import in_parts
from projections.fold import Key, Projection, State, Table
from projections.runner.layout import ENTITY_COLUMN, all_projections, name_key

NUMBER_OF = "(SELECT id FROM proj_entities WHERE key = ? AND name = ?)"
"""SQL for an entity's number on this node, given ``number_of(name)`` as its two
parameters: how the views find one entity's rows through the tables' primary key."""

INDEXED_KEYS = (
    "WITH RECURSIVE buckets(n) AS (SELECT (SELECT min(bucket) FROM proj_index) "
    "UNION ALL SELECT n + 1 FROM buckets WHERE n < (SELECT max(bucket) FROM proj_index)) "
    "SELECT i.hlc, i.author, i.seq FROM buckets CROSS JOIN proj_index i "
    "ON i.bucket = buckets.n AND i.entity = ?"
)
"""SQL of the keys (hlc, author, seq) of the events an entity was folded from, given
its number: one seek in each bucket of ``proj_index``. Each event is folded once
between rebuilds, so it has one row; should one be folded again, at another arrival,
it has a second row (keyed by entity alone, the index used to absorb that itself)."""

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


def number_of(name: str) -> tuple[int, str]:
    """The parameters of ``NUMBER_OF`` for the entity ``name``."""
    return name_key(name), name


class Numbering:
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


class Cached:
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


class StateCache(OrderedDict[str, Cached]):
    """Fold states by entity, least recently used first (an OrderedDict: taking the
    first key of a plain dict after many deletions scans every deleted slot).

    ``on_disk``, during a rebuild, names the entities whose state was written since the
    rebuild dropped everything: any other has none, so a miss needs no query (a third
    of a rebuild's statements were such misses)."""

    on_disk: set[str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.changed: dict[str, Cached] = {}
        """Entities folded since their state was last written: the next write's work
        (finding them by a flag meant walking every cached state, 3 % of an append)."""

    def clear(self) -> None:
        super().clear()
        self.changed.clear()


def load_states(
    db: sqlite3.Connection, projection: Projection, entities: Iterable[str]
) -> dict[str, Cached]:
    """The numbers and stored states of ``entities`` (those that have a number), a few
    queries for a whole batch: most entities a batch touches first are new, and asking
    for each one alone was a sixth of the statements of a sync."""
    found: dict[str, Cached] = {}
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
                found[name] = Cached(projection, id_, None, None, ())
                continue
            hlc, author, seq = msgpack.unpackb(last, raw=False)
            found[name] = Cached(
                projection,
                id_,
                msgpack.unpackb(state, raw=False),
                (hlc, author, seq),
                tuple(t for t in tables.split(",") if t),
            )
    return found


def write_all(db: sqlite3.Connection, dirty: Sequence[tuple[str, Cached]]) -> None:
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
        saved.append((number, pack(list(cached.last)), pack(cached.state), ",".join(written)))
    for table_name, keys in deletes.items():
        db.executemany(f'DELETE FROM "{table_name}" WHERE {ENTITY_COLUMN} = ?', keys)
    for table_name, rows in inserts.items():
        db.executemany(_INSERTS[table_name], rows)
    db.executemany("INSERT OR REPLACE INTO proj_state VALUES (?, ?, ?, ?)", saved)
    db.executemany("DELETE FROM proj_state WHERE entity = ?", dropped)


def save_index(db: sqlite3.Connection, index: Sequence[tuple[int, int, int, bytes, int]]) -> None:
    """Add rows (bucket, entity, hlc, author, seq) to ``proj_index``: which events each
    entity was folded from, so it can be re-folded from them alone."""
    db.executemany("INSERT OR IGNORE INTO proj_index VALUES (?, ?, ?, ?, ?)", index)


def digest(db: sqlite3.Connection, projections: Sequence[Projection]) -> str:
    """BLAKE2b-256 over every projection row in canonical order, as hex."""
    h = hashlib.blake2b(digest_size=32)
    for projection in projections:
        for table in projection.TABLES:
            columns = ", ".join(f'"{name}"' for name, _ in table.columns)
            order = ", ".join(f'"{k}"' for k in table.key)
            h.update(pack(table.name))
            for row in db.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY {order}'):
                h.update(pack(list(row)))
    return h.hexdigest()


def pack(value: object) -> bytes:
    """msgpack bytes of ``value``, by a Packer kept for each thread (``packb`` builds
    one per call: a third of the cost of packing a fold state)."""
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(value)
    return packed


_packers = threading.local()
