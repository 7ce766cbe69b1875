"""The web page shows the conflicts of issue 19 in English and Spanish: a claim released
and fulfilled apart (disputed, with both steps), an item defined two ways, a claim on a
post withdrawn meanwhile, and how long each open post has been open."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
from test_web import client_for, share

from eventlog import body as b
from eventlog.identity import Group
from node.app import Node
from node.web import create_app


@dataclass
class Pair:
    ana: Node
    bo: Node

    async def meet(self) -> None:
        await share(self.ana, self.bo)
        await share(self.bo, self.ana)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    group = Group.new("Riverside Mutual Aid")
    ana = await Node.init(tmp_path / "ana", "Ana", group)
    bo = await Node.init(tmp_path / "bo", "Bo", group)
    p = Pair(ana, bo)
    await p.meet()
    await ana.post(b.LocationDefined(slug="hub", name="Hub", kind="hub"))
    # Apart: a claim released by Bo and fulfilled by Ana; rice in kg and in bags.
    soup = await ana.post(b.OfferPosted(title="Soup", category="food", quantity=4))
    await p.meet()
    claim = await bo.post(b.ClaimMade(target=soup.hash, quantity=4))
    await p.meet()
    await ana.post(b.ClaimConfirmed(claim=claim.hash))
    await p.meet()
    await bo.post(b.ClaimReleased(claim=claim.hash))
    await ana.post(b.ClaimFulfilled(claim=claim.hash))
    for node, unit in ((ana, "kg"), (bo, "bag")):
        await node.post(
            b.ItemDefined(slug="rice", name="Rice", unit=unit, category="food", storage="ambient")
        )
    await ana.post(b.StockAdjusted(item="rice", location="hub", delta=5, reason="donation"))
    # Apart: Bo claims bread while Ana withdraws it.
    bread = await ana.post(b.OfferPosted(title="Bread", category="food", quantity=2))
    await p.meet()
    await bo.post(b.ClaimMade(target=bread.hash, quantity=1))
    await ana.post(b.OfferWithdrawn(offer=bread.hash))
    await ana.post(b.NeedPosted(title="Nappies", category="baby", urgency="normal"))
    await p.meet()
    yield p
    await ana.close()
    await bo.close()


async def page(node: Node, path: str, lang: str) -> str:
    client: httpx.AsyncClient
    async with client_for(create_app(node)) as client:
        return html.unescape((await client.get(f"{path}?lang={lang}")).text)


@pytest.mark.parametrize(
    ("lang", "disputed", "steps", "withdrawn", "days"),
    [
        ("en", "disputed", "released by Bo", "the post was withdrawn", "open for "),
        ("es", "en disputa", "liberado por Bo", "la publicación se retiró", "abierto desde hace "),
    ],
)
async def test_the_board_shows_disputed_claims_withdrawn_targets_and_days_open(
    pair: Pair, lang: str, disputed: str, steps: str, withdrawn: str, days: str
) -> None:
    text = await page(pair.bo, "/board", lang)
    assert disputed in text and steps in text
    assert withdrawn in text  # Bo, the claimant, is told
    assert re.search(re.escape(days) + r"\d+ d", text)  # 0, or 1 past midnight


@pytest.mark.parametrize(
    ("lang", "flag"), [("en", "defined two ways"), ("es", "definido de dos maneras")]
)
async def test_the_inventory_shows_an_item_defined_two_ways(
    pair: Pair, lang: str, flag: str
) -> None:
    text = await page(pair.ana, "/inventory", lang)
    assert flag in text
    assert "kg (Ana)" in text and "bag (Bo)" in text
