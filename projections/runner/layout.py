"""The runner's tables and their versions: what a node finds on disk, and whether its
projections can be used as they are, brought up to date in place, or must be rebuilt.

Why apart from the fold: every ``potluck`` command asks ``ready`` when it opens the
log, read-only; only a layout change or a projection's new version (``stale``) costs a
rebuild, and the layouts that differ only in shape are migrated where they are.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping, Sequence

from eventlog.store import fork_points, last_arrival
from projections.board import Board
from projections.catalog import Catalog
from projections.fold import Projection
from projections.inventory import Inventory
from projections.roster import Roster

ENTITY_COLUMN = "_entity"
"""The first column of every projection table: the entity's number (``proj_entities``)."""

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
    # bytes, and a node never numbers a name it finds (``state.load_states``).
    ("proj_entities_key", "CREATE INDEX IF NOT EXISTS proj_entities_key ON proj_entities (key)"),
)

LAYOUT = 6
"""Version of the runner's own layout, kept in proj_meta under ``LAYOUT_KEY``; a node
that finds another rebuilds. 2: entities are numbered (``proj_entities``), so the states,
index and rows of entities folded together sit together on disk (decision 0010).
3: projection tables are clustered by entity number (WITHOUT ROWID). 4: without a
second, unique index on each table's key. 5: ``proj_index`` in buckets of arrivals
(``INDEX_BUCKET``). 6: ``proj_entities`` found by an 8-byte key of the name, not a unique
index of names. 3 to 5 are brought to 6 in place (``migrate``)."""
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


def schema(projections: Sequence[Projection]) -> list[tuple[str, str]]:
    """(name, statement) of every table the runner keeps, its own first (their
    indexes: ``_INTERNAL_INDEXES``)."""
    tables = list(_INTERNAL)
    for projection in projections:
        for table in projection.TABLES:
            columns = ", ".join(f'"{name}" {kind}' for name, kind in table.columns)
            key = ", ".join(f'"{k}"' for k in table.key)
            # Clustered by entity number, so an entity's rows are replaced where they
            # sit, beside those of entities folded at the same time. No second index on
            # the key: every key names its entity (an entity's own id or slug, or a row
            # of it such as a claim of an offer), so the primary key already keeps keys
            # unique, and a second index of hashes took a page of its own for most rows
            # a commit wrote (LAYOUT 4). Look-ups by key go through the entity
            # (views.board_entry, views.claim).
            tables.append(
                (
                    table.name,
                    f'CREATE TABLE IF NOT EXISTS "{table.name}" ('
                    f"{ENTITY_COLUMN} INTEGER NOT NULL, {columns}, "
                    f"PRIMARY KEY ({ENTITY_COLUMN}, {key})) WITHOUT ROWID",
                )
            )
    return tables


def ready(db: sqlite3.Connection, projections: Sequence[Projection]) -> bool:
    """Read-only: True when every table exists, every projection is at its version and
    the checkpoint and fork mark are stored, so ``setup`` has nothing to write."""
    present = {
        row[0]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
    }
    names = [name for name, _ in (*schema(projections), *_INTERNAL_INDEXES)]
    if any(name not in present for name in names) or stale(db, projections):
        return False
    # a node from before the checkpoint: ``setup`` writes them
    return stored_meta(db, CHECKPOINT_KEY) is not None and stored_meta(db, FORKS_KEY) is not None


def setup(db: sqlite3.Connection, projections: Sequence[Projection]) -> dict[bytes, int]:
    """Create missing tables and bring a layout that changes in place up to date;
    return the fork points, as ``setup`` marks them."""
    for _, statement in schema(projections):
        db.execute(statement)
    migrate(db, projections)
    for _, statement in _INTERNAL_INDEXES:
        db.execute(statement)
    forks = fork_points(db)
    # Before the checkpoint every write folded its own events (and rebuilt on a fork),
    # so the whole log is folded as of its forks; for a log whose projections are
    # stale, the rebuild that follows sets both.
    db.executemany(
        "INSERT OR IGNORE INTO proj_meta VALUES (?, ?)",
        [(CHECKPOINT_KEY, last_arrival(db)), (FORKS_KEY, forks_mark(forks))],
    )
    return forks


def migrate(db: sqlite3.Connection, projections: Sequence[Projection]) -> None:
    """Bring layouts 3 to 5 up to 6 where they are, rather than rebuild every
    projection (a minute for a large log, holding the write lock): 3 → 4 only dropped
    the index on each table's key; 4 → 5 put ``proj_index`` in buckets, and its rows so
    far all go in bucket 0, where they keep their order; 5 → 6 gave ``proj_entities``
    its keys in place of the unique index of names."""
    row = db.execute("SELECT version FROM proj_meta WHERE name = ?", (LAYOUT_KEY,)).fetchone()
    if row is None or row[0] not in (3, 4, 5):
        columns = {r[1] for r in db.execute("PRAGMA table_info(proj_entities)")}
        if "key" not in columns:  # an older layout, rebuilt next: start it afresh
            drop(db, projections)
            for _, statement in schema(projections):
                db.execute(statement)
        return
    if row[0] == 3:
        for projection in projections:
            for table in projection.TABLES:
                db.execute(f'DROP INDEX IF EXISTS "{table.name}_by_key"')
    if row[0] <= 4:
        _recreate(db, "proj_index", "SELECT 0, entity, hlc, author, seq FROM old")
    _recreate(db, "proj_entities", "SELECT id, name, name_key(name) FROM old")
    db.execute("INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", (LAYOUT_KEY, LAYOUT))


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


def stale(db: sqlite3.Connection, projections: Sequence[Projection]) -> bool:
    """True when a projection's rows were folded by another version of it, the
    runner's tables are of another layout, or a fork was recorded that the rows do not
    leave out yet (``FORKS_KEY``)."""
    versions = dict(db.execute("SELECT name, version FROM proj_meta").fetchall())
    forks = versions.get(FORKS_KEY)
    return (
        versions.get(LAYOUT_KEY) != LAYOUT
        or any(versions.get(p.NAME) != p.VERSION for p in projections)
        or (forks is not None and forks != forks_mark(fork_points(db)))
    )


def drop(db: sqlite3.Connection, projections: Sequence[Projection]) -> None:
    """Drop every table the runner keeps: what a rebuild starts from."""
    for projection in projections:
        for table in projection.TABLES:
            db.execute(f'DROP TABLE IF EXISTS "{table.name}"')
    for name, _ in _INTERNAL:
        db.execute(f"DROP TABLE IF EXISTS {name}")


def mark_current(
    db: sqlite3.Connection, projections: Sequence[Projection], forks: Mapping[bytes, int]
) -> None:
    """Record that the tables are of this layout, each projection's rows of its
    version, folded leaving out the authors of ``forks`` from their fork points."""
    db.executemany(
        "INSERT OR REPLACE INTO proj_meta VALUES (?, ?)",
        [
            (LAYOUT_KEY, LAYOUT),
            (FORKS_KEY, forks_mark(forks)),
            *((p.NAME, p.VERSION) for p in projections),
        ],
    )


def name_key(name: str) -> int:
    """The 8-byte key ``proj_entities`` finds an entity's name by (signed, as SQLite's
    integers are). Names may collide on it: a look-up compares the name too."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def forks_mark(forks: Mapping[bytes, int]) -> int:
    """A 63-bit fingerprint of fork points (author -> seq), for ``FORKS_KEY``."""
    h = hashlib.blake2b(digest_size=8)
    for author, seq in sorted(forks.items()):
        h.update(author)
        h.update(seq.to_bytes(8, "big"))
    return int.from_bytes(h.digest(), "big") >> 1


def stored_meta(db: sqlite3.Connection, name: str) -> int | None:
    """The value of ``name`` in ``proj_meta``; None when it is not stored."""
    row = db.execute("SELECT version FROM proj_meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def store_meta(db: sqlite3.Connection, name: str, value: int) -> None:
    """Set ``name`` in ``proj_meta`` to ``value``, in the caller's transaction."""
    db.execute("INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", (name, value))


def folded_through(db: sqlite3.Connection) -> int:
    """The arrival number up to which the projections are folded: what a page showing
    them compares to notice a change (node/web/page.py)."""
    stored = stored_meta(db, CHECKPOINT_KEY)
    return last_arrival(db) if stored is None else stored
