"""A node whose projections were written by an older layout of the runner's tables
(``LAYOUT`` in projections/runner.py): changed in place where that is enough, rebuilt
otherwise, and either way the same rows as a fresh fold."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

import msgpack
import pytest

from eventlog import body as b
from eventlog.identity import Group
from node.app import LOG_FILE, Node
from projections import views
from projections.board import Board
from projections.runner import LAYOUT, LAYOUT_KEY, Runner, name_key

PROBE = "(probe)"
"""A proj_meta row planted by the test: a rebuild drops proj_meta, a migration keeps it."""


async def filled(data_dir: Path) -> str:
    """A node with an offer, a claim and stock; returns its digest."""
    node = await Node.init(data_dir, "Ana", Group.new("Street pantry"))
    try:
        await node.post(b.LocationDefined(slug="hall", name="Church hall", kind="pantry"))
        await node.post(
            b.ItemDefined(slug="rice", name="Rice", unit="kg", category="food", storage="ambient")
        )
        await node.post(b.StockAdjusted(item="rice", location="hall", delta=5, reason="donation"))
        soup = await node.post(b.OfferPosted(title="Soup", quantity=4))
        await node.post(b.ClaimMade(target=soup.hash, quantity=1))
        return await node.store.read(node.runner.digest)
    finally:
        await node.close()


def offer_id(db: sqlite3.Connection) -> bytes:
    [(id_,)] = db.execute("SELECT id FROM board_entries").fetchall()
    return bytes(id_)


def key_indexes(db: sqlite3.Connection) -> set[str]:
    return {
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%_by_key'"
        )
    }


def index_rows(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    """``proj_index`` by entity name, in any layout (numbers and buckets aside)."""
    return sorted(
        db.execute(
            "SELECT e.name, i.hlc, i.author, i.seq FROM proj_index i "
            "JOIN proj_entities e ON e.id = i.entity"
        ).fetchall()
    )


def reshape(db: sqlite3.Connection, table: str, create: str, columns: str) -> None:
    db.execute(f"ALTER TABLE {table} RENAME TO current")
    db.execute(create)
    db.execute(f"INSERT INTO {table} SELECT {columns} FROM current")
    db.execute("DROP TABLE current")


def as_written_by_layout(path: Path, layout: int) -> None:
    """Make the projections look written by ``layout``: up to 5, ``proj_entities``
    had a unique index of names and no keys; up to 4, ``proj_index`` was keyed by
    entity alone, without buckets; 3 also had a unique index on each projection
    table's key."""
    with sqlite3.connect(path) as db:
        reshape(
            db,
            "proj_entities",
            "CREATE TABLE proj_entities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
            "id, name",
        )
        if layout <= 4:
            reshape(
                db,
                "proj_index",
                "CREATE TABLE proj_index (entity INTEGER NOT NULL, "
                "hlc INTEGER NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL, "
                "PRIMARY KEY (entity, hlc, author, seq)) WITHOUT ROWID",
                "entity, hlc, author, seq",
            )
        for projection in Runner().projections if layout == 3 else ():
            for table in projection.TABLES:
                key = ", ".join(f'"{k}"' for k in table.key)
                db.execute(f'CREATE UNIQUE INDEX "{table.name}_by_key" ON "{table.name}" ({key})')
        db.executemany(
            "INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", [(LAYOUT_KEY, layout), (PROBE, 1)]
        )
    db.close()


class Reopened(NamedTuple):
    digest: str
    key_indexes: set[str]
    meta: dict[str, int]
    index: list[tuple[object, ...]]
    buckets: list[int]
    entities: list[tuple[str, int]]
    offer_found: bool


async def reopened(data_dir: Path) -> Reopened:
    node = await Node.open(data_dir)
    try:
        read = node.store.read
        return Reopened(
            await read(node.runner.digest),
            await read(key_indexes),
            dict(
                await read(lambda db: db.execute("SELECT name, version FROM proj_meta").fetchall())
            ),
            await read(index_rows),
            [
                row[0]
                for row in await read(
                    lambda db: db.execute("SELECT DISTINCT bucket FROM proj_index").fetchall()
                )
            ],
            await read(
                lambda db: db.execute(
                    "SELECT name, key FROM proj_entities INDEXED BY proj_entities_key ORDER BY name"
                ).fetchall()
            ),
            await read(lambda db: views.board_entry(db, offer_id(db)) is not None),
        )
    finally:
        await node.close()


@pytest.mark.parametrize(
    ("layout", "migrated"),
    [(5, True), (4, True), (3, True), (2, False)],
    ids=[
        "layout 5 changes in place",
        "layout 4 changes in place",
        "layout 3 changes in place",
        "layout 2 is rebuilt",
    ],
)
async def test_an_older_layout_ends_in_the_current_one_with_the_same_rows(
    tmp_path: Path, layout: int, migrated: bool
) -> None:
    """Layout 5 only lacks the keys of ``proj_entities``: they are computed in place.
    Layout 4 also lacks the buckets of ``proj_index``: its rows move to bucket 0. Layout
    3 also had key indexes too many: they are dropped. Anything older is rebuilt. Each
    ends with entities found by their keys (the views' ``NUMBER_OF``)."""
    data_dir = tmp_path / "node"
    digest = await filled(data_dir)
    with sqlite3.connect(data_dir / LOG_FILE) as db:
        index = index_rows(db)
    db.close()
    as_written_by_layout(data_dir / LOG_FILE, layout)

    after = await reopened(data_dir)

    assert after.key_indexes == set()
    assert after.meta[LAYOUT_KEY] == LAYOUT
    assert after.index == index
    assert after.buckets == [0]
    assert after.entities and all(key == name_key(name) for name, key in after.entities)
    assert after.offer_found
    meta = after.meta
    if migrated:
        assert meta.get(PROBE) == 1, "the node rebuilt its projections instead of migrating"
    else:
        assert PROBE not in meta, "an older layout must be rebuilt, not patched"
    assert after.digest == digest


async def test_board_states_of_version_1_are_rebuilt_into_the_compact_ones(tmp_path: Path) -> None:
    """Board 2 keeps its states as lists; a node whose board was folded by version 1
    (maps of field names, claims keyed by hex) rebuilds it when it opens, rather than
    read those states as lists."""
    data_dir = tmp_path / "node"
    digest = await filled(data_dir)
    with sqlite3.connect(data_dir / LOG_FILE) as db:
        [(entity, packed)] = db.execute(
            "SELECT s.entity, s.state FROM proj_state s JOIN proj_entities e "
            "ON e.id = s.entity WHERE e.name LIKE 'board:%'"
        ).fetchall()
        state = msgpack.unpackb(packed, raw=False)
        assert isinstance(state["post"], list)
        old = {
            "post": {"kind": "offer", "title": "Soup"},
            "withdrawn": False,
            "claims": {
                bytes(claim_id).hex(): {"status": "pending"} for claim_id in state["claims"]
            },
        }
        db.execute(
            "UPDATE proj_state SET state = ? WHERE entity = ?",
            (msgpack.packb(old, use_bin_type=True), entity),
        )
        db.executemany("INSERT OR REPLACE INTO proj_meta VALUES (?, ?)", [("board", 1), (PROBE, 1)])
    db.close()

    after = await reopened(data_dir)

    assert PROBE not in after.meta, "board 1's states must be rebuilt"
    assert after.meta["board"] == Board.VERSION == 3
    assert after.digest == digest and after.offer_found
    with sqlite3.connect(data_dir / LOG_FILE) as db:
        [(packed,)] = db.execute(
            "SELECT s.state FROM proj_state s JOIN proj_entities e ON e.id = s.entity "
            "WHERE e.name LIKE 'board:%'"
        ).fetchall()
    db.close()
    assert isinstance(msgpack.unpackb(packed, raw=False)["post"], list)
