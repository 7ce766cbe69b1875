"""Inventory: the count rule holds in every history, however the events arrive.

The rule (docs/events.md §stock): the standing count W is the last ``stock.counted`` in
canonical order; on-hand is W's number plus every delta W had not seen; ``recount``
while any delta or other count is concurrent with W. ``expected`` states it by brute
force over the whole event set, for every prefix (the lots depend on the order), so the
projection's incremental state, its re-fold and a rebuild are each checked against it.

Two properties:

- in memory, fast, many examples: authors write deltas and counts and learn random
  parts of each other's histories (vector clocks give the causality); the events are
  delivered in random causal order and batches through a small copy of the runner's
  apply-or-re-fold loop, with the state round-tripped through msgpack between batches.
  The state itself, not only the row, must equal a fold of the whole set: it is what
  later events build on.
- on real nodes (tests/eventgen.py): authors adjust, count and sync at random; any
  delivery order and duplication gives the rows, digest and rebuild of a node fed in
  canonical order, and the inventory rows are the brute-force rule's, with causality
  taken from the envelopes' ``prev`` and ``deps`` rather than from the store.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
from eventgen import DELTAS, Op, shuffled_delivery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_convergence import assert_same_projections, canonical_node, network

from eventlog import body as b
from eventlog.events import Envelope
from projections.fold import Event, Key, State
from projections.inventory import Inventory, _seen_prefix, entity_of

INVENTORY = Inventory()

# -- the rule, by brute force -----------------------------------------------------------


@dataclass(frozen=True)
class Stock:
    """One stock event as the brute-force rule sees it."""

    key: Key
    counted: bool
    value: int  # the delta, or the count
    expires: str | None
    past: frozenset[tuple[bytes, int]]  # (author, seq) of every event in its causal past

    def seen(self, other: Stock) -> bool:
        return (other.key[1], other.key[2]) in self.past


def expected(events: Sequence[Stock]) -> tuple[int, str | None, str]:
    """(on_hand, expires, flags) of an entity, straight from the rule."""
    ordered = sorted(events, key=lambda e: e.key)
    lots: list[tuple[str, int]] = []  # [expires, quantity], earliest first
    on_hand, recount = 0, False
    for i, event in enumerate(ordered):
        prefix = ordered[: i + 1]
        if not event.counted and event.value > 0 and event.expires is not None:
            lots = sorted([*lots, (event.expires, event.value)])
        elif not event.counted and event.value < 0:
            _take(lots, -event.value)
        counts = [e for e in prefix if e.counted]
        if not counts:
            on_hand, recount = sum(e.value for e in prefix), False
        else:
            w = counts[-1]
            unseen = [e for e in prefix if e is not w and not w.seen(e)]
            on_hand = w.value + sum(e.value for e in unseen if not e.counted)
            recount = any(e.counted or not e.seen(w) for e in unseen)
        _take(lots, sum(size for _, size in lots) - max(on_hand, 0))
    flags = [f for f, on in (("negative", on_hand < 0), ("recount", recount)) if on]
    return on_hand, lots[0][0] if lots else None, ",".join(flags)


def _take(lots: list[tuple[str, int]], amount: int) -> None:
    """First expiring first."""
    while amount > 0 and lots:
        expires, size = lots[0]
        if size <= amount:
            amount -= size
            lots.pop(0)
        else:
            lots[0], amount = (expires, size - amount), 0


# -- in memory: random knowledge, random causal delivery ---------------------------------

ENTITY = entity_of("rice", "pantry")
AUTHORS = [bytes([n]) * 32 for n in range(1, 5)]


class Clocks:
    """Causality from vector clocks: ``vc[(author, seq)]`` is what that event had seen."""

    def __init__(self) -> None:
        self.vc: dict[tuple[bytes, int], dict[bytes, int]] = {}

    def happened_before(self, earlier: Sequence[object], later: Sequence[object]) -> bool:
        _, e_author, e_seq = earlier
        _, l_author, l_seq = later
        assert isinstance(e_seq, int) and isinstance(l_seq, int)
        assert isinstance(e_author, bytes) and isinstance(l_author, bytes)
        if e_author == l_author:
            return e_seq < l_seq
        return self.vc[(l_author, l_seq)].get(e_author, 0) >= e_seq


# (kind, author, a, b): write a delta (a picks it, b an expiry) or a count of a, or learn
# what author a's event number b had seen, and that event (a sync of part of a log).
Step = tuple[str, int, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(("delta", "delta", "delta", "count", "learn", "learn")),
        st.integers(0, 3),
        st.integers(0, 30),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=60,
)


def write(n_authors: int, skews: Sequence[int], plan: Sequence[Step]) -> tuple[list[Event], Clocks]:
    """The events ``plan`` makes, each with an hlc above everything its author had seen."""
    clocks = Clocks()
    knows: list[dict[bytes, int]] = [{} for _ in range(n_authors)]
    top = [0] * n_authors  # the highest hlc each author had seen
    mine: list[list[Event]] = [[] for _ in range(n_authors)]
    hlc_of: dict[tuple[bytes, int], int] = {}
    written: list[Event] = []
    for tick, (kind, who, a, x) in enumerate(plan):
        i = who % n_authors
        if kind == "learn":
            other = a % n_authors
            if other == i or not mine[other]:
                continue
            event = mine[other][x % len(mine[other])]
            for author, seq in [
                *clocks.vc[(event.author, event.seq)].items(),
                (event.author, event.seq),
            ]:
                knows[i][author] = max(knows[i].get(author, 0), seq)
                top[i] = max(top[i], hlc_of[(author, seq)])
            continue
        author = AUTHORS[i]
        seq = len(mine[i]) + 2  # seq 1 is the author's member.joined
        hlc = max(1000 + 10 * tick + skews[i], top[i] + 1)
        body: b.BaseBody
        if kind == "delta":
            delta = DELTAS[a % len(DELTAS)]
            expires = f"2026-12-{1 + x % 5:02d}" if delta > 0 and x % 3 else None
            body = b.StockAdjusted(
                item="rice",
                location="pantry",
                delta=delta,
                reason="donation" if delta > 0 else "distribution",
                expires=expires,
            )
        else:
            body = b.StockCounted(item="rice", location="pantry", count=a)
        event = Event(bytes([i + 1, seq]) * 16, author, seq, hlc, body)
        clocks.vc[(author, seq)] = {k: v for k, v in knows[i].items() if k != author}
        hlc_of[(author, seq)] = hlc
        top[i] = hlc
        mine[i].append(event)
        written.append(event)
    return written, clocks


def stock_of(event: Event, clocks: Clocks) -> Stock:
    vc = clocks.vc[(event.author, event.seq)]
    past = {(a, s) for a, top in vc.items() for s in range(1, top + 1)}
    past |= {(event.author, s) for s in range(1, event.seq)}
    body = event.body
    if isinstance(body, b.StockCounted):
        return Stock(event.key, True, body.count, None, frozenset(past))
    assert isinstance(body, b.StockAdjusted)
    return Stock(event.key, False, body.delta, body.expires, frozenset(past))


def causal_order(written: Sequence[Event], clocks: Clocks, rng: random.Random) -> list[Event]:
    """A random order in which every event comes after its causal past (the store holds
    an event until then: decision 0004)."""
    waiting, done, order = list(written), set[tuple[bytes, int]](), []
    while waiting:
        ready = [
            e
            for e in waiting
            if (e.seq == 2 or (e.author, e.seq - 1) in done)
            and all(top < 2 or (a, top) in done for a, top in clocks.vc[(e.author, e.seq)].items())
        ]
        event = rng.choice(ready)
        waiting.remove(event)
        done.add((event.author, event.seq))
        order.append(event)
    return order


def roundtrip(state: State | None) -> State | None:
    """The state as the runner stores it between batches."""
    if state is None:
        return None
    loaded: State = msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)
    return loaded


def deliver(batches: Sequence[Sequence[Event]], clocks: Clocks) -> tuple[State | None, int]:
    """The runner's loop for one entity: apply what sorts after the last event folded,
    re-fold from every event held when an event is late or ``apply`` cannot decide.
    Returns the state and the number of re-folds."""
    held: dict[Key, Event] = {}
    state: State | None = None
    last: Key | None = None
    refolds = 0
    for batch in batches:
        new = sorted({e.key: e for e in batch if e.key not in held}.values(), key=lambda e: e.key)
        late = False
        for event in new:
            held[event.key] = event
            if late:
                continue
            if last is not None and event.key <= last:
                late = True
                continue
            applied = INVENTORY.apply(ENTITY, state, event, clocks)
            if applied is None:
                late = True
                continue
            state, last = applied, event.key
        if late:
            history = [held[k] for k in sorted(held)]
            state, last = INVENTORY.fold(ENTITY, history, clocks), history[-1].key
            refolds += 1
        state = roundtrip(state)
    return state, refolds


def row(state: State | None) -> tuple[object, ...] | None:
    if state is None:
        return None
    (only,) = INVENTORY.rows(ENTITY, state)["inventory"]
    return only[3:]


def chunks(events: Sequence[Event], rng: random.Random, dups: int) -> list[list[Event]]:
    delivery = list(events)
    for _ in range(dups):
        delivery.insert(rng.randint(0, len(delivery)), rng.choice(events))
    out = []
    while delivery:
        size = rng.randint(1, 6)
        out.append(delivery[:size])
        delivery = delivery[size:]
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 4),
    skews=st.lists(st.integers(-60, 60), min_size=4, max_size=4),
    plan=steps,
    rng=st.randoms(use_true_random=False),
    dups=st.integers(0, 5),
)
def test_in_any_causal_delivery_the_state_is_the_fold_of_the_set_and_follows_the_rule(
    n: int, skews: list[int], plan: list[Step], rng: random.Random, dups: int
) -> None:
    written, clocks = write(n, skews, plan)
    if not written:
        return
    canonical = sorted(written, key=lambda e: e.key)
    folded = roundtrip(INVENTORY.fold(ENTITY, canonical, clocks))
    rebuilt, _ = deliver([[e] for e in canonical], clocks)
    arrived, _ = deliver(chunks(causal_order(written, clocks, rng), rng, dups), clocks)
    assert rebuilt == folded, "applying in canonical order != fold"
    assert arrived == folded, "random delivery != fold"
    assert row(folded) == expected([stock_of(e, clocks) for e in written])
    assert folded is not None
    for table in ("since", "rivals"):  # small: at most one entry per author
        entries = folded[table]
        assert isinstance(entries, dict) and len(entries) <= n


def test_a_re_fold_finds_exactly_the_deltas_a_count_had_seen() -> None:
    """What a count had seen of an author is a prefix of that author's deltas; the re-fold
    finds its end by bisection, for any length and any end."""
    author, counter = AUTHORS[0], AUTHORS[1]
    for n in range(1, 9):
        deltas = [(10 * seq, seq, seq) for seq in range(2, n + 2)]
        for seen in range(n + 1):
            clocks = Clocks()
            clocks.vc[(counter, 7)] = {author: 1 + seen}
            assert _seen_prefix(author, deltas, [999, counter, 7], clocks) == seen


@settings(max_examples=150, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.booleans(), st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=60
    )
)
def test_one_person_adjusting_and_counting_in_turn_never_re_folds(
    plan: list[tuple[bool, int, int]],
) -> None:
    """The common path stays incremental and its state does not grow."""
    written, clocks = write(1, [0], [("count" if c else "delta", 0, a, x) for c, a, x in plan])
    state, refolds = deliver([[e] for e in written], clocks)
    assert refolds == 0
    assert state is not None and len(state["since"]) <= 1  # type: ignore[arg-type]
    assert state["rivals"] == {}
    assert row(state) == expected([stock_of(e, clocks) for e in written])


# -- on real nodes: eventgen authors adjusting, counting and syncing -----------------------

RICE = st.integers(0, 333).map(lambda i: 3 * i)  # eventgen: item = ITEMS[x % 3] = rice
stock_ops = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(("adjust", "adjust", "count", "burst")),
            st.integers(0, 3),
            RICE,
            st.integers(0, 999),
        ),
        st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3), st.integers(0, 999)),
    ),
    min_size=8,
    max_size=45,
)


def stocks_from_envelopes(union: Sequence[Envelope]) -> dict[str, list[Stock]]:
    """Per entity, the brute-force view of the stock events, with each event's causal
    past computed from ``prev`` and ``deps`` (not from the store's ``seen`` table)."""
    by_hash = {env.hash: env for env in union}
    past: dict[bytes, frozenset[tuple[bytes, int]]] = {}
    for env in union:  # canonical order: what an event names comes before it
        parents = [by_hash[h] for h in (*env.deps, *([env.prev] if env.prev else []))]
        past[env.hash] = frozenset().union(*(past[p.hash] | {(p.author, p.seq)} for p in parents))
    out: dict[str, list[Stock]] = {}
    for env in union:
        body = b.parse(env.type, env.body) if env.type.startswith("stock.") else None
        if isinstance(body, b.StockCounted):
            stock = Stock(env.key, True, body.count, None, past[env.hash])
        elif isinstance(body, b.StockAdjusted):
            stock = Stock(env.key, False, body.delta, body.expires, past[env.hash])
        else:
            continue
        out.setdefault(entity_of(body.item, body.location), []).append(stock)
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.integers(2, 4),
    skew=st.lists(st.integers(-200, 200), min_size=4, max_size=4),
    operations=stock_ops,
    rng=st.randoms(use_true_random=False),
)
def test_nodes_show_the_count_rule_in_any_delivery_order(
    n: int, skew: list[int], operations: list[Op], rng: random.Random
) -> None:
    async def check() -> None:
        async with network(n, skew, operations) as net:
            for peer in net.peers:  # each partial set, folded as it arrived
                digest = await peer.node.digest()
                assert await peer.node.rebuild() == digest, f"{peer.name}: partial set"
            union = net.union()
            reference = await canonical_node(net, union)
            shuffled = await net.fresh()
            for chunk in shuffled_delivery(union, rng):
                await shuffled.receive(chunk)
            assert await shuffled.store.pending_count() == 0
            await assert_same_projections(shuffled, reference, "shuffled delivery")
            digest = await reference.digest()
            assert await shuffled.rebuild() == digest, "incremental != rebuild (shuffled)"
            assert await reference.rebuild() == digest, "incremental != rebuild (canonical)"
            await net.sync_all()
            for peer in net.peers:
                await assert_same_projections(peer.node, reference, peer.name)

            rows = {
                r["entity"]: (r["on_hand"], r["expires"], r["flags"])
                for r in await reference.rows("inventory")
            }
            want = {
                entity: expected(stocks) for entity, stocks in stocks_from_envelopes(union).items()
            }
            assert rows == want

    asyncio.run(check())
