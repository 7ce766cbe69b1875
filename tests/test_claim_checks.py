"""What only a node can check before it writes a claim step or a withdrawal (Node.post):
who holds the goods, who made the claim, whether the claim or offer is on its board.

These checks read the board through ``views.board_entry`` and ``views.claim``, which
find an offer by its entity and a claim by the target its event names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventlog import body as b
from eventlog.errors import UsageError
from eventlog.events import Envelope
from eventlog.identity import Group
from node.app import Node


async def share(source: Node, sink: Node) -> None:
    """Hand ``sink`` everything ``source`` holds that it lacks (a sync, without sockets)."""
    have = {author: head.seq for author, head in (await sink.store.heads()).items()}
    async for batch in source.store.read_since(have):
        await sink.store.receive(batch)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    group = Group.new("Street pantry")
    ana = await Node.init(tmp_path / "ana", "Ana", group)
    ben = await Node.init(tmp_path / "ben", "Ben", group)
    try:
        yield ana, ben
    finally:
        await ana.close()
        await ben.close()


async def ben_claims(pair: tuple[Node, Node], post: b.OfferPosted | b.NeedPosted) -> Envelope:
    """Ana posts ``post``; Ben, having synced, claims from it; returns the claim."""
    ana, ben = pair
    target = await ana.post(post)
    await share(ana, ben)
    return await ben.post(b.ClaimMade(target=target.hash, quantity=1))


async def test_only_the_holder_confirms_and_only_the_claimant_releases(
    pair: tuple[Node, Node],
) -> None:
    ana, ben = pair
    claim = await ben_claims(pair, b.OfferPosted(title="Soup", quantity=4))
    with pytest.raises(
        UsageError, match="only the person who posted the offer can confirm its claims"
    ):
        await ben.post(b.ClaimConfirmed(claim=claim.hash))
    await share(ben, ana)
    with pytest.raises(UsageError, match="only the person who made the claim can release it"):
        await ana.post(b.ClaimReleased(claim=claim.hash))
    await ana.post(b.ClaimConfirmed(claim=claim.hash))
    with pytest.raises(UsageError, match="that claim is already confirmed"):
        await ana.post(b.ClaimDeclined(claim=claim.hash))
    await ben.post(b.ClaimFulfilled(claim=claim.hash))  # the claimant may mark it done


async def test_a_claim_or_offer_not_on_the_board_is_refused_and_nothing_written(
    pair: tuple[Node, Node],
) -> None:
    ana, ben = pair
    soup = await ana.post(b.OfferPosted(title="Soup", quantity=4))
    claim_elsewhere = await ana.post(b.ClaimMade(target=soup.hash, quantity=1))
    before = await ana.store.count(), await ben.store.count()
    with pytest.raises(UsageError, match="that claim is not on this node's board"):
        await ben.post(b.ClaimConfirmed(claim=claim_elsewhere.hash))
    with pytest.raises(UsageError, match="that claim is not on this node's board"):
        await ana.post(b.ClaimConfirmed(claim=soup.hash))  # an offer's id, not a claim's
    with pytest.raises(UsageError, match="not on this node's board"):
        await ben.post(b.ClaimMade(target=soup.hash, quantity=1))
    assert (await ana.store.count(), await ben.store.count()) == before


async def test_only_the_author_withdraws_an_offer_and_a_withdrawn_one_takes_no_claims(
    pair: tuple[Node, Node],
) -> None:
    ana, ben = pair
    soup = await ana.post(b.OfferPosted(title="Soup", quantity=4))
    await share(ana, ben)
    with pytest.raises(UsageError, match="only the person who posted the offer can withdraw it"):
        await ben.post(b.OfferWithdrawn(offer=soup.hash))
    await ana.post(b.OfferWithdrawn(offer=soup.hash))
    with pytest.raises(UsageError, match="that offer was withdrawn"):
        await ana.post(b.ClaimMade(target=soup.hash, quantity=1))


async def test_only_the_holder_declines(pair: tuple[Node, Node]) -> None:
    _, ben = pair
    claim = await ben_claims(pair, b.NeedPosted(title="Nappies", quantity=2))
    with pytest.raises(
        UsageError, match="only the person who posted the need can decline its claims"
    ):
        await ben.post(b.ClaimDeclined(claim=claim.hash))
