"""Clocks set wrong: a node a year ahead, a year behind, a day behind, and an hlc at 2^63.

Each node gets its own injected wall clock (``Store.open(..., now_ms=)``), so the tests
control time exactly. The bound: an event stamped more than ``MAX_FUTURE_MS`` (24 h)
beyond the receiver's clock is *held* in ``pending`` (``ReceiveResult.future`` counts
it), not applied, and released by the first ``receive`` once the receiver's clock is
within 24 h of its stamp. Within the bound the hybrid logical clock absorbs the skew:
whatever a node has applied, its later events stamp above it (``HybridClock.observe``),
so projections, ordered by (hlc, author, seq), order them after what their author saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from nacl.signing import SigningKey
from synchelp import Author, Serving, digest, within

from eventlog import body as b
from eventlog import events
from eventlog.clock import COUNTER_MAX, HLC_MAX, HybridClock, pack, wall_ms
from eventlog.errors import MalformedEvent
from eventlog.events import Envelope, decode
from eventlog.identity import Group
from eventlog.store import MAX_FUTURE_MS, Store
from node.app import LOG_FILE, Node
from projections import views
from projections.runner import Runner

T0 = 1_760_000_000_000  # 2025-10-09, the correct time in these tests
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
YEAR_MS = 365 * DAY_MS


class Wall:
    """A wall clock the test sets: ``wall.ms = ...``."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


async def open_node(root: Path, name: str, group: Group, wall: Wall) -> Node:
    """A node like ``Node.init`` makes, but whose store reads ``wall``."""
    data_dir = root / name.lower()
    data_dir.mkdir(parents=True)
    key = SigningKey.generate()
    store = await Store.open(data_dir / LOG_FILE, group, now_ms=wall)
    runner = Runner()
    if await store.write(runner.setup):
        await store.write(runner.rebuild)
    runner.attach(store)
    node = Node(data_dir, key, store, runner)
    await store.append(key, [("member.joined", store.first_event_body(name, node.author))])
    return node


async def log_of(node: Node) -> list[Envelope]:
    return [env async for env in node.store.iter_events()]


async def offers(node: Node) -> list[str]:
    return [str(o["title"]) for o in (await node.store.read(views.board))["offers"]]


async def members(node: Node) -> set[str]:
    return {m["name"] for m in await node.store.read(views.members)}


async def assert_projections_equal_a_rebuild(node: Node) -> None:
    incremental = await digest(node)
    await node.store.write(node.runner.rebuild)
    assert await digest(node) == incremental


@pytest.fixture
async def nodes(tmp_path: Path, group: Group) -> AsyncIterator[dict[str, tuple[Node, Wall]]]:
    """Ana a year ahead, Bo and Cy correct, Dee a year behind, Eve 23 hours behind."""
    made: dict[str, tuple[Node, Wall]] = {}
    for name, skew in (
        ("Ana", YEAR_MS),
        ("Bo", 0),
        ("Cy", 0),
        ("Dee", -YEAR_MS),
        ("Eve", -23 * HOUR_MS),
    ):
        wall = Wall(T0 + skew)
        made[name] = (await open_node(tmp_path, name, group, wall), wall)
    try:
        yield made
    finally:
        for node, _ in made.values():
            await node.close()


async def write_offers(node: Node, wall: Wall, n: int, step_ms: int = 0) -> list[Envelope]:
    written = []
    for i in range(n):
        written.append(await node.post(b.OfferPosted(title=f"{node.author.hex()[:4]} {i}")))
        wall.ms += step_ms
    return written


# -- a node a year ahead -----------------------------------------------------------------


async def test_events_a_year_ahead_are_held_and_reported_not_applied(
    nodes: dict[str, tuple[Node, Wall]],
) -> None:
    (ana, ana_wall), (bo, _) = nodes["Ana"], nodes["Bo"]
    await write_offers(ana, ana_wall, 3)
    sent = await log_of(ana)
    assert all(wall_ms(e.hlc) >= T0 + YEAR_MS for e in sent)
    before = bo.store.clock.last

    result = await bo.store.receive(sent)
    assert result.future == len(sent) == 4
    assert (result.stored, result.held, result.rejected) == ([], 0, [])
    assert await bo.store.pending_count() == 4
    assert await offers(bo) == [] and await members(bo) == {"Bo"}
    assert ana.author not in await bo.store.vector()
    assert bo.store.clock.last == before, "the held events moved Bo's clock"
    again = await bo.store.receive(sent)  # a peer re-sends them: still held, no duplicates
    assert again.future == 4 and await bo.store.pending_count() == 4

    mine = await bo.post(b.OfferPosted(title="bo's"))
    assert wall_ms(mine.hlc) == T0, "Bo's own stamps were dragged a year ahead"
    assert await offers(bo) == ["bo's"]
    await assert_projections_equal_a_rebuild(bo)


async def test_held_events_are_released_in_order_once_the_receivers_clock_reaches_them(
    nodes: dict[str, tuple[Node, Wall]],
) -> None:
    (ana, ana_wall), (bo, bo_wall) = nodes["Ana"], nodes["Bo"]
    ana_wall.ms += HOUR_MS
    written = await write_offers(ana, ana_wall, 4, step_ms=HOUR_MS)  # an hour apart
    sent = await log_of(ana)
    assert (await bo.store.receive(sent)).future == 5

    def release_time(env: Envelope) -> int:
        return wall_ms(env.hlc) - MAX_FUTURE_MS

    bo_wall.ms = release_time(sent[0]) - 1  # one millisecond early: nothing moves
    assert (await bo.store.receive([])).stored == []
    assert await bo.store.pending_count() == 5
    bo_wall.ms = release_time(written[1])  # joined, offer 0 and offer 1 are due
    released = await bo.store.receive([])
    assert [e.seq for e in released.stored] == [1, 2, 3]
    assert released.future == 1  # offer 2, released with its predecessor, held again
    assert await bo.store.pending_count() == 2
    assert sorted(await offers(bo)) == [f"{ana.author.hex()[:4]} {i}" for i in (0, 1)]
    bo_wall.ms = release_time(written[-1])
    assert [e.seq for e in (await bo.store.receive([])).stored] == [4, 5]
    assert await bo.store.pending_count() == 0
    assert "Ana" in await members(bo) and len(await offers(bo)) == 4

    # Bo's next events keep causal order: above everything applied, at most 24 h ahead
    claim = await bo.post(b.ClaimMade(target=written[-1].hash, quantity=1))
    assert claim.hlc > written[-1].hlc and written[-1].hash in claim.deps
    assert wall_ms(claim.hlc) - bo_wall.ms <= MAX_FUTURE_MS
    board = await bo.store.read(views.board)
    claimed = next(o for o in board["offers"] if o["id"] == written[-1].hash.hex())
    assert [c["id"] for c in claimed["claims"]] == [claim.hash.hex()]  # type: ignore[index]
    await assert_projections_equal_a_rebuild(bo)


async def test_a_sync_with_a_node_a_year_ahead_completes_and_breaks_nothing(
    nodes: dict[str, tuple[Node, Wall]],
) -> None:
    (ana, ana_wall), (bo, bo_wall), (cy, _) = nodes["Ana"], nodes["Bo"], nodes["Cy"]
    await write_offers(ana, ana_wall, 3)
    await write_offers(bo, bo_wall, 2)
    serving = await Serving(ana).start()
    try:
        moved = await within(bo.sync_once(serving.address), 20)
        assert moved["received"] == 0  # held: nothing Bo applied came from Ana
        assert moved["held_future"] == 4  # reported: all of Ana's, stamped a year ahead
        assert await bo.store.pending_count() == 4
        assert len(await offers(bo)) == 2  # Bo's own, read while Ana's wait
        assert "Ana" not in await members(bo)
        # Ana applied Bo's events (a year in her past) and her board shows them
        assert {"Ana", "Bo"} <= await members(ana) and len(await offers(ana)) == 5

        # a third node with a correct clock syncs with Bo as usual, and gets none of Ana's
        bo_serving = await Serving(bo).start()
        try:
            from_bo = await within(cy.sync_once(bo_serving.address), 20)
            assert from_bo["received"] == 3 and ana.author not in await cy.store.vector()
        finally:
            await bo_serving.stop()

        # a year later by Bo's clock, the next sync brings Ana's events and they apply
        bo_wall.ms += YEAR_MS
        await within(bo.sync_once(serving.address), 20)
        assert await bo.store.pending_count() == 0
        assert await digest(bo) == await digest(ana)
        for node in (ana, bo, cy):
            await assert_projections_equal_a_rebuild(node)
    finally:
        await serving.stop()


# -- nodes behind ------------------------------------------------------------------------


async def test_a_node_a_year_behind_holds_correct_events_and_others_accept_its_own(
    nodes: dict[str, tuple[Node, Wall]],
) -> None:
    (bo, bo_wall), (dee, dee_wall) = nodes["Bo"], nodes["Dee"]
    [bos] = await write_offers(bo, bo_wall, 1)
    # to Dee, a year behind, Bo's correct events are a year in the future: held
    assert (await dee.store.receive(await log_of(bo))).future == 2
    assert await offers(dee) == []
    [dees] = await write_offers(dee, dee_wall, 1)
    assert wall_ms(dees.hlc) == T0 - YEAR_MS  # nothing applied moved Dee's clock

    # Bo accepts Dee's events (from his past), applies them, sorted a year back
    result = await bo.store.receive(await log_of(dee))
    assert len(result.stored) == 2 and result.future == 0
    board = await bo.store.read(views.board)
    assert [o["id"] for o in board["offers"]] == [bos.hash.hex(), dees.hash.hex()]
    later = await bo.post(b.OfferPosted(title="later"))
    assert wall_ms(later.hlc) == T0 and later.hlc > dees.hlc
    await assert_projections_equal_a_rebuild(bo)

    # once Dee's clock is set right, the held events apply and Dee's stamps follow them
    dee_wall.ms = T0 + HOUR_MS
    assert len((await dee.store.receive([])).stored) == 2
    after = await dee.post(b.ClaimMade(target=bos.hash, quantity=1))
    assert after.hlc > bos.hlc and bos.hash in after.deps
    await assert_projections_equal_a_rebuild(dee)


async def test_a_node_behind_within_the_bound_stamps_its_events_after_what_it_saw(
    nodes: dict[str, tuple[Node, Wall]],
) -> None:
    (bo, bo_wall), (eve, eve_wall) = nodes["Bo"], nodes["Eve"]
    [offer] = await write_offers(bo, bo_wall, 1)
    result = await eve.store.receive(await log_of(bo))  # 23 h ahead of Eve: applied
    assert len(result.stored) == 2 and result.future == 0

    claim = await eve.post(b.ClaimMade(target=offer.hash, quantity=1))
    assert eve_wall.ms < wall_ms(offer.hlc), "Eve's wall clock is behind the offer"
    assert claim.hlc > offer.hlc and offer.hash in claim.deps  # causal order kept
    step = await eve.post(b.ClaimReleased(claim=claim.hash))
    assert step.hlc > claim.hlc

    assert len((await bo.store.receive(await log_of(eve))).stored) == 3
    board = await bo.store.read(views.board)
    [entry] = board["offers"]
    assert [(c["id"], c["status"]) for c in entry["claims"]] == [  # type: ignore[index, union-attr]
        (claim.hash.hex(), "released")
    ]
    assert await digest(bo) == await digest(eve)


def test_a_clock_a_year_behind_stamps_above_what_it_observed_through_a_counter_overflow() -> None:
    seen = pack(T0, 65_000)
    clock = HybridClock(lambda: T0 - YEAR_MS)
    clock.observe(seen)
    stamps = [clock.tick() for _ in range(2 * (COUNTER_MAX + 1))]
    assert stamps[0] == seen + 1
    assert all(a < b_ for a, b_ in zip([seen, *stamps], stamps, strict=False))
    assert wall_ms(stamps[-1]) == T0 + 2  # borrowed milliseconds, not a wrap-around


# -- an hlc near 2^63 --------------------------------------------------------------------


async def test_an_hlc_at_2_63_is_held_for_good_and_leaves_every_clock_alone(
    nodes: dict[str, tuple[Node, Wall]], group: Group
) -> None:
    (bo, bo_wall) = nodes["Bo"]
    mal = Author(group)
    mal.clock = HybridClock(lambda: T0)
    joined = mal.joined()
    mal.clock.observe(HLC_MAX - 1)
    far = mal.write("offer.posted", {"title": "from the end of time"})
    assert far.hlc == HLC_MAX and decode(far.raw) == far
    after = events.create(
        mal.key,
        group=group.id,
        seq=3,
        prev=far.hash,
        deps=[],
        hlc=pack(T0, 5),
        type="offer.posted",
        body={"title": "after"},
    )
    result = await bo.store.receive([joined, far, after])
    assert [e.seq for e in result.stored] == [1]
    assert result.future == 1 and result.held == 1 and result.rejected == []
    assert wall_ms(bo.store.clock.last) <= T0 + MAX_FUTURE_MS

    bo_wall.ms = T0 + 100 * YEAR_MS  # a century later it is still in the future
    assert (await bo.store.receive([])).stored == []
    assert await bo.store.pending_count() == 2
    mine = await bo.post(b.OfferPosted(title="still fine"))
    assert wall_ms(mine.hlc) == bo_wall.ms
    assert await offers(bo) == ["still fine"]
    await assert_projections_equal_a_rebuild(bo)


def test_the_clock_refuses_to_pass_2_63_rather_than_wrap_around() -> None:
    """Only the store's hold keeps an hlc at 2^63 from a clock: one that observed it can
    issue nothing above it, and says so instead of stamping a smaller value."""
    clock = HybridClock(lambda: T0)
    clock.observe(HLC_MAX)
    with pytest.raises(ValueError, match="out of range"):
        clock.tick()
    assert clock.last == HLC_MAX


@pytest.mark.parametrize("hlc", [0, -1, -(1 << 63), 1 << 63, (1 << 64) - 1])
def test_an_hlc_outside_0_to_2_63_is_malformed(hlc: int) -> None:
    """(2^64 itself cannot be written in msgpack; 2^63 and above overflow SQLite.)"""
    env = Author(Group.new("g")).joined()
    fields = msgpack.unpackb(env.raw, raw=False)
    fields["hlc"] = hlc
    with pytest.raises(MalformedEvent, match="hlc"):
        decode(msgpack.packb(fields, use_bin_type=True))
