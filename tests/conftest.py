"""Shared helpers: a group, member keys, and causally valid event sets built in memory."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, missing
from helpers import make_key
from nacl.signing import SigningKey

from eventlog import events
from eventlog.clock import HybridClock
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof

if TYPE_CHECKING:
    from playwright.sync_api import Browser

START_MS = 1_700_000_000_000


def joined_body(group: Group, key: SigningKey, name: str = "Member") -> dict[str, object]:
    """The body of ``member.joined`` carrying ``key``'s membership proof for ``group``."""
    return {"name": name, "proof": membership_proof(group, bytes(key.verify_key))}


def fake_clock(step_ms: int = 1) -> HybridClock:
    """A clock whose wall time advances by ``step_ms`` every time it is read."""
    now = [START_MS]

    def now_ms() -> int:
        now[0] += step_ms
        return now[0]

    return HybridClock(now_ms)


class History:
    """Authors writing events in memory, each event valid for a store of ``group``.

    ``write`` picks seq, prev and hlc like a node does; deps are heads of other authors
    chosen by the caller. Every author's first event is its ``member.joined``.
    """

    def __init__(self, group: Group, keys: list[SigningKey]) -> None:
        self.group = group
        self.keys = keys
        self.clock = fake_clock()
        self.heads: dict[bytes, Envelope] = {}
        self.events: list[Envelope] = []

    def write(
        self,
        key: SigningKey,
        type_: str = "offer.posted",
        body: dict[str, object] | None = None,
        deps: list[Envelope] | None = None,
    ) -> Envelope:
        author = bytes(key.verify_key)
        prev = self.heads.get(author)
        if prev is None:
            type_, body = "member.joined", joined_body(self.group, key)
        dep_list = deps or []
        hlc = self.clock.tick(*([prev.hlc] if prev else []), *(d.hlc for d in dep_list))
        env = events.create(
            key,
            group=self.group.id,
            seq=prev.seq + 1 if prev else 1,
            prev=prev.hash if prev else None,
            deps=[d.hash for d in dep_list],
            hlc=hlc,
            type=type_,
            body=body if body is not None else {"title": f"offer {len(self.events)}"},
        )
        self.heads[author] = env
        self.events.append(env)
        return env

    def write_random(self, rng: random.Random) -> Envelope:
        """One event by a random author, depending on a random subset of others' heads."""
        key = rng.choice(self.keys)
        author = bytes(key.verify_key)
        others = [h for a, h in self.heads.items() if a != author]
        deps = rng.sample(others, rng.randint(0, len(others))) if author in self.heads else []
        return self.write(key, deps=deps)


def build_history(group: Group, n_authors: int, n_events: int, seed: int) -> History:
    """A multi-author event set with deps; every author joins first."""
    rng = random.Random(seed)
    history = History(group, [make_key(i + 1) for i in range(n_authors)])
    for key in history.keys:
        history.write(key)
    while len(history.events) < n_events:
        history.write_random(rng)
    return history


@pytest.fixture
def group() -> Group:
    return Group.new("Test group")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one per test module; skips saying what to install if missing.

    While it is open, Playwright's sync API runs its event loop in this thread, so
    asyncio.run fails here: build nodes before requesting it, or with the command.
    """
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
