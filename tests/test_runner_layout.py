"""A node whose projections were written by an older layout of the runner's tables
(``LAYOUT`` in projections/runner.py): changed in place where that is enough, rebuilt
otherwise, and either way the same rows as a fresh fold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node import body as b
from node.app import LOG_FILE, Node
from node.identity import Group
from projections.runner import LAYOUT, LAYOUT_KEY, Runner

PROBE = "(probe)"
"""A proj_meta row planted by the test: a rebuild drops proj_meta, a migration keeps it."""


async def filled(data_dir: Path) -> str:
    """A node with an offer, a claim and stock; returns its digest."""
    node = await Node.init(data_dir, "Ana", Group.new("Street pantry"))
    try:
        await node.post(b.LocationDefined(slug="hall", name="Church hall", kind="pantry"))
        await node.post(b.ItemDefined(slug="rice", name="Rice", unit="kg", category="food",
                                      storage="ambient"))
        await node.post(b.StockAdjusted(item="rice", location="hall", delta=5,
                                        reason="donation"))
        soup = await node.post(b.OfferPosted(title="Soup", quantity=4))
        await node.post(b.ClaimMade(target=soup.hash, quantity=1))
        return await node.store.read(node.runner.digest)
    finally:
        await node.close()


def key_indexes(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%_by_key'")}


def as_written_by_layout(path: Path, layout: int) -> None:
    """Make the projections look written by ``layout``: 3 had a unique index on each
    projection table's key."""
    with sqlite3.connect(path) as db:
        for projection in Runner().projections:
            for table in projection.TABLES:
                key = ", ".join(f'"{k}"' for k in table.key)
                db.execute(f'CREATE UNIQUE INDEX "{table.name}_by_key" ON "{table.name}" '
                           f"({key})")
        db.executemany("INSERT OR REPLACE INTO proj_meta VALUES (?, ?)",
                       [(LAYOUT_KEY, layout), (PROBE, 1)])
    db.close()


async def reopened(data_dir: Path) -> tuple[str, set[str], dict[str, int]]:
    node = await Node.open(data_dir)
    try:
        digest = await node.store.read(node.runner.digest)
        indexes = await node.store.read(key_indexes)
        meta = dict(await node.store.read(
            lambda db: db.execute("SELECT name, version FROM proj_meta").fetchall()))
        return digest, indexes, meta
    finally:
        await node.close()


@pytest.mark.parametrize(("layout", "migrated"), [(3, True), (2, False)],
                         ids=["layout 3 changes in place", "layout 2 is rebuilt"])
async def test_an_older_layout_ends_with_no_key_index_and_the_same_rows(
        tmp_path: Path, layout: int, migrated: bool) -> None:
    """Layout 3 only had the key indexes too many: they are dropped without a rebuild.
    Anything older is rebuilt."""
    data_dir = tmp_path / "node"
    digest = await filled(data_dir)
    as_written_by_layout(data_dir / LOG_FILE, layout)

    after, indexes, meta = await reopened(data_dir)

    assert indexes == set()
    assert meta[LAYOUT_KEY] == LAYOUT
    if migrated:
        assert meta.get(PROBE) == 1, "the node rebuilt its projections instead of migrating"
    else:
        assert PROBE not in meta, "an older layout must be rebuilt, not patched"
    assert after == digest
