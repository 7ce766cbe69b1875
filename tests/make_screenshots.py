"""Make the README's screenshot of the board: ``python tests/make_screenshots.py``.

Not a test (no ``test_`` prefix, pytest does not collect it). It builds a small group
with realistic data (``demo`` below: Ana's node, knowing Ben's and Chioma's events: an
offer of beans that both promised 6 of while apart, so over-claimed; an urgent need
for nappies; stock in the pantry and the fridge), serves Ana's page on a free loopback
port with the same server ``potluck serve`` uses, and photographs it in headless
Chromium (``/usr/bin/chromium``, through Playwright) at 1280x800.

Writes docs/screenshots/board.png. Run it again whenever the look of the board
changes, and look at the result before committing it.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from pathlib import Path

from browser import CHROMIUM, CHROMIUM_ARGS, missing
from playwright.async_api import ViewportSize, async_playwright

from eventlog import body as b
from eventlog.identity import Group
from node.app import Node
from node.web import create_server

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots" / "board.png"
SIZE: ViewportSize = {"width": 1280, "height": 800}


async def share(source: Node, target: Node) -> None:
    """Hand ``source``'s whole log to ``target``, as sync does."""
    await target.store.receive([e async for e in source.iter_log()])


async def demo(root: Path) -> Node:
    """Ana's node after a busy week; the caller closes it."""
    group = Group.new("Riverside Mutual Aid")
    ana = await Node.init(root / "ana", "Ana", group)
    for slug, name, kind in (
        ("st-marys", "St Mary's pantry", "pantry"),
        ("elm-fridge", "Elm Street fridge", "fridge"),
    ):
        await ana.post(b.LocationDefined(slug=slug, name=name, kind=kind))  # type: ignore[arg-type]
    for slug, name, unit, storage in (
        ("beans", "Tinned beans", "can", "ambient"),
        ("rice", "Rice", "kg", "ambient"),
        ("nappies-4", "Nappies size 4", "pack", "ambient"),
    ):
        await ana.post(
            b.ItemDefined(slug=slug, name=name, unit=unit, category="food", storage=storage)
        )  # type: ignore[arg-type]
    for item, delta, reason in (
        ("beans", 40, "donation"),
        ("beans", -30, "distribution"),
        ("rice", 25, "donation"),
        ("nappies-4", -3, "distribution"),
    ):
        await ana.post(b.StockAdjusted(item=item, location="st-marys", delta=delta, reason=reason))  # type: ignore[arg-type]
    await ana.post(
        b.NeedPosted(
            title="Volunteers for the Saturday soup kitchen",
            category="help",
            quantity=4,
            urgency="normal",
        )
    )

    ben = await Node.init(root / "ben", "Ben", group)
    chioma = await Node.init(root / "chioma", "Chioma", group)
    for other in (ben, chioma):
        await share(ana, other)
    await chioma.post(
        b.OfferPosted(
            title="Winter coats, children's sizes",
            category="clothes",
            quantity=4,
            location="elm-fridge",
        )
    )
    await ben.post(b.OfferPosted(title="Lift to the clinic on Tuesdays", category="transport"))
    await ben.post(
        b.NeedPosted(
            title="Nappies size 4",
            category="baby",
            quantity=3,
            urgency="urgent",
            location="st-marys",
        )
    )
    await chioma.post(b.NeedPosted(title="Someone to fix a bike", category="repair", urgency="low"))
    for other in (ben, chioma):
        await share(other, ana)
    offer = await ana.post(
        b.OfferPosted(
            title="10 tins of beans",
            category="food",
            item="beans",
            quantity=10,
            location="st-marys",
        )
    )
    for other in (ben, chioma):
        await share(ana, other)
        await other.post(b.ClaimMade(target=offer.hash, quantity=6))  # apart: 12 of 10
        await share(other, ana)
        await other.close()
    return ana


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="potluck-screens-") as tmp:
        node = await demo(Path(tmp))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = create_server(node, "127.0.0.1", port)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.02)
            await shoot(f"http://127.0.0.1:{port}/board")
        finally:
            server.should_exit = True
            await serving
            await node.close()


async def shoot(url: str) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page(viewport=SIZE, locale="en-GB")
            await tab.goto(url)
            await tab.locator("#live-status.connected").wait_for(timeout=5000)
            await tab.screenshot(path=str(OUT))  # the viewport: what one sees first
        finally:
            await browser.close()


if __name__ == "__main__":
    if (reason := missing()) is not None:
        sys.exit(reason)
    asyncio.run(main())
    print(OUT.relative_to(ROOT))
