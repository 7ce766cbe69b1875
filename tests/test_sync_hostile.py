"""A peer holding the group secret that floods, withholds credit, never finishes its
handshake or opens too many connections: throttled, then cut off with its code, while
an honest peer keeps syncing (docs/protocol.md §limits, sync/limits.py).

Ana's node runs a ``PeerManager`` (the machinery of ``Node.serve``) on a free loopback
port with limits shortened for the test (a rate of a few hundred per second, a grace of
a second). Attackers are ``RawPeer``s (tests/synchelp.py): a ``SyncProtocol`` driven
by hand over a plain websockets client, so after a real handshake they can write
anything. Honest peers are nodes running ``Node.serve`` with the default limits.
Every loop is bounded in count and in time; timings are printed, not asserted tightly.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import msgpack
import pytest
from helpers import until
from synchelp import (
    LOCAL,
    Author,
    RawPeer,
    Serving,
    append_stock,
    close_all,
    digest,
    events_message,
    has_seq,
    member_core,
    new_nodes,
    seq_of,
    stop_all,
    within,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from eventlog import body as b
from eventlog.events import MAX_EVENT_BYTES
from eventlog.identity import Group
from node.app import Node
from sync.errors import RemoteError
from sync.limits import (
    CLOSE_TRY_AGAIN_LATER,
    CREDIT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    RATE_LIMIT,
    TOO_MANY_CONNECTIONS,
    Limits,
    Rate,
)
from sync.peers import PeerManager
from sync.protocol import DEFAULT_WINDOW, State
from sync.transport import Session

FLOOD_SECONDS = 10.0  # no flood in this file runs longer than this
FRAMES = Rate(300, 600)  # frames/s and burst for the flood tests
EVENTS = Rate(400, 800)


@dataclass
class Hub:
    """Ana's node serving with ``limits``; ``lines`` are its status lines."""

    node: Node
    limits: Limits
    lines: list[str] = field(default_factory=list)
    port: int = 0
    manager: PeerManager | None = None

    @property
    def address(self) -> str:
        return f"{LOCAL}:{self.port}"

    async def start(self) -> Hub:
        self.manager = PeerManager(
            self.node.store, self.node.key, say=self.lines.append, limits=self.limits
        )
        port = await within(self.manager.start(LOCAL, 0))
        assert port is not None
        self.port = port
        return self

    async def stop(self) -> None:
        if self.manager is not None:
            await within(self.manager.stop(), 20)
            self.manager = None

    def session_of(self, key: bytes) -> Session:
        assert self.manager is not None
        [session] = [s for s in self.manager.sessions if s.peer_key == key]
        return session

    async def raw_peer(
        self, *, window: int | None = None, handshake: bool = True, source: str = LOCAL
    ) -> RawPeer:
        """A hand-driven peer with the group secret (and a fresh device key)."""
        group = self.node.group
        ws = await within(
            connect(
                f"ws://{self.address}/potluck",
                compression=None,
                max_size=None,
                open_timeout=5,
                close_timeout=2,
                local_addr=(source, 0),
            )
        )
        peer = RawPeer(
            ws,
            member_core(group.secret, group.id, window=window or DEFAULT_WINDOW),
        )
        if handshake:
            await peer.handshake()
        return peer

    def said(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@contextlib.asynccontextmanager
async def hub(tmp_path: Path, group: Group, limits: Limits) -> AsyncIterator[Hub]:
    [ana] = await new_nodes(tmp_path, group, "Ana")
    running = Hub(ana, limits)
    try:
        yield await running.start()
    finally:
        await running.stop()
        await close_all([ana])


def key_of(peer: RawPeer) -> bytes:
    return bytes(peer.protocol._device_key.verify_key)


async def flood(peer: RawPeer, *, seconds: float = FLOOD_SECONDS) -> tuple[int, float]:
    """Send tiny valid frames (an empty ``have``) as fast as the socket takes them,
    until the node closes or ``seconds`` pass: (frames sent, seconds). The flooder
    shares the node's event loop here, so it yields every 10 frames as a process of
    its own would be scheduled; it still writes thousands of frames a second."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    sent = 0
    for _ in range(2_000_000):
        if loop.time() - began > seconds:
            break
        try:
            await peer.ws.send(peer.message({"t": "have", "vector": [], "end": False}))
        except ConnectionClosed:
            break
        sent += 1
        if sent % 10 == 0:
            await asyncio.sleep(0)
    return sent, loop.time() - began


async def honest_catch_up(
    tmp_path: Path, group: Group, ana: Hub, name: str, own: int
) -> tuple[float, Node, Serving]:
    """A fresh honest node that writes ``own`` events and dials Ana: seconds until both
    hold each other's everything (same vectors, same projections). Both nodes run in
    this process: its CPU seconds meanwhile are printed beside the wall time."""
    [bo] = await new_nodes(tmp_path, group, name)
    if own:
        await append_stock(bo, own)
    want = await ana.node.store.vector()
    began, cpu = time.monotonic(), time.process_time()
    serving = await Serving(bo, listen=None, peers=[ana.address]).start()

    async def converged() -> bool:
        ours = await bo.store.vector()
        return all(
            ours.get(a, (0, b""))[0] >= seq for a, (seq, _) in want.items()
        ) and await has_seq(ana.node, bo.author, own + 1)

    await until(converged, what=f"{name} and Ana converge", timeout=30)
    took = time.monotonic() - began
    print(
        f"\n{name}: {took:.2f} s, {time.process_time() - cpu:.2f} CPU s in this process, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    await until(lambda: digests_equal(ana.node, bo), what="same projections", timeout=10)
    return took, bo, serving


async def digests_equal(one: Node, other: Node) -> bool:
    return await digest(one) == await digest(other)


def offer(title: str) -> dict[str, object]:
    return b.OfferPosted(title=title).to_body()


# -- (a) frames ------------------------------------------------------------------------


async def test_a_peer_flooding_frames_is_throttled_then_cut_with_rate_limit(
    tmp_path: Path, group: Group
) -> None:
    limits = Limits(frames=FRAMES, grace=1.0)
    async with hub(tmp_path, group, limits) as ana:
        peer = await ana.raw_peer()
        session = ana.session_of(key_of(peer))
        try:
            sent, seconds = await flood(peer)
            code, _close = await peer.outcome()
        finally:
            await peer.close()
        stats = session.guard.rates.stats
        print(
            f"\nframe flood: the peer wrote {sent} frames in {seconds:.2f} s "
            f"({sent / seconds:.0f}/s, most of them into socket buffers); the node read "
            f"{stats.frames} frames ({stats.throttled} throttled stretch, {stats.pauses} "
            f"pauses, {stats.paused:.2f} s paused) and cut it after {stats.over:.2f} s "
            f"over {FRAMES.per_second:.0f}/s: {session.error}"
        )
        assert code == RATE_LIMIT, (code, peer.protocol.error, session.error)
        assert session.error is not None and session.error.startswith(
            "rate-limit: over 300 frames/s"
        )
        assert stats.throttled >= 1 and stats.pauses >= 1 and stats.paused > 0.5
        assert seconds < FLOOD_SECONDS, "the node never cut the flood"
        # read at the limit: the burst, then 300/s (and a frame's debt)
        # (the bucket fills from the session's start, a little before the flood)
        assert stats.frames <= FRAMES.burst + FRAMES.per_second * (seconds + 0.2) + 2
        await ana.node.store.count()  # the node is alive
        await until(lambda: _said(ana, "cut off"), what="a log line says why")
        [line] = ana.said("cut off")
        assert "rate-limit" in line and key_of(peer).hex()[:8] in line


async def _free(ana: Hub) -> bool:
    assert ana.manager is not None
    return ana.manager.connections.count == 0 and ana.manager.pending.count == 0


async def _said(ana: Hub, text: str) -> bool:
    return bool(ana.said(text))


async def _logged_twice(ana: Hub, text: str) -> bool:
    return len(ana.said(text)) >= 2


# -- (b) events ------------------------------------------------------------------------


async def test_a_peer_flooding_events_is_throttled_then_cut_with_rate_limit(
    tmp_path: Path, group: Group
) -> None:
    """Mal writes a valid chain of 4,000 events (within the credit window) and sends
    it in frames of 100 as fast as he can; the node takes 400 events/s after a burst
    of 800 and cuts him after a second over the limit."""
    limits = Limits(events=EVENTS, grace=1.0)
    async with hub(tmp_path, group, limits) as ana:
        mal = Author(group)
        chain = [mal.joined()] + [
            mal.write("offer.posted", offer(f"Soup {i}")) for i in range(3_999)
        ]
        assert sum(len(e.raw) for e in chain) < 4 << 20  # no credit needed
        peer = await ana.raw_peer()
        session = ana.session_of(key_of(peer))
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        try:
            for i in range(0, len(chain), 100):
                try:
                    await within(
                        peer.send(
                            peer.message(
                                events_message(mal.author, [e.raw for e in chain[i : i + 100]])
                            )
                        )
                    )
                except ConnectionClosed:
                    break
                sent += 100
            code, _close = await peer.outcome()
        finally:
            await peer.close()
        took = loop.time() - began
        stored = await seq_of(ana.node, mal.author)
        stats = session.guard.rates.stats
        print(
            f"\nevents flood: {sent} events written in {took:.2f} s; the node read "
            f"{stats.events}, stored {stored}, paused {stats.paused:.2f} s, cut after "
            f"{stats.over:.2f} s over {EVENTS.per_second:.0f}/s: {session.error}"
        )
        assert code == RATE_LIMIT, (code, peer.protocol.error, session.error)
        assert session.error is not None and "events/s" in session.error
        assert stats.throttled >= 1 and stats.paused > 0.5
        assert EVENTS.burst <= stored < len(chain)  # what it read was valid: stored
        assert stats.events <= EVENTS.burst + EVENTS.per_second * took + 100


# -- memory: large frames --------------------------------------------------------------


def have_flood(
    port: int, secret: bytes, group_id: bytes, seconds: float, out: Queue[tuple[int, str | None]]
) -> None:
    """In a process of its own: send ``have`` frames of 8,192 entries (573 KB) as fast
    as the socket takes them; report (frames sent, the node's error code)."""

    async def run() -> tuple[int, str | None]:
        ws = await within(
            connect(
                f"ws://{LOCAL}:{port}/potluck",
                compression=None,
                max_size=None,
                open_timeout=5,
                close_timeout=2,
            )
        )
        peer = RawPeer(
            ws,
            member_core(secret, group_id),
        )
        await peer.handshake()
        vector = [[os.urandom(32), 1, os.urandom(32)] for _ in range(8192)]
        plain = msgpack.packb({"t": "have", "vector": vector, "end": False}, use_bin_type=True)
        loop = asyncio.get_running_loop()
        began, sent = loop.time(), 0
        while loop.time() - began < seconds:
            try:
                await within(peer.send(peer.seal(plain)), seconds)
            except (ConnectionClosed, TimeoutError):
                break
            sent += 1
        code, _close = await peer.outcome()
        await peer.close()
        return sent, code

    out.put(asyncio.run(run()))


async def test_a_flood_of_the_largest_have_frames_is_cut_and_memory_stays_bounded(
    tmp_path: Path, group: Group
) -> None:
    """Have frames are not bounded by credit: they are held to the non-event bytes
    rate (here 1 MiB/s, burst 4 MiB), and while the peer is over it websockets reads
    one frame at a time, so the rest waits in TCP, not in the node's memory. (What a
    session may hold of them is bounded too, ``have-limit``: tests/test_sync_budgets.py;
    lifted here, to see the rate alone.)"""
    limits = Limits(
        other_bytes=Rate(1 << 20, 4 << 20), grace=1.0, have_entries=1 << 30, have_bytes=1 << 40
    )
    async with hub(tmp_path, group, limits) as ana:
        context = multiprocessing.get_context("spawn")
        out: Queue[tuple[int, str | None]] = context.Queue()
        attacker = context.Process(
            target=have_flood,
            args=(ana.port, group.secret, group.id, FLOOD_SECONDS, out),
            daemon=True,
        )
        tracemalloc.start()
        try:
            attacker.start()
            sent, code = await asyncio.to_thread(out.get, True, 30)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            attacker.join(10)
        print(
            f"\nhave flood: {sent} frames of 573 KB written before the cut ({code}); "
            f"peak traced memory in the node's process {peak / 2**20:.1f} MiB; "
            f"{ana.said('cut off')}"
        )
        assert code == RATE_LIMIT
        # The node logs the cut once its side of the session ends, which can be after
        # the attacker has read the close frame.
        await until(lambda: _said(ana, "cut off"), what="a log line says why")
        assert "non-event bytes/s" in ana.said("cut off")[0]
        assert peak < 32 << 20  # MAX_QUEUE (256) such frames would be 140 MiB


# -- (c) connections -------------------------------------------------------------------


async def open_ws(port: int, source: str = LOCAL) -> ClientConnection:
    return await within(
        connect(
            f"ws://{LOCAL}:{port}/potluck",
            compression=None,
            open_timeout=5,
            close_timeout=1,
            local_addr=(source, 0),
        )
    )


async def admitted(ws: ClientConnection) -> bool:
    """True when the node says hello; False when it closed the connection."""
    try:
        frame = await within(ws.recv(), 5)
    except ConnectionClosed:
        return False
    return isinstance(frame, bytes)


async def test_too_many_connections_from_one_address_or_in_total_are_refused(
    tmp_path: Path, group: Group
) -> None:
    """Members (handshake done) over their budget are refused with the reason in an
    error frame; connections still in their handshake over theirs, per address, are
    refused at accept (close 1013 and the reason). One log line per address."""
    limits = Limits(per_address=2, inbound=3, pending_per_address=2, handshake_timeout=30.0)
    async with hub(tmp_path, group, limits) as ana:
        members: list[RawPeer] = []
        silent: list[ClientConnection] = []

        async def member(source: str = LOCAL) -> tuple[RawPeer, str | None]:
            """A member's handshake from ``source``: the node's error code if refused."""
            peer = await ana.raw_peer(handshake=False, source=source)
            await peer.flush()
            for _ in range(10):  # hello, message 2, then credit and vector, or an error
                if peer.protocol.peer_vector_complete or await peer.read() is None:
                    break
                await peer.flush()
            error = peer.protocol.error
            return peer, error.code if isinstance(error, RemoteError) else None

        try:
            for _ in range(2):
                peer, code = await member()
                members.append(peer)
                assert code is None
            extra, code = await member()
            members.append(extra)
            assert code == TOO_MANY_CONNECTIONS
            error = extra.protocol.error
            assert error is not None and "2 sessions open from 127.0.0.1 (limit 2)" in error.reason
            # another address is still let in, up to the total
            peer, code = await member("127.0.0.2")
            members.append(peer)
            assert code is None
            over, code = await member("127.0.0.3")
            members.append(over)
            assert code == TOO_MANY_CONNECTIONS
            assert over.protocol.error is not None
            assert "3 inbound sessions open (limit 3)" in over.protocol.error.reason
            # silent connections: two from one address are let in, the third refused
            for _ in range(2):
                silent.append(await open_ws(ana.port, "127.0.0.4"))
                assert await admitted(silent[-1])
            for _ in range(20):  # all refused, one log line
                ws = await open_ws(ana.port, "127.0.0.4")
                assert not await admitted(ws)
                assert ws.close_code == CLOSE_TRY_AGAIN_LATER
                reason = ws.close_reason or ""
                assert reason.startswith(TOO_MANY_CONNECTIONS)
                assert "2 connections from 127.0.0.4 in their handshake (limit 2)" in reason
            assert len(ana.said("refused a connection from 127.0.0.4")) == 1
            assert len(ana.said("refused a connection from 127.0.0.1")) == 1
            assert ana.said("refused a connection from 127.0.0.3")
            # a slot comes back when a session ends
            await members.pop(0).close()

            async def a_slot() -> bool:
                assert ana.manager is not None
                return ana.manager.connections.count < 3

            await until(a_slot, what="the closed session is released")
            peer, code = await member()
            members.append(peer)
            assert code is None
        finally:
            for peer in members:
                await peer.close()
            for ws in silent:
                await ws.close()
        print(f"\nconnections: {ana.lines}")


async def test_a_connection_that_never_finishes_its_handshake_is_cut_and_its_slot_freed(
    tmp_path: Path, group: Group
) -> None:
    limits = Limits(per_address=1, pending_per_address=1, handshake_timeout=1.0)
    async with hub(tmp_path, group, limits) as ana:
        silent = await open_ws(ana.port)  # websocket open, never a hello
        began = time.monotonic()
        assert await admitted(silent)  # the node's hello
        assert not await admitted(await open_ws(ana.port))  # its only slot is taken
        with pytest.raises(ConnectionClosed):
            await within(silent.recv(), 10)
        took = time.monotonic() - began
        assert 0.9 <= took < 5, took
        await until(lambda: _free(ana), what="its slot is released")
        # after the handshake but without the vector: the same, with an error frame
        peer = await ana.raw_peer(handshake=False)
        await peer.flush()
        for _ in range(3):  # hello, message 2
            await peer.read()
            await peer.flush()
        assert peer.protocol.state is State.OPEN
        code, _close = await peer.outcome()
        await peer.close()
        assert code == HANDSHAKE_TIMEOUT
        print(f"\nsilent connection closed after {took:.2f} s; lines: {ana.lines}")
        await until(lambda: _said(ana, "cut off an unauthenticated peer"), what="logged")


# -- (d) credit ------------------------------------------------------------------------


async def test_a_peer_that_withholds_credit_is_cut_but_a_slow_one_is_not(
    tmp_path: Path, group: Group
) -> None:
    """Ana holds 1,500 events. Three peers with the smallest window (64 KiB) ask for
    them: one never grants more, one grants 1 byte every 0.2 s (never enough for an
    event), one grants back each batch 0.6 s after it arrived. With a 1 s credit
    timeout the first two are cut with credit-timeout; the slow one gets everything."""
    limits = Limits(credit_timeout=1.0)
    async with hub(tmp_path, group, limits) as ana:
        await append_stock(ana.node, 1_500)
        total = await seq_of(ana.node, ana.node.author)

        async def start() -> RawPeer:
            peer = await ana.raw_peer(window=MAX_EVENT_BYTES)
            peer.protocol.send_have({})  # we hold nothing: send everything
            await peer.flush()
            return peer

        async def withholding() -> str | None:
            peer = await start()
            try:
                code, _close = await peer.outcome(10)
            finally:
                await peer.close()
            return code

        async def dribbling() -> str | None:
            peer = await start()
            try:
                for _ in range(100):
                    got = await peer.frames_during(0.2)
                    if got is None:
                        break
                    peer.protocol.send_credit(1)
                    with contextlib.suppress(ConnectionClosed):
                        await peer.flush()
            finally:
                await peer.close()
            error = peer.protocol.error
            return getattr(error, "code", None)

        async def slow() -> tuple[int, str | None, State]:
            peer = await start()
            received = 0
            try:
                for _ in range(200):
                    if received >= total:
                        break
                    got = await peer.frames_during(0.6)
                    if got is None:
                        break
                    batches = peer.protocol.events_received()
                    received += sum(len(batch.envelopes) for batch in batches)
                    for batch in batches:
                        peer.protocol.send_credit(batch.size)
                    await peer.flush()
                state = peer.protocol.state
            finally:
                await peer.close()
            error = peer.protocol.error
            return received, getattr(error, "code", None), state

        began = time.monotonic()
        cut, dribbled, (received, slow_error, slow_state) = await within(
            asyncio.gather(withholding(), dribbling(), slow()), 40
        )
        took = time.monotonic() - began
        print(
            f"\ncredit: withholding peer {cut}, 1-byte dribbler {dribbled}, slow peer "
            f"received {received}/{total} events in {took:.1f} s ({slow_error}); "
            f"{ana.said('cut off')}"
        )
        assert cut == CREDIT_TIMEOUT
        assert dribbled == CREDIT_TIMEOUT
        assert received == total and slow_error is None and slow_state is State.OPEN
        await until(lambda: _logged_twice(ana, "credit-timeout"), what="both cuts logged")
        assert len(ana.said("credit-timeout")) == 2


# -- (e) and (f): honest peers under attack ------------------------------------------


ATTACKS = ("flood", "garbage")  # what the attackers' process runs


async def _attack(
    port: int,
    secret: bytes,
    group_id: bytes,
    stop: EventType,
    seconds: float,
    kinds: tuple[str, ...] = ATTACKS,
) -> dict[str, object]:
    """The attackers, in a process of their own: one flooder (reconnecting whenever it
    is cut) and one peer after another sending random bytes, before or after the
    handshake. Until ``stop`` is set or ``seconds`` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    result: dict[str, list[object]] = {"flood": [], "garbage": [], "errors": []}

    def done() -> bool:
        return stop.is_set() or loop.time() > deadline

    async def peer(handshake: bool = True) -> RawPeer:
        ws = await within(
            connect(
                f"ws://{LOCAL}:{port}/potluck",
                compression=None,
                max_size=None,
                open_timeout=5,
                close_timeout=2,
            )
        )
        raw = RawPeer(
            ws,
            member_core(secret, group_id),
        )
        if handshake:
            await raw.handshake()
        return raw

    async def flooder() -> None:
        for _ in range(30):  # reconnects
            if done():
                return
            raw = await peer()
            try:
                sent, _ = await flood(raw, seconds=max(0.1, deadline - loop.time()))
                if not done():
                    code, _close = await raw.outcome()
                    result["flood"].append((sent, code))
            finally:
                await raw.close()

    async def garbler() -> None:
        for i in range(200):
            if done():
                return
            raw = await peer(handshake=i % 2 == 1)
            try:
                await raw.send(os.urandom(1 + i * 37 % 3000))
                code, _close = await raw.outcome()
                result["garbage"].append(code)
            finally:
                await raw.close()
            await asyncio.sleep(0.02)  # the scenario: garbage peers one after another

    runs = [run() for kind, run in (("flood", flooder), ("garbage", garbler)) if kind in kinds]
    for outcome in await asyncio.gather(*runs, return_exceptions=True):
        if isinstance(outcome, BaseException):
            result["errors"].append(repr(outcome))
    return dict(result)


def attack(
    port: int,
    secret: bytes,
    group_id: bytes,
    stop: EventType,
    seconds: float,
    out: Queue[dict[str, object]],
    kinds: tuple[str, ...] = ATTACKS,
) -> None:
    """Entry point of the attackers' process."""
    out.put(asyncio.run(_attack(port, secret, group_id, stop, seconds, kinds)))


async def test_an_honest_peer_keeps_syncing_while_a_peer_floods_and_others_send_garbage(
    tmp_path: Path, group: Group
) -> None:
    """Bo1 catches up 3,000 events from Ana (and gives her 300) with nobody else on
    the node. Then, while another process floods Ana with frames (reconnecting
    whenever it is cut) and sends her random bytes from peer after peer, before and
    after their handshake, Bo2 does the same. Bo2 converges with Ana; every attacker
    was cut with its code; no honest session was lost."""
    limits = Limits(frames=FRAMES, grace=1.0)
    async with hub(tmp_path, group, limits) as ana:
        await append_stock(ana.node, 3_000)
        honest: list[Serving] = []
        nodes: list[Node] = []
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        out: Queue[dict[str, object]] = context.Queue()
        attackers = context.Process(
            target=attack, args=(ana.port, group.secret, group.id, stop, 25.0, out), daemon=True
        )
        try:
            alone, bo1, s1 = await honest_catch_up(tmp_path, group, ana, "Bo1", 300)
            honest.append(s1)
            nodes.append(bo1)
            await s1.stop()
            attackers.start()
            await until(lambda: _attacked(ana), what="the attack is on", timeout=20)
            during, bo2, s2 = await honest_catch_up(tmp_path, group, ana, "Bo2", 300)
            honest.append(s2)
            nodes.append(bo2)
            cuts = len(ana.said("cut off"))
            await until(
                lambda: len(ana.said("cut off")) > cuts,
                what="a flooder cut off while Bo2 is connected",
                timeout=20,
            )
            # Bo2's session carries on: an event of Ana's reaches him
            [env] = await ana.node.store.append(ana.node.key, stock_one())
            await until(lambda: has_seq(bo2, env.author, env.seq), what="live push")
            assert s2.count("peer lost") == 0 and s2.count("peer connected") == 1, s2.lines
            assert await digest(bo2) == await digest(ana.node)
            # the honest session was never throttled, even under these tight limits
            assert ana.session_of(bo2.author).guard.rates.stats.throttled == 0
        finally:
            stop.set()
            result = await asyncio.to_thread(out.get, True, 30)
            attackers.join(10)
            await stop_all(honest)
            await close_all(nodes)
        flooded = result["flood"]
        garbage = result["garbage"]
        assert isinstance(flooded, list) and isinstance(garbage, list)
        print(
            f"\nhonest catch-up of 3,000 events + 300 back: alone {alone:.2f} s "
            f"({3300 / alone:.0f} events/s), under attack {during:.2f} s "
            f"({3300 / during:.0f} events/s); flooder cut {len(flooded)} times "
            f"({sum(n for n, _ in flooded)} frames written), codes "
            f"{ {c for _, c in flooded} }; {len(garbage)} garbage peers, codes "
            f"{set(garbage)}; attacker errors {result['errors']}"
        )
        assert not result["errors"]
        assert flooded and {code for _, code in flooded} == {RATE_LIMIT}
        # before the handshake the node closes without a word; after it, random
        # bytes do not authenticate
        assert set(garbage) == {None, "decrypt-failed"}


async def _attacked(ana: Hub) -> bool:
    return bool(ana.said("cut off"))


def stock_one() -> list[b.StockAdjusted]:
    return [b.StockAdjusted(item="rice", location="pantry", delta=5, reason="donation")]


# -- the defaults against honest traffic -------------------------------------------------


async def _serving(node: Node) -> bool:
    return node.peer_manager is not None


async def test_honest_catch_up_and_live_push_stay_far_below_the_default_limits(
    tmp_path: Path, group: Group
) -> None:
    """Default limits on both sides: a cold catch-up of 10,000 events, then 500 events
    appended one per transaction (one frame each): neither session is ever paused,
    and the busiest second of each stays far below every rate."""
    async with hub(tmp_path, group, Limits()) as ana:
        await append_stock(ana.node, 10_000)
        [bo] = await new_nodes(tmp_path, group, "Bo")
        peaks: dict[tuple[str, int], list[int]] = {}  # (phase, session) -> busiest second
        sessions: dict[int, Session] = {}
        managers: list[PeerManager] = []
        last: dict[int, tuple[int, int, int]] = {}

        async def sample(phase: str, until: int) -> None:
            """Each session's counts every second, until Bo holds ``until`` of Ana's."""
            for _ in range(600):
                for session in [s for m in managers for s in m.sessions]:
                    sessions[id(session)] = session
                for key, session in sessions.items():
                    s = session.guard.rates.stats
                    now = (s.frames, s.events, s.frame_bytes)
                    before = last.get(key, (0, 0, 0))
                    peak = peaks.setdefault((phase, key), [0, 0, 0])
                    for i in range(3):
                        peak[i] = max(peak[i], now[i] - before[i])
                    last[key] = now
                if await seq_of(bo, ana.node.author) >= until:
                    return
                await asyncio.sleep(1.0)  # the scenario: one sample per second
            raise AssertionError("not caught up in 600 s")

        serving = await Serving(bo, listen=None, peers=[ana.address]).start()
        try:
            began = time.monotonic()
            await until(lambda: _serving(bo), what="Bo serves")
            assert bo.peer_manager is not None and ana.manager is not None
            managers += [bo.peer_manager, ana.manager]
            await sample("catch-up", 10_001)
            catch_up = time.monotonic() - began
            began = time.monotonic()
            for i in range(500):
                await ana.node.store.append(ana.node.key, stock_one())
                if i % 50 == 0:
                    await asyncio.sleep(0)
            await sample("live", 10_501)
            live = time.monotonic() - began
        finally:
            await serving.stop()
            await close_all([bo])
        stats = [s.guard.rates.stats for s in sessions.values()]
        print(
            f"\ndefaults: catch-up of 10,000 events in {catch_up:.2f} s, 500 single "
            f"appends pushed in {live:.2f} s; busiest second per session (frames, "
            f"events, bytes): {[(p, v) for (p, _), v in peaks.items()]}; {stats}"
        )
        assert len(sessions) == 2
        assert all(s.throttled == 0 and s.pauses == 0 for s in stats)
        for frames, events, nbytes in peaks.values():
            assert frames < Limits().frames.per_second / 2
            assert events < Limits().events.per_second / 2
            assert nbytes < Limits().frame_bytes.per_second / 2
