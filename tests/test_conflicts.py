"""Conflicts shown, not resolved behind people's backs (issue 19, items 1-4).

Stories of two people on their own nodes who act apart and then meet, told through the
node's write path as in tests/test_projections.py; the views (projections/views.py) are
what ``--json`` and the web page show. A hypothesis property then checks that the new
flags, like every row, depend on the event set only: any order and duplication of
delivery gives the canonical rows.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eventgen import Network, Node, Op, shuffled_delivery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_projections import Person, World, assert_rebuild_agrees, claims_of, one

from eventlog.events import Envelope
from projections import views

TODAY = datetime.date(2026, 12, 7)
RICE_KG = {"slug": "rice", "name": "Rice", "unit": "kg", "category": "food", "storage": "ambient"}
RICE_BAGS = {**RICE_KG, "unit": "bag"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.close()


async def apart(world: World, skew_ms: int = 0) -> tuple[Person, Person]:
    """Ana and Bo on their own nodes (Bo's clock ``skew_ms`` ahead), having met once."""
    ana = await world.person("Ana")
    bo = await world.person("Bo", await world.node(skew_ms=skew_ms))
    await world.meet(ana.node, bo.node)
    return ana, bo


async def read(node: Node, view: object) -> dict[str, object]:
    return await node.store.read(view)  # type: ignore[arg-type]


# -- 1. concurrent definitions ------------------------------------------------------


@pytest.mark.parametrize("skew_ms", [0, 5_000])
async def test_an_item_defined_apart_in_two_units_is_flagged_with_both_versions(
    world: World, skew_ms: int
) -> None:
    ana, bo = await apart(world, skew_ms)
    await ana.does("item.defined", **RICE_KG)
    await bo.does("item.defined", **RICE_BAGS)
    await ana.does("stock.adjusted", item="rice", location="pantry", delta=5, reason="donation")
    await world.meet(ana.node, bo.node)
    for node in (ana.node, bo.node):
        row = await one(node, "items", slug="rice")
        assert row["flags"] == "conflicting-definitions"
        rice = (await node.store.read(lambda db: views.definitions(db, "items")))["rice"]
        assert rice["flags"] == ["conflicting-definitions"]
        versions = rice["versions"]
        assert isinstance(versions, list)
        assert sorted((v["unit"], v["by_name"]) for v in versions) == [
            ("bag", "Bo"),
            ("kg", "Ana"),
        ]
        stock = await node.store.read(lambda db: views.inventory(db, TODAY))
        (pantry,) = stock["rows"]
        assert "conflicting-definitions" in pantry["flags"]  # type: ignore[operator]
        assert len(pantry["versions"]["item"]) == 2  # type: ignore[index]
        await assert_rebuild_agrees(node)

    await bo.does("item.defined", **RICE_BAGS)  # Bo decides, having seen both
    await world.meet(ana.node, bo.node)
    for node in (ana.node, bo.node):
        row = await one(node, "items", slug="rice")
        assert (row["unit"], row["flags"], row["versions"]) == ("bag", "", "")
        await assert_rebuild_agrees(node)


async def test_the_same_definition_made_apart_is_no_conflict(world: World) -> None:
    ana, bo = await apart(world)
    await ana.does("location.defined", slug="hub", name="Hub", kind="hub")
    await bo.does("location.defined", slug="hub", name="Hub", kind="hub")
    await world.meet(ana.node, bo.node)
    assert (await one(ana.node, "locations", slug="hub"))["flags"] == ""


async def test_a_location_and_a_role_defined_apart_are_flagged(world: World) -> None:
    ana, bo = await apart(world)
    await ana.does("location.defined", slug="hub", name="Community hub", kind="hub")
    await bo.does("location.defined", slug="hub", name="Church hall", kind="kitchen")
    await ana.does("role.defined", slug="driver", name="Driver", description="", weekly_hours=4)
    await bo.does("role.defined", slug="driver", name="Driver", description="Van", weekly_hours=6)
    await world.meet(ana.node, bo.node)
    for node in (ana.node, bo.node):
        hub = (await node.store.read(lambda db: views.definitions(db, "locations")))["hub"]
        assert sorted(v["kind"] for v in hub["versions"]) == ["hub", "kitchen"]  # type: ignore[attr-defined]
        (driver,) = (await node.store.read(lambda db: views.roster(db, None)))["roles"]
        assert driver["flags"] == ["conflicting-definitions"]
        assert sorted(v["weekly_hours"] for v in driver["versions"]) == [4, 6]  # type: ignore[attr-defined]
        await assert_rebuild_agrees(node)


# -- 2. release against fulfil ------------------------------------------------------


@pytest.mark.parametrize("skew_ms", [0, 5_000, -5_000])
async def test_a_fulfilment_made_apart_from_a_release_stands_and_is_disputed(
    world: World, skew_ms: int
) -> None:
    """Whichever of the two sorts first, the claim counts as fulfilled."""
    ana, bo = await apart(world, skew_ms)
    need = await ana.does(
        "need.posted", urgency="normal", title="Rice", category="food", quantity=3
    )
    await world.meet(ana.node, bo.node)
    claim = await bo.does("claim.made", target=need.hash, quantity=3)
    await world.meet(ana.node, bo.node)
    await bo.does("claim.released", claim=claim.hash)
    await ana.does("claim.fulfilled", claim=claim.hash)
    await world.meet(ana.node, bo.node)
    for node in (ana.node, bo.node):
        row = (await claims_of(node, need))[claim.hash]
        assert (row["status"], row["flags"]) == ("fulfilled", "disputed")
        entry = await one(node, "board_entries", id=need.hash)
        assert (entry["status"], entry["claimed"], entry["flags"]) == ("met", 3, "disputed")
        board = await node.store.read(lambda db: views.board(db, TODAY))
        (met,) = board["met"]
        steps = met["claims"][0]["steps"]  # type: ignore[index]
        assert sorted((s["step"], s["by_name"]) for s in steps) == [
            ("fulfilled", "Ana"),
            ("released", "Bo"),
        ]
        await assert_rebuild_agrees(node)


async def test_a_fulfilment_after_seeing_the_release_is_ignored_as_before(world: World) -> None:
    ana, bo = await apart(world)
    offer = await ana.does("offer.posted", title="Rice", category="food", quantity=3)
    await world.meet(ana.node, bo.node)
    claim = await bo.does("claim.made", target=offer.hash, quantity=3)
    await bo.does("claim.released", claim=claim.hash)
    await world.meet(ana.node, bo.node)
    await ana.does("claim.fulfilled", claim=claim.hash)
    row = (await claims_of(ana.node, offer))[claim.hash]
    assert (row["status"], row["flags"]) == ("released", "")


# -- 3. a claim on a withdrawn offer ------------------------------------------------


async def test_a_claim_made_apart_from_the_withdrawal_stays_visible_to_its_claimant(
    world: World,
) -> None:
    ana, bo = await apart(world)
    offer = await ana.does("offer.posted", title="Beans", category="food", quantity=4)
    await world.meet(ana.node, bo.node)
    claim = await bo.does("claim.made", target=offer.hash, quantity=4)
    await ana.does("offer.withdrawn", offer=offer.hash)
    await world.meet(ana.node, bo.node)
    for node in (ana.node, bo.node):
        assert (await claims_of(node, offer))[claim.hash]["flags"] == "target-withdrawn"
        board = await node.store.read(lambda db: views.board(db, TODAY))
        assert board["offers"] == []
        (withdrawn,) = board["withdrawn"]
        assert (withdrawn["status"], withdrawn["kind"]) == ("withdrawn", "offer")
        (shown,) = withdrawn["claims"]  # type: ignore[misc]
        assert (shown["claimant_name"], shown["flags"]) == ("Bo", ["target-withdrawn"])
        await assert_rebuild_agrees(node)


# -- 4. needs that close, needs overdue, days open ----------------------------------


async def test_a_need_fulfilled_in_full_is_met_and_leaves_the_open_board(world: World) -> None:
    ana, bo = await apart(world)
    need = await ana.does(
        "need.posted", urgency="normal", title="Nappies", category="baby", quantity=3
    )
    await world.meet(ana.node, bo.node)
    first = await bo.does("claim.made", target=need.hash, quantity=2)
    second = await bo.does("claim.made", target=need.hash, quantity=1)
    await bo.does("claim.fulfilled", claim=first.hash)
    board = await read(bo.node, views.board)
    assert [n["title"] for n in board["needs"]] == ["Nappies"]  # type: ignore[attr-defined]
    await bo.does("claim.fulfilled", claim=second.hash)
    await world.meet(ana.node, bo.node)
    board = await ana.node.store.read(lambda db: views.board(db, TODAY))
    assert board["needs"] == []
    (met,) = board["met"]
    assert (met["title"], met["status"], met["remaining"]) == ("Nappies", "met", 0)
    assert "days_open" not in met
    await assert_rebuild_agrees(ana.node)


async def test_a_need_past_its_date_is_overdue_and_every_open_post_counts_its_days(
    world: World,
) -> None:
    ana, _ = await apart(world)
    await ana.does("need.posted", urgency="normal", title="Old", category="food", by="2020-01-01")
    await ana.does("need.posted", urgency="normal", title="Soon", category="food", by="2099-01-01")
    await ana.does("offer.posted", title="Bread", category="food")
    posted = datetime.date(2023, 11, 14)  # the test clock's day
    later = posted + datetime.timedelta(days=12)
    board = await ana.node.store.read(lambda db: views.board(db, later))
    flags = {n["title"]: n["flags"] for n in board["needs"]}
    assert flags == {"Old": ["overdue"], "Soon": []}
    assert {p["days_open"] for p in [*board["needs"], *board["offers"]]} == {12}


# -- the flags depend on the event set only -----------------------------------------


def _ops(kinds: tuple[str, ...], low: int, high: int) -> st.SearchStrategy[list[Op]]:
    return st.lists(
        st.tuples(
            st.sampled_from(kinds), st.integers(0, 2), st.integers(0, 99), st.integers(0, 99)
        ),
        min_size=low,
        max_size=high,
    )


POSTS = _ops(("item", "location", "role", "offer", "need"), 2, 8)
CLAIMS = _ops(("claim",), 1, 4)
APART = _ops(
    ("step", "settle", "settle", "settle", "withdraw", "item", "location", "role", "sync"), 4, 25
)
"""Posts and claims everyone has seen, then steps, withdrawals and definitions on a
few targets made mostly apart: releases meet fulfilments, claims meet withdrawals."""


async def _run_phases(net: Network, phases: list[list[Op]]) -> None:
    for i, phase in enumerate(phases):
        if i:
            await net.sync_all()
        await net.run_all(phase)


async def _views(node: Node) -> object:
    def query(db: object) -> object:
        return (
            views.board(db, TODAY),  # type: ignore[arg-type]
            views.inventory(db, TODAY),  # type: ignore[arg-type]
            views.roster(db, None),  # type: ignore[arg-type]
        )

    return await node.store.read(query)  # type: ignore[arg-type]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    posts=POSTS,
    claims=CLAIMS,
    apart=APART,
    skew=st.lists(st.integers(-200, 200), min_size=3, max_size=3),
    rng=st.randoms(use_true_random=False),
)
def test_conflict_flags_are_the_same_for_any_delivery_of_the_event_set(
    posts: list[Op], claims: list[Op], apart: list[Op], skew: list[int], rng: random.Random
) -> None:
    async def check() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            net = Network(Path(tmp), 3, skews=skew)
            try:
                await net.start()
                await _run_phases(net, [posts, claims, apart])
                union: list[Envelope] = net.union()
                reference = await net.fresh()
                for env in union:
                    await reference.receive([env])
                shuffled = await net.fresh()
                for chunk in shuffled_delivery(union, rng):
                    await shuffled.receive(chunk)
                assert await shuffled.dump() == await reference.dump()
                assert await shuffled.digest() == await reference.digest()
                assert await _views(shuffled) == await _views(reference)
                assert await reference.rebuild() == await shuffled.digest()
            finally:
                await net.close()

    asyncio.run(check())


async def test_the_demo_shows_an_item_defined_two_ways(tmp_path: Path) -> None:
    from node.demo import run_demo

    lines: list[str] = []
    report = await run_demo(tmp_path, lines.append)
    items = report["items"]
    assert isinstance(items, dict)
    assert items["rice"]["flags"] == ["conflicting-definitions"]
    assert any("conflicting-definitions" in line for line in lines)
