"""A disk that fills and a disk that turns read-only, on a real small filesystem.

The data directory lives on a tmpfs mounted with a size limit (root only: CI runs as
root). A filler file takes all but a little of the space, then the node appends or
syncs until the disk is full. What must hold (docs/reliability.md):

- the error names the cause: "the disk is full" (one line through the CLI);
- nothing acknowledged is lost: every ``post`` that returned, every batch the store
  said it stored, is there after reopening; the log passes ``PRAGMA integrity_check``,
  every author chain verifies and projections equal a rebuild;
- the node still serves reads (board, inventory) while the disk is full;
- once the filler is deleted the next append succeeds, and a sync completes.

A read-only remount (``mount -o remount,ro``): every write command fails with one line
on stderr and changes nothing; after ``remount,rw`` everything works. Linux refuses to
remount read-only while a file is open for writing, so that case runs with the node
closed, as between two CLI commands.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import potluck
from synchelp import Serving, append_stock, digest, new_nodes, same_vectors, within

from eventlog import body as b
from eventlog import events
from eventlog.errors import StorageError, UsageError
from eventlog.events import Envelope
from eventlog.identity import Group
from node.app import Node
from projections import views

FULL = "the disk is full"


def _why_not_mountable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs (CI runs as root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "needs mount(8) and umount(8)"
    return None


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; unmounted on the way out, even when the
    test failed (lazily if a file on it is still open)."""
    reason = _why_not_mountable()
    if reason:
        pytest.skip(reason)
    where.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where}: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        _run("mount", "-o", "remount,rw", str(where))
        if _run("umount", str(where)).returncode != 0:
            _run("umount", "-l", str(where))


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """Take all the free space of ``disk`` but ``leave`` bytes with a filler file."""
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, free_bytes(disk) - leave))
    return filler


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, f"exit 0 for {proc.args[3:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{proc.stderr}"
    assert lines[0].startswith("potluck: ") and "Traceback" not in proc.stderr, lines[0]
    assert proc.stdout == "", f"stdout on error: {proc.stdout!r}"
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


async def assert_sound(node: Node, *, rebuild: bool = True) -> None:
    """integrity_check, every author's chain, and (``rebuild``: it writes) projections
    equal to a rebuild."""
    check = await node.store.read(lambda db: db.execute("PRAGMA integrity_check").fetchall())
    assert check == [("ok",)], check
    chains: dict[bytes, list[Envelope]] = {}
    async for env in node.store.iter_events():
        chains.setdefault(env.author, []).append(env)
    for chain in chains.values():
        chain.sort(key=lambda e: e.seq)
        assert chain[0].seq == 1
        events.verify_signature(chain[0])
        events.verify_chain(chain[1:], chain[0])
    if not rebuild:
        return
    incremental = await node.store.read(node.runner.digest)
    await node.store.write(node.runner.rebuild)
    assert await node.store.read(node.runner.digest) == incremental


async def hashes(node: Node) -> set[bytes]:
    return {env.hash async for env in node.store.iter_events()}


async def define_stock(node: Node) -> None:
    await node.post(
        b.ItemDefined(slug="rice", name="Rice", unit="kg", category="food", storage="ambient")
    )
    await node.post(b.LocationDefined(slug="pantry", name="Pantry", kind="pantry"))


@pytest.fixture
async def ana_on_small_disk(tmp_path: Path, group: Group) -> AsyncIterator[Node]:
    with small_disk(tmp_path / "disk", "2m") as disk:
        node = await within(Node.init(disk / "ana", "Ana", group))
        try:
            await define_stock(node)
            yield node
        finally:
            with contextlib.suppress(Exception):
                await node.close()


# -- full during local appends -----------------------------------------------------------


async def test_appends_on_a_full_disk_fail_naming_it_and_lose_nothing_acknowledged(
    ana_on_small_disk: Node,
) -> None:
    ana = ana_on_small_disk
    disk = ana.data_dir.parent
    filler = fill(disk, 256 << 10)
    acked: list[Envelope] = []
    error: StorageError | None = None
    for i in range(5000):
        try:
            acked.append(
                await ana.post(b.OfferPosted(title=f"offer {i} " + "x" * 150, quantity=i + 1))
            )
        except StorageError as exc:
            error = exc
            break
    assert error is not None, "5000 posts fitted in 256 KiB"
    assert FULL in str(error)
    assert acked, "not one post fitted: the test measures nothing"
    for _ in range(3):  # it stays a clear error, the connection is not left in a transaction
        with pytest.raises(StorageError, match=FULL):
            await ana.post(b.OfferPosted(title="one more"))
        with pytest.raises(StorageError, match=FULL):
            await ana.post(
                b.StockAdjusted(item="rice", location="pantry", delta=1, reason="donation")
            )

    # reads are served while full: exactly the acknowledged posts are on the board
    board = await ana.store.read(views.board)
    assert {o["id"] for o in board["offers"]} == {e.hash.hex() for e in acked}
    assert (await ana.store.read(lambda db: views.inventory(db, datetime.date.today())))[
        "rows"
    ] == []
    # and through the CLI, by another process: reads work, a write says why it failed
    potluck(ana.data_dir, "board", "--json")
    assert_one_line_error(potluck(ana.data_dir, "offer", "post", "bread", ok=False), FULL)

    # space comes back: the very next append succeeds on the same open node
    filler.unlink()
    after = await ana.post(b.OfferPosted(title="after the disk was freed"))
    await ana.close()
    reopened = await Node.open(ana.data_dir)
    try:
        present = await hashes(reopened)
        assert {e.hash for e in acked} | {after.hash} <= present
        assert await reopened.store.count() == 3 + len(acked) + 1  # joined, item, location
        await assert_sound(reopened)
    finally:
        await reopened.close()


async def test_a_node_whose_disk_is_full_opens_and_serves_reads(ana_on_small_disk: Node) -> None:
    ana = ana_on_small_disk
    offer = await ana.post(b.OfferPosted(title="soup"))
    filler = fill(ana.data_dir.parent, 0)
    with pytest.raises(StorageError, match=FULL):
        await ana.post(b.OfferPosted(title="bread"))
    await ana.close()
    reopened = await Node.open(ana.data_dir)  # start-up itself writes nothing
    try:
        board = await reopened.store.read(views.board)
        assert [o["id"] for o in board["offers"]] == [offer.hash.hex()]
        filler.unlink()
        await reopened.post(b.OfferPosted(title="bread"))
        await assert_sound(reopened)
    finally:
        await reopened.close()


# -- full during a sync ------------------------------------------------------------------

CATCH_UP = 6000  # stock events of Ana's: a catch-up of several 1 MiB batches


async def test_a_sync_that_fills_the_disk_stops_naming_it_keeps_what_it_stored_and_resumes(
    tmp_path: Path, group: Group
) -> None:
    with small_disk(tmp_path / "disk", "10m") as disk:
        [ana] = await new_nodes(tmp_path, group, "Ana")
        bo = await within(Node.init(disk / "bo", "Bo", group))
        serving: Serving | None = None
        try:
            await define_stock(ana)
            await append_stock(ana, CATCH_UP)
            filler = fill(disk, 3 << 20)  # room for about half of the catch-up
            serving = await Serving(ana).start()
            with pytest.raises(UsageError, match=f"store-failed: {FULL}"):
                await within(bo.sync_once(serving.address), 60)

            # what was stored is a prefix of Ana's chain, and projections show exactly it
            have = (await bo.store.vector()).get(ana.author, (0, b""))[0]
            assert 0 < have < CATCH_UP, f"{have} of Ana's events: no partial catch-up"
            count = await bo.store.count()
            assert count == 1 + have
            rows = (await bo.store.read(lambda db: views.inventory(db, datetime.date.today())))[
                "rows"
            ]
            on_hand = sum(range(1, have - 3 + 1))  # seq 4.. carry deltas 1, 2, 3, ...
            assert [r["on_hand"] for r in rows] == ([on_hand] if have > 3 else [])
            ana_chain = CATCH_UP + 3  # member.joined, item, location, the adjustments
            assert (await ana.store.vector())[ana.author][0] == ana_chain  # sender unharmed

            await bo.close()
            bo = await Node.open(bo.data_dir)
            assert await bo.store.count() == count, "a stored batch was lost on reopening"
            await assert_sound(bo, rebuild=False)  # the disk is still full

            filler.unlink()
            moved = await within(bo.sync_once(serving.address), 60)
            assert moved["received"] == ana_chain - have
            assert await same_vectors(ana, bo)
            assert await digest(ana) == await digest(bo)
            await assert_sound(bo)
        finally:
            if serving is not None:
                await serving.stop()
            for node in (ana, bo):
                with contextlib.suppress(Exception):
                    await node.close()


async def test_a_large_batch_that_does_not_fit_is_refused_whole_and_fits_later(
    tmp_path: Path, group: Group
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        [ana] = await new_nodes(tmp_path, group, "Ana")
        bo = await within(Node.init(disk / "bo", "Bo", group))
        try:
            await define_stock(ana)
            await append_stock(ana, 2000)
            batch = [env async for env in ana.store.iter_events()]
            before = await bo.store.count()
            filler = fill(disk, 128 << 10)
            with pytest.raises(StorageError, match=FULL):
                await bo.store.receive(batch)
            assert await bo.store.count() == before  # one transaction: none of it
            assert await bo.store.pending_count() == 0
            filler.unlink()
            result = await bo.store.receive(batch)
            assert len(result.stored) == len(batch)
            assert await digest(ana) != await digest(bo)  # Bo's own member.joined
            await assert_sound(bo)
        finally:
            await ana.close()
            await bo.close()


# -- a read-only disk --------------------------------------------------------------------

WRITES = [
    ("offer", "post", "bread"),
    ("stock", "adjust", "rice", "pantry", "5"),
    ("item", "add", "oil", "Oil", "--unit", "l"),
]


async def _state(home: Path) -> tuple[str, int, list[tuple[str]]]:
    node = await Node.open(home)
    try:
        check = await node.store.read(lambda db: db.execute("PRAGMA integrity_check").fetchall())
        return await digest(node), await node.store.count(), check
    finally:
        await node.close()


@pytest.fixture
async def node_on_read_only_disk(
    tmp_path: Path, group: Group
) -> AsyncIterator[tuple[Path, tuple[str, int, object]]]:
    """A node (closed, as between two CLI commands) whose tmpfs is then remounted
    read-only; yields its data dir and (digest, event count, integrity) from before."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        node = await Node.init(disk / "node", "Ana", group)
        await define_stock(node)
        await node.post(b.OfferPosted(title="soup"))
        await node.close()
        before = await _state(disk / "node")
        remount = _run("mount", "-o", "remount,ro", str(disk))
        assert remount.returncode == 0, remount.stderr
        yield disk / "node", before


async def test_writes_on_a_read_only_disk_fail_with_one_line_and_change_nothing(
    node_on_read_only_disk: tuple[Path, tuple[str, int, object]],
) -> None:
    home, before = node_on_read_only_disk
    for args in WRITES:
        assert_one_line_error(potluck(home, *args, ok=False))
    assert _run("mount", "-o", "remount,rw", str(home.parent)).returncode == 0
    assert await _state(home) == before  # same digest and count, integrity "ok"
    assert before[2] == [("ok",)]
    potluck(home, *WRITES[0])  # everything works again
    after = await _state(home)
    assert after[1] == before[1] + 1 and after[0] != before[0]


async def test_a_write_on_a_read_only_disk_names_the_cause(
    node_on_read_only_disk: tuple[Path, tuple[str, int, object]],
) -> None:
    home = node_on_read_only_disk[0]
    assert_one_line_error(potluck(home, *WRITES[0], ok=False), "read-only")
