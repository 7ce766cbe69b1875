"""Budgets of issue 16, findings 2 and 3: what a member's ``have`` messages may make a
session hold, and which connections may hold a slot (docs/protocol.md §limits).

2. A member flooding ``have`` frames is cut with ``have-limit`` once its vector and fork
   points pass ``have_entries`` entries or its ``have`` frames pass ``have_bytes``
   bytes; what it made the session hold is freed. With every allowed session flooding
   at once, the node's RSS stays under the bound derived in ``SESSION_BOUND``.
3. Strangers who never finish their handshake hold pending slots, a budget of their own
   (per address, an IPv6 /64 being one, and in total, the oldest evicted), so 136
   silent websockets do not keep a member's ``potluck sync`` out; a member that is
   refused is told why, in one line.

The node is Ana's ``PeerManager`` in this process (as in tests/test_sync_hostile.py);
attackers are hand-driven websockets, the flooders in a process of their own; the member
is the real ``potluck sync`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
import weakref
from multiprocessing.queues import Queue
from pathlib import Path

import msgpack
from helpers import potluck, until
from synchelp import LOCAL, RawPeer, close_all, member_core, new_nodes, within
from test_protocol import assert_refused, connect, seal
from test_sync_hostile import Hub, hub, open_ws
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from eventlog.identity import Group
from sync.limits import DEFAULT_LIMITS, HAVE_LIMIT, TOO_MANY_CONNECTIONS, Limits
from sync.peers import PeerManager
from sync.protocol import MAX_FRAME_BYTES, MAX_HAVE_ENTRIES, State, SyncProtocol
from sync.transport import MAX_QUEUE

MIB = 1 << 20
ENTRY_BYTES = 245  # one peer vector entry held by the core, measured (tracemalloc)
PARSE_BYTES = 3 * MIB // 2  # peak while one full have frame (8,192 entries) is parsed
# What one flooding session may make the node hold, at most (docs/protocol.md §limits):
# websockets' receive queue (16 frames of up to 1,114,128 bytes), the peer's entries up
# to the limit plus the one frame that passes it, and one frame being parsed.
SESSION_BOUND = (
    MAX_QUEUE * MAX_FRAME_BYTES
    + (DEFAULT_LIMITS.have_entries + MAX_HAVE_ENTRIES) * ENTRY_BYTES
    + PARSE_BYTES
)
FLOODERS = 16  # sessions allowed at once by the node of the flood test (all of them)


def test_session_bound_figure() -> None:
    """The figure docs/protocol.md states: about 24.3 MiB a session."""
    assert 24 * MIB < SESSION_BOUND < 25 * MIB


# -- finding 2, the core ---------------------------------------------------------------


def have(entries: list[list[object]], end: bool = False) -> dict[str, object]:
    return {"t": "have", "vector": entries, "end": end}


def random_entries(n: int) -> list[list[object]]:
    return [[os.urandom(32), 1, os.urandom(32)] for _ in range(n)]


def test_a_vector_past_the_entry_limit_is_cut_with_have_limit_and_freed() -> None:
    a, b = connect(have_entries=1000)
    b.receive_data(seal(a, have(random_entries(1000))))  # exactly the limit: fine
    assert b.state is State.OPEN and len(b.peer_vector) == 1000
    b.receive_data(seal(a, have(random_entries(1))))
    assert_refused(b, a, HAVE_LIMIT)
    assert b.error is not None and "1001 entries, limit 1000" in b.error.reason
    assert b.peer_vector == {}  # what the flood made it hold is gone


def test_fork_points_count_toward_the_entry_limit() -> None:
    a, b = connect(have_entries=10)
    points = [[os.urandom(32), 1] for _ in range(6)]
    b.receive_data(seal(a, {"t": "have", "vector": random_entries(5), "forks": points}))
    assert_refused(b, a, HAVE_LIMIT)
    assert b.peer_forks == {}


def test_the_same_entries_sent_again_and_again_are_cut_by_the_byte_limit() -> None:
    """Repeating one author holds no more memory, but costs parsing: bytes bound it."""
    a, b = connect(have_bytes=10_000)
    entry = random_entries(1)
    sent = 0
    for _ in range(1000):
        if b.state is not State.OPEN:
            break
        frame = seal(a, have(entry * 20))
        b.receive_data(frame)
        sent += len(frame)
    assert_refused(b, a, HAVE_LIMIT)
    assert sent > 10_000 and sent - 2_000 < 10_000  # cut by the frame that passed it
    assert b.error is not None and "bytes of have frames" in b.error.reason


def test_an_honest_vector_of_the_default_limit_passes() -> None:
    a, b = connect()
    vector = {bytes(e[0]): (1, bytes(e[2])) for e in random_entries(16_384)}  # type: ignore[arg-type]
    a.send_have(vector)
    for frame in a.data_to_send():
        b.receive_data(frame)
    assert b.state is State.OPEN and b.peer_vector_complete and len(b.peer_vector) == 16_384


# -- finding 2, memory with every allowed session flooding -------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """The node process's RSS every 10 ms, in a thread: its peak."""

    def __init__(self) -> None:
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def have_floods(
    port: int, secret: bytes, group_id: bytes, n: int, out: Queue[list[tuple[int, str | None]]]
) -> None:
    """In a process of its own: ``n`` members handshake (from two source addresses, to
    stay within the pending budget per address), then all flood at once, half with new
    random entries (cut by the entry limit), half with one frame again and again (cut by
    the byte limit). Reports (frames sent, the node's error code) per flooder."""

    ready: list[int] = []
    start = asyncio.Event()

    async def one(i: int) -> tuple[int, str | None]:
        ws = await within(
            ws_connect(
                f"ws://{LOCAL}:{port}/potluck",
                compression=None,
                max_size=None,
                open_timeout=10,
                close_timeout=2,
                local_addr=(f"127.0.0.{1 + i % 2}", 0),
            ),
            20,
        )
        peer = RawPeer(ws, member_core(secret, group_id))  # a member, as the node sees it
        await peer.handshake()
        same = msgpack.packb(have(random_entries(MAX_HAVE_ENTRIES)), use_bin_type=True)
        ready.append(i)
        if len(ready) == n:
            start.set()
        await within(start.wait(), 30)  # every flooder handshaken: all flood at once
        sent = 0
        for _ in range(100):
            plain = (
                same
                if i % 2
                else msgpack.packb(have(random_entries(MAX_HAVE_ENTRIES)), use_bin_type=True)
            )
            try:
                await within(peer.send(peer.seal(plain)), 20)
            except (ConnectionClosed, TimeoutError):
                break
            sent += 1
        code, _close = await peer.outcome(20)
        await peer.close()
        return sent, code

    async def run() -> list[tuple[int, str | None]]:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    out.put(asyncio.run(run()))


async def test_every_allowed_session_flooding_have_keeps_the_node_under_its_memory_bound(
    tmp_path: Path, group: Group
) -> None:
    limits = Limits(per_address=FLOODERS, inbound=FLOODERS)
    async with hub(tmp_path, group, limits) as ana:
        assert ana.manager is not None
        protocols: list[weakref.ref[SyncProtocol]] = []

        def track() -> None:
            assert ana.manager is not None
            known = {id(r()) for r in protocols}
            for session in ana.manager.sessions:
                if id(session.protocol) not in known:
                    protocols.append(weakref.ref(session.protocol))

        gc.collect()
        before = rss()
        context = multiprocessing.get_context("spawn")
        out: Queue[list[tuple[int, str | None]]] = context.Queue()
        attackers = context.Process(
            target=have_floods, args=(ana.port, group.secret, group.id, FLOODERS, out), daemon=True
        )
        with Sampler() as sampler:
            attackers.start()
            for _ in range(1200):  # until the flooders report (at most 60 s)
                track()
                if not out.empty():
                    break
                await asyncio.sleep(0.05)
            results = await asyncio.to_thread(out.get, True, 60)
        attackers.join(10)
        await until(lambda: _all_ended(ana), what="every flooding session ended", timeout=30)

        def freed() -> bool:
            gc.collect()
            return all(r() is None for r in protocols)

        alive = sum(1 for r in protocols if r() is not None)
        await until(freed, what="every cut session's state freed", timeout=20)
        after = rss()
        bound = before + FLOODERS * SESSION_BOUND
        print(
            f"\nhave floods: {FLOODERS} sessions, frames sent {[n for n, _ in results]}; "
            f"node RSS before {before / MIB:.1f} MiB, peak {sampler.peak / MIB:.1f} MiB "
            f"(+{(sampler.peak - before) / MIB:.1f} MiB, bound +{(bound - before) / MIB:.0f} "
            f"MiB = {FLOODERS} x {SESSION_BOUND / MIB:.1f} MiB), after {after / MIB:.1f} MiB; "
            f"protocol objects alive when the last session ended {alive}/{len(protocols)}, "
            f"then none; "
            f"cut lines {len(ana.said('have-limit'))}"
        )
        assert [code for _, code in results] == [HAVE_LIMIT] * FLOODERS, results
        assert sampler.peak < bound
        assert len(ana.said("cut off")) == FLOODERS
        assert all("have-limit" in line for line in ana.said("cut off"))


async def _all_ended(ana: Hub) -> bool:
    assert ana.manager is not None
    m = ana.manager
    return not m.sessions and m.connections.count == 0 and m.pending.count == 0


# -- finding 3, pending connections -----------------------------------------------------


async def test_silent_websockets_from_many_addresses_do_not_keep_a_member_out(
    tmp_path: Path, group: Group
) -> None:
    """136 websockets from 17 loopback addresses that never say hello (held longer than
    the test: the pending deadline is a minute here), then a member's ``potluck sync``
    succeeds: its connection evicted the oldest silent one."""
    limits = Limits(pending_timeout=60.0, handshake_timeout=60.0)
    [bo] = await new_nodes(tmp_path, group, "Bo")
    await close_all([bo])
    async with hub(tmp_path, group, limits) as ana:
        assert ana.manager is not None
        silent: list[ClientConnection] = []
        try:
            for i in range(17 * limits.pending_per_address):
                silent.append(await open_ws(ana.port, f"127.0.0.{2 + i % 17}"))
            assert ana.manager.pending.count == limits.pending  # full
            assert ana.said("evicted a connection from")
            proc = await asyncio.to_thread(potluck, tmp_path / "bo", "sync", ana.address)
            print(f"\nsync past {len(silent)} silent websockets: {proc.stdout.strip()}")
            assert ana.manager.pending.count <= limits.pending
            closed = sum(1 for ws in silent if ws.close_code is not None)
            print(f"silent websockets evicted: {closed}; node lines: {ana.lines[-3:]}")
        finally:
            await asyncio.gather(*(within(ws.close(), 10) for ws in silent))


async def test_a_refused_sync_says_why_in_one_line_and_the_node_logs_it(
    tmp_path: Path, group: Group
) -> None:
    """At the member limit, the member's ``potluck sync`` is refused after its
    handshake, with the reason; over the pending budget of its address, before it."""
    [bo] = await new_nodes(tmp_path, group, "Bo")
    await close_all([bo])
    limits = Limits(inbound=1, pending_per_address=1, pending_timeout=60.0)
    async with hub(tmp_path, group, limits) as ana:
        holder = await ana.raw_peer(handshake=True)  # the one member slot
        try:
            proc = await asyncio.to_thread(potluck, tmp_path / "bo", "sync", ana.address, ok=False)
            [line] = proc.stderr.splitlines()
            print(f"\nat the member limit: {line}")
            assert proc.returncode != 0 and line.startswith("potluck: ")
            assert f"{TOO_MANY_CONNECTIONS}: 1 inbound sessions open (limit 1)" in line
            await until(lambda: bool(ana.said("refused a connection")), what="logged")
            assert "1 inbound sessions open (limit 1)" in ana.said("refused a connection")[0]
            silent = await open_ws(ana.port)  # the pending slot of 127.0.0.1
            proc = await asyncio.to_thread(potluck, tmp_path / "bo", "sync", ana.address, ok=False)
            [line] = proc.stderr.splitlines()
            print(f"over the pending budget: {line}")
            assert f"{TOO_MANY_CONNECTIONS}: refused by the node: 1 connections" in line
            assert "in their handshake (limit 1)" in line
            await silent.close()
        finally:
            await holder.close()
        print(f"node: {ana.said('refused')}")


async def test_a_serving_member_refused_by_a_peer_says_why(tmp_path: Path, group: Group) -> None:
    """``potluck serve`` dials its peers: a refusal is one status line with the reason."""
    [bo] = await new_nodes(tmp_path, group, "Bo")
    lines: list[str] = []
    async with hub(tmp_path, group, Limits(inbound=1)) as ana:
        holder = await ana.raw_peer(handshake=True)  # the one member slot
        manager = PeerManager(bo.store, bo.key, say=lines.append)
        try:
            await within(manager.start())
            manager.add_peer(ana.address)
            await until(lambda: any("refused by" in line for line in lines), what="said")
        finally:
            await within(manager.stop(), 20)
            await holder.close()
            await close_all([bo])
    [line] = [line for line in lines if "refused by" in line][:1]
    print(f"\nserve: {line}")
    assert f"refused by {ana.address}: {TOO_MANY_CONNECTIONS}: 1 inbound sessions open" in line
