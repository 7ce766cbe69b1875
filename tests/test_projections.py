"""What each projection shows, through a real store on SQLite (projections/*.py).

Each test is a small story told through the node's own write path: people append
events with ``Store.append`` (one node holding several authors, as a shared kiosk
would) or on their own nodes that meet later with ``read_since``/``receive``. The
runner is a store hook, so every table read here was updated in the transaction that
stored the events, exactly as on a running node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from eventgen import Draft, Node, WallClock, fixed_group
from helpers import make_key
from nacl.signing import SigningKey

from eventlog import events
from eventlog.errors import UsageError
from eventlog.events import Envelope
from projections.fold import Causality, Event, State
from projections.inventory import Inventory

Row = dict[str, object]


# -- the world: people and the nodes they write on ------------------------------------


@dataclass
class Person:
    name: str
    n: int
    node: Node

    @property
    def key(self) -> SigningKey:
        return make_key(self.n)

    @property
    def author(self) -> bytes:
        return bytes(self.key.verify_key)

    async def does(self, type_: str, **body: object) -> Envelope:
        """Append one event on this person's node."""
        return await self.node.append(self.key, type_, body)


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.group = fixed_group()
        self.wall = WallClock()
        self.nodes: list[Node] = []
        self.people = 0

    async def node(self, skew_ms: int = 0) -> Node:
        node = await Node.open(
            self.root / f"node{len(self.nodes)}.db", self.group, clock=self.wall.reader(skew_ms)
        )
        self.nodes.append(node)
        return node

    async def person(self, name: str, node: Node | None = None) -> Person:
        """Someone who joins on ``node`` (a node of their own when None)."""
        self.people += 1
        person = Person(name, self.people, node or await self.node())
        await person.node.join(person.key, name)
        return person

    async def meet(self, *nodes: Node) -> None:
        """The nodes sync with each other until each holds every event."""
        for _ in range(2):
            for source in nodes:
                for target in nodes:
                    if source is not target:
                        await source.send_to(target)

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
async def kiosk(world: World) -> Node:
    """One node several people write on."""
    return await world.node()


async def one(node: Node, table: str, **where: object) -> Row:
    rows = [r for r in await node.rows(table) if all(r[k] == v for k, v in where.items())]
    assert len(rows) == 1, f"{table} where {where}: {rows}"
    return rows[0]


async def assert_rice_everywhere(nodes: Sequence[Node], on_hand: int, flags: str) -> None:
    """Every node shows rice at the pantry so, and its rows equal a rebuild."""
    for node in nodes:
        row = await one(node, "inventory", item="rice", location="pantry")
        assert (row["on_hand"], row["flags"]) == (on_hand, flags)
        await assert_rebuild_agrees(node)


async def claims_of(node: Node, target: Envelope) -> dict[bytes, Row]:
    return {
        r["id"]: r
        for r in await node.rows("board_claims")  # type: ignore[misc]
        if r["target"] == target.hash
    }


async def assert_rebuild_agrees(node: Node) -> None:
    """The rows updated event by event are the rows a full rebuild gives."""
    before = await node.dump()
    digest = await node.digest()
    assert await node.rebuild() == digest
    assert await node.dump() == before


def offer(title: str = "Apples", **extra: object) -> dict[str, object]:
    return {"title": title, "category": "food", **extra}


# -- board --------------------------------------------------------------------------


async def test_two_claims_beyond_the_quantity_over_claim_the_offer(
    world: World, kiosk: Node
) -> None:
    ann, bo, cy = [await world.person(n, kiosk) for n in ("Ann", "Bo", "Cy")]
    apples = await ann.does("offer.posted", **offer(quantity=10))
    first = await bo.does("claim.made", target=apples.hash, quantity=6)
    second = await cy.does("claim.made", target=apples.hash, quantity=6)

    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["kind"], entry["status"], entry["quantity"]) == ("offer", "open", 10)
    assert (entry["claimed"], entry["remaining"], entry["flags"]) == (12, -2, "over-claimed")
    claims = await claims_of(kiosk, apples)
    assert claims[first.hash]["rank"] == 1
    assert claims[first.hash]["flags"] == "needs-decision"
    assert claims[second.hash]["rank"] == 2
    assert claims[second.hash]["flags"] == "over,needs-decision"
    assert {c["status"] for c in claims.values()} == {"pending"}
    assert claims[second.hash]["claimant"] == cy.author
    await assert_rebuild_agrees(kiosk)


async def test_claims_within_the_quantity_are_not_flagged(world: World, kiosk: Node) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    apples = await ann.does("offer.posted", **offer(quantity=10))
    claim = await bo.does("claim.made", target=apples.hash, quantity=10)
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"], entry["flags"]) == (10, 0, "")
    assert (await claims_of(kiosk, apples))[claim.hash]["flags"] == ""


async def test_the_holder_confirming_the_later_claim_ranks_it_first(
    world: World, kiosk: Node
) -> None:
    ann, bo, cy = [await world.person(n, kiosk) for n in ("Ann", "Bo", "Cy")]
    apples = await ann.does("offer.posted", **offer(quantity=10))
    first = await bo.does("claim.made", target=apples.hash, quantity=6)
    second = await cy.does("claim.made", target=apples.hash, quantity=6)
    await ann.does("claim.confirmed", claim=second.hash)

    claims = await claims_of(kiosk, apples)
    assert (claims[second.hash]["status"], claims[second.hash]["rank"]) == ("confirmed", 1)
    assert claims[second.hash]["flags"] == ""
    assert (claims[first.hash]["status"], claims[first.hash]["rank"]) == ("pending", 2)
    assert claims[first.hash]["flags"] == "over,needs-decision"
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"], entry["flags"]) == (12, -2, "over-claimed")

    await ann.does("claim.declined", claim=first.hash)
    claims = await claims_of(kiosk, apples)
    assert (claims[first.hash]["status"], claims[first.hash]["rank"]) == ("declined", None)
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"], entry["flags"]) == (6, 4, "")
    await assert_rebuild_agrees(kiosk)


async def test_a_decline_or_confirm_by_someone_other_than_the_holder_is_ignored(
    world: World, kiosk: Node
) -> None:
    ann, bo, cy = [await world.person(n, kiosk) for n in ("Ann", "Bo", "Cy")]
    apples = await ann.does("offer.posted", **offer(quantity=10))
    claim = await bo.does("claim.made", target=apples.hash, quantity=4)
    await cy.does("claim.declined", claim=claim.hash)
    await bo.does("claim.declined", claim=claim.hash)
    await bo.does("claim.confirmed", claim=claim.hash)

    assert (await claims_of(kiosk, apples))[claim.hash]["status"] == "pending"
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"]) == (4, 6)


async def test_the_claimant_releases_their_claim_and_only_they_can(
    world: World, kiosk: Node
) -> None:
    ann, bo, cy = [await world.person(n, kiosk) for n in ("Ann", "Bo", "Cy")]
    apples = await ann.does("offer.posted", **offer(quantity=10))
    claim = await bo.does("claim.made", target=apples.hash, quantity=4)
    await ann.does("claim.confirmed", claim=claim.hash)
    await cy.does("claim.released", claim=claim.hash)
    await ann.does("claim.released", claim=claim.hash)
    assert (await claims_of(kiosk, apples))[claim.hash]["status"] == "confirmed"

    await bo.does("claim.released", claim=claim.hash)
    row = (await claims_of(kiosk, apples))[claim.hash]
    assert (row["status"], row["rank"], row["flags"]) == ("released", None, "")
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"]) == (0, 10)
    await assert_rebuild_agrees(kiosk)


async def test_a_fulfilled_claim_stays_claimed_and_is_final(world: World, kiosk: Node) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    apples = await ann.does("offer.posted", **offer(quantity=10))
    claim = await bo.does("claim.made", target=apples.hash, quantity=3)
    await ann.does("claim.fulfilled", claim=claim.hash)
    await bo.does("claim.released", claim=claim.hash)  # too late: fulfilled is final
    await ann.does("claim.declined", claim=claim.hash)

    row = (await claims_of(kiosk, apples))[claim.hash]
    assert (row["status"], row["rank"]) == ("fulfilled", 1)
    entry = await one(kiosk, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"]) == (3, 7)


async def test_the_claimant_may_mark_their_claim_fulfilled(world: World, kiosk: Node) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    need = await ann.does(
        "need.posted", title="Nappies", category="baby", quantity=2, urgency="urgent"
    )
    claim = await bo.does("claim.made", target=need.hash, quantity=2)
    await bo.does("claim.fulfilled", claim=claim.hash)
    assert (await claims_of(kiosk, need))[claim.hash]["status"] == "fulfilled"


async def test_a_withdrawn_offer_shows_withdrawn_and_only_its_author_withdraws_it(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    apples = await ann.does("offer.posted", **offer(quantity=10))
    await bo.does("offer.withdrawn", offer=apples.hash)
    assert (await one(kiosk, "board_entries", id=apples.hash))["status"] == "open"

    await ann.does("offer.withdrawn", offer=apples.hash)
    assert (await one(kiosk, "board_entries", id=apples.hash))["status"] == "withdrawn"
    await assert_rebuild_agrees(kiosk)


async def test_a_need_shows_its_urgency_quantity_and_date(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    need = await ann.does(
        "need.posted",
        title="Baby formula",
        category="baby",
        quantity=3,
        urgency="urgent",
        location="hub",
        by="2026-12-01",
    )
    entry = await one(kiosk, "board_entries", id=need.hash)
    assert entry == {
        "id": need.hash,
        "kind": "need",
        "author": ann.author,
        "hlc": need.hlc,
        "title": "Baby formula",
        "category": "baby",
        "item": None,
        "quantity": 3,
        "location": "hub",
        "until": "2026-12-01",
        "urgency": "urgent",
        "status": "open",
        "claimed": 0,
        "remaining": 3,
        "flags": "",
    }
    withdrawn = await ann.does("need.posted", title="Blankets", category="home", urgency="low")
    await ann.does("need.withdrawn", need=withdrawn.hash)
    row = await one(kiosk, "board_entries", id=withdrawn.hash)
    assert (row["urgency"], row["quantity"], row["remaining"], row["status"]) == (
        "low",
        None,
        None,
        "withdrawn",
    )


async def test_an_offer_without_a_quantity_is_never_over_claimed(world: World, kiosk: Node) -> None:
    ann, bo, cy = [await world.person(n, kiosk) for n in ("Ann", "Bo", "Cy")]
    lifts = await ann.does("offer.posted", title="Lifts to the clinic", category="transport")
    await bo.does("claim.made", target=lifts.hash, quantity=5)
    await cy.does("claim.made", target=lifts.hash, quantity=5)
    entry = await one(kiosk, "board_entries", id=lifts.hash)
    assert (entry["claimed"], entry["remaining"], entry["flags"]) == (10, None, "")
    assert {c["flags"] for c in (await claims_of(kiosk, lifts)).values()} == {""}


async def test_a_claim_on_a_target_never_posted_is_refused_and_writes_nothing(
    world: World, kiosk: Node
) -> None:
    """An id names the event that created the entity: a node cannot name what it lacks."""
    bo = await world.person("Bo", kiosk)
    before = await kiosk.digest()
    count = await kiosk.store.count()
    with pytest.raises(UsageError, match="names an event this node does not have"):
        await bo.does("claim.made", target=bytes(range(32)), quantity=2)
    assert await kiosk.store.count() == count
    assert await kiosk.rows("board_claims") == []
    assert await kiosk.digest() == before


async def test_a_claim_can_be_made_once_the_offer_has_arrived(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    apples = await ann.does("offer.posted", **offer(quantity=10))
    # Bo heard the id by phone: his node refuses until it has the offer itself.
    with pytest.raises(UsageError):
        await bo.does("claim.made", target=apples.hash, quantity=4)
    assert await bo.node.rows("board_claims") == []

    await ann.node.send_to(bo.node)
    claim = await bo.does("claim.made", target=apples.hash, quantity=4)
    entry = await one(bo.node, "board_entries", id=apples.hash)
    assert (entry["claimed"], entry["remaining"]) == (4, 6)
    assert (await claims_of(bo.node, apples))[claim.hash]["status"] == "pending"
    await assert_rebuild_agrees(bo.node)


async def forged(person: Person, after: Envelope, type_: str, **body: object) -> Envelope:
    """The person's next event, signed but not stored on their node: what another
    implementation could send without checking that it has what the body names
    (stamped after ``after``, as the validity rule asks of what an event names)."""
    head = (await person.node.store.heads())[person.author]
    return events.create(
        person.key,
        group=person.node.store.group.id,
        seq=head.seq + 1,
        prev=head.hash,
        deps=[],
        hlc=max(head.hlc, after.hlc) + 1,
        type=type_,
        body=body,
    )


async def test_a_claim_step_received_before_its_claim_waits_for_it(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    await world.meet(ann.node, bo.node)
    apples = await ann.does("offer.posted", **offer(quantity=10))
    await world.meet(ann.node, bo.node)
    claim = await bo.does("claim.made", target=apples.hash, quantity=4)
    # Ann's (foreign) software confirms the id Bo read out before it has Bo's claim.
    step = await forged(ann, claim, "claim.confirmed", claim=claim.hash)
    late = await world.node()
    await ann.node.send_to(late)
    assert await late.receive([step]) == []  # held: it names a claim late lacks
    assert await late.store.pending_count() == 1
    await bo.node.send_to(late)  # the claim arrives, and releases the step
    assert await late.store.pending_count() == 0
    assert (await claims_of(late, apples))[claim.hash]["status"] == "confirmed"
    await assert_rebuild_agrees(late)


# -- inventory ----------------------------------------------------------------------


def adjust(
    item: str, location: str, delta: int, reason: str = "donation", **extra: object
) -> dict[str, object]:
    return {"item": item, "location": location, "delta": delta, "reason": reason, **extra}


async def test_deltas_add_up_per_item_and_location(world: World, kiosk: Node) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 10))
    await bo.does("stock.adjusted", **adjust("rice", "pantry", -3, "distribution"))
    await ann.does("stock.adjusted", **adjust("rice", "pantry", -1, "spoilage"))
    await bo.does("stock.adjusted", **adjust("rice", "hub", 4))
    await bo.does("stock.adjusted", **adjust("beans", "pantry", 2))

    rows = {
        (r["item"], r["location"]): (r["on_hand"], r["flags"])
        for r in await kiosk.rows("inventory")
    }
    assert rows == {
        ("rice", "pantry"): (6, ""),
        ("rice", "hub"): (4, ""),
        ("beans", "pantry"): (2, ""),
    }
    await assert_rebuild_agrees(kiosk)


async def test_stock_below_zero_is_flagged_negative(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("stock.adjusted", **adjust("milk", "fridge", 2))
    await ann.does("stock.adjusted", **adjust("milk", "fridge", -5, "distribution"))
    row = await one(kiosk, "inventory", item="milk", location="fridge")
    assert (row["on_hand"], row["flags"]) == (-3, "negative")

    await ann.does("stock.adjusted", **adjust("milk", "fridge", 3, "correction"))
    row = await one(kiosk, "inventory", item="milk", location="fridge")
    assert (row["on_hand"], row["flags"]) == (0, "")


async def test_a_count_replaces_what_it_saw_and_later_deltas_add_to_it(
    world: World, kiosk: Node
) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 5))
    await ann.does("stock.counted", item="rice", location="pantry", count=10)
    assert (await one(kiosk, "inventory", item="rice"))["on_hand"] == 10
    await ann.does("stock.adjusted", **adjust("rice", "pantry", -3, "distribution"))
    row = await one(kiosk, "inventory", item="rice")
    assert (row["on_hand"], row["flags"]) == (7, "")
    await assert_rebuild_agrees(kiosk)


async def test_a_count_of_zero_on_a_new_item_makes_a_row(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("stock.counted", item="beans", location="hub", count=0)
    row = await one(kiosk, "inventory", item="beans", location="hub")
    assert (row["on_hand"], row["expires"], row["flags"]) == (0, None, "")


async def test_a_delta_made_apart_from_a_count_is_added_and_flags_a_recount(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    await world.meet(ann.node, bo.node)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 5))
    await world.meet(ann.node, bo.node)
    # Apart: Ann counts the shelf, Bo adds a donation he made there.
    await ann.does("stock.counted", item="rice", location="pantry", count=10)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    await world.meet(ann.node, bo.node)

    for node in (ann.node, bo.node):
        row = await one(node, "inventory", item="rice", location="pantry")
        assert (row["on_hand"], row["flags"]) == (14, "recount")
    assert await ann.node.digest() == await bo.node.digest()
    await assert_rebuild_agrees(ann.node)

    # A later count that has seen everything settles it.
    await ann.does("stock.counted", item="rice", location="pantry", count=12)
    await world.meet(ann.node, bo.node)
    for node in (ann.node, bo.node):
        row = await one(node, "inventory", item="rice", location="pantry")
        assert (row["on_hand"], row["flags"]) == (12, "")
    await assert_rebuild_agrees(bo.node)


async def test_a_late_delta_that_sorts_before_the_count_is_still_added_with_a_recount(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo", await world.node(skew_ms=-60_000))  # clock a minute slow
    await world.meet(ann.node, bo.node)
    count = await ann.does("stock.counted", item="rice", location="pantry", count=10)
    delta = await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    assert delta.key < count.key  # Bo's delta re-folds Ann's row when it arrives
    await world.meet(ann.node, bo.node)
    await assert_rice_everywhere([ann.node, bo.node], 14, "recount")


async def test_two_counts_made_apart_flag_a_recount(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    await world.meet(ann.node, bo.node)
    anns = await ann.does("stock.counted", item="beans", location="pantry", count=7)
    bos = await bo.does("stock.counted", item="beans", location="pantry", count=9)
    await world.meet(ann.node, bo.node)
    winner = 9 if bos.key > anns.key else 7  # the later in canonical order
    for node in (ann.node, bo.node):
        row = await one(node, "inventory", item="beans", location="pantry")
        assert (row["on_hand"], row["flags"]) == (winner, "recount")


async def test_a_second_count_by_the_same_counter_keeps_the_concurrent_delta(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo", await world.node(skew_ms=-60_000))  # sorts first
    await world.meet(ann.node, bo.node)
    # Apart: Bo's delta is concurrent with both of Ann's counts.
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    await ann.does("stock.counted", item="rice", location="pantry", count=10)
    await ann.does("stock.counted", item="rice", location="pantry", count=12)
    await world.meet(ann.node, bo.node)
    # docs: a delta the standing count had not seen is added and flags a recount
    await assert_rice_everywhere([ann.node, bo.node], 16, "recount")


async def test_a_count_that_saw_the_last_count_but_not_the_delta_still_adds_it(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo", await world.node(skew_ms=-60_000))  # sorts first
    cy = await world.person("Cy")
    await world.meet(ann.node, bo.node, cy.node)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    await ann.does("stock.counted", item="rice", location="pantry", count=10)
    await world.meet(ann.node, cy.node)  # Cy sees Ann's count, not Bo's delta
    await cy.does("stock.counted", item="rice", location="pantry", count=12)
    await world.meet(ann.node, bo.node, cy.node)
    await assert_rice_everywhere([ann.node, bo.node, cy.node], 16, "recount")


async def test_a_delta_inside_one_count_is_added_to_a_concurrent_count_that_wins(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    cy = await world.person("Cy", await world.node(skew_ms=60_000))  # his count sorts last
    await world.meet(ann.node, bo.node, cy.node)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    await world.meet(ann.node, bo.node)  # Ann sees Bo's delta, Cy does not
    anns = await ann.does("stock.counted", item="rice", location="pantry", count=10)
    cys = await cy.does("stock.counted", item="rice", location="pantry", count=7)
    assert cys.key > anns.key
    await world.meet(ann.node, bo.node, cy.node)
    # Cy's count stands; the 4 inside Ann's count is not inside his.
    await assert_rice_everywhere([ann.node, bo.node, cy.node], 11, "recount")


async def test_a_count_that_saw_part_of_someones_deltas_adds_the_rest(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    await world.meet(ann.node, bo.node)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 4))
    await world.meet(ann.node, bo.node)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 3))  # Ann has not seen it
    await ann.does("stock.counted", item="rice", location="pantry", count=10)
    await world.meet(ann.node, bo.node)
    await assert_rice_everywhere([ann.node, bo.node], 13, "recount")


async def test_two_concurrent_counts_with_their_own_deltas_then_a_count_that_saw_all(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo", await world.node(skew_ms=60_000))  # his count sorts last
    await world.meet(ann.node, bo.node)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 2))
    anns = await ann.does("stock.counted", item="rice", location="pantry", count=10)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", -1, "distribution"))
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 3))
    bos = await bo.does("stock.counted", item="rice", location="pantry", count=20)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", 5))
    assert bos.key > anns.key
    await world.meet(ann.node, bo.node)
    # Bo's count stands: + his later 5, + Ann's 2 and -1 he had not seen; his 3 is in it.
    await assert_rice_everywhere([ann.node, bo.node], 26, "recount")

    # Ann has now seen everything: her count settles it, and Bo's next delta adds to it.
    await ann.does("stock.counted", item="rice", location="pantry", count=25)
    await world.meet(ann.node, bo.node)
    await bo.does("stock.adjusted", **adjust("rice", "pantry", -4, "distribution"))
    await world.meet(ann.node, bo.node)
    await assert_rice_everywhere([ann.node, bo.node], 21, "")


async def test_adjusting_and_counting_in_turn_never_re_folds(
    world: World, kiosk: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common path, on one node or after syncing, stays incremental."""
    refolds: list[str] = []
    fold = Inventory.fold

    def counting_fold(
        self: Inventory, entity: str, events: Sequence[Event], causality: Causality
    ) -> State | None:
        refolds.append(entity)
        return fold(self, entity, events, causality)

    monkeypatch.setattr(Inventory, "fold", counting_fold)
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    for n in range(1, 6):
        await ann.does("stock.adjusted", **adjust("rice", "pantry", n))
        await bo.does("stock.adjusted", **adjust("rice", "pantry", -1, "distribution"))
        await (ann if n % 2 else bo).does(
            "stock.counted", item="rice", location="pantry", count=10 * n
        )
        await ann.does("stock.adjusted", **adjust("rice", "pantry", 2))
    row = await one(kiosk, "inventory", item="rice", location="pantry")
    assert (row["on_hand"], row["flags"]) == (52, "")
    assert refolds == []


async def test_stock_leaves_first_expired_first_out(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("stock.adjusted", **adjust("milk", "fridge", 5, expires="2026-12-01"))
    await ann.does("stock.adjusted", **adjust("milk", "fridge", 5, expires="2026-12-10"))
    row = await one(kiosk, "inventory", item="milk")
    assert (row["on_hand"], row["expires"]) == (10, "2026-12-01")

    await ann.does("stock.adjusted", **adjust("milk", "fridge", -6, "distribution"))
    row = await one(kiosk, "inventory", item="milk")
    assert (row["on_hand"], row["expires"], row["flags"]) == (4, "2026-12-10", "")

    await ann.does("stock.adjusted", **adjust("milk", "fridge", -4, "distribution"))
    row = await one(kiosk, "inventory", item="milk")
    assert (row["on_hand"], row["expires"]) == (0, None)
    await assert_rebuild_agrees(kiosk)


async def test_a_count_below_the_lots_trims_them_first_expired_first(
    world: World, kiosk: Node
) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("stock.adjusted", **adjust("milk", "fridge", 5, expires="2026-12-01"))
    await ann.does("stock.adjusted", **adjust("milk", "fridge", 5, expires="2026-12-10"))
    await ann.does("stock.counted", item="milk", location="fridge", count=3)
    row = await one(kiosk, "inventory", item="milk")
    assert (row["on_hand"], row["expires"]) == (3, "2026-12-10")


# -- roster -------------------------------------------------------------------------


def shift(
    slots: int = 1,
    start: str = "2026-11-27T09:00",
    end: str = "2026-11-27T12:00",
) -> dict[str, object]:
    return {"role": "driver", "location": "hub", "start": start, "end": end, "slots": slots}


async def test_two_volunteers_taking_the_last_slot_apart_over_fill_the_shift(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    run = await ann.does("shift.scheduled", **shift(slots=1))
    await world.meet(ann.node, bo.node)
    mine = await ann.does("shift.signed_up", shift=run.hash)
    his = await bo.does("shift.signed_up", shift=run.hash)
    await world.meet(ann.node, bo.node)

    first, second = sorted([mine, his], key=lambda e: (e.hlc, e.author))
    for node in (ann.node, bo.node):
        row = await one(node, "roster_shifts", id=run.hash)
        assert (row["slots"], row["filled"], row["open"], row["flags"]) == (1, 2, 0, "over-filled")
        signups = {r["member"]: r for r in await node.rows("roster_signups")}
        assert (signups[first.author]["rank"], signups[first.author]["flags"]) == (1, "")
        assert (signups[second.author]["rank"], signups[second.author]["flags"]) == (2, "over")
        await assert_rebuild_agrees(node)

    # The first one withdraws: the other keeps the slot and the conflict is gone.
    leaver = ann if first.author == ann.author else bo
    await leaver.does("shift.withdrawn", shift=run.hash)
    await world.meet(ann.node, bo.node)
    for node in (ann.node, bo.node):
        row = await one(node, "roster_shifts", id=run.hash)
        assert (row["filled"], row["open"], row["flags"]) == (1, 0, "")
        signup = await one(node, "roster_signups", shift=run.hash)
        assert (signup["member"], signup["rank"], signup["flags"]) == (second.author, 1, "")


async def test_withdrawing_frees_the_slot_and_signing_up_again_goes_to_the_back(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    run = await ann.does("shift.scheduled", **shift(slots=2))
    await ann.does("shift.signed_up", shift=run.hash)
    await bo.does("shift.signed_up", shift=run.hash)
    assert (await one(kiosk, "roster_shifts", id=run.hash))["open"] == 0

    await ann.does("shift.withdrawn", shift=run.hash)
    row = await one(kiosk, "roster_shifts", id=run.hash)
    assert (row["filled"], row["open"]) == (1, 1)
    await ann.does("shift.signed_up", shift=run.hash)
    ranks = {r["member"]: r["rank"] for r in await kiosk.rows("roster_signups")}
    assert ranks == {bo.author: 1, ann.author: 2}
    await assert_rebuild_agrees(kiosk)


async def test_a_second_sign_up_by_the_same_member_takes_one_slot(
    world: World, kiosk: Node
) -> None:
    ann = await world.person("Ann", kiosk)
    run = await ann.does("shift.scheduled", **shift(slots=1))
    await ann.does("shift.signed_up", shift=run.hash)
    await ann.does("shift.signed_up", shift=run.hash)
    row = await one(kiosk, "roster_shifts", id=run.hash)
    assert (row["filled"], row["open"], row["flags"]) == (1, 0, "")


async def test_completed_hours_are_booked_to_the_iso_week_of_the_shift_start(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    friday = await ann.does("shift.scheduled", **shift(slots=2))
    new_year = await ann.does(
        "shift.scheduled", **shift(start="2027-01-01T08:00", end="2027-01-01T10:00")
    )
    await bo.does("shift.signed_up", shift=friday.hash)
    await bo.does("shift.completed", shift=friday.hash, hours=2)
    await bo.does("shift.completed", shift=friday.hash, hours=3.5)  # the last report counts
    await ann.does("shift.completed", shift=new_year.hash, hours=2)

    hours = {
        (r["shift"], r["member"]): (r["week"], r["hours"]) for r in await kiosk.rows("roster_hours")
    }
    assert hours == {
        (friday.hash, bo.author): ("2026-W48", 3.5),
        (new_year.hash, ann.author): ("2026-W53", 2.0),
    }
    await assert_rebuild_agrees(kiosk)


async def test_a_sign_up_for_a_shift_not_yet_received_waits_for_the_shift(world: World) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    run = await ann.does("shift.scheduled", **shift(slots=3))
    kiosk = await world.node()
    await bo.node.send_to(kiosk)
    signup = await forged(bo, run, "shift.signed_up", shift=run.hash)
    assert await kiosk.receive([signup]) == []
    assert await kiosk.rows("roster_signups") == []
    await ann.node.send_to(kiosk)
    row = await one(kiosk, "roster_shifts", id=run.hash)
    assert (row["filled"], row["open"]) == (1, 2)
    await assert_rebuild_agrees(kiosk)


async def test_a_role_is_defined_and_assigned_and_the_last_word_wins(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    await ann.does(
        "role.defined",
        slug="driver",
        name="Driver",
        description="Picks up donations",
        weekly_hours=4,
    )
    await ann.does("role.assigned", role="driver", member=bo.author, until="2027-01-31")
    assert await kiosk.rows("roles") == [
        {
            "slug": "driver",
            "name": "Driver",
            "description": "Picks up donations",
            "weekly_hours": 4.0,
            "flags": "",
            "versions": "",
        }
    ]
    assert await kiosk.rows("role_assignments") == [
        {"role": "driver", "member": bo.author, "until": "2027-01-31"}
    ]

    await bo.does("role.defined", slug="driver", name="Van driver", description="", weekly_hours=6)
    await ann.does("role.assigned", role="driver", member=bo.author)
    await ann.does("role.assigned", role="driver", member=ann.author, until="2026-12-31")
    assert (await one(kiosk, "roles", slug="driver"))["name"] == "Van driver"
    assigned = {r["member"]: r["until"] for r in await kiosk.rows("role_assignments")}
    assert assigned == {bo.author: None, ann.author: "2026-12-31"}
    await assert_rebuild_agrees(kiosk)


async def test_an_assignment_to_a_role_not_defined_yet_is_listed(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    await ann.does("role.assigned", role="cook", member=ann.author)
    assert await kiosk.rows("roles") == []
    assert await kiosk.rows("role_assignments") == [
        {"role": "cook", "member": ann.author, "until": None}
    ]


# -- catalog ------------------------------------------------------------------------


async def test_members_are_listed_with_the_name_they_joined_with(world: World, kiosk: Node) -> None:
    ann = await world.person("Ann", kiosk)
    (joined,) = await kiosk.events()
    assert await kiosk.rows("members") == [
        {"author": ann.author, "name": "Ann", "languages": "", "joined": joined.hlc}
    ]


async def test_item_and_location_definitions_are_last_writer_wins(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    await ann.does(
        "item.defined", slug="rice", name="Rice", unit="kg", category="food", storage="ambient"
    )
    await bo.does(
        "item.defined",
        slug="rice",
        name="Brown rice",
        unit="bag",
        category="grains",
        storage="ambient",
    )
    await ann.does("location.defined", slug="hub", name="Community hub", kind="hub")
    await bo.does("location.defined", slug="hub", name="Church hall", kind="kitchen")
    await bo.does("location.defined", slug="fridge", name="Street fridge", kind="fridge")

    assert await kiosk.rows("items") == [
        {
            "slug": "rice",
            "name": "Brown rice",
            "unit": "bag",
            "category": "grains",
            "storage": "ambient",
            "flags": "",  # Bo had seen Ann's definition: no conflict
            "versions": "",
        }
    ]
    locations = {r["slug"]: (r["name"], r["kind"]) for r in await kiosk.rows("locations")}
    assert locations == {"hub": ("Church hall", "kitchen"), "fridge": ("Street fridge", "fridge")}
    await assert_rebuild_agrees(kiosk)


async def test_a_slug_defined_apart_on_two_nodes_ends_as_the_later_definition_everywhere(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo", await world.node(skew_ms=5_000))  # his clock runs ahead
    await world.meet(ann.node, bo.node)
    bos = await bo.does(
        "item.defined",
        slug="beans",
        name="Beans (tins)",
        unit="tin",
        category="food",
        storage="ambient",
    )
    anns = await ann.does(
        "item.defined",
        slug="beans",
        name="Dried beans",
        unit="kg",
        category="food",
        storage="ambient",
    )
    assert bos.key > anns.key  # written first, but later in the canonical order
    await world.meet(ann.node, bo.node)
    for node in (ann.node, bo.node):
        assert (await one(node, "items", slug="beans"))["name"] == "Beans (tins)"
        await assert_rebuild_agrees(node)


# -- events projections skip ----------------------------------------------------------


async def test_unknown_types_and_invalid_bodies_are_stored_but_change_no_projection(
    world: World, kiosk: Node
) -> None:
    ann, bo = await world.person("Ann", kiosk), await world.person("Bo", kiosk)
    apples = await ann.does("offer.posted", **offer(quantity=10))
    await bo.does("claim.made", target=apples.hash, quantity=2)
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 3))
    run = await ann.does("shift.scheduled", **shift())
    before, digest, count = await kiosk.dump(), await kiosk.digest(), await kiosk.store.count()

    skipped: list[Draft] = [
        ("note.pinned", {"text": "Bring bags"}),  # a type from the future
        ("offer.posted", {"title": "   ", "category": "food"}),  # empty title
        ("offer.posted", {"title": "Pears", "category": "food", "quantity": 0}),
        ("stock.adjusted", adjust("rice", "pantry", 0)),  # zero delta
        ("stock.adjusted", adjust("rice", "pantry", 2, "gift")),  # unknown reason
        ("stock.counted", {"item": "rice", "location": "pantry", "count": -1}),
        ("claim.made", {"target": apples.hash}),  # no quantity
        ("claim.made", {"target": b"short", "quantity": 1}),
        ("claim.confirmed", {"claim": "not bytes"}),
        ("shift.signed_up", {"shift": run.hash, "_v": 99}),  # a newer version
        ("shift.scheduled", {**shift(), "end": "2026-11-27T08:00"}),  # ends before start
        (
            "item.defined",
            {
                "slug": "Rice!",
                "name": "Rice",
                "unit": "kg",
                "category": "food",
                "storage": "ambient",
            },
        ),
        ("role.defined", {"slug": "driver"}),
        ("member.joined", {"name": ""}),
    ]
    stored = await kiosk.append_many(bo.key, skipped)
    assert len(stored) == len(skipped)
    assert await kiosk.store.count() == count + len(skipped)
    assert await kiosk.dump() == before
    assert await kiosk.digest() == digest
    assert await kiosk.rebuild() == digest
    assert await kiosk.dump() == before


async def test_a_node_receiving_skipped_events_from_a_peer_shows_the_same_rows(
    world: World,
) -> None:
    ann = await world.person("Ann")
    bo = await world.person("Bo")
    await ann.does("offer.posted", **offer(quantity=3))
    await ann.does("note.pinned", text="hello")
    await ann.does("stock.adjusted", **adjust("rice", "pantry", 0))
    await ann.node.send_to(bo.node)
    await bo.node.send_to(ann.node)
    assert await bo.node.store.count() == await ann.node.store.count() == 5
    assert await bo.node.digest() == await ann.node.digest()
    assert len(await bo.node.rows("board_entries")) == 1
    assert await bo.node.rows("inventory") == []
