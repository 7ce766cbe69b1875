"""Nodes that work apart and sync over real websockets converge, whatever the partitions.

A hypothesis state machine of 3 to 5 nodes (store + projections, tests/eventgen.py),
each listening on its own loopback port. Rules make a node do random mutual-aid work
(offers, claims, stock, shifts...), sync two nodes through a real one-shot session
(``connect_session`` + ``Session.run``, the path of ``potluck sync``), or cut and
restore links; a cut link (a pair in the partition) does not sync. After every sync
the two nodes hold the same events. At the end every link is healed, the nodes sync
around the ring twice, and then all hold the same vector, nothing held back, and the
same projection digest, equal to a rebuild from the log.

The machine owns one event loop; each rule runs its coroutine to completion on it,
bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from eventgen import KINDS, Network, Peer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from websockets.asyncio.server import Server

from eventlog.events import Envelope
from sync.protocol import State
from sync.transport import Session, connect_session, listen

T = TypeVar("T")

TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
LOCAL = "127.0.0.1"
MAX_NODES = 5
WORK = tuple(kind for kind in KINDS if kind != "sync")  # eventgen's in-memory sync is not used
STEP_SECONDS = 30.0  # no rule may take longer than this
index = st.integers(0, MAX_NODES - 1)


def remember(peer: Peer) -> Callable[[Session, Sequence[Envelope]], None]:
    """An ``on_stored`` callback: what arrives becomes known to ``peer``'s actions."""

    def stored(session: Session, envelopes: Sequence[Envelope]) -> None:
        for env in envelopes:
            peer.seen[env.hash] = env

    return stored


class NodesSyncingOverWebsockets(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(dir=TMP_ROOT)
        self.net: Network | None = None
        self.servers: list[Server] = []
        self.ports: list[int] = []
        self.cut: set[frozenset[int]] = set()
        self.failed = False
        self.syncs = 0

    def run(self, coro: Awaitable[T]) -> T:
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, STEP_SECONDS))
        except BaseException:
            self.failed = True
            raise

    @property
    def n(self) -> int:
        assert self.net is not None
        return self.net.n

    def peer(self, i: int) -> Peer:
        assert self.net is not None
        return self.net.peers[i % self.n]

    # -- setup ---------------------------------------------------------------------------

    @initialize(
        n=st.integers(3, MAX_NODES),
        skews=st.lists(st.integers(-200, 200), min_size=MAX_NODES, max_size=MAX_NODES),
    )
    def start(self, n: int, skews: list[int]) -> None:
        self.net = self.run(Network(Path(self.tmp.name), n, skews=skews[:n]).start())
        for peer in self.net.peers:
            self.run(self._listen(peer))

    async def _listen(self, peer: Peer) -> None:
        async def on_session(session: Session) -> None:
            await session.run()

        server = await listen(
            LOCAL, 0, peer.key, peer.node.store, on_session, on_stored=remember(peer)
        )
        self.servers.append(server)
        self.ports.append(server.sockets[0].getsockname()[1])

    # -- rules ---------------------------------------------------------------------------

    @rule(
        ops=st.lists(
            st.tuples(st.sampled_from(WORK), index, st.integers(0, 999), st.integers(0, 999)),
            min_size=1,
            max_size=12,
        )
    )
    def work(self, ops: list[tuple[str, int, int, int]]) -> None:
        """A few members each do something on their own node (offers, claims, stock,
        shifts...), with what their node knows."""
        assert self.net is not None
        self.run(self.net.run_all((kind, actor % self.n, x, y) for kind, actor, x, y in ops))

    @rule(a=index, b=index)
    def sync(self, a: int, b: int) -> None:
        a, b = a % self.n, b % self.n
        if a == b or frozenset((a, b)) in self.cut:
            return  # the same node, or a cut link: nothing can pass
        self.run(self._sync(a, b))

    async def _sync(self, a: int, b: int, *, alone: bool = True) -> None:
        """One real one-shot session from node ``a`` to node ``b``'s listener. When it
        ran ``alone``, the two nodes then hold the same events."""
        initiator, responder = self.peer(a), self.peer(b)
        session = await connect_session(
            f"{LOCAL}:{self.ports[b]}",
            initiator.key,
            initiator.node.store,
            one_shot=True,
            on_stored=remember(initiator),
        )
        await session.run()
        self.syncs += 1
        assert session.protocol.state is State.CLOSED, f"sync {a} -> {b}: {session.error}"
        if alone:
            assert await initiator.node.vector() == await responder.node.vector(), (a, b)
            assert await initiator.node.store.pending_count() == 0
            assert await responder.node.store.pending_count() == 0

    @rule(pairs=st.lists(st.tuples(index, index), min_size=2, max_size=4))
    def sync_at_once(self, pairs: list[tuple[int, int]]) -> None:
        """Several sessions at the same time: a node may be dialling one peer while
        another dials it."""
        links = [(a % self.n, b % self.n) for a, b in pairs]
        links = [(a, b) for a, b in links if a != b and frozenset((a, b)) not in self.cut]
        self.run(self._sync_all_at_once(links))

    async def _sync_all_at_once(self, links: list[tuple[int, int]]) -> None:
        await asyncio.gather(*(self._sync(a, b, alone=False) for a, b in links))

    @rule(a=index, b=index)
    def cut_link(self, a: int, b: int) -> None:
        a, b = a % self.n, b % self.n
        if a != b:
            self.cut.add(frozenset((a, b)))

    @precondition(lambda self: bool(self.cut))
    @rule(which=st.integers(0, 99))
    def restore_link(self, which: int) -> None:
        links = sorted(tuple(sorted(link)) for link in self.cut)
        self.cut.discard(frozenset(links[which % len(links)]))

    # -- the end -------------------------------------------------------------------------

    def converge(self) -> None:
        assert self.net is not None
        self.cut.clear()
        for _ in range(2):  # twice around the ring: every node then holds every event
            for i in range(self.n):
                self.run(self._sync(i, (i + 1) % self.n))
        nodes = [peer.node for peer in self.net.peers]
        vectors = [self.run(node.vector()) for node in nodes]
        assert all(v == vectors[0] for v in vectors), "vectors differ after healing"
        assert len(vectors[0]) == self.n  # every member's events reached everyone
        assert all(self.run(node.store.pending_count()) == 0 for node in nodes)
        counts = {self.run(node.store.count()) for node in nodes}
        assert len(counts) == 1, f"event counts differ: {counts}"
        digests = [self.run(node.digest()) for node in nodes]
        assert len(set(digests)) == 1, "projection digests differ after healing"
        assert self.run(nodes[0].rebuild()) == digests[0], "incremental != rebuild"

    def teardown(self) -> None:
        try:
            if self.net is not None and not self.failed:
                self.converge()
        finally:
            for server in self.servers:
                server.close()
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(asyncio.wait_for(server.wait_closed(), 10))
            if self.net is not None:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(asyncio.wait_for(self.net.close(), 10))
            self.loop.close()
            self.tmp.cleanup()


NodesSyncingOverWebsockets.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_nodes_syncing_over_websockets_converge_after_partitions = NodesSyncingOverWebsockets.TestCase
