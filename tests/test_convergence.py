"""Projections are a function of the event set (docs/architecture.md §projections).

Authors on their own nodes do random mutual-aid work (tests/eventgen.py) and sync at
random points, so the event set they leave has work done apart, deps and late
arrivals. Whatever order, duplication and batching the events then arrive in, every
node that holds the same events must show the same rows and digest, and the rows kept
up event by event must equal a rebuild from the log.

Hypothesis and asyncio: each property is a plain function that runs one coroutine with
``asyncio.run``; the state machine keeps its own event loop. Every example gets a fresh
temporary directory (in /dev/shm when there is one, to spare the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar
from unittest import mock

from eventgen import KINDS, Network, Node, Op, Peer, shuffled_delivery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventlog import store as store_module
from eventlog.events import Envelope
from projections.projector import fold_chunk
from projections.runner import Runner
from projections.runner import engine as runner_module

T = TypeVar("T")

TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

ops = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 3), st.integers(0, 999), st.integers(0, 999)),
    min_size=15,
    max_size=60,
)
skews = st.lists(st.integers(-200, 200), min_size=4, max_size=4)
authors = st.integers(2, 4)
buckets = st.sampled_from([1, 3, runner_module.INDEX_BUCKET])
"""Arrivals per bucket of ``proj_index``: small ones spread an entity's events over
many buckets, so re-folds after late events must find them in all of them."""

PROPERTY = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


async def assert_same_projections(node: Node, reference: Node, what: str) -> None:
    """Table by table first, so a failure shows the rows that differ."""
    mine, theirs = await node.dump(), await reference.dump()
    for table in theirs:
        assert mine[table] == theirs[table], f"{what}: table {table} differs"
    assert await node.digest() == await reference.digest(), what


async def canonical_node(net: Network, union: Sequence[Envelope]) -> Node:
    """A fresh node fed the events one by one in canonical order: nothing is ever held."""
    node = await net.fresh()
    for env in union:
        assert await node.receive([env]) == [env]
    assert await node.store.pending_count() == 0
    return node


@asynccontextmanager
async def network(n: int, skew: list[int], operations: list[Op]) -> AsyncIterator[Network]:
    """Authors who did ``operations``, in a fresh directory; every node closed after."""
    with tempfile.TemporaryDirectory(dir=TMP_ROOT) as tmp:
        net = Network(Path(tmp), n, skews=skew)
        try:
            await net.start()
            await net.run_all(operations)
            yield net
        finally:
            await net.close()


# -- property A: order, duplicates and batching do not matter -------------------------


@PROPERTY
@given(n=authors, skew=skews, operations=ops, rng=st.randoms(use_true_random=False), bucket=buckets)
def test_any_order_and_duplication_of_the_event_set_gives_the_canonical_projections(
    n: int, skew: list[int], operations: list[Op], rng: random.Random, bucket: int
) -> None:
    @mock.patch.object(runner_module, "INDEX_BUCKET", bucket)
    async def check() -> None:
        async with network(n, skew, operations) as net:
            union = net.union()
            reference = await canonical_node(net, union)
            shuffled = await net.fresh()
            for chunk in shuffled_delivery(union, rng):
                await shuffled.receive(chunk)
            assert await shuffled.store.pending_count() == 0, "events left held"
            assert await shuffled.store.count() == len(union)
            await assert_same_projections(shuffled, reference, "shuffled delivery")
            digest = await reference.digest()
            assert await shuffled.rebuild() == digest, "incremental != rebuild (shuffled)"
            assert await reference.rebuild() == digest, "incremental != rebuild (canonical)"
            await assert_same_projections(shuffled, reference, "after rebuild")

    asyncio.run(check())


# -- property A': folding behind the log ------------------------------------------------


@PROPERTY
@given(n=authors, skew=skews, operations=ops, rng=st.randoms(use_true_random=False), bucket=buckets)
def test_receives_left_to_a_projector_fold_to_the_canonical_projections(
    n: int, skew: list[int], operations: list[Op], rng: random.Random, bucket: int
) -> None:
    """Receives that store without folding (``Store.fold_behind``), folds of the backlog
    of any size in between by a second runner on its own connection (the projector's
    transactions: read ahead, states invalidated by the other's commits), and writes
    that fold in place interleaved: the folded events stay a prefix of the log, and once
    caught up the rows are the canonical ones."""

    @mock.patch.object(runner_module, "INDEX_BUCKET", bucket)
    async def check() -> None:
        async with network(n, skew, operations) as net:
            union = net.union()
            reference = await canonical_node(net, union)
            node = await net.fresh()
            runner, store = node.runner, node.store
            await store.write(runner.rebuild)  # an empty log: marks the versions current
            path = await store.read(lambda db: db.execute("PRAGMA database_list").fetchone()[2])
            other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            projector = Runner()
            assert projector.ready(other)
            with contextlib.closing(other), mock.patch.object(store_module, "BULK_RECEIVE", 1):
                for chunk in shuffled_delivery(union, rng):
                    behind_before = await store.read(runner.behind)
                    deferred = rng.random() < 0.6
                    store.fold_behind((lambda: True) if deferred else None)
                    stored = await node.receive(chunk)
                    behind = await store.read(runner.behind)
                    if deferred:
                        assert behind == behind_before + len(stored)
                    elif stored:
                        assert behind == 0, "a fold in place leaves a backlog"
                    if rng.random() < 0.3:  # a transaction of the projector process,
                        limit = rng.randint(1, 5)  # on a connection and runner of its own
                        folded = await asyncio.to_thread(fold_chunk, other, projector, limit)
                        assert folded == min(limit, behind)
                    elif rng.random() < 0.2:  # or of this process
                        folded = await store.write(functools.partial(runner.catch_up, limit=2))
                        assert folded == min(2, behind)
            await store.write(runner.catch_up)
            assert await store.read(runner.behind) == 0
            await assert_same_projections(node, reference, "folded behind the log")

    asyncio.run(check())


# -- property B: nodes that exchanged everything agree ----------------------------------


@PROPERTY
@given(n=authors, skew=skews, operations=ops)
def test_nodes_that_exchanged_everything_show_the_same_projections(
    n: int, skew: list[int], operations: list[Op]
) -> None:
    async def check() -> None:
        async with network(n, skew, operations) as net:
            # Before the exchange each node has its own partial set, folded as it
            # arrived (late events included): still equal to its rebuild.
            for peer in net.peers:
                digest = await peer.node.digest()
                assert await peer.node.rebuild() == digest, f"{peer.name}: partial set"
            await net.sync_all()
            union = net.union()
            reference = await canonical_node(net, union)
            for peer in net.peers:
                assert await peer.node.store.pending_count() == 0
                assert await peer.node.store.count() == len(union)
                await assert_same_projections(peer.node, reference, peer.name)
                assert await peer.node.rebuild() == await reference.digest()

    asyncio.run(check())


# -- a state machine of peers that work, sync and split ---------------------------------

WORK = tuple(kind for kind in KINDS if kind != "sync")
N_PEERS = 3


class PeersThatSyncAndPartition(RuleBasedStateMachine):
    """Three nodes; rules append, sync two of them, cut or heal links, and rebuild.

    Teardown: after the network heals and syncs fully, all vectors, logs and
    projections are equal.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(dir=TMP_ROOT)
        self.failed = False
        self.cut: set[frozenset[int]] = set()
        self.net = Network(Path(self.tmp.name), N_PEERS, skews=(0, 40, -40))
        try:
            self.run(self.net.start())
        except BaseException:
            self.teardown()
            raise

    def run(self, coro: Awaitable[T]) -> T:
        try:
            return self.loop.run_until_complete(coro)
        except BaseException:
            self.failed = True
            raise

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.failed = True
            raise AssertionError(what)

    def peer(self, i: int) -> Peer:
        return self.net.peers[i]

    @rule(
        kind=st.sampled_from(WORK),
        actor=st.integers(0, N_PEERS - 1),
        x=st.integers(0, 999),
        y=st.integers(0, 999),
    )
    def work(self, kind: str, actor: int, x: int, y: int) -> None:
        self.run(self.net.run((kind, actor, x, y)))

    @rule(a=st.integers(0, N_PEERS - 1), b=st.integers(0, N_PEERS - 1), both_ways=st.booleans())
    def sync(self, a: int, b: int, both_ways: bool) -> None:
        if a == b or frozenset((a, b)) in self.cut:
            return
        self.run(self.net.sync(self.peer(a), self.peer(b)))
        if both_ways:
            self.run(self.net.sync(self.peer(b), self.peer(a)))

    @rule(a=st.integers(0, N_PEERS - 1), b=st.integers(0, N_PEERS - 1))
    def partition(self, a: int, b: int) -> None:
        if a != b:
            self.cut.add(frozenset((a, b)))

    @precondition(lambda self: bool(self.cut))
    @rule()
    def heal(self) -> None:
        self.cut.clear()

    @rule(i=st.integers(0, N_PEERS - 1))
    def rebuild(self, i: int) -> None:
        node = self.peer(i).node
        digest = self.run(node.digest())
        self.expect(
            self.run(node.rebuild()) == digest,
            f"{self.peer(i).name}: incremental rows differ from a rebuild",
        )

    @invariant()
    def each_node_holds_its_own_events(self) -> None:
        vectors = [self.run(peer.node.vector()) for peer in self.net.peers]
        for peer, vector in zip(self.net.peers, vectors, strict=True):
            own = [e for e in peer.seen.values() if e.author == peer.author]
            self.expect(vector[peer.author][0] == len(own), f"{peer.name} lost own events")

    def converge(self) -> None:
        self.cut.clear()
        self.run(self.net.sync_all())
        vectors = [self.run(peer.node.vector()) for peer in self.net.peers]
        assert all(v == vectors[0] for v in vectors), "vectors differ after full sync"
        digests = [self.run(peer.node.digest()) for peer in self.net.peers]
        assert len(set(digests)) == 1, "digests differ after full sync"
        first = self.peer(0).node
        for peer in self.net.peers[1:]:
            self.run(assert_same_projections(peer.node, first, peer.name))
        for peer in self.net.peers:
            assert self.run(peer.node.rebuild()) == digests[0], f"{peer.name} rebuild"
        reference = self.run(canonical_node(self.net, self.net.union()))
        self.run(assert_same_projections(first, reference, "canonical node"))

    def teardown(self) -> None:
        try:
            if not self.failed:
                self.converge()
        finally:
            self.loop.run_until_complete(self.net.close())
            self.loop.close()
            self.tmp.cleanup()


PeersThatSyncAndPartition.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_peers_that_sync_and_partition_converge = PeersThatSyncAndPartition.TestCase
