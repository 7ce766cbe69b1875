"""Folding behind the log in a second process (projections/projector.py, decision 0012).

Real nodes on real SQLite files, a real projector process, real websockets for the
end-to-end sync. The property that any mix of deferred and in-place folds ends with the
canonical rows is in test_convergence.py.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import until
from synchelp import Serving, append_stock, close_all, digest, new_nodes, within

from eventlog import events
from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import BULK_RECEIVE, begin_write
from node import doctor
from node.app import LOG_FILE, Node
from node.web import page
from projections.projector import Projector

EVENTS = BULK_RECEIVE + 500


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, list[Envelope]]]:
    """Ana with EVENTS stock events, and Bo who has none of them."""
    ana, bo = await new_nodes(tmp_path, Group.new("Projector test"), "Ana", "Bo")
    try:
        await append_stock(ana, EVENTS, batch=EVENTS)
        everything = [env async for env in ana.store.iter_events()]
        yield ana, bo, everything
    finally:
        await close_all([ana, bo])


async def behind(node: Node) -> int:
    return int(await node.store.read(node.runner.behind))


async def assert_folded_as_a_rebuild(node: Node) -> None:
    """The rows folded behind the log equal a rebuild's (canonical order)."""
    assert await behind(node) == 0
    folded = await digest(node)
    await node.store.write(node.runner.rebuild)
    assert await digest(node) == folded


async def projector_up(node: Node) -> None:
    async def ready() -> bool:
        return node._projector_ready()

    await until(ready, what="the projector started", timeout=30)


async def received_while_frozen(bo: Node, everything: list[Envelope]) -> subprocess.Popen[bytes]:
    """Bo's projector started, then frozen (SIGSTOP) before it can fold, and a large
    receive left behind it; returns the frozen process."""
    await projector_up(bo)
    projector = bo._projector
    assert projector is not None and projector._proc is not None
    projector._proc.send_signal(signal.SIGSTOP)
    result = await within(bo.store.receive(everything))
    assert len(result.stored) == EVENTS + 1  # and Ana's member.joined
    assert await behind(bo) == EVENTS + 1  # stored, not folded
    return projector._proc


async def test_a_large_receive_is_folded_by_the_projector_process(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    _, bo, everything = pair
    async with bo.folding_behind():
        frozen = await received_while_frozen(bo, everything)
        assert await bo.store.read(page.last_id) == 1  # pages still show the folded part
        frozen.send_signal(signal.SIGCONT)
        # this process writes nothing from here on: only the projector can fold

        async def folded() -> bool:
            return await behind(bo) == 0

        await until(folded, what="the projector folded the backlog", timeout=30)
        assert await bo.store.read(page.last_id) == EVENTS + 2
        await assert_folded_as_a_rebuild(bo)


async def test_what_a_killed_projector_left_is_folded_when_the_node_stops_folding_behind(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    ana, bo, everything = pair
    async with bo.folding_behind():
        frozen = await received_while_frozen(bo, everything)
        frozen.kill()
        frozen.wait()
        # a dead projector: the next large receive folds in place, backlog first
        assert not bo._projector_ready()
        await append_stock(ana, 10, first=EVENTS + 1)
        later = [env async for env in ana.store.iter_events()][-10:]
        await within(bo.store.receive(later))  # small: folds in place, backlog first
        assert await behind(bo) == 0
    await assert_folded_as_a_rebuild(bo)


async def test_leaving_folding_behind_folds_the_rest(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    _, bo, everything = pair
    async with bo.folding_behind():
        frozen = await received_while_frozen(bo, everything)
        frozen.kill()  # else closing waits for a frozen process
    await assert_folded_as_a_rebuild(bo)


async def test_a_node_stopped_with_a_backlog_folds_it_when_it_opens(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    _, bo, everything = pair
    bo.store.fold_behind(lambda: True)  # as if a projector ran, and then nothing did
    await within(bo.store.receive(everything))
    assert await behind(bo) == EVENTS + 1
    await bo.close()
    again = await within(Node.open(bo.data_dir))
    try:
        await assert_folded_as_a_rebuild(again)
    finally:
        await again.close()


async def test_a_fork_stored_behind_the_log_is_left_out_when_the_node_opens(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    """A large receive that also records a fork, stopped before anything folded: the
    node that opens again must rebuild without the forked events, not just fold the
    backlog (the fork points it reads then are already the new ones)."""
    ana, bo, everything = pair
    await within(bo.store.receive(everything[:50]))  # folded in place
    kept = everything[5]
    assert kept.author == ana.author
    twin = events.create(
        ana.key,
        group=ana.group.id,
        seq=kept.seq,
        prev=kept.prev,
        deps=kept.deps,
        hlc=kept.hlc,
        type="offer.posted",
        body={"title": "the same seq, told differently"},
    )
    bo.store.fold_behind(lambda: True)
    result = await within(bo.store.receive([twin, *everything[50:]]))
    assert result.forks == [(ana.author, kept.seq)]
    assert await behind(bo) == len(everything) - 50
    await bo.close()
    again = await within(Node.open(bo.data_dir))
    try:
        await assert_folded_as_a_rebuild(again)
        rows = await again.store.read(
            lambda db: db.execute("SELECT count(*) FROM inventory").fetchone()[0]
        )
        assert rows == 1
        on_hand = await again.store.read(
            lambda db: db.execute("SELECT on_hand FROM inventory").fetchone()[0]
        )
        assert on_hand == sum(range(1, kept.seq - 1))  # Ana's stock before her fork only
    finally:
        await again.close()


async def test_doctor_compares_the_projections_of_a_node_with_a_backlog_as_folded(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    _, bo, everything = pair
    bo.store.fold_behind(lambda: True)
    await within(bo.store.receive(everything))
    await bo.close()
    report = await doctor.examine(bo.data_dir)
    assert report.healthy, doctor.render(report)
    codes = {finding.code: finding for finding in report.findings}
    assert codes["projections"].severity == "ok"
    assert f"{EVENTS + 1:,} events a sync stored" in codes["projections-behind"].message
    again = await within(Node.open(bo.data_dir))  # and examining changed nothing:
    await again.close()  # the backlog was there to fold when it opened


async def test_a_sync_of_a_large_log_ends_with_the_projections_caught_up(
    pair: tuple[Node, Node, list[Envelope]],
) -> None:
    ana, bo, _ = pair
    serving = await Serving(ana).start()
    try:
        report = await within(bo.sync_once(serving.address), 60)
    finally:
        await serving.stop()
    assert report["received"] == EVENTS + 1
    assert await behind(bo) == 0
    assert bo._projector is None  # stopped with the sync
    assert await digest(bo) == await digest(ana)


async def test_a_projector_for_a_log_it_cannot_fold_ends_and_says_so(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / LOG_FILE).close()  # no tables: not a node's log yet
    projector = Projector(tmp_path / LOG_FILE)
    try:
        deadline = time.monotonic() + 30
        while projector.alive and time.monotonic() < deadline:
            assert not projector.ready()
            await asyncio.sleep(0.02)
        assert not projector.ready() and not projector.alive
    finally:
        projector.close()


def test_begin_write_waits_for_another_process_transaction(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE t (x)")
    waiter = sqlite3.connect(path, isolation_level=None)
    waiter.execute("PRAGMA busy_timeout = 1234")
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    began = time.monotonic()
    begin_write(waiter)
    waited = time.monotonic() - began
    waiter.execute("INSERT INTO t VALUES (1)")
    waiter.execute("COMMIT")
    release.join()
    assert waited >= 0.25
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 1234  # restored

    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_write(waiter, timeout=0.2)
    assert not waiter.in_transaction
    holder.execute("ROLLBACK")
    holder.close()
    waiter.close()
