"""The signing process (eventlog/signer.py): the same bytes as signing in place, a valid
chain and projections through a long append, and no harm when it fails or lies."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from eventgen import Node, fixed_group
from helpers import make_key
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from eventlog import body as b
from eventlog import events
from eventlog import signer as signer_module
from eventlog.events import Envelope, Unsigned
from eventlog.signer import Signer, SignerFailed
from eventlog.store import Store

GROUP = fixed_group(7)
KEY = make_key(70)
READY_SECONDS = 30


def wait_ready(signer: Signer) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not signer.ready():
        assert signer.alive, "the signing process died while starting"
        assert time.monotonic() < deadline, "the signing process did not start"
        time.sleep(0.01)


def drafts(n: int, start: int = 0) -> list[b.BaseBody]:
    """A mix of bodies: stock changes, offers and a count, with non-ASCII text."""
    out: list[b.BaseBody] = [
        b.ItemDefined(slug="rice", name="Rice", unit="kg", category="food", storage="ambient"),
        b.LocationDefined(slug="hall", name="Salle des fêtes", kind="hub"),
    ]
    for i in range(start, start + n - 2):
        if i % 7 == 0:
            out.append(
                b.OfferPosted(
                    title=f"Soupe n°{i}",
                    category="food",
                    quantity=i % 9 + 1,
                    item=None,
                    location="hall",
                    until=None,
                )
            )
        elif i % 11 == 0:
            out.append(b.StockCounted(item="rice", location="hall", count=i))
        else:
            out.append(
                b.StockAdjusted(
                    item="rice", location="hall", delta=i % 13 + 1, reason="donation", expires=None
                )
            )
    return out


def run_of(n: int, *, first_seq: int = 2) -> list[Unsigned]:
    return [
        events.unsigned(first_seq + i, 1_000 + i, body.TYPE, body.to_body())
        for i, body in enumerate(drafts(n))
    ]


@pytest.fixture(scope="module")
def signer() -> object:
    helper = Signer(KEY)
    wait_ready(helper)
    yield helper
    helper.close()


def signed_by(helper: Signer, prev: bytes | None, run: list[Unsigned]) -> list[Envelope]:
    return [env for chunk in helper.sign(GROUP.id, prev, run, []) for env in chunk]


def test_the_process_signs_byte_for_byte_what_signing_in_place_makes(signer: Signer) -> None:
    run = run_of(700)
    prev = bytes(range(32))
    there = signed_by(signer, prev, run)
    here = events.seal_run(KEY, GROUP.id, prev, run)
    assert [e.raw for e in there] == [e.raw for e in here]
    assert [e.hash for e in there] == [e.hash for e in here]
    for env in there[:3] + there[-3:]:
        events.verify_signature(events.decode(env.raw))


@settings(max_examples=25, deadline=None)
@given(
    bodies=st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.one_of(
                st.integers(-(2**63), 2**63 - 1),
                st.text(max_size=20),
                st.binary(max_size=40),
                st.floats(allow_nan=False),
                st.none(),
                st.booleans(),
                st.lists(st.integers(0, 9), max_size=3),
            ),
            max_size=5,
        ),
        min_size=1,
        max_size=40,
    ),
    with_prev=st.booleans(),
)
def test_any_bodies_sign_the_same_there_and_here(
    signer: Signer, bodies: list[dict[str, object]], with_prev: bool
) -> None:
    prev = bytes(32) if with_prev else None
    run = [
        events.unsigned(i + (2 if with_prev else 1), 5_000 + i, "x.custom", body)
        for i, body in enumerate(bodies)
    ]
    assert [e.raw for e in signed_by(signer, prev, run)] == [
        e.raw for e in events.seal_run(KEY, GROUP.id, prev, run)
    ]


def test_a_process_signing_with_another_key_is_caught() -> None:
    liar = Signer(SigningKey(bytes(32)))
    try:
        wait_ready(liar)
        liar.key = KEY  # the parent believes it is KEY's helper
        with pytest.raises(SignerFailed):
            signed_by(liar, None, run_of(300, first_seq=1))
        assert not liar.alive
    finally:
        liar.close()


def test_a_process_that_dies_is_reported_and_not_waited_for() -> None:
    helper = Signer(KEY)
    try:
        wait_ready(helper)
        assert helper._proc is not None
        helper._proc.kill()
        helper._proc.wait()
        with pytest.raises(SignerFailed):
            signed_by(helper, None, run_of(300, first_seq=1))
        assert not helper.alive
    finally:
        helper.close()


def test_stopping_early_stops_the_process(signer: Signer) -> None:
    helper = Signer(KEY)
    wait_ready(helper)
    chunks = helper.sign(GROUP.id, None, run_of(600, first_seq=1), [])
    next(chunks)
    chunks.close()  # its unread answers would be taken for the next run's
    assert not helper.alive


@asynccontextmanager
async def node_at(path: Path) -> AsyncIterator[Node]:
    node = await Node.open(path, GROUP, durable=False)
    try:
        yield node
    finally:
        await node.close()


def helper_of(store: Store) -> Signer | None:
    return store._signer


async def appended_with_the_helper(node: Node, n: int) -> list[Envelope]:
    """Append ``n`` events once the store's helper is up (the first long append starts
    it and signs in place meanwhile)."""
    helper = helper_of(node.store)
    if helper is None:
        await node.append_many(KEY, [(d.TYPE, d.to_body()) for d in drafts(300)])
        helper = helper_of(node.store)
        assert helper is not None
    await asyncio.to_thread(wait_ready, helper)
    return await node.store.append(KEY, drafts(n, start=1_000))


@asynccontextmanager
async def node_with_helper(path: Path, *others: SigningKey) -> AsyncIterator[tuple[Node, Signer]]:
    """A node where Ana (and ``others``) joined and Ana's helper signed a long run."""
    async with node_at(path) as node:
        await node.join(KEY, "Ana")
        for n, other in enumerate(others):
            await node.join(other, f"Member {n}")
        await appended_with_the_helper(node, 300)
        helper = helper_of(node.store)
        assert helper is not None and helper._proc is not None
        yield node, helper


async def assert_sound(node: Node) -> None:
    """Every event verifies on its own, each chains to the one before, and the
    projections equal a rebuild from the log."""
    log = await node.events()
    mine = sorted((e for e in log if e.author == bytes(KEY.verify_key)), key=lambda e: e.seq)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    for before, after in itertools.pairwise(mine):
        assert after.prev == before.hash
    for env in mine:
        events.verify_signature(events.decode(env.raw))
    digest = await node.digest()
    assert await node.rebuild() == digest


@pytest.mark.asyncio
async def test_a_long_append_is_signed_by_the_helper_into_a_sound_log(tmp_path: Path) -> None:
    async with node_at(tmp_path / "log.db") as node:
        await node.join(KEY, "Ana")
        used = []
        real_sign = Signer.sign

        def counting_sign(self: Signer, *args: object) -> object:
            for chunk in real_sign(self, *args):  # type: ignore[arg-type]
                used.append(len(chunk))
                yield chunk

        Signer.sign = counting_sign  # type: ignore[assignment,method-assign]
        try:
            written = await appended_with_the_helper(node, 900)
        finally:
            Signer.sign = real_sign  # type: ignore[method-assign]
        assert sum(used) == 900 and len(used) > 1  # in chunks, as they were signed
        assert [e.seq for e in written] == list(range(written[0].seq, written[0].seq + 900))
        await assert_sound(node)
        offers = {e.hash for e in await node.events() if e.type == "offer.posted"}
        assert {row["id"] for row in await node.rows("board_entries")} == offers
        assert offers & {e.hash for e in written}


@pytest.mark.asyncio
async def test_short_appends_never_start_the_helper(tmp_path: Path) -> None:
    async with node_at(tmp_path / "log.db") as node:
        await node.join(KEY, "Ana")
        await node.store.append(KEY, drafts(signer_module.MIN_RUN - 1))
        assert helper_of(node.store) is None


@pytest.mark.asyncio
async def test_an_append_whose_helper_died_signs_in_place(tmp_path: Path) -> None:
    async with node_with_helper(tmp_path / "log.db") as (node, helper):
        assert helper._proc is not None
        helper._proc.kill()
        helper._proc.wait()
        written = await node.store.append(KEY, drafts(500, start=5_000))
        assert len(written) == 500
        await assert_sound(node)
        await node.store.append(KEY, drafts(300, start=6_000))
        again = helper_of(node.store)
        assert again is not None and again is not helper and again.alive


@pytest.mark.asyncio
async def test_a_long_run_of_another_key_is_signed_in_place_beside_the_helper(
    tmp_path: Path,
) -> None:
    other = make_key(71)
    async with node_with_helper(tmp_path / "log.db", other) as (node, helper):
        written = await node.store.append(other, drafts(400, start=8_000))
        assert len(written) == 400 and {e.author for e in written} == {bytes(other.verify_key)}
        assert helper_of(node.store) is helper and helper is not None and helper.alive
        for env in written[-2:]:
            events.verify_signature(events.decode(env.raw))
        await assert_sound(node)


@pytest.mark.asyncio
async def test_an_append_whose_helper_lies_signs_in_place(tmp_path: Path) -> None:
    async with node_with_helper(tmp_path / "log.db") as (node, old):
        old.close()
        liar = Signer(SigningKey(bytes(32)))
        await asyncio.to_thread(wait_ready, liar)
        liar.key = KEY
        node.store._signer = liar
        written = await node.store.append(KEY, drafts(500, start=7_000))
        assert len(written) == 500 and not liar.alive
        await assert_sound(node)


@pytest.mark.asyncio
async def test_closing_the_store_ends_the_helper(tmp_path: Path) -> None:
    async with node_with_helper(tmp_path / "log.db") as (_, helper):
        proc = helper._proc
        assert proc is not None
    assert proc.poll() is not None


@pytest.mark.asyncio
async def test_an_append_whose_helper_stops_answering_signs_in_place_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper frozen mid-run (SIGSTOP) must not hold the log's write lock for ever."""
    monkeypatch.setattr(signer_module, "ANSWER_SECONDS", 0.5)
    async with node_with_helper(tmp_path / "log.db") as (node, helper):
        frozen = helper._proc
        assert frozen is not None
        frozen.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        written = await node.store.append(KEY, drafts(400, start=11_000))
        assert len(written) == 400 and time.monotonic() - started < 20
        assert frozen.wait(timeout=10) != 0  # killed, not left stopped
        await assert_sound(node)


@pytest.mark.asyncio
async def test_a_helper_that_cannot_start_is_not_tried_at_every_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    async with node_at(tmp_path / "log.db") as node:
        await node.join(KEY, "Ana")
        await node.store.append(KEY, drafts(300))
        broken = helper_of(node.store)
        assert broken is not None and not broken.alive and not broken.worked
        written = await node.store.append(KEY, drafts(300, start=12_000))
        assert len(written) == 300 and helper_of(node.store) is broken
        await assert_sound(node)


def test_the_helper_starts_from_a_directory_holding_another_node_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``potluck`` run from a project folder with its own ``node`` package: the helper
    must still import Potluck's (it runs with -P: not from the current directory)."""
    decoy = tmp_path / "node"
    decoy.mkdir()
    (decoy / "__init__.py").write_text('raise SystemExit("not Potluck")\n')
    monkeypatch.chdir(tmp_path)
    helper = Signer(KEY)
    try:
        wait_ready(helper)
        run = run_of(300)
        assert [e.raw for e in signed_by(helper, bytes(32), run)] == [
            e.raw for e in events.seal_run(KEY, GROUP.id, bytes(32), run)
        ]
    finally:
        helper.close()
