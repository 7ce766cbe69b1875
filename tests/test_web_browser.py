"""The web UI in real headless Chromium: posting, live updates, accessibility, screenshots.

The node runs in its own thread with its own event loop, served by the same uvicorn
server ``potluck serve`` uses, on a free loopback port; Chromium is Debian's
(``/usr/bin/chromium``) driven by Playwright for Python. Screenshots of every page at
phone (390x844) and desktop (1280x800) size go to ``test-artifacts/web/``.

Two nodes propagating live through sync come with the sync issue's wiring of
``potluck serve --ui``; here one node shows an event appended by another process (the
CLI) without a reload.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from browser import needs_browser
from helpers import potluck

from eventlog import body as b
from node.app import Node

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "web"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
PAGES = ("board", "inventory", "roster", "people", "sync")
SIZES = {"phone": (390, 844), "desktop": (1280, 800)}

try:
    from playwright.sync_api import Browser, Page, expect

    expect.set_options(timeout=5000)
except ImportError:  # pragma: no cover - needs_browser skips the module, saying why
    pass

pytestmark = needs_browser

T = TypeVar("T")


class LiveNode:
    """One node served over HTTP on 127.0.0.1 from a thread with its own event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="potluck-web-test", daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self.ready.set()

    async def _serve(self) -> None:
        from node.web import create_server

        self.node = await Node.open(self.data_dir)
        try:
            self.server = create_server(self.node, "127.0.0.1", self.port)
            self.ready.set()
            await self.server.serve(sockets=[self.sock])
        finally:
            await self.node.close()

    def start(self) -> LiveNode:
        self.thread.start()
        self.ready.wait(10)
        if self.error is not None:
            raise self.error
        deadline = self.loop.time() + 10
        while not self.server.started and self.loop.time() < deadline:
            threading.Event().wait(0.02)
        assert self.server.started, "uvicorn did not start"
        return self

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the node's loop (e.g. ``node.post``) and wait for it."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self.server, "should_exit", True)
        self.thread.join(15)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    from test_web import seed

    root = tmp_path_factory.mktemp("browser")

    async def make() -> None:
        s = await seed(root)
        await s.node.close()

    asyncio.run(make())
    server = LiveNode(root / "ana").start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-GB")
    tab = context.new_page()
    tab.set_default_timeout(5000)
    yield tab
    context.close()


# -- using it -------------------------------------------------------------------------------


def test_offer_posted_through_the_page_is_saved_and_shown(live: LiveNode, page: Page) -> None:
    before = live.call(live.node.store.count())
    page.goto(f"{live.url}/board")
    page.get_by_text("Post an offer").click()
    page.get_by_label("What is it?").first.fill("Fresh bread from the bakery")
    page.locator("#offer-quantity").fill("8")
    page.get_by_role("button", name="Post the offer").click()
    expect(page.locator(".flash")).to_have_text("Offer posted. Saved on this device.")
    expect(page.locator("#live")).to_contain_text("Fresh bread from the bakery")
    expect(page.locator("#live")).to_contain_text("8 offered, 0 claimed, 8 left")
    assert live.call(live.node.store.count()) == before + 1


def test_holder_confirms_a_claim_on_an_over_claimed_offer(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/board")
    beans = page.locator("article", has_text="10 tins of beans")
    expect(beans.locator(".notice")).to_contain_text("You decide")
    beans.get_by_role("button", name=re.compile(r"^Confirm\W+Ben$")).click()
    expect(page.locator(".flash")).to_contain_text("Claim confirmed. Saved on this device.")
    beans = page.locator("article", has_text="10 tins of beans")
    expect(beans.locator(".claim", has_text="Ben")).to_contain_text("confirmed")


def test_bad_input_in_the_page_is_shown_beside_the_field(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/inventory")
    page.get_by_text("Stock in or out").click()
    form = page.locator("#adjust-panel form")
    form.evaluate("f => f.noValidate = true")  # past the browser's own check, to the server
    form.locator("#adjust-item").select_option("beans")
    form.locator("#adjust-location").select_option("st-marys")
    form.locator("#adjust-amount").fill("-4")
    before = live.call(live.node.store.count())
    form.get_by_role("button", name="Record the change").click()
    expect(page.locator("#adjust-amount-error")).to_contain_text(
        "Write a whole number of 1 or more."
    )
    expect(page.locator("#adjust-amount")).to_be_focused()
    expect(page.locator(".error-summary")).to_contain_text("Nothing was saved.")
    assert live.call(live.node.store.count()) == before
    # The refused page (its address is the form's) still updates live.
    live.call(
        live.node.post(
            b.StockAdjusted(item="rice", location="elm-fridge", delta=2, reason="donation")
        )
    )
    expect(page.locator("#live")).to_contain_text("Elm Street fridge", timeout=2000)
    expect(page.locator("#stock-rice-elm-fridge")).to_contain_text("2 kg", timeout=2000)
    expect(page.locator("#adjust-amount")).to_have_value("-4")


def test_an_event_from_the_cli_appears_without_a_reload(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/board")
    expect(page.locator("#live-status")).to_have_class("live-status connected")
    page.evaluate("window.notReloaded = true")
    potluck(
        live.data_dir,
        "need",
        "post",
        "Warm blankets for the shelter",
        "--urgency",
        "urgent",
        "--quantity",
        "12",
    )
    expect(page.locator("#live")).to_contain_text("Warm blankets for the shelter", timeout=2000)
    assert page.evaluate("window.notReloaded") is True
    # And from this process: the node's own post wakes the feed at once.
    live.call(live.node.post(b.OfferPosted(title="Soup pots to lend", category="kitchen")))
    expect(page.locator("#live")).to_contain_text("Soup pots to lend", timeout=2000)
    assert page.evaluate("window.notReloaded") is True


def test_a_live_update_waits_while_someone_types(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/board")
    expect(page.locator("#live-status")).to_have_class("live-status connected")
    field = page.locator("article", has_text="Winter coats").locator("input[name=quantity]")
    field.fill("3")
    field.focus()
    live.call(live.node.post(b.OfferPosted(title="Bike pump", category="tools")))
    page.wait_for_timeout(800)
    assert page.locator("#live").inner_text().count("Bike pump") == 0
    assert field.input_value() == "3"  # nothing was swapped from under the typing
    page.locator("h1").click()  # focus leaves the field
    expect(page.locator("#live")).to_contain_text("Bike pump", timeout=2000)


def test_keyboard_user_skips_to_the_main_content(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/board")
    page.keyboard.press("Tab")
    skip = page.locator("a.skip")
    expect(skip).to_be_focused()
    assert skip.bounding_box()["y"] >= 0  # type: ignore[index]  # visible when focused
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()


def test_spanish_page_in_the_browser(live: LiveNode, page: Page) -> None:
    page.goto(f"{live.url}/roster?lang=es")
    expect(page.locator("html")).to_have_attribute("lang", "es")
    expect(page.locator("h1")).to_have_text("Turnos")
    page.goto(f"{live.url}/board")
    expect(page.locator("h1")).to_have_text("Tablón")


# -- how it looks and whether everyone can use it ---------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_page_has_no_serious_accessibility_violations(
    live: LiveNode, browser: Browser, name: str
) -> None:
    # axe is injected as an inline script, which the page's own CSP forbids.
    context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
    tab = context.new_page()
    try:
        # Spanish on the board only: every page shares the frame and the macros.
        for query in ("", "?lang=es") if name == "board" else ("",):
            tab.goto(f"{live.url}/{name}{query}")
            for panel in tab.locator("details.panel").all():
                panel.evaluate("d => d.open = true")  # check the forms too
            tab.add_script_tag(content=AXE.read_text())
            result = tab.evaluate(
                "async () => await axe.run(document, {resultTypes: ['violations']})"
            )
            bad = [
                f"{v['id']} ({v['impact']}): {v['help']} -> {[n['target'] for n in v['nodes']][:3]}"
                for v in result["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            assert not bad, f"/{name}{query}: " + "\n".join(bad)
    finally:
        context.close()


def test_screenshots_of_every_page_at_phone_and_desktop_size(
    live: LiveNode, browser: Browser
) -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    for size, (width, height) in SIZES.items():
        context = browser.new_context(viewport={"width": width, "height": height})
        tab = context.new_page()
        for name in PAGES:
            tab.goto(f"{live.url}/{name}")
            expect(tab.locator("#live-status")).to_have_class("live-status connected")
            tab.screenshot(path=str(ARTIFACTS / f"{name}-{size}.png"), full_page=True)
        # A refused form, as a volunteer sees it, and the board in Spanish.
        tab.goto(f"{live.url}/board")
        tab.get_by_text("Post an offer").click()
        form = tab.locator("#offer-panel form")
        form.evaluate("f => f.noValidate = true")
        form.locator("#offer-title").fill("Tins of soup")
        form.locator("#offer-quantity").fill("-2")
        form.get_by_role("button", name="Post the offer").click()
        expect(tab.locator("#offer-quantity-error")).to_be_visible()
        tab.screenshot(path=str(ARTIFACTS / f"board-refused-form-{size}.png"))
        tab.goto(f"{live.url}/board?lang=es")
        tab.screenshot(path=str(ARTIFACTS / f"board-es-{size}.png"), full_page=True)
        tab.goto(f"{live.url}/board?lang=en")
        context.close()
    shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
    assert len(shots) == (len(PAGES) + 2) * len(SIZES), shots
