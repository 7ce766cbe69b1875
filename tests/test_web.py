"""The web UI over HTTP: every page, every form, bad input, tokens, languages, live feed.

Each test runs a real Node in a temporary directory and talks to ``create_app(node)``
through httpx's ASGI transport (same event loop, no sockets), except the live-stream
tests, which run the real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html as html_lib
import re
import shutil
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from eventlog import body as b
from eventlog.errors import StorageError, UsageError
from eventlog.identity import Group
from node.app import Node
from node.web import create_app, create_server
from node.web.feed import ChangeFeed
from node.web.i18n import EN, ES, Translator, negotiate
from node.web.server import is_loopback, parse_address
from projections import views
from projections.roster import iso_week

BASE = "http://127.0.0.1"
TEMPLATES = Path(__file__).parent.parent / "node" / "web" / "templates"


# -- a small network with history: the same seed the browser tests show ----------------


async def share(source: Node, target: Node) -> None:
    """Hand ``source``'s whole log to ``target``, as sync will."""
    await target.store.receive([e async for e in source.iter_log()])


@dataclass
class Seeded:
    node: Node
    offer: str  # Ana's beans offer, claimed 6 + 6 of 10 by Ben and Chioma while apart
    shift: str  # a shift this week that Ana can sign up for


async def seed(root: Path) -> Seeded:
    """Ana's node, knowing Ben's and Chioma's events: offers, needs, stock, roster.

    Dates are relative to today, so the roster's current week always has shifts.
    """
    group = Group.new("Riverside Mutual Aid")
    today = datetime.date.today()
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
        ("milk", "Milk", "litre", "fridge"),
    ):
        await ana.post(
            b.ItemDefined(slug=slug, name=name, unit=unit, category="food", storage=storage)
        )  # type: ignore[arg-type]
    soon = (today + datetime.timedelta(days=1)).isoformat()
    for item, place, delta, reason, expires in (
        ("beans", "st-marys", 40, "donation", None),
        ("beans", "st-marys", -12, "distribution", None),
        ("rice", "st-marys", 25, "donation", None),
        ("nappies-4", "st-marys", -3, "distribution", None),
        ("milk", "elm-fridge", 6, "donation", soon),
    ):
        await ana.post(
            b.StockAdjusted(item=item, location=place, delta=delta, reason=reason, expires=expires)
        )  # type: ignore[arg-type]
    for slug, name, hours, text in (
        ("pantry-lead", "Pantry lead", 6, "Opens the pantry and keeps the stock list."),
        ("driver", "Driver", 4, "Collects donations and delivers to people at home."),
        ("cook", "Cook", 3, "Cooks for the Saturday soup kitchen."),
    ):
        await ana.post(b.RoleDefined(slug=slug, name=name, description=text, weekly_hours=hours))
    offer = await ana.post(
        b.OfferPosted(
            title="10 tins of beans",
            category="food",
            item="beans",
            quantity=10,
            location="st-marys",
        )
    )
    await ana.post(
        b.NeedPosted(
            title="Volunteers for the Saturday soup kitchen",
            category="help",
            quantity=4,
            urgency="normal",
        )
    )
    day = today.isoformat()
    tomorrow = (today + datetime.timedelta(days=1)).isoformat()
    shift_open = await ana.post(
        b.ShiftScheduled(
            role="pantry-lead",
            location="st-marys",
            start=f"{day}T09:00",
            end=f"{day}T12:00",
            slots=2,
        )
    )
    await ana.post(b.ShiftSignedUp(shift=shift_open.hash))
    await ana.post(b.ShiftCompleted(shift=shift_open.hash, hours=3))
    tight = await ana.post(
        b.ShiftScheduled(
            role="driver",
            location="st-marys",
            start=f"{tomorrow}T17:00",
            end=f"{tomorrow}T19:00",
            slots=1,
        )
    )
    cook = await ana.post(
        b.ShiftScheduled(
            role="cook",
            location="st-marys",
            start=f"{tomorrow}T11:00",
            end=f"{tomorrow}T14:00",
            slots=3,
        )
    )

    ben = await Node.init(root / "ben", "Ben", group)
    chioma = await Node.init(root / "chioma", "Chioma", group)
    for other in (ben, chioma):
        await share(ana, other)
    await ben.post(b.ClaimMade(target=offer.hash, quantity=6))
    await chioma.post(b.ClaimMade(target=offer.hash, quantity=6))  # apart: over-claimed
    await ben.post(b.ShiftSignedUp(shift=tight.hash))
    await chioma.post(b.ShiftSignedUp(shift=tight.hash))  # apart: over-filled
    await ben.post(b.ShiftSignedUp(shift=cook.hash))
    await ben.post(
        b.NeedPosted(
            title="Nappies size 4",
            category="baby",
            quantity=3,
            urgency="urgent",
            location="st-marys",
        )
    )
    await ben.post(b.OfferPosted(title="Lift to the clinic on Tuesdays", category="transport"))
    await chioma.post(
        b.OfferPosted(
            title="Winter coats, children's sizes",
            category="clothes",
            quantity=4,
            location="elm-fridge",
        )
    )
    await chioma.post(b.NeedPosted(title="Someone to fix a bike", category="repair", urgency="low"))
    for other in (ben, chioma):
        await share(other, ana)
        await other.close()
    # Ana gives Ben the driver role, knowing him now.
    await ana.post(b.RoleAssigned(role="driver", member=ben.author))
    await ana.post(b.RoleAssigned(role="pantry-lead", member=ana.author))
    return Seeded(ana, offer.hash.hex(), shift_open.hash.hex())


# -- fixtures ---------------------------------------------------------------------------


class Web:
    """A browser's view of one node: an httpx client with cookies, and the node."""

    def __init__(self, node: Node, client: httpx.AsyncClient) -> None:
        self.node = node
        self.client = client

    async def csrf(self, path: str = "/board") -> str:
        page = await self.client.get(path)
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match, page.text[:500]
        return match.group(1)

    async def post(
        self, path: str, data: dict[str, str], *, page: str = "/board", csrf: bool = True
    ) -> httpx.Response:
        form = dict(data)
        if csrf:
            form["csrf"] = await self.csrf(page)
        return await self.client.post(path, data=form)

    async def count(self) -> int:
        return await self.node.store.count()

    async def board(self) -> dict[str, list[dict[str, object]]]:
        return await self.node.store.read(views.board)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await Node.init(tmp_path / "node", "Ana", Group.new("Riverside Mutual Aid"))
    await n.post(b.LocationDefined(slug="st-marys", name="St Mary's pantry", kind="pantry"))
    await n.post(
        b.ItemDefined(
            slug="beans", name="Tinned beans", unit="can", category="food", storage="ambient"
        )
    )
    await n.post(b.RoleDefined(slug="driver", name="Driver", description="", weekly_hours=4))
    yield n
    await n.close()


def client_for(app: object, base_url: str = BASE) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def web(node: Node) -> AsyncIterator[Web]:
    async with client_for(create_app(node)) as client:
        yield Web(node, client)


@pytest.fixture(scope="module")
def seeded_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The seed, made once per module and closed; each test opens its own copy."""
    root = tmp_path_factory.mktemp("seed")

    async def make() -> tuple[str, str]:
        s = await seed(root)
        await s.node.close()
        return s.offer, s.shift

    offer, shift = asyncio.run(make())
    return root / "ana", offer, shift


@pytest.fixture
async def seeded(seeded_copy: tuple[Path, str, str], tmp_path: Path) -> AsyncIterator[Web]:
    source, offer, shift = seeded_copy
    shutil.copytree(source, tmp_path / "ana")
    node = await Node.open(tmp_path / "ana")
    async with client_for(create_app(node)) as client:
        w = Web(node, client)
        w.offer, w.shift = offer, shift  # type: ignore[attr-defined]
        yield w
    await node.close()


def field_error(html: str, form_field: str) -> str:
    """The message shown beside the field with id ``form_field`` ('' when none)."""
    match = re.search(
        rf'<p class="error" id="{re.escape(form_field)}-error">'
        rf'<span class="visually-hidden">[^<]*</span>([^<]*)</p>',
        html,
    )
    return html_lib.unescape(match.group(1)) if match else ""


# -- pages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/board",
            [
                "Needs",
                "Offers",
                "10 tins of beans",
                "Nappies size 4",
                "Urgent",
                "Over-claimed: 12 claimed but only 10 offered.",
                "You decide: confirm or decline",
                "Post an offer",
                "Post a need",
            ],
        ),
        (
            "/inventory",
            [
                "St Mary&#39;s pantry",
                "Tinned beans",
                "28 can",
                "below zero",
                "expiring soon",
                "Elm Street fridge",
                "Stock in or out",
                "Record a count",
            ],
        ),
        (
            "/roster",
            [
                "Pantry lead",
                "Needs 1 more person",
                "Over-filled: 2 signed up, 1 needed.",
                "Hours in week",
                "Sign up as extra",
                "Withdraw",
                "Schedule a shift",
            ],
        ),
        (
            "/people",
            [
                "Ana",
                "Ben",
                "Chioma",
                "Driver",
                "4 h a week",
                "Held by: Ben",
                "Roles: Pantry lead",
                "3 h this week",
            ],
        ),
        (
            "/sync",
            [
                "This device",
                "Riverside Mutual Aid",
                "No other devices known yet.",
                "Start &#39;potluck serve&#39; on both devices",
            ],
        ),
    ],
)
async def test_page_renders_its_key_content(seeded: Web, path: str, expected: list[str]) -> None:
    page = await seeded.client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for text in expected:
        assert text in page.text, text
    assert '<html lang="en">' in page.text
    assert 'href="#main"' in page.text  # skip link
    assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_pages_render_on_an_empty_node(web: Web) -> None:
    for path in ("/board", "/inventory", "/roster", "/people", "/sync"):
        page = await web.client.get(path)
        assert page.status_code == 200, path
    assert "No open offers." in (await web.client.get("/board")).text
    assert "Nothing is stocked yet." in (await web.client.get("/inventory")).text


async def test_root_redirects_to_the_board(web: Web) -> None:
    page = await web.client.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/board"


async def test_unknown_address_is_a_404_page(web: Web) -> None:
    assert (await web.client.get("/nowhere")).status_code == 404
    response = await web.post("/board/" + "ab" * 3 + "/claim", {"quantity": "1"})
    assert response.status_code == 404


async def test_htmx_request_gets_only_the_live_part(seeded: Web) -> None:
    page = await seeded.client.get("/board", headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert page.text.lstrip().startswith('<div id="live" data-log-id="')
    assert "<html" not in page.text
    assert str(await seeded.count()) in page.text.split(">", 1)[0]


async def test_static_assets_are_served_from_the_package(web: Web) -> None:
    for path in ("/static/style.css", "/static/live.js", "/static/vendor/htmx.min.js"):
        response = await web.client.get(path)
        assert response.status_code == 200, path
        assert len(response.content) > 500
    page = (await web.client.get("/board")).text
    assert not re.search(r'(src|href)="https?://', page)  # no CDN, no web fonts


# -- forms that work ----------------------------------------------------------------------


async def test_offer_form_saves_then_says_so(web: Web) -> None:
    before = await web.count()
    response = await web.post(
        "/board/offer",
        {
            "title": "  Soup for 6  ",
            "quantity": "6",
            "category": "food",
            "item": "beans",
            "location": "st-marys",
            "until": "",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/board"
    assert await web.count() == before + 1
    [offer] = (await web.board())["offers"]
    assert offer["title"] == "Soup for 6" and offer["quantity"] == 6
    page = await web.client.get("/board")
    assert "Offer posted. Saved on this device." in page.text
    assert "Soup for 6" in page.text
    again = await web.client.get("/board")  # the flash is shown once
    assert "Saved on this device" not in again.text


async def test_need_form_saves_with_urgency(web: Web) -> None:
    response = await web.post(
        "/board/need", {"title": "Nappies", "urgency": "urgent", "quantity": "", "by": "2030-01-31"}
    )
    assert response.status_code == 303
    [need] = (await web.board())["needs"]
    assert need["urgency"] == "urgent" and need["by"] == "2030-01-31"


async def test_claim_form_claims_the_quantity(seeded: Web) -> None:
    board = await seeded.board()
    coats = next(o for o in board["offers"] if str(o["title"]).startswith("Winter coats"))
    response = await seeded.post(f"/board/{coats['id']}/claim", {"quantity": "3"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/board#entry-{coats['id']}"
    coats = next(o for o in (await seeded.board())["offers"] if o["id"] == coats["id"])
    assert coats["claimed"] == 3 and coats["remaining"] == 1
    page = await seeded.client.get("/board")
    assert "Claim made. Saved on this device." in page.text
    assert "4 offered, 3 claimed, 1 left" in page.text


async def test_pledge_to_a_need_says_pledge(seeded: Web) -> None:
    board = await seeded.board()
    nappies = next(n for n in board["needs"] if n["title"] == "Nappies size 4")
    response = await seeded.post(f"/board/{nappies['id']}/claim", {"quantity": "2"})
    assert response.status_code == 303
    assert "Pledge made." in (await seeded.client.get("/board")).text


async def test_over_claim_shows_who_decides_and_holder_confirms_and_declines(seeded: Web) -> None:
    page = (await seeded.client.get("/board")).text
    assert "Over-claimed: 12 claimed but only 10 offered." in page
    assert page.count("needs a decision") >= 2
    offer = next(o for o in (await seeded.board())["offers"] if o["id"] == seeded.offer)  # type: ignore[attr-defined]
    claims = {c["claimant_name"]: c["id"] for c in offer["claims"]}  # type: ignore[attr-defined]
    assert (await seeded.post(f"/claims/{claims['Ben']}/confirm", {})).status_code == 303
    assert (await seeded.post(f"/claims/{claims['Chioma']}/decline", {})).status_code == 303
    offer = next(o for o in (await seeded.board())["offers"] if o["id"] == seeded.offer)  # type: ignore[attr-defined]
    status = {c["claimant_name"]: c["status"] for c in offer["claims"]}  # type: ignore[attr-defined]
    assert status == {"Ben": "confirmed", "Chioma": "declined"}
    page = (await seeded.client.get("/board")).text
    assert "Over-claimed" not in page
    assert "Claim declined. Saved on this device." in page


async def test_other_holders_over_claim_names_them(tmp_path: Path) -> None:
    s = await seed(tmp_path)
    try:
        # On Ben's side nobody asked Ana: let Ana's node see it as a stranger would.
        group = s.node.group
        dana = await Node.init(tmp_path / "dana", "Dana", group)
        await share(s.node, dana)
        async with client_for(create_app(dana)) as client:
            page = (await client.get("/board")).text
        assert "Ana decides who gets it." in page
        beans = page.split("10 tins of beans")[1].split("</article>")[0]
        assert 'action="/claims/' not in beans  # no buttons for what is Ana's to decide
        await dana.close()
    finally:
        await s.node.close()


async def test_holder_withdraws_own_offer(web: Web) -> None:
    await web.post("/board/offer", {"title": "Spare bread"})
    [offer] = (await web.board())["offers"]
    response = await web.post(f"/board/{offer['id']}/withdraw", {})
    assert response.status_code == 303
    assert (await web.board())["offers"] == []


async def test_inventory_adjust_and_count_change_the_stock(web: Web) -> None:
    async def stock() -> dict[str, list[dict[str, object]]]:
        return await web.node.store.read(lambda db: views.inventory(db, datetime.date.today()))

    ok = await web.post(
        "/inventory/adjust",
        {
            "item": "beans",
            "location": "st-marys",
            "amount": "20",
            "reason": "donation",
            "expires": "2031-05-01",
        },
        page="/inventory",
    )
    assert ok.status_code == 303
    out = await web.post(
        "/inventory/adjust",
        {"item": "beans", "location": "st-marys", "amount": "5", "reason": "spoilage"},
        page="/inventory",
    )
    assert out.status_code == 303
    [row] = (await stock())["rows"]
    assert row["on_hand"] == 15 and row["expires"] == "2031-05-01"
    counted = await web.post(
        "/inventory/count",
        {"item": "beans", "location": "st-marys", "count": "9"},
        page="/inventory",
    )
    assert counted.status_code == 303
    [row] = (await stock())["rows"]
    assert row["on_hand"] == 9
    page = (await web.client.get("/inventory")).text
    assert "Count recorded. Saved on this device." in page and "9 can" in page


async def test_item_and_location_forms_define_them(web: Web) -> None:
    item = await web.post(
        "/inventory/item",
        {
            "name": "Oat milk",
            "slug": "oat-milk",
            "unit": "carton",
            "category": "",
            "storage": "ambient",
        },
        page="/inventory",
    )
    place = await web.post(
        "/inventory/location",
        {"name": "Elm Street fridge", "slug": "elm-fridge", "kind": "fridge"},
        page="/inventory",
    )
    assert item.status_code == place.status_code == 303
    known = await web.node.store.read(views.known_slugs)
    assert "oat-milk" in known["items"] and "elm-fridge" in known["locations"]


async def test_roster_forms_schedule_sign_up_record_hours_and_withdraw(web: Web) -> None:
    today = datetime.date.today()
    week = iso_week(today.isoformat() + "T00:00")
    scheduled = await web.post(
        "/roster/shift",
        {
            "role": "driver",
            "location": "st-marys",
            "date": today.isoformat(),
            "start_time": "09:00",
            "end_time": "12:30",
            "slots": "2",
            "week": week,
        },
        page="/roster",
    )
    assert scheduled.status_code == 303
    assert scheduled.headers["location"] == f"/roster?week={week}"
    [shift] = (await web.node.store.read(lambda db: views.roster(db, None)))["shifts"]
    assert "Needs 2 more people" in (await web.client.get("/roster")).text
    shift_id = str(shift["id"])
    signed = await web.post(f"/roster/{shift_id}/signup", {"week": week}, page="/roster")
    assert signed.status_code == 303
    assert signed.headers["location"] == f"/roster?week={week}#shift-{shift_id}"
    hours = await web.post(
        f"/roster/{shift_id}/hours", {"hours": "3.5", "week": week}, page="/roster"
    )
    assert hours.status_code == 303
    roster = await web.node.store.read(lambda db: views.roster(db, week))
    assert roster["shifts"][0]["filled"] == 1
    assert roster["hours"][0]["hours"] == 3.5
    page = (await web.client.get("/roster")).text
    assert "Needs 1 more person" in page and "3.5" in page
    withdrawn = await web.post(f"/roster/{shift_id}/withdraw", {"week": week}, page="/roster")
    assert withdrawn.status_code == 303
    roster = await web.node.store.read(lambda db: views.roster(db, week))
    assert roster["shifts"][0]["filled"] == 0


async def test_roster_shows_another_week(web: Web) -> None:
    page = await web.client.get("/roster?week=2030-W05")
    assert page.status_code == 200 and "Week 5:" in page.text
    assert (await web.client.get("/roster?week=nonsense")).status_code == 200


async def test_people_forms_define_and_assign_roles(web: Web) -> None:
    role = await web.post(
        "/people/role",
        {"name": "Cook", "slug": "cook", "weekly_hours": "2,5", "description": "Soup"},
        page="/people",
    )
    assert role.status_code == 303
    assign = await web.post(
        "/people/assign",
        {"role": "cook", "member": web.node.author.hex(), "until": "2031-01-01"},
        page="/people",
    )
    assert assign.status_code == 303
    page = (await web.client.get("/people")).text
    assert "2.5 h a week" in page and "Roles: Cook" in page


# -- forms that refuse -----------------------------------------------------------------------


BAD = [
    # (path, fields, field with the message, words of the message)
    (
        "/board/offer",
        {"title": "Beans", "quantity": "-3"},
        "offer-quantity",
        "Write a whole number of 1 or more.",
    ),
    (
        "/board/offer",
        {"title": "Beans", "quantity": "three"},
        "offer-quantity",
        "Write a whole number, like 3.",
    ),
    (
        "/board/offer",
        {"title": "x" * 201},
        "offer-title",
        "Too long: at most 200 characters (this has 201).",
    ),
    ("/board/offer", {"title": "   "}, "offer-title", "Fill this in."),
    (
        "/board/offer",
        {"title": "Beans", "item": "caviar"},
        "offer-item",
        "There is no item 'caviar' on this device.",
    ),
    (
        "/board/offer",
        {"title": "Beans", "location": "moon"},
        "offer-location",
        "There is no place 'moon' on this device.",
    ),
    (
        "/board/offer",
        {"title": "Beans", "until": "2026-02-30"},
        "offer-until",
        "Write a date like 2026-12-01.",
    ),
    (
        "/board/need",
        {"title": "Help", "urgency": "panic"},
        "need-urgency",
        "Choose one of the options.",
    ),
    (
        "/board/need",
        {"title": "Help", "urgency": "low", "quantity": "0"},
        "need-quantity",
        "Write a whole number of 1 or more.",
    ),
    (
        "/inventory/adjust",
        {"item": "caviar", "location": "st-marys", "amount": "3", "reason": "donation"},
        "adjust-item",
        "no item 'caviar'",
    ),
    (
        "/inventory/adjust",
        {"item": "beans", "location": "st-marys", "amount": "-3", "reason": "donation"},
        "adjust-amount",
        "Write a whole number of 1 or more.",
    ),
    (
        "/inventory/adjust",
        {"item": "beans", "location": "st-marys", "amount": "99999999999", "reason": "donation"},
        "adjust-amount",
        "That is too many",
    ),
    (
        "/inventory/count",
        {"item": "beans", "location": "st-marys", "count": "-1"},
        "count-count",
        "Write a whole number of 0 or more.",
    ),
    (
        "/inventory/item",
        {"name": "Oat milk", "slug": "Oat Milk!", "unit": "carton", "storage": "ambient"},
        "item-slug",
        "Use only small letters",
    ),
    (
        "/inventory/location",
        {"name": "Fridge", "slug": "fridge", "kind": "garage"},
        "location-kind",
        "Choose one of the options.",
    ),
    (
        "/roster/shift",
        {
            "role": "driver",
            "location": "st-marys",
            "date": "2030-01-07",
            "start_time": "12:00",
            "end_time": "09:00",
            "slots": "2",
        },
        "shift-end_time",
        "The end must be after the start.",
    ),
    (
        "/roster/shift",
        {
            "role": "cleaner",
            "location": "st-marys",
            "date": "2030-01-07",
            "start_time": "09:00",
            "end_time": "10:00",
            "slots": "2",
        },
        "shift-role",
        "There is no role 'cleaner'",
    ),
    (
        "/roster/shift",
        {
            "role": "driver",
            "location": "st-marys",
            "date": "2030-01-07",
            "start_time": "9am",
            "end_time": "10:00",
            "slots": "0",
        },
        "shift-start_time",
        "Write a time like 09:00.",
    ),
    (
        "/people/role",
        {"name": "Cook", "slug": "cook", "weekly_hours": "200"},
        "role-weekly_hours",
        "Write a number of hours above 0 and at most 168.",
    ),
    (
        "/people/assign",
        {"role": "driver", "member": "ab" * 32},
        "assign-member",
        "There is no member like that on this device.",
    ),
]


@pytest.mark.parametrize(
    ("path", "fields", "field", "message"), BAD, ids=[f"{p}:{f}" for p, _, f, _ in BAD]
)
async def test_bad_input_is_refused_beside_the_field_and_writes_nothing(
    web: Web, path: str, fields: dict[str, str], field: str, message: str
) -> None:
    page = "/" + path.split("/")[1]
    before = await web.count()
    response = await web.post(path, fields, page=page)
    assert response.status_code == 400
    assert await web.count() == before
    assert message in field_error(response.text, field), response.text[-3000:]
    assert f'id="{field}"' in response.text
    assert (
        'aria-invalid="true"' in response.text
        or '<fieldset class="field has-error"' in response.text
    )  # a radio group marks its fieldset
    assert "Nothing was saved." in response.text  # the summary at the top
    assert f'href="#{field}"' in response.text
    assert "Saved on this device" not in response.text
    assert f'data-url="{page}' in response.text  # live updates re-fetch the page, not the POST
    for name, value in fields.items():  # what was typed is kept
        if (
            value.strip()
            and len(value) < 100
            and name not in ("urgency", "reason", "storage", "kind")
        ):
            assert (
                f'value="{value}"' in response.text
                or f">{value}<" in response.text
                or f'value="{value}" selected' in response.text
                or name in ("item", "location", "role", "member")
            )


async def test_claim_with_negative_quantity_is_refused_on_its_card(seeded: Web) -> None:
    board = await seeded.board()
    coats = next(o for o in board["offers"] if str(o["title"]).startswith("Winter coats"))
    before = await seeded.count()
    response = await seeded.post(f"/board/{coats['id']}/claim", {"quantity": "-2"})
    assert response.status_code == 400
    assert await seeded.count() == before
    assert (
        field_error(response.text, f"claim-{coats['id']}-quantity")
        == "Write a whole number of 1 or more."
    )


async def test_holder_cannot_confirm_twice(seeded: Web) -> None:
    offer = next(o for o in (await seeded.board())["offers"] if o["id"] == seeded.offer)  # type: ignore[attr-defined]
    claim = offer["claims"][0]["id"]  # type: ignore[index]
    assert (await seeded.post(f"/claims/{claim}/confirm", {})).status_code == 303
    before = await seeded.count()
    again = await seeded.post(f"/claims/{claim}/confirm", {})
    assert again.status_code == 400
    assert "already confirmed" in again.text
    assert await seeded.count() == before


async def test_claim_on_a_withdrawn_offer_is_refused(web: Web) -> None:
    await web.post("/board/offer", {"title": "Spare bread"})
    [offer] = (await web.board())["offers"]
    await web.post(f"/board/{offer['id']}/withdraw", {})
    before = await web.count()
    response = await web.post(f"/board/{offer['id']}/claim", {"quantity": "1"})
    assert response.status_code == 400
    assert "That offer or need is no longer on the board." in response.text
    assert await web.count() == before


async def test_form_without_csrf_token_is_refused(web: Web) -> None:
    await web.client.get("/board")
    before = await web.count()
    response = await web.post("/board/offer", {"title": "Forged"}, csrf=False)
    assert response.status_code == 403
    assert "This form is out of date" in response.text
    forged = await web.client.post("/board/offer", data={"title": "Forged", "csrf": "0" * 32})
    assert forged.status_code == 403
    assert await web.count() == before


async def test_form_from_another_session_is_refused(web: Web) -> None:
    token = await web.csrf()
    async with client_for(create_app(web.node)) as stranger:
        await stranger.get("/board")
        response = await stranger.post("/board/offer", data={"title": "x", "csrf": token})
    assert response.status_code == 403


async def test_storage_failure_is_shown_not_hidden(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(body: b.BaseBody) -> None:
        raise StorageError("the disk is full: free some space")

    monkeypatch.setattr(web.node, "post", full)
    response = await web.post("/board/offer", {"title": "Soup"})
    assert response.status_code == 500
    assert "the disk is full" in response.text
    assert "Saved on this device" not in response.text


async def test_too_large_a_form_is_refused(web: Web) -> None:
    before = await web.count()
    response = await web.post("/board/offer", {"title": "x" * 70_000})
    assert response.status_code == 413
    crowded = await web.post("/board/offer", {f"f{i}": "1" for i in range(100)})
    assert crowded.status_code == 400
    assert "Nothing was saved." in crowded.text
    assert await web.count() == before


# -- who may use the page -------------------------------------------------------------------


async def test_token_is_required_when_set(node: Node) -> None:
    app = create_app(node, token="s3cret-token")
    async with client_for(app) as browser:
        refused = await browser.get("/board")
        assert refused.status_code == 401
        assert "needs its access code" in refused.text
        assert "Riverside" not in refused.text  # nothing of the group
        assert (await browser.get("/board?token=wrong")).status_code == 401
        assert (await browser.get("/static/style.css")).status_code == 200
        welcome = await browser.get("/roster?week=2030-W05&token=s3cret-token")
        assert welcome.status_code == 303
        assert welcome.headers["location"] == "/roster?week=2030-W05"  # token not kept
        assert (await browser.get("/board")).status_code == 200  # the cookie now
        page = await browser.get("/board")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        posted = await browser.post("/board/offer", data={"title": "Soup", "csrf": csrf})
        assert posted.status_code == 303
    async with client_for(app) as api:
        assert (
            await api.get("/board", headers={"Authorization": "Bearer s3cret-token"})
        ).status_code == 200
        assert (
            await api.get("/board", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
    async with client_for(app, base_url="http://192.168.1.20:7718") as lan:
        assert (await lan.get("/board?token=s3cret-token")).status_code == 303


async def test_without_token_only_this_machine_names_are_answered(node: Node) -> None:
    app = create_app(node)
    for base in ("http://127.0.0.1:7718", "http://localhost:7718", "http://[::1]:7718"):
        async with client_for(app, base_url=base) as local:
            assert (await local.get("/board")).status_code == 200, base
    async with client_for(app, base_url="http://evil.example") as rebound:
        response = await rebound.get("/board")
        assert response.status_code == 403
        assert "Riverside" not in response.text


async def test_cookies_are_named_per_node_so_two_nodes_on_one_host_do_not_mix(web: Web) -> None:
    await web.client.get("/board")
    names = list(web.client.cookies.keys())
    assert names == [f"potluck_{web.node.author.hex()[:8]}_session"]


async def test_the_code_in_docs_web_md_serves_the_page(node: Node, unused_tcp_port: int) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "web.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", docs, re.S)
    scope: dict[str, object] = {}
    exec(compile(code, "docs/web.md", "exec"), scope)
    serving = asyncio.create_task(scope["open_ui"](node, unused_tcp_port))  # type: ignore[operator]
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                page = await client.get(f"http://127.0.0.1:{unused_tcp_port}/board")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
        assert page.status_code == 200 and "Riverside Mutual Aid" in page.text
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


def test_server_refuses_the_lan_without_a_token() -> None:
    with pytest.raises(UsageError, match="access token"):
        create_server(object(), "0.0.0.0", 7718)  # type: ignore[arg-type]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert parse_address("127.0.0.1:7718") == ("127.0.0.1", 7718)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    with pytest.raises(UsageError):
        parse_address("host:port")


# -- languages ----------------------------------------------------------------------------


async def test_language_switch_gives_spanish_and_is_remembered(seeded: Web) -> None:
    page = await seeded.client.get("/board?lang=es")
    assert '<html lang="es">' in page.text
    for text in (
        "Tablón",
        "Necesidades",
        "Ofertas",
        "Publicar una oferta",
        "Urgente",
        "Pedido de más: 12 pedidos pero solo se ofrecen 10.",
        "Decides tú",
    ):
        assert text in page.text, text
    again = await seeded.client.get("/inventory")  # no ?lang: the cookie remembers
    assert '<html lang="es">' in again.text and "Inventario" in again.text
    back = await seeded.client.get("/inventory?lang=en")
    assert '<html lang="en">' in back.text


async def test_browser_language_is_honoured(web: Web) -> None:
    page = await web.client.get("/roster", headers={"Accept-Language": "es-ES,es;q=0.9"})
    assert '<html lang="es">' in page.text and "Turnos" in page.text
    page = await web.client.get("/roster", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    assert '<html lang="en">' in page.text


async def test_spanish_form_errors_are_spanish(web: Web) -> None:
    await web.client.get("/board?lang=es")
    response = await web.post("/board/offer", {"title": "Alubias", "quantity": "-1"})
    assert response.status_code == 400
    assert field_error(response.text, "offer-quantity") == "Escribe un número entero de 1 o más."
    assert "No se guardó nada." in response.text
    assert "Cuántos: Escribe un número entero de 1 o más.</a>" in response.text  # summary


SHIFT_FORM = {"role": "driver", "location": "st-marys", "date": "2030-01-07"}
BAD_IN_SPANISH = [
    # (path, fields, field with the message, the whole message); body.py finds the
    # first, third, fifth and the last two, the form the others
    (
        "/board/offer",
        {"title": "x" * 201},
        "offer-title",
        "Demasiado largo: como máximo 200 caracteres (tiene 201).",
    ),
    (
        "/board/offer",
        {"title": "Alubias", "quantity": "tres"},
        "offer-quantity",
        "Escribe un número entero, como 3.",
    ),
    (
        "/people/role",
        {"name": "Cocina", "slug": "cocina", "weekly_hours": "200"},
        "role-weekly_hours",
        "Escribe un número de horas mayor que 0 y como máximo 168.",
    ),
    (
        "/board/offer",
        {"title": "Alubias", "until": "2026-02-30"},
        "offer-until",
        "Escribe una fecha como 2026-12-01.",
    ),
    (
        "/board/offer",
        {"title": "Alubias", "until": "20261201"},
        "offer-until",
        "Escribe una fecha como 2026-12-01.",
    ),
    (
        "/roster/shift",
        {**SHIFT_FORM, "start_time": "09:00", "end_time": "10:00", "slots": "0"},
        "shift-slots",
        "Escribe un número entero de 1 a 1000.",
    ),
    (
        "/roster/shift",
        {**SHIFT_FORM, "start_time": "12:00", "end_time": "09:00", "slots": "2"},
        "shift-end_time",
        "El final tiene que ser después del comienzo.",
    ),
]


@pytest.mark.parametrize(
    ("path", "fields", "field", "message"),
    BAD_IN_SPANISH,
    ids=[f"{p}:{f}:{i}" for i, (p, _, f, _) in enumerate(BAD_IN_SPANISH)],
)
async def test_bad_input_is_refused_in_spanish(
    web: Web, path: str, fields: dict[str, str], field: str, message: str
) -> None:
    await web.client.get("/board?lang=es")
    page = "/" + path.split("/")[1]
    response = await web.post(path, fields, page=page)
    assert response.status_code == 400
    assert field_error(response.text, field) == message
    assert "No se guardó nada." in response.text


def test_negotiate_picks_the_best_language() -> None:
    assert negotiate(None) == "en"
    assert negotiate("es") == "es"
    assert negotiate("de-DE, es;q=0.8, en;q=0.5") == "es"
    assert negotiate("en-GB, es") == "en"
    assert negotiate("es;q=0, en;q=0.1") == "en"


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogs_have_the_same_keys_and_placeholders() -> None:
    assert EN.keys() == ES.keys()
    for key in EN:
        assert _placeholders(EN[key]) == _placeholders(ES[key]), key


def test_templates_use_only_keys_of_the_catalog() -> None:
    used: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r'_\(\s*["\']([a-z_.-]+)["\']', template.read_text()))
    prefixes = {"nav.", "urgency.", "claim.", "reason.", "storage.", "kind.", "flag."}
    missing = {k for k in used if k not in EN and not any(k == p for p in prefixes)}
    assert not missing
    assert used  # the pattern found something


def test_translator_formats_days_and_plurals() -> None:
    t = Translator("es")
    assert t.day(datetime.date(2026, 11, 23)) == "lun 23 nov"
    assert t.plural("roster.needs", 1) == "Falta 1 persona"
    assert t.plural("roster.needs", 3) == "Faltan 3 personas"
    assert Translator("xx").language == "en"


# -- live ---------------------------------------------------------------------------------


async def test_change_feed_tells_every_listener_and_stops_when_they_leave() -> None:
    counter = [5]

    async def last_id() -> int:
        return counter[0]

    feed = ChangeFeed(last_id, interval=0.01)
    first, second = feed.listen(), feed.listen()
    assert await anext(first) == 5 and await anext(second) == 5
    assert feed.running and feed.listeners == 2
    counter[0] = 7
    assert await asyncio.wait_for(anext(first), 1) in (5, 7)  # the watcher's first look
    seen = {await asyncio.wait_for(anext(second), 1) for _ in range(1)}
    while 7 not in seen:
        seen.add(await asyncio.wait_for(anext(second), 1))
    await first.aclose()
    await second.aclose()
    assert feed.listeners == 0 and not feed.running


async def test_change_feed_heartbeats_and_closes() -> None:
    async def last_id() -> int:
        return 1

    feed = ChangeFeed(last_id, interval=0.01)
    stream = feed.listen(heartbeat=0.05)
    assert await anext(stream) == 1
    values = [await asyncio.wait_for(anext(stream), 1) for _ in range(2)]
    assert None in values  # a heartbeat while nothing changes
    feed.close()
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(anext(stream), 1)
    assert not feed.running


async def test_events_stream_a_change_within_a_second_and_server_shuts_down(
    node: Node, unused_tcp_port: int
) -> None:
    server = create_server(node, "127.0.0.1", unused_tcp_port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with httpx.AsyncClient(base_url=url) as client, client.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        first = await _next_change(lines)
        assert first == await node.store.count()
        started = asyncio.get_running_loop().time()
        await node.post(b.OfferPosted(title="Soup"))
        second = await asyncio.wait_for(_next_change(lines, first), 2)
        assert second > first
        assert asyncio.get_running_loop().time() - started < 1.0
        server.should_exit = True
        await asyncio.wait_for(serving, 5)  # open streams do not hold it up


async def _next_change(lines: AsyncIterator[str], after: int = -1) -> int:
    """The next counter the stream sends above ``after`` (repeats are allowed)."""
    async for line in lines:
        if line.startswith("data: ") and int(line[6:]) > after:
            return int(line[6:])
    raise AssertionError("the stream ended")


async def test_events_see_a_write_from_another_process(node: Node, tmp_path: Path) -> None:
    feed = ChangeFeed(
        lambda: node.store.read(
            lambda db: int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        ),
        interval=0.05,
    )
    stream = feed.listen()
    first = await anext(stream)
    # Another process (the CLI) appends: simulate with a second connection's commit.
    other = await Node.open(node.data_dir)
    try:
        await other.post(b.OfferPosted(title="From the CLI"))
    finally:
        await other.close()
    value = first
    while value is None or first is None or value <= first:
        value = await asyncio.wait_for(anext(stream), 2)
    await stream.aclose()


def test_only_the_store_touches_the_database() -> None:
    """node/web reads through ``Store.read``; it never opens SQLite itself."""
    for source in (Path(__file__).parent.parent / "node" / "web").glob("*.py"):
        text = source.read_text()
        assert "aiosqlite" not in text and "sqlite3.connect" not in text, source.name
