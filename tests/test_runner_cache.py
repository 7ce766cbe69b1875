"""The runner keeps hot fold states in memory between batches (projections/runner.py
``LIVE_CACHE_LIMIT``). Two ways that memory could go stale, each tried for real: another
process (a ``potluck`` command beside ``potluck serve``) writes the same log, and a
transaction that folded events is rolled back. Either way the next fold must start
from what is on disk: the projections equal a rebuild and show every committed event.
"""

from __future__ import annotations

import datetime
import gc
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventlog import body as b
from eventlog.errors import StorageError
from eventlog.events import Envelope
from eventlog.identity import Group
from node.app import Node
from projections import views
from projections.runner import INDEX_BUCKET, _unpack_event


async def on_hand(node: Node) -> int:
    rows = (await node.store.read(lambda db: views.inventory(db, datetime.date(2026, 11, 27))))[
        "rows"
    ]
    return sum(int(row["on_hand"]) for row in rows)  # type: ignore[call-overload]


async def equals_a_rebuild(node: Node) -> bool:
    before = await node.store.read(node.runner.digest)
    await node.store.write(node.runner.rebuild)
    return await node.store.read(node.runner.digest) == before


async def stocked(path: Path) -> Node:
    node = await Node.init(path, "Ana", Group.new("Cache group"))
    await node.post(b.LocationDefined(slug="pantry", name="Pantry", kind="pantry"))
    await node.post(
        b.ItemDefined(slug="rice", name="Rice", unit="kg", category="food", storage="ambient")
    )
    await node.post(b.StockAdjusted(item="rice", location="pantry", delta=5, reason="donation"))
    return node


def adjust(delta: int) -> b.StockAdjusted:
    return b.StockAdjusted(item="rice", location="pantry", delta=delta, reason="donation")


async def test_stock_written_by_another_connection_is_folded_into_the_next_batch(
    tmp_path: Path,
) -> None:
    serving = await stocked(tmp_path / "node")
    try:
        beside = await Node.open(tmp_path / "node")  # a second process's connection
        try:
            await beside.post(adjust(7))
        finally:
            await beside.close()
        await serving.post(adjust(1))
        assert await on_hand(serving) == 13
        assert await equals_a_rebuild(serving)
    finally:
        await serving.close()


async def test_a_rolled_back_fold_leaves_nothing_in_memory(tmp_path: Path) -> None:
    node = await stocked(tmp_path / "node")
    try:
        failing = [True]

        def fail_after_fold(_db: sqlite3.Connection, _added: Sequence[Envelope]) -> None:
            if failing[0]:
                raise sqlite3.OperationalError("database or disk is full")

        node.store.add_hook(fail_after_fold)  # runs after the runner folded the batch
        with pytest.raises(StorageError, match="disk is full"):
            await node.post(adjust(100))
        failing[0] = False
        await node.post(adjust(1))
        assert await on_hand(node) == 6
        assert await equals_a_rebuild(node)
    finally:
        await node.close()


async def test_a_damaged_stored_event_met_by_a_refold_names_doctor(tmp_path: Path) -> None:
    """Re-folds and rebuilds read stored events back; one damaged on disk gives the
    one-line StorageError that points to ``potluck doctor``, not a msgpack traceback."""
    node = await stocked(tmp_path / "node")
    try:
        first = await node.post(adjust(1))
        await node.store.write(
            lambda db: db.execute(
                "UPDATE events SET raw = ? WHERE hash = ?", (b"\xc1garbage", first.hash)
            )
        )
        await node.post(adjust(2))  # incremental: no re-fold, no read of the damage
        with pytest.raises(StorageError, match="damaged: run 'potluck doctor --repair'"):
            await node.store.write(node.runner.rebuild)
    finally:
        await node.close()


async def test_a_rebuild_leaves_the_cycle_collector_as_it_found_it(tmp_path: Path) -> None:
    """Rebuild pauses Python's cycle collector for speed; it must switch it back on, and
    must not switch it on for a program that had it off."""
    node = await stocked(tmp_path / "ana")
    try:
        assert gc.isenabled()
        assert await equals_a_rebuild(node)
        assert gc.isenabled()
        gc.disable()
        try:
            assert await equals_a_rebuild(node)
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        await node.close()


async def test_an_event_folded_twice_at_other_arrivals_counts_once(tmp_path: Path) -> None:
    """Each event is folded once between rebuilds, and ``proj_index`` keys its rows by
    the bucket of the arrival they were folded at. Should an event still be folded again
    later (a bug elsewhere), the re-fold it triggers reads the event once, as the index
    keyed by entity alone did, rather than count the delivery twice."""
    node = await stocked(tmp_path / "node")
    try:

        def fold_again(db: sqlite3.Connection) -> None:
            raw, hash_ = db.execute(
                "SELECT raw, hash FROM events WHERE type = 'stock.adjusted'"
            ).fetchone()
            event = _unpack_event(raw, hash_)
            assert event is not None
            node.runner.apply(db, [event], arrival=7 * INDEX_BUCKET)

        await node.store.write(fold_again)
        buckets = await node.store.read(
            lambda db: db.execute("SELECT count(DISTINCT bucket) FROM proj_index").fetchone()[0]
        )
        assert buckets == 2  # the second fold did add a row, in bucket 7
        assert await on_hand(node) == 5
        assert await equals_a_rebuild(node)
    finally:
        await node.close()
