"""Two nodes' web pages, live through sync; and "shared with N peers" telling the truth.

The story of the web issue: Ana and Bo each run ``potluck serve`` on loopback, each
with its own page; Bo joined with Ana's invite and dials her. Ana posts an offer of 10
in her page: it appears in Bo's open page without a reload, and Ana's page says it is
shared with 1 peer once Bo has it. Bo claims 3 in his page: Ana's page shows 3 claimed
without a reload. Real processes, real headless Chromium (``/usr/bin/chromium``
through Playwright, as tests/test_web_browser.py), screenshots of both pages at phone
and desktop size in ``test-artifacts/web/``.

First, over HTTP with a fake ``peer_vectors`` provider: the page says "shared with N
peers" only for the N connected peers whose vector holds the saved event, never when
the node does not sync, and the ``/events?seq=`` stream tells it live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from helpers import POTLUCK, potluck, potluck_env

from eventlog import body as b
from eventlog.identity import Group
from node.app import Node
from node.web import create_app, create_server
from node.web.feed import ShareWatch, merged

BASE = "http://127.0.0.1"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "web"
SIZES = {"phone": (390, 844), "desktop": (1280, 800)}
START_DEADLINE = 30.0
LIVE_MS = 5000  # the issue: without a reload, within a few seconds (we allow 5 s)

with contextlib.suppress(ImportError):  # else the browser fixture skips, saying why
    from playwright.sync_api import Browser, BrowserContext, Page, expect

Vector = dict[bytes, tuple[int, bytes]]


# -- "shared with N peers" over HTTP, with a fake sync ------------------------------------


class FakePeers:
    """What sync would say: one vector per connected peer, set by the test."""

    def __init__(self) -> None:
        self.vectors: list[Vector] = []
        self.calls = 0

    def __call__(self) -> list[Vector]:
        self.calls += 1
        return [dict(v) for v in self.vectors]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await Node.init(tmp_path / "node", "Ana", Group.new("Riverside Mutual Aid"))
    await n.post(
        b.ItemDefined(
            slug="beans", name="Tinned beans", unit="can", category="food", storage="ambient"
        )
    )
    yield n
    await n.close()


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url=BASE,
    )


async def post_offer(client: httpx.AsyncClient, title: str, *, lang: str = "en") -> None:
    page = await client.get(f"/board?lang={lang}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text[:300]
    response = await client.post(
        "/board/offer", data={"csrf": csrf.group(1), "title": title, "quantity": "10"}
    )
    assert response.status_code == 303, response.text[:500]


async def head(node: Node) -> tuple[int, bytes]:
    """This node's last (seq, hash): what a peer that has everything holds of it."""
    return (await node.store.vector())[node.author]


def flash(html: str) -> str:
    match = re.search(r'<p class="flash">(.*?)</p>', html, flags=re.S)
    return re.sub(r"<[^>]+>", "", match.group(1)) if match else ""


async def test_saved_form_says_shared_only_with_the_peers_that_have_the_event(node: Node) -> None:
    peers = FakePeers()
    async with client_for(create_app(node, peer_vectors=peers)) as client:
        # Nobody connected: saved here, and the page says it is nowhere else yet.
        await post_offer(client, "Soup for 6")
        page = (await client.get("/board")).text
        assert flash(page) == "Offer posted. Saved on this device. Not on any other device yet."
        assert 'data-peers="0"' in page

        await post_offer(client, "Bread")
        seq, digest = await head(node)
        peers.vectors = [
            {node.author: (seq, digest)},  # has the offer
            {node.author: (seq - 1, b"\0" * 32)},  # has everything before it only
            {},  # has nothing of ours
        ]
        page = (await client.get("/board")).text
        assert flash(page) == "Offer posted. Saved on this device. Shared with 1 peer."
        assert f'data-seq="{seq}" data-peers="1"' in page

        await post_offer(client, "Rice")
        seq, digest = await head(node)
        peers.vectors = [{node.author: (seq, digest)}, {node.author: (seq + 3, digest)}]
        page = (await client.get("/board")).text
        assert flash(page).endswith("Shared with 2 peers.")
        assert "Shared" not in flash((await client.get("/board")).text)  # said once

        await post_offer(client, "Arroz", lang="es")
        seq, digest = await head(node)
        peers.vectors = [{node.author: (seq, digest)}] * 2
        page = (await client.get("/board")).text
        assert flash(page) == (
            "Oferta publicada. Guardado en este dispositivo. Compartido con 2 dispositivos."
        )


async def test_claim_saved_in_the_page_is_counted_too(node: Node) -> None:
    other = await Node.init(node.data_dir.parent / "bo", "Bo", node.group)
    try:
        offer = await other.post(b.OfferPosted(title="Coats", quantity=4))
        await node.store.receive([e async for e in other.iter_log()])
    finally:
        await other.close()
    peers = FakePeers()
    async with client_for(create_app(node, peer_vectors=peers)) as client:
        page = await client.get("/board")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        response = await client.post(
            f"/board/{offer.hash.hex()}/claim", data={"csrf": csrf.group(1), "quantity": "3"}
        )
        assert response.status_code == 303
        peers.vectors = [{node.author: await head(node)}]
        page = await client.get("/board")
        assert flash(page.text) == "Claim made. Saved on this device. Shared with 1 peer."


async def test_without_peer_vectors_the_page_never_says_shared(node: Node) -> None:
    async with client_for(create_app(node)) as client:
        await post_offer(client, "Soup for 6")
        page = (await client.get("/board")).text
        assert flash(page) == "Offer posted. Saved on this device."
        assert 'id="shared"' not in page


async def test_refused_form_says_neither_saved_nor_shared(node: Node) -> None:
    peers = FakePeers()
    async with client_for(create_app(node, peer_vectors=peers)) as client:
        page = await client.get("/board")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        before = await node.store.count()
        response = await client.post(
            "/board/offer", data={"csrf": csrf.group(1), "title": "Soup", "quantity": "-2"}
        )
        assert response.status_code == 400
        assert "Nothing was saved." in response.text
        assert "Saved on this device" not in response.text
        assert 'id="shared"' not in response.text
        assert await node.store.count() == before


async def test_a_forged_flash_cookie_claims_nothing(node: Node) -> None:
    peers = FakePeers()
    peers.vectors = [{node.author: (99, b"\0" * 32)}]
    app = create_app(node, peer_vectors=peers)
    name = app.state.web.cookies.flash
    async with client_for(app) as client:
        for value, shown in (
            ("offer_posted.x1", "Offer posted. Saved on this device."),
            ("offer_posted.0", "Offer posted. Saved on this device."),
            ("share.one.1", ""),
            ("saved.1", ""),
        ):
            client.cookies.set(name, value)
            page = (await client.get("/board")).text
            assert flash(page) == shown, value
            assert 'id="shared"' not in page


async def test_share_watch_counts_upwards_and_polls_only_while_watched() -> None:
    author = b"\1" * 32
    peers = FakePeers()
    watch = ShareWatch(peers, author, interval=0.01)
    stream = watch.watch(5)
    assert await anext(stream) == 0
    assert watch.running and watch.listeners == 1
    peers.vectors = [{author: (5, b"")}, {author: (4, b"")}]
    assert await asyncio.wait_for(anext(stream), 1) == 1
    peers.vectors = [{author: (7, b"")}, {author: (6, b"")}, {b"\2" * 32: (9, b"")}]
    assert await asyncio.wait_for(anext(stream), 1) == 2
    peers.vectors = []  # both went away: they still have it, the count stays
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.1)
    await stream.aclose()
    assert watch.listeners == 0 and not watch.running
    calls = peers.calls
    await asyncio.sleep(0.05)
    assert peers.calls == calls  # nobody watches: nobody polls


async def test_share_watch_survives_a_failing_provider_and_closes() -> None:
    def broken() -> list[Vector]:
        raise RuntimeError("sync is restarting")

    watch = ShareWatch(broken, b"\1" * 32, interval=0.01)
    stream = watch.watch(1)
    assert await anext(stream) == 0
    watch.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 1)
    assert not watch.running
    assert [n async for n in watch.watch(1)] == []  # closed: ends at once


async def test_merged_ends_with_the_first_source_and_closes_the_others() -> None:
    closed: list[str] = []

    async def forever(name: str) -> AsyncGenerator[str]:
        try:
            while True:
                yield name
                await asyncio.sleep(0.01)
        finally:
            closed.append(name)

    async def three() -> AsyncGenerator[str]:
        for _ in range(3):
            await asyncio.sleep(0.005)
            yield "three"

    seen = [item async for item in merged(three(), forever("slow"))]
    assert seen.count("three") == 3 and "slow" in seen
    await asyncio.sleep(0.02)
    assert closed == ["slow"]


async def test_events_stream_says_live_when_a_peer_gets_the_saved_event(
    node: Node, unused_tcp_port: int
) -> None:
    peers = FakePeers()
    server = create_server(node, "127.0.0.1", unused_tcp_port, peer_vectors=peers)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    saved = await node.post(b.OfferPosted(title="Soup", quantity=10))
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client,
        client.stream(
            "GET", f"/events?seq={saved.seq}", headers={"Accept-Language": "es"}
        ) as stream,
    ):
        lines = stream.aiter_lines()
        first = await asyncio.wait_for(next_shared(lines), 2)
        assert first == {"peers": 0, "text": "Todavía no está en ningún otro dispositivo."}
        started = asyncio.get_running_loop().time()
        peers.vectors = [{node.author: (saved.seq, saved.hash)}]
        second = await asyncio.wait_for(next_shared(lines), 2)
        assert second == {"peers": 1, "text": "Compartido con 1 dispositivo."}
        assert asyncio.get_running_loop().time() - started < 1.0
        server.should_exit = True
        await asyncio.wait_for(serving, 5)  # the open stream does not hold it up


async def next_shared(lines: AsyncIterator[str]) -> dict[str, object]:
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "shared":
            data: dict[str, object] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended")


# -- the page's own part: the flash moves from "not yet" to "shared" by itself ----------------


def test_page_says_shared_by_itself_once_a_peer_has_the_event(
    tmp_path: Path, browser: Browser
) -> None:
    from test_web_browser import LiveNode

    peers = FakePeers()

    class SharingNode(LiveNode):
        async def _serve(self) -> None:
            self.node = await Node.open(self.data_dir)
            try:
                self.server = create_server(self.node, "127.0.0.1", self.port, peer_vectors=peers)
                self.ready.set()
                await self.server.serve(sockets=[self.sock])
            finally:
                await self.node.close()

    # By the command, not asyncio.run: Playwright's sync API runs its loop in this thread.
    potluck(tmp_path / "ana", "init", "--name", "Ana", "--new-group", "Riverside Mutual Aid")
    live = SharingNode(tmp_path / "ana").start()
    try:
        tab = browser.new_page(viewport={"width": 390, "height": 844}, locale="en-GB")
        tab.set_default_timeout(LIVE_MS)
        tab.goto(f"{live.url}/board")
        tab.get_by_text("Post an offer").click()
        tab.locator("#offer-title").fill("Soup pots to lend")
        tab.get_by_role("button", name="Post the offer").click()
        expect(tab.locator(".flash")).to_contain_text("Saved on this device.")
        expect(tab.locator("#shared")).to_have_text("Not on any other device yet.")
        expect(tab.locator("#live-status")).to_have_class("live-status connected")
        tab.evaluate("window.notReloaded = true")
        seq, digest = live.call(head(live.node))
        peers.vectors = [{live.node.author: (seq, digest)}]
        expect(tab.locator("#shared")).to_have_text("Shared with 1 peer.", timeout=2000)
        peers.vectors = []  # the peer leaves; it still has the offer
        tab.wait_for_timeout(600)
        expect(tab.locator("#shared")).to_have_text("Shared with 1 peer.")
        assert tab.evaluate("window.notReloaded") is True
        tab.close()
    finally:
        live.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Serve:
    """A ``potluck serve`` process with its web page; its output is read by a thread
    (so the pipe never fills) and kept for the failure message."""

    def __init__(self, data_dir: Path, *peers: str) -> None:
        self.name = data_dir.name
        args = [
            *POTLUCK,
            "--data-dir",
            str(data_dir),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ui",
            f"127.0.0.1:{free_port()}",
        ]
        for peer in peers:
            args += ["--peer", peer]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=potluck_env()
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.address = self.wait_for(r"listening on (\S+)")
        self.url = self.wait_for(r"web page on (http://\S+?)/?$")
        self._wait_for_page()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, deadline: float = START_DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match.group(1) if match.groups() else line
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no '{pattern}' from {self.name}'s serve: {self.lines}")

    def _wait_for_page(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/board", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}'s page never answered: {self.lines}")

    def stop(self) -> None:
        """Ctrl-C; killed when it does not stop within 10 s (a teardown never hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(5)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    running: list[Serve] = []
    try:
        yield running
    finally:
        for serve in running:
            serve.stop()


def test_offer_and_claim_travel_live_between_two_nodes_pages(
    tmp_path: Path, serves: list[Serve], browser: Browser
) -> None:
    ana, bo = tmp_path / "ana", tmp_path / "bo"
    potluck(ana, "init", "--name", "Ana", "--new-group", "Eastside Mutual Aid")
    code = potluck(ana, "invite", "--address", "127.0.0.1:1").stdout.strip().splitlines()[-1]
    potluck(bo, "init", "--name", "Bo", "--join", code)
    serves.append(a := Serve(ana))
    serves.append(b_ := Serve(bo, a.address))
    # Both sides see the session before the clock starts (the dial itself is not timed).
    a.wait_for(r"(caught up with \S+)")
    b_.wait_for(r"(caught up with \S+)")

    contexts: list[BrowserContext] = []
    try:
        width, height = SIZES["phone"]
        pages: dict[str, Page] = {}
        for who, serve in (("ana", a), ("bo", b_)):
            context = browser.new_context(
                viewport={"width": width, "height": height}, locale="en-GB"
            )
            contexts.append(context)
            tab = context.new_page()
            tab.set_default_timeout(LIVE_MS)
            tab.goto(f"{serve.url}/board")
            expect(tab.locator("#live-status")).to_have_class("live-status connected")
            pages[who] = tab
        ana_page, bo_page = pages["ana"], pages["bo"]
        bo_page.evaluate("window.notReloaded = true")

        # Ana posts an offer of 10 in her page.
        ana_page.get_by_text("Post an offer").click()
        ana_page.locator("#offer-title").fill("Tins of tomatoes")
        ana_page.locator("#offer-quantity").fill("10")
        ana_page.get_by_role("button", name="Post the offer").click()
        expect(ana_page.locator(".flash")).to_contain_text("Offer posted. Saved on this device.")

        # It appears in Bo's open page, without a reload.
        offer = bo_page.locator("article", has_text="Tins of tomatoes")
        expect(offer).to_contain_text("10 offered, 0 claimed, 10 left", timeout=LIVE_MS)
        assert bo_page.evaluate("window.notReloaded") is True

        # Bo has it: Ana's page says so, by itself.
        assert ana_page.locator("#shared").count() == 1, (
            "Ana's page says nothing about sharing: `potluck serve` does not pass "
            "peer_vectors to create_server (docs/web.md, 'Forms never lie')"
        )
        expect(ana_page.locator("#shared")).to_have_text("Shared with 1 peer.", timeout=LIVE_MS)
        ana_page.evaluate("window.notReloaded = true")

        # Bo claims 3 in his page.
        offer.locator("input[name=quantity]").fill("3")
        offer.get_by_role("button", name=re.compile(r"^Claim\b")).click()
        expect(bo_page.locator(".flash")).to_contain_text("Claim made. Saved on this device.")
        expect(bo_page.locator("#shared")).to_have_text("Shared with 1 peer.", timeout=LIVE_MS)

        # Ana's page shows 3 claimed, without a reload.
        mine = ana_page.locator("article", has_text="Tins of tomatoes")
        expect(mine).to_contain_text("10 offered, 3 claimed, 7 left", timeout=LIVE_MS)
        expect(mine.locator(".claim", has_text="Bo")).to_contain_text("3")
        assert ana_page.evaluate("window.notReloaded") is True

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for size, (width, height) in SIZES.items():
            for who, tab in pages.items():
                tab.set_viewport_size({"width": width, "height": height})
                tab.screenshot(
                    path=str(ARTIFACTS / f"two-nodes-{who}-board-{size}.png"), full_page=True
                )
        for who in pages:
            for size in SIZES:
                assert (ARTIFACTS / f"two-nodes-{who}-board-{size}.png").stat().st_size
    finally:
        for context in contexts:
            context.close()
