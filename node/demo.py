"""``potluck demo``: two volunteers, one network, an outage, and the last cans of beans.

Why a demo: the first thing a newcomer should see is the point of Potluck: two people
who work offline make a conflicting promise (and define the same item two ways), their
nodes meet, and the conflict is shown to both, identically, instead of one of them
silently winning. Everything here goes
through the same Node API as the CLI, and the two nodes sync over a real websocket on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from eventlog import body as b
from eventlog.errors import UsageError
from eventlog.identity import Group
from node.app import Node
from projections import views


async def run_demo(root: Path, say: Callable[[str], None]) -> dict[str, object]:
    """Create nodes for Ana and Bo under ``root``, let them diverge, sync, report."""
    ana_dir, bo_dir = root / "ana", root / "bo"
    if ana_dir.exists() or bo_dir.exists():
        raise UsageError(f"{root} already holds a demo: remove it or pick another --data-dir")
    group = Group.new("Eastside Mutual Aid (demo)")
    ana = await Node.init(ana_dir, "Ana", group)
    bo = await Node.init(bo_dir, "Bo", group)  # as if Bo had joined with Ana's invite
    try:
        say("Ana and Bo run Potluck on their own laptops, in the same group.")
        for body in (
            b.LocationDefined(slug="church-pantry", name="Church pantry", kind="pantry"),
            b.ItemDefined(
                slug="beans", name="Canned beans", unit="can", category="food", storage="ambient"
            ),
            b.StockAdjusted(item="beans", location="church-pantry", delta=10, reason="donation"),
            b.RoleDefined(
                slug="driver",
                name="Driver",
                description="Deliveries to people who cannot come",
                weekly_hours=3,
            ),
        ):
            await ana.post(body)
        offer = await ana.post(
            b.OfferPosted(
                title="Canned beans",
                category="food",
                item="beans",
                quantity=10,
                location="church-pantry",
            )
        )
        await sync(ana, bo)
        say("Ana offers the pantry's last 10 cans of beans; Bo's laptop syncs with hers.")
        say("Then the Wi-Fi goes down. Each promises 6 cans to a family, offline:")
        await ana.post(b.ClaimMade(target=offer.hash, quantity=6))
        await bo.post(b.ClaimMade(target=offer.hash, quantity=6))
        await bo.post(
            b.NeedPosted(title="Baby formula", category="baby", quantity=4, urgency="urgent")
        )
        say("Meanwhile Ana adds rice to the catalog counted in kg, and Bo in bags.")
        for node, unit in ((ana, "kg"), (bo, "bag")):
            await node.post(
                b.ItemDefined(
                    slug="rice", name="Rice", unit=unit, category="food", storage="ambient"
                )
            )
        say("The Wi-Fi comes back and the two laptops sync again.")
        moved = await sync(ana, bo)
        say(f"  {moved} events crossed.")
        board = await ana.store.read(views.board)
        entry = board["offers"][0]
        say(
            f"Both now show: '{entry['title']}': {entry['quantity']} offered, "
            f"{entry['claimed']} claimed, {entry['remaining']} left, "
            f"flags {entry['flags']}."
        )
        claims = entry["claims"]
        assert isinstance(claims, list)
        for claim in claims:
            say(
                f"  claim of {claim['quantity']} by {claim['claimant_name']}: "
                f"{claim['status']}, flags {claim['flags']}"
            )
        say("Ana holds the cans, so she decides: confirm one claim, decline the other.")
        items = await ana.store.read(lambda db: views.definitions(db, "items"))
        rice = items["rice"]
        versions = rice["versions"]
        assert isinstance(versions, list)
        say(
            f"Rice is flagged {rice['flags']}: "
            + ", ".join(f"{v['unit']} ({v['by_name']})" for v in versions)
            + "; whoever defines it again, having seen both, settles it."
        )
        digests = [await node.store.read(node.runner.digest) for node in (ana, bo)]
        say(f"Digest on Ana's node: {digests[0][:16]}…  on Bo's: {digests[1][:16]}…")
        return {
            "board": board,
            "items": items,
            "digests": digests,
            "nodes": [str(ana_dir), str(bo_dir)],
        }
    finally:
        await ana.close()
        await bo.close()


async def sync(a: Node, b_node: Node) -> int:
    """Serve ``a`` on a free loopback port and run one ``potluck sync`` from ``b_node``."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    port: list[int] = []

    def say(line: str) -> None:
        if line.startswith("listening on "):
            port.append(int(line.rsplit(":", 1)[1]))
            ready.set()

    server = asyncio.create_task(a.serve(listen="127.0.0.1:0", peers=(), stop=stop, say=say))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        report = await b_node.sync_once(f"127.0.0.1:{port[0]}")
    finally:
        stop.set()
        await server
    received, sent = report["received"], report["sent"]
    assert isinstance(received, int) and isinstance(sent, int)
    return received + sent
