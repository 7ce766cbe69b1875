"""Conformance suite for the log (eventlog/store.py), on real SQLite files.

Every rule of the log is checked through the public API only (append, receive and the
reads), so the same tests hold for any implementation of the store.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import History, build_history, joined_body
from helpers import make_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from eventlog import events
from eventlog import store as store_module
from eventlog.errors import (
    AmbiguousId,
    BadSignature,
    HlcRegression,
    InvalidEvent,
    NotAMember,
    NotFound,
    OversizedEvent,
    PrevMismatch,
    SeqGap,
    StorageError,
    UnknownGroup,
    UsageError,
)
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof
from eventlog.store import ReceiveResult, Store

OFFER = ("offer.posted", {"title": "Bread"})


@pytest.fixture(params=["in memory", "in sqlite"])
def held_index(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held events indexed in memory, or looked up in SQLite as beyond
    PENDING_IN_MEMORY held events: every held-event test runs both ways."""
    if request.param == "in sqlite":
        monkeypatch.setattr(store_module, "PENDING_IN_MEMORY", 0)


@asynccontextmanager
async def opened(path: Path, group: Group) -> AsyncIterator[Store]:
    store = await Store.open(path, group)
    try:
        yield store
    finally:
        await store.close()


async def all_events(store: Store) -> list[Envelope]:
    return [env async for env in store.iter_events()]


async def hashes(store: Store) -> set[bytes]:
    return {env.hash for env in await all_events(store)}


async def snapshot(store: Store) -> tuple[int, dict[bytes, tuple[int, bytes]], int]:
    return await store.count(), await store.vector(), await store.pending_count()


def vector_of(envs: list[Envelope]) -> dict[bytes, tuple[int, bytes]]:
    vector: dict[bytes, tuple[int, bytes]] = {}
    for env in envs:
        if env.seq > vector.get(env.author, (0, b""))[0]:
            vector[env.author] = (env.seq, env.hash)
    return vector


def causal_order(envs: list[Envelope], rng: random.Random) -> list[Envelope]:
    """A random order of ``envs`` in which every event comes after its prev and deps."""
    done: set[bytes] = set()
    left = list(envs)
    out: list[Envelope] = []
    while left:
        ready = [
            env
            for env in left
            if (env.prev is None or env.prev in done) and all(d in done for d in env.deps)
        ]
        env = rng.choice(ready)
        left.remove(env)
        done.add(env.hash)
        out.append(env)
    return out


async def deliver(store: Store, envs: list[Envelope]) -> list[Envelope]:
    """Receive causally ordered ``envs`` in runs of one author, so nothing is held.

    Tests that are not about holding use this, so they do not depend on it.
    """
    stored: list[Envelope] = []
    run: list[Envelope] = []
    for env in [*envs, None]:
        if run and (env is None or env.author != run[-1].author):
            result = await store.receive(run)
            assert result.held == 0 and result.rejected == []
            stored += result.stored
            run = []
        if env is not None:
            run.append(env)
    return stored


def next_event(history: History, key: SigningKey, **changes: object) -> Envelope:
    """The event ``key`` would write next in ``history``, with fields overridden."""
    author = bytes(key.verify_key)
    head = history.heads[author]
    fields: dict[str, object] = {
        "group": history.group.id,
        "seq": head.seq + 1,
        "prev": head.hash,
        "deps": [],
        "hlc": head.hlc + 10,
        "type": "offer.posted",
        "body": {"title": "Forged"},
    }
    fields.update(changes)
    return events.create(key, **fields)  # type: ignore[arg-type]


def with_sig(env: Envelope, sig: bytes) -> Envelope:
    return events.decode(events.pack(events._with_sig(env.signed_fields(), sig)))


# -- append ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_append_gives_seq_1_to_n_chained(tmp_path: Path, group: Group) -> None:
    key = make_key(1)
    author = bytes(key.verify_key)
    async with opened(tmp_path / "log.db", group) as store:
        first = await store.append(key, [("member.joined", store.first_event_body("Ada", author))])
        rest = await store.append(key, [OFFER] * 4)
        more = await store.append(key, [OFFER] * 2)
        chain = first + rest + more
        assert [env.seq for env in chain] == list(range(1, 8))
        events.verify_chain(chain, None)
        for env in chain:
            events.verify_signature(env)
            assert env.group == group.id and env.author == author
        assert chain[0].body["proof"] == membership_proof(group, author)
        heads = await store.heads()
        assert heads[author].seq == 7 and heads[author].hash == chain[-1].hash
        assert await store.count() == 7
        assert [env.hash for env in await all_events(store)] == [e.hash for e in chain]
        assert await store.get(chain[3].hash) == chain[3]


@pytest.mark.asyncio
async def test_append_is_durable_across_close_and_reopen(tmp_path: Path, group: Group) -> None:
    key = make_key(1)
    async with opened(tmp_path / "log.db", group) as store:
        await store.append(key, [("member.joined", joined_body(group, key))])
        written = await store.append(key, [OFFER] * 3)
        heads = await store.heads()
    async with opened(tmp_path / "log.db", group) as store:
        assert await store.heads() == heads
        assert await store.count() == 4
        later = await store.append(key, [OFFER])
        assert later[0].seq == 5 and later[0].prev == written[-1].hash
        assert later[0].hlc > written[-1].hlc


@pytest.mark.asyncio
async def test_append_deps_name_other_authors_heads_and_hlc_exceeds_them(
    tmp_path: Path, group: Group
) -> None:
    history = build_history(group, 2, 6, seed=1)
    key = make_key(3)
    async with opened(tmp_path / "log.db", group) as store:
        await deliver(store, history.events)
        [joined] = await store.append(key, [("member.joined", joined_body(group, key))])
        assert set(joined.deps) == {head.hash for head in history.heads.values()}
        assert joined.hlc > max(head.hlc for head in history.heads.values())
        [offer] = await store.append(key, [OFFER])
        assert offer.deps == ()  # nothing moved since


@pytest.mark.asyncio
async def test_append_raises_not_a_member_when_the_first_event_is_not_member_joined(
    tmp_path: Path, group: Group
) -> None:
    key = make_key(1)
    async with opened(tmp_path / "log.db", group) as store:
        with pytest.raises(NotAMember):
            await store.append(key, [OFFER])
        with pytest.raises(NotAMember):
            await store.append(key, [("member.joined", {"name": "Eve", "proof": bytes(32)})])
        assert await snapshot(store) == (0, {}, 0)


@pytest.mark.asyncio
async def test_open_raises_storage_error_for_a_log_of_another_group(
    tmp_path: Path, group: Group
) -> None:
    async with opened(tmp_path / "log.db", group):
        pass
    with pytest.raises(StorageError):
        await Store.open(tmp_path / "log.db", Group.new("Other"))


@pytest.mark.asyncio
async def test_hook_sees_added_events_and_a_failing_hook_rolls_back(
    tmp_path: Path, group: Group
) -> None:
    key = make_key(1)
    seen: list[list[int]] = []
    async with opened(tmp_path / "log.db", group) as store:
        store.add_hook(lambda db, added: seen.append([env.seq for env in added]))
        await store.append(key, [("member.joined", joined_body(group, key)), OFFER])
        assert seen == [[1, 2]]

        def boom(db: object, added: object) -> None:
            raise RuntimeError("projection failed")

        store.add_hook(boom)
        with pytest.raises(RuntimeError):
            await store.append(key, [OFFER])
        assert await store.count() == 2
        assert (await store.heads())[bytes(key.verify_key)].seq == 2


# -- receive -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_receive_stores_another_nodes_events_and_is_idempotent(
    tmp_path: Path, group: Group
) -> None:
    history = build_history(group, 3, 25, seed=2)
    async with opened(tmp_path / "log.db", group) as store:
        first = await deliver(store, history.events)
        assert {env.hash for env in first} == {env.hash for env in history.events}
        before = await snapshot(store)
        assert before == (25, vector_of(history.events), 0)

        again = await store.receive(history.events)
        assert again.stored == [] and again.duplicates == 25
        assert (again.held, again.rejected, again.forks) == (0, [], [])
        part = await store.receive(history.events[5:9] + history.events[5:9])
        assert part.stored == [] and part.duplicates == 4
        assert await snapshot(store) == before
        assert await hashes(store) == {env.hash for env in history.events}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), seed=st.integers(0, 3), indexed=st.booleans())
def test_receive_in_any_order_with_duplicates_ends_in_the_same_log(
    data: st.DataObject, seed: int, indexed: bool
) -> None:
    """``indexed``: held events indexed in memory, or (beyond PENDING_IN_MEMORY held
    events) looked up in SQLite: the same log either way."""
    history = HISTORIES[seed]
    envs = history.events
    order = data.draw(st.permutations(range(len(envs))), label="order")
    extra = data.draw(st.lists(st.integers(0, len(envs) - 1), max_size=10), label="dups")
    delivery = [envs[i] for i in order]
    for i in extra:
        delivery.insert(data.draw(st.integers(0, len(delivery))), envs[i])
    cuts = sorted(data.draw(st.sets(st.integers(1, len(delivery) - 1), max_size=8), label="cuts"))
    chunks = [delivery[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivery)], strict=True)]

    async def run() -> tuple[int, dict[bytes, tuple[int, bytes]], int, set[bytes]]:
        with tempfile.TemporaryDirectory() as tmp:
            async with opened(Path(tmp) / "log.db", history.group) as store:
                for chunk in chunks:
                    result = await store.receive(chunk)
                    assert result.rejected == [] and result.forks == []
                count, vector, pending = await snapshot(store)
                return count, vector, pending, await hashes(store)

    limit = store_module.PENDING_IN_MEMORY
    store_module.PENDING_IN_MEMORY = limit if indexed else 0
    try:
        count, vector, pending, stored = asyncio.run(run())
    finally:
        store_module.PENDING_IN_MEMORY = limit
    assert stored == {env.hash for env in envs}
    assert vector == vector_of(envs)
    assert count == len(envs)
    assert pending == 0


HISTORIES = [build_history(Group.new(f"Group {seed}"), 4, 30, seed) for seed in range(4)]


@pytest.mark.asyncio
async def test_receive_of_a_whole_history_in_one_batch_stores_every_event(
    tmp_path: Path, group: Group
) -> None:
    history = build_history(group, 3, 25, seed=2)
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive(history.events)
        assert {env.hash for env in result.stored} == {env.hash for env in history.events}
        assert result.rejected == [] and result.forks == []
        assert await store.pending_count() == 0


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_event_is_held_until_its_dep_arrives(tmp_path: Path, group: Group) -> None:
    history = History(group, [make_key(1), make_key(2)])
    a, b = history.keys
    a1, b1 = history.write(a), history.write(b)
    a2 = history.write(a)
    b2 = history.write(b, deps=[a2])
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive([a1, b1])
        held = await store.receive([b2])
        assert (held.stored, held.held, held.rejected) == ([], 1, [])
        assert await store.pending_count() == 1
        assert await store.count() == 2 and await store.get(b2.hash) is None
        released = await store.receive([a2])
        assert [env.hash for env in released.stored] == [a2.hash, b2.hash]
        assert await store.pending_count() == 0
        assert (await store.vector())[bytes(b.verify_key)] == (2, b2.hash)


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_event_is_held_across_a_seq_gap_and_released_in_order(
    tmp_path: Path, group: Group
) -> None:
    history = History(group, [make_key(1)])
    key = history.keys[0]
    chain = [history.write(key) for _ in range(5)]
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive(chain[:1])
        held = await store.receive([chain[4], chain[2], chain[3]])
        assert held.held == 3 and held.stored == []
        assert await store.pending_count() == 3 and await store.count() == 1
        again = await store.receive([chain[3]])  # held again, not duplicated
        assert again.held == 1 and await store.pending_count() == 3
        released = await store.receive([chain[1]])
        assert [env.seq for env in released.stored] == [2, 3, 4, 5]
        assert await store.pending_count() == 0
        assert (await store.vector())[bytes(key.verify_key)] == (5, chain[4].hash)


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_event_waiting_for_two_deps_is_released_when_both_arrive(
    tmp_path: Path, group: Group
) -> None:
    history = History(group, [make_key(1), make_key(2), make_key(3)])
    a, b, c = history.keys
    a1, b1, c1 = history.write(a), history.write(b), history.write(c)
    a2, b2 = history.write(a), history.write(b)
    c2 = history.write(c, deps=[a2, b2])
    first, second = sorted([a2, b2], key=lambda env: env.hash)  # c2 waits for deps[0]
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive([a1, b1, c1])
        assert (await store.receive([c2])).held == 1
        await store.receive([first])
        await store.receive([second])
        assert await store.get(c2.hash) == c2
        assert await store.pending_count() == 0


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_event_held_for_a_seq_gap_then_a_dep_is_released_when_the_dep_arrives(
    tmp_path: Path, group: Group
) -> None:
    history = History(group, [make_key(1), make_key(2)])
    a, b = history.keys
    a1, b1 = history.write(a), history.write(b)
    a2 = history.write(a)
    b2 = history.write(b)
    b3 = history.write(b, deps=[a2])
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive([a1, b1])
        assert (await store.receive([b3])).held == 1  # waits for b2
        assert (await store.receive([b2])).held == 1  # b3 now waits for a2
        await store.receive([a2])
        assert await store.get(b3.hash) == b3
        assert await store.pending_count() == 0


# -- rejection: nothing of an invalid event is stored ------------------------------


async def assert_rejected(store: Store, env: Envelope, error: type[InvalidEvent]) -> None:
    before = await snapshot(store)
    heads = await store.heads()
    result = await store.receive([env])
    assert [(bad.hash, type(exc)) for bad, exc in result.rejected] == [(env.hash, error)]
    assert result.stored == [] and result.held == 0 and result.forks == []
    assert await snapshot(store) == before
    assert await store.heads() == heads
    assert await store.get(env.hash) is None


def tamper_cases(history: History) -> dict[str, tuple[Envelope, type[InvalidEvent]]]:
    """One invalid event per rule, each aimed at a store holding ``history``."""
    a, b, outsider = history.keys[0], history.keys[1], make_key(99)
    a_head, b_head = history.heads[bytes(a.verify_key)], history.heads[bytes(b.verify_key)]
    good = next_event(history, a, body={"title": "Fresh bread"})
    raw = bytearray(good.raw)
    raw[good.raw.index(b"Fresh bread") + 6] ^= 0x01  # still valid msgpack, wrong sig
    other_group = Group.new("Other")
    return {
        "flipped body bit": (events.decode(bytes(raw)), BadSignature),
        "signature by another key": (
            with_sig(good, outsider.sign(events.pack(good.signed_fields())).signature),
            BadSignature,
        ),
        "zeroed signature": (with_sig(good, bytes(64)), BadSignature),
        "broken prev": (next_event(history, a, prev=events.blake2b256(b"x")), PrevMismatch),
        "prev of an older event": (next_event(history, a, prev=a_head.prev), PrevMismatch),
        "hlc not above prev": (next_event(history, a, hlc=a_head.hlc), HlcRegression),
        "hlc below a dep": (
            next_event(history, a, deps=[b_head.hash], hlc=b_head.hlc - 1),
            HlcRegression,
        ),
        "hlc equal to a dep": (
            next_event(history, a, deps=[b_head.hash], hlc=b_head.hlc),
            HlcRegression,
        ),
        "unknown group": (next_event(history, a, group=other_group.id), UnknownGroup),
        "first event not member.joined": (
            events.create(
                outsider,
                group=history.group.id,
                seq=1,
                prev=None,
                deps=[],
                hlc=5,
                type="offer.posted",
                body={"title": "Spam"},
            ),
            NotAMember,
        ),
        "member.joined with a proof for another group": (
            events.create(
                outsider,
                group=history.group.id,
                seq=1,
                prev=None,
                deps=[],
                hlc=5,
                type="member.joined",
                body=joined_body(other_group, outsider),
            ),
            NotAMember,
        ),
        "member.joined without proof": (
            events.create(
                outsider,
                group=history.group.id,
                seq=1,
                prev=None,
                deps=[],
                hlc=5,
                type="member.joined",
                body={"name": "Eve"},
            ),
            NotAMember,
        ),
    }


def tamper_history(group: Group) -> History:
    history = History(group, [make_key(1), make_key(2)])
    a, b = history.keys
    for key in (a, b, a, b, a, b):
        history.write(key)
    # b wrote last, so an hlc just below b's head is still above a's head.
    assert history.heads[bytes(b.verify_key)].hlc - 1 > history.heads[bytes(a.verify_key)].hlc
    return history


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(tamper_cases(tamper_history(Group.new("x")))))
async def test_receive_rejects_an_invalid_event_and_stores_nothing(
    tmp_path: Path, group: Group, case: str
) -> None:
    history = tamper_history(group)
    env, error = tamper_cases(history)[case]
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive(history.events)
        assert len(result.stored) == len(history.events)
        await assert_rejected(store, env, error)


@pytest.mark.asyncio
async def test_receive_rejects_an_invalid_event_in_a_batch_and_keeps_the_valid_ones(
    tmp_path: Path, group: Group
) -> None:
    history = tamper_history(group)
    a = history.keys[0]
    bad = next_event(history, a, prev=events.blake2b256(b"x"))
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive([*history.events, bad])
        assert len(result.stored) == len(history.events)
        assert [(env.hash, type(exc)) for env, exc in result.rejected] == [(bad.hash, PrevMismatch)]
        assert await hashes(store) == {env.hash for env in history.events}


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_receive_never_stores_a_seq_that_skips_its_predecessor(
    tmp_path: Path, group: Group
) -> None:
    """seq head+2 naming the head as prev can never chain: it must not enter the log."""
    history = tamper_history(group)
    a = history.keys[0]
    a_head = history.heads[bytes(a.verify_key)]
    skipping = next_event(history, a, seq=a_head.seq + 2)
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive(history.events)
        count, vector, _ = await snapshot(store)
        result = await store.receive([skipping])
        assert result.stored == [] and result.forks == []
        assert all(type(exc) is SeqGap for _, exc in result.rejected)
        assert await store.count() == count and await store.vector() == vector
        # Even when a real next event arrives, the skipping one does not follow it.
        real = next_event(history, a, body={"title": "Real"})
        after = await store.receive([real])
        assert [env.hash for env in after.stored] == [real.hash]
        assert await store.get(skipping.hash) is None


async def receive_held_then_invalid(store: Store, group: Group) -> Envelope:
    """Hold an event for a missing dep whose hlc it does not exceed; then send the dep."""
    history = History(group, [make_key(1), make_key(2)])
    a, b = history.keys
    a1, b1 = history.write(a), history.write(b)
    a2 = history.write(a)
    bad = next_event(history, b, deps=[a2.hash], hlc=a2.hlc - 1)
    await store.receive([a1, b1])
    assert (await store.receive([bad])).held == 1
    result = await store.receive([a2])
    assert [env.hash for env in result.stored] == [a2.hash]
    assert [(env.hash, type(exc)) for env, exc in result.rejected] == [(bad.hash, HlcRegression)]
    return bad


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_held_event_found_invalid_on_release_is_rejected_and_not_stored(
    tmp_path: Path, group: Group
) -> None:
    async with opened(tmp_path / "log.db", group) as store:
        bad = await receive_held_then_invalid(store, group)
        assert await store.get(bad.hash) is None
        assert await store.count() == 3


@pytest.mark.usefixtures("held_index")
@pytest.mark.asyncio
async def test_held_event_found_invalid_on_release_leaves_nothing_pending(
    tmp_path: Path, group: Group
) -> None:
    async with opened(tmp_path / "log.db", group) as store:
        await receive_held_then_invalid(store, group)
        assert await store.pending_count() == 0


def test_decode_raises_oversized_so_an_oversized_event_never_reaches_the_store() -> None:
    fields = events._with_sig(
        events._signed_fields(
            1,
            bytes(32),
            bytes(32),
            1,
            None,
            [],
            1,
            "offer.posted",
            {"title": "x" * events.MAX_EVENT_BYTES},
        ),
        bytes(64),
    )
    with pytest.raises(OversizedEvent):
        events.decode(events.pack(fields))


@pytest.mark.asyncio
async def test_events_of_an_author_who_never_joined_are_not_stored(
    tmp_path: Path, group: Group
) -> None:
    outsider = make_key(99)
    spam = events.create(
        outsider,
        group=group.id,
        seq=1,
        prev=None,
        deps=[],
        hlc=5,
        type="offer.posted",
        body={"title": "Spam"},
    )
    more = events.create(
        outsider,
        group=group.id,
        seq=2,
        prev=spam.hash,
        deps=[],
        hlc=6,
        type="offer.posted",
        body={"title": "More"},
    )
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive([spam, more])
        assert [type(exc) for _, exc in result.rejected] == [NotAMember]
        assert result.stored == []
        assert await store.count() == 0 and await store.vector() == {}


# Every stored event verifies alone: the chain commits to signatures (decision 0007).
@pytest.mark.asyncio
async def test_every_stored_event_verifies_on_its_own(tmp_path: Path, group: Group) -> None:
    history = History(group, [make_key(1)])
    key = history.keys[0]
    e1, e2, e3 = history.write(key), history.write(key), history.write(key)
    bad_sig = with_sig(e2, bytes(64))
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive([e1, bad_sig, e3])
        assert [env.hash for env in result.stored] == [e1.hash]
        assert [env.hash for env, _ in result.rejected] == [bad_sig.hash]
        assert result.held == 1  # e3 follows the real e2, not the forgery
        assert await hashes(store) == {e1.hash}
        released = await store.receive([e2])
        assert [env.hash for env in released.stored] == [e2.hash, e3.hash]
        stored = await all_events(store)
        assert [env.hash for env in stored] == [e1.hash, e2.hash, e3.hash]
        for env in stored:
            events.verify_signature(env)


# -- equivocation ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_equivocation_is_recorded_as_a_fork_and_the_log_keeps_the_first(
    tmp_path: Path, group: Group
) -> None:
    history = tamper_history(group)
    a = history.keys[0]
    a_author = bytes(a.verify_key)
    a_head = history.heads[a_author]
    original = next_event(history, a, body={"title": "One"})
    twin = next_event(history, a, body={"title": "Two"})
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive([*history.events, original])
        before = await snapshot(store)
        result = await store.receive([twin])
        assert result.forks == [(a_author, a_head.seq + 1)]
        assert result.stored == [] and result.rejected == []
        assert await store.forks() == [(a_author, a_head.seq + 1, 2)]
        assert await snapshot(store) == before
        assert await store.get(original.hash) == original
        assert await store.get(twin.hash) is None
        again = await store.receive([twin, original])
        assert again.duplicates == 1 and again.stored == []
        assert await store.forks() == [(a_author, a_head.seq + 1, 2)]


@pytest.mark.asyncio
async def test_equivocation_inside_one_batch_keeps_one_and_records_the_other(
    tmp_path: Path, group: Group
) -> None:
    history = tamper_history(group)
    a = history.keys[0]
    one = next_event(history, a, body={"title": "One"})
    two = next_event(history, a, body={"title": "Two"})
    async with opened(tmp_path / "log.db", group) as store:
        result = await store.receive([*history.events, one, two])
        assert len(result.forks) == 1
        assert len(result.stored) == len(history.events) + 1
        kept = [env.hash for env in result.stored if env.hash in {one.hash, two.hash}]
        assert len(kept) == 1
        assert await store.count() == len(history.events) + 1
        assert (await store.forks())[0][2] == 2


# -- reading -----------------------------------------------------------------------


def grind_shared_prefix(history: History) -> tuple[Envelope, Envelope]:
    """Next events of two authors whose hashes share their first 6 hex characters.

    Birthday search: about 8,192 + 2,048 signed candidates (well under a second).
    """
    a, b = history.keys[:2]
    seen: dict[str, int] = {}

    def candidate(key: SigningKey, n: int) -> Envelope:
        author = bytes(key.verify_key)
        head = history.heads[author]
        return events.create(
            key,
            group=history.group.id,
            seq=head.seq + 1,
            prev=head.hash,
            deps=[],
            hlc=head.hlc + 10,
            type="offer.posted",
            body={"title": f"Offer {n}"},
        )

    for n in range(8192):
        seen.setdefault(candidate(a, n).hash.hex()[:6], n)
    for m in range(1_000_000):
        match = seen.get(candidate(b, m).hash.hex()[:6])
        if match is not None:
            return (
                next_event(history, a, body={"title": f"Offer {match}"}),
                next_event(history, b, body={"title": f"Offer {m}"}),
            )
    raise AssertionError("no shared prefix found")


@pytest.mark.asyncio
async def test_resolve_finds_an_event_by_a_hex_prefix_of_6_or_more(
    tmp_path: Path, group: Group
) -> None:
    history = build_history(group, 3, 40, seed=5)
    async with opened(tmp_path / "log.db", group) as store:
        await deliver(store, history.events)
        for env in history.events[3:13]:
            hex_ = env.hash.hex()
            for size in (6, 7, 12, 64):
                assert (await store.resolve(hex_[:size], ["offer.posted"])).hash == env.hash
            assert (await store.resolve(hex_[:8].upper(), ["offer.posted"])) == env
            with pytest.raises(NotFound):
                await store.resolve(hex_[:8], ["need.posted"])
        joined = history.events[0]
        assert (
            await store.resolve(joined.hash.hex()[:10], ["offer.posted", "member.joined"]) == joined
        )
        present = {env.hash.hex()[:6] for env in history.events}
        absent = next(p for p in (f"{i:06x}" for i in range(1 << 24)) if p not in present)
        with pytest.raises(NotFound):
            await store.resolve(absent, ["offer.posted", "member.joined"])


@pytest.mark.asyncio
async def test_resolve_raises_ambiguous_id_when_two_events_share_the_prefix(
    tmp_path: Path, group: Group
) -> None:
    history = tamper_history(group)
    one, two = grind_shared_prefix(history)
    prefix = one.hash.hex()[:6]
    assert two.hash.hex().startswith(prefix)
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive([*history.events, one, two])
        with pytest.raises(AmbiguousId):
            await store.resolve(prefix, ["offer.posted"])
        assert await store.resolve(one.hash.hex(), ["offer.posted"]) == one
        assert await store.resolve(two.hash.hex(), ["offer.posted"]) == two


@pytest.mark.asyncio
@pytest.mark.parametrize("prefix", ["", "abcde", "zzzzzz", "12 456", "0" * 65])
async def test_resolve_raises_usage_error_for_a_prefix_that_is_not_an_id(
    tmp_path: Path, group: Group, prefix: str
) -> None:
    async with opened(tmp_path / "log.db", group) as store:
        with pytest.raises(UsageError) as caught:
            await store.resolve(prefix, ["offer.posted"])
        assert type(caught.value) is UsageError


@pytest.mark.asyncio
async def test_read_since_streams_exactly_what_a_peer_lacks(tmp_path: Path, group: Group) -> None:
    history = build_history(group, 3, 40, seed=6)
    async with opened(tmp_path / "a.db", group) as store, opened(tmp_path / "b.db", group) as peer:
        await deliver(store, history.events)
        known = history.events[:15]  # a causally closed prefix
        await deliver(peer, known)
        peer_vector = {author: seq for author, (seq, _) in (await peer.vector()).items()}
        sent: list[Envelope] = []
        async for batch in store.read_since(peer_vector, chunk=3):
            assert 1 <= len(batch) <= 3
            assert len({env.author for env in batch}) == 1
            events.verify_chain(
                batch, None if batch[0].seq == 1 else await store.get(batch[0].prev or b"")
            )
            sent.extend(batch)
        assert {env.hash for env in sent} == {env.hash for env in history.events} - {
            env.hash for env in known
        }
        assert len(sent) == len({env.hash for env in sent})
        position = {env.hash: i for i, env in enumerate(history.events)}
        await deliver(peer, sorted(sent, key=lambda env: position[env.hash]))
        assert await peer.pending_count() == 0
        assert await peer.vector() == await store.vector()
        assert [
            b
            async for b in store.read_since({a: s for a, (s, _) in (await store.vector()).items()})
        ] == []


@pytest.mark.asyncio
async def test_iter_events_yields_every_event_in_hlc_author_seq_order(
    tmp_path: Path, group: Group
) -> None:
    history = build_history(group, 4, 45, seed=7)
    async with opened(tmp_path / "log.db", group) as store:
        await deliver(store, causal_order(history.events, random.Random(7)))
        expected = sorted(history.events, key=lambda env: env.key)
        streamed = [env async for env in store.iter_events(chunk=4)]
        assert [env.hash for env in streamed] == [env.hash for env in expected]
        assert [env.raw for env in streamed] == [env.raw for env in expected]
        a = bytes(history.keys[0].verify_key)
        by_author = [env async for env in store.iter_events(author=a, chunk=2)]
        assert [env.hash for env in by_author] == [e.hash for e in expected if e.author == a]
        joins = [env async for env in store.iter_events(type_="member.joined", chunk=1)]
        assert [env.hash for env in joins] == [
            e.hash for e in expected if e.type == "member.joined"
        ]


@pytest.mark.asyncio
async def test_read_raw_returns_an_authors_events_from_a_seq(tmp_path: Path, group: Group) -> None:
    history = History(group, [make_key(1)])
    chain = [history.write(history.keys[0]) for _ in range(7)]
    async with opened(tmp_path / "log.db", group) as store:
        await store.receive(chain)
        author = bytes(history.keys[0].verify_key)
        assert await store.read_raw(author, 3, 2) == [chain[2].raw, chain[3].raw]
        assert await store.read_raw(author, 1) == [env.raw for env in chain]
        assert await store.read_raw(author, 8) == []
        assert await store.read_raw(bytes(32), 1) == []
        assert await store.get(bytes(32)) is None


def test_receive_result_starts_empty() -> None:
    result = ReceiveResult()
    assert (result.stored, result.duplicates, result.held, result.rejected, result.forks) == (
        [],
        0,
        0,
        [],
        [],
    )


def test_history_helper_builds_valid_chains() -> None:
    """The helper the suite relies on: every chain verifies, deps precede dependants."""
    history = build_history(Group.new("g"), 4, 40, seed=3)
    position = {env.hash: i for i, env in enumerate(history.events)}
    by_author: dict[bytes, list[Envelope]] = {}
    for i, env in enumerate(history.events):
        by_author.setdefault(env.author, []).append(env)
        assert all(position[dep] < i for dep in env.deps)
    for chain in by_author.values():
        events.verify_chain(chain, None)
    assert any(len(env.deps) >= 2 for env in history.events)


# -- opening an existing log -----------------------------------------------------------


async def test_a_log_of_another_group_is_refused_at_open(tmp_path: Path, group: Group) -> None:
    path = tmp_path / "log.db"
    async with opened(path, group):
        pass
    with pytest.raises(StorageError, match="belongs to another group"):
        await Store.open(path, Group.new("Another group"))


async def test_a_log_of_another_schema_version_is_refused_at_open(
    tmp_path: Path, group: Group
) -> None:
    path = tmp_path / "log.db"
    async with opened(path, group):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    with pytest.raises(StorageError, match="the log has schema 99"):
        await Store.open(path, group)


async def test_opening_a_log_does_not_wait_for_a_writer(tmp_path: Path, group: Group) -> None:
    """Every ``potluck`` command opens the log; beside a ``serve`` holding the write lock
    for a large sync, opening it and reading must not queue behind that writer."""
    path = tmp_path / "log.db"
    key = make_key(1)
    async with opened(path, group) as store:
        await store.append(key, [("member.joined", joined_body(group, key, "Ana"))])
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        async with opened(path, group) as store:
            assert await asyncio.wait_for(store.count(), 5) == 1
        writer.execute("ROLLBACK")
    finally:
        writer.close()


async def test_a_log_from_before_the_peers_table_gets_it_at_open(
    tmp_path: Path, group: Group
) -> None:
    """Logs of earlier versions had ``peers`` only once they had synced: they open as
    they are and gain the table, with no step by hand."""
    path = tmp_path / "log.db"
    async with opened(path, group):
        pass
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE peers")
    async with opened(path, group) as store:
        assert await store.known_peers() == []
        await store.remember_peer("example.org:7070", "manual")
        assert [r.address for r in await store.known_peers()] == ["example.org:7070"]


async def test_peers_are_remembered_recorded_and_marked_disconnected(
    tmp_path: Path, group: Group
) -> None:
    key = bytes(make_key(2).verify_key)
    async with opened(path := tmp_path / "log.db", group) as store:
        await store.remember_peer("z.example:1", "invite")
        await store.remember_peer("z.example:1", "manual")  # keeps how it was found
        await store.record_peer(
            "a.example:2", key, connected=True, behind=3, ahead=4, remote="10.0.0.2", now_ms=5
        )
        await store.record_peer("a.example:2", None, connected=False, error="gone")
        first, second = await store.known_peers()
        assert (first.address, first.key, first.found, first.dial) == (
            "a.example:2",
            key,
            "inbound",
            False,
        )
        assert (first.connected, first.last_seen, first.behind, first.ahead) == (False, 5, 3, 4)
        assert (first.last_error, first.remote) == ("gone", "10.0.0.2")
        assert (second.address, second.found, second.dial) == ("z.example:1", "invite", True)
        await store.record_peer("z.example:1", key, connected=True, now_ms=6)
        assert [r.connected for r in await store.known_peers()] == [False, True]
        await store.mark_peers_disconnected()
        assert [r.connected for r in await store.known_peers()] == [False, False]
    async with opened(path, group) as store:
        assert [r.last_seen for r in await store.known_peers()] == [5, 6]


@pytest.mark.asyncio
async def test_read_arrivals_gives_wanted_events_in_arrival_order_at_a_cost_of_the_slice(
    tmp_path: Path, group: Group
) -> None:
    """A cold sync reads the log in slices; each slice must cost what it returns, not
    what the log holds (a plan through the (author, seq) index sorted every event of
    the wanted authors for every slice)."""

    async def steps_for_a_slice(store: Store, wants: dict[bytes, int]) -> int:
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        await store.read(lambda db: db.set_progress_handler(count, 1))
        await store.read_arrivals(wants, 0, 10)
        await store.read(lambda db: db.set_progress_handler(None, 1))
        return steps[0]

    costs = []
    for authors, per_author in ((3, 30), (3, 300)):
        history = build_history(group, authors, per_author, seed=11)
        arrival = causal_order(history.events, random.Random(11))
        async with opened(tmp_path / f"log-{per_author}.db", group) as store:
            await deliver(store, arrival)
            stored = [env async for env in store.iter_events()]
            wants = {bytes(k.verify_key): 2 for k in history.keys[:2]}
            _, rows = await store.read_arrivals(wants, 0, 1_000_000)
            order = await store.read(
                lambda db: [
                    tuple(r) for r in db.execute("SELECT author, seq FROM events ORDER BY id")
                ]
            )
            assert [(a, s) for a, s, _ in rows] == [
                (a, s) for a, s in order if a in wants and s >= wants[a]
            ]
            assert {raw for _, _, raw in rows} == {
                env.raw for env in stored if env.author in wants and env.seq >= 2
            }
            costs.append(await steps_for_a_slice(store, wants))
    assert costs[1] < 2 * costs[0], costs
