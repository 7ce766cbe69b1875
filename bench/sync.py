"""Sync throughput, memory and latency between two node processes on loopback.

Before timing, node A is filled with ``--events`` events (``Store.append`` with typed
bodies in batches of 1,000, several authors writing in turns: about 65% ``stock.adjusted``,
5% ``stock.counted``, 12% ``offer.posted``, 8% ``need.posted``, 10% ``claim.made``, after
the item and location definitions). Each run copies that directory, then starts two
processes of this script:

- **A** (``--role serve``): ``Node.serve`` listening on 127.0.0.1, the code path of
  ``potluck serve``; it also appends when told to.
- **B** (``--role client``): a fresh node of the same group (``Node.init``).

and drives them over their stdin/stdout, one JSON line per command and reply:

1. *cold sync*: B dials A with a long-lived session (``PeerManager``, the machinery of
   ``Node.serve`` and ``potluck serve --peer``), timed in B from before the dial until
   the commit that adds the last of A's events returns: every event received,
   verified, stored and projected, durable. Events/s counts A's events; MB/s the bytes
   B read from the websocket in that time (1 MB = 10^6 B). ``--one-shot`` uses
   ``Node.sync_once`` (``potluck sync``) instead. B's count and its held events are
   checked, and at the end of the run the projection digests of A and B must be equal.
2. *catch-up 1000*: A appends 1,000 events; B runs ``Node.sync_once`` against A, timed
   to the commit that adds the last of them; bytes are both directions on the wire
   (``Session.stats``), next to the events' own encoded size.
3. *live*: B dials A with ``Node.serve`` (a long-lived session) and waits until caught
   up; A posts ``--live`` single events (``Node.post``), one every ``--gap`` ms. A
   stamps each when its ``post`` returned (durable on A), B when the commit holding it
   returned (a store hook collects the event, ``on_change`` stamps it). Both stamps
   are ``time.monotonic()``, which on Linux is the one system-wide CLOCK_MONOTONIC, so
   the two processes' stamps subtract without clock skew.
4. *peak RSS*: each process reports its own ``ru_maxrss`` when it exits.

In the same run, the machine's raw limits: websocket loopback throughput of 200 B
binary messages from this process to a sink process (``compression=None``, then the
websockets default permessage-deflate with random, incompressible messages like signed
events), and from bench/ceiling.py the raw SQLite insert and Ed25519 verify rates; then
the ratios. Every figure is the median over ``--runs`` runs.

Usage::

    python bench/sync.py [--events 200000] [--runs 3] [--authors 5] [--live 200]
                         [--gap 20] [--template DIR] [--one-shot] [--profile]

``--template DIR`` keeps the filled node A in DIR (reused when it already holds one),
which saves the fill on the next invocation. ``--profile`` adds one cold sync before the
timed runs, under cProfile in B, and prints the top 20 functions by tottime of B's
event-loop thread and database thread to stderr; its figures are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()  # this file's name would otherwise hide the ``sync`` package
ceiling = _path.load("ceiling")
ThreadProfiles = _path.load("_profile").ThreadProfiles

from nacl.signing import SigningKey  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402

from eventlog import body as b  # noqa: E402
from eventlog.events import Envelope  # noqa: E402
from eventlog.identity import Group, load_group  # noqa: E402
from eventlog.store import last_arrival  # noqa: E402
from node.app import LOG_FILE, Node  # noqa: E402
from sync.peers import PeerManager  # noqa: E402
from sync.transport import Session, SessionStats  # noqa: E402

SEED = 20_260_602
BATCH = 1_000
ITEMS = 50
LOCATIONS = 10
RECENT_POSTS = 200
CATCH_UP = 1_000
PROFILE_TOP = 20
WS_MESSAGE = 200
WS_POOL = 1_000
CAUGHT_UP_TIMEOUT = 60.0
STALL_SECONDS = 60.0
LIVE_TIMEOUT = 10.0

WEIGHTS: dict[str, int] = {
    "stock.adjusted": 65,
    "stock.counted": 5,
    "offer.posted": 12,
    "need.posted": 8,
    "claim.made": 10,
}
"""Percent of the events after the definitions; a claim before any post is an adjustment."""

FOOD = (
    "rice",
    "beans",
    "lentils",
    "pasta",
    "oats",
    "flour",
    "milk",
    "eggs",
    "apples",
    "bread",
    "tomatoes",
    "onions",
    "potatoes",
    "carrots",
    "yoghurt",
    "cheese",
    "tuna",
    "soup",
    "cereal",
    "nappies",
)
KINDS: tuple[b.LocationKind, ...] = ("pantry", "fridge", "kitchen", "home", "hub", "other")
STORAGE: tuple[b.Storage, ...] = ("ambient", "fridge", "freezer")
DAY_ONE = date(2026, 6, 1)


# -- the events ---------------------------------------------------------------------


class Mix:
    """Seeded bodies of the mix above; ``define`` puts the items and locations first."""

    def __init__(self, seed: int, *, define: bool) -> None:
        self.rng = random.Random(seed)
        self.items = [f"{FOOD[i % len(FOOD)]}-{i}" for i in range(ITEMS)]
        self.locations = [f"{KINDS[i % len(KINDS)]}-{i}" for i in range(LOCATIONS)]
        self.posts: deque[bytes] = deque(maxlen=RECENT_POSTS)
        self._types = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())
        self._queue: deque[b.BaseBody] = deque(self._definitions() if define else ())

    def _definitions(self) -> list[b.BaseBody]:
        bodies: list[b.BaseBody] = [
            b.LocationDefined(slug=slug, name=f"Place {i}", kind=KINDS[i % len(KINDS)])
            for i, slug in enumerate(self.locations)
        ]
        bodies += [
            b.ItemDefined(
                slug=slug,
                name=f"{FOOD[i % len(FOOD)].title()} {i}",
                unit="pack",
                category="food",
                storage=STORAGE[i % len(STORAGE)],
            )
            for i, slug in enumerate(self.items)
        ]
        return bodies

    def batch(self, n: int) -> list[b.BaseBody]:
        return [self._queue.popleft() if self._queue else self.next() for _ in range(n)]

    def observe(self, written: Sequence[Envelope]) -> None:
        self.posts.extend(e.hash for e in written if e.type in ("offer.posted", "need.posted"))

    def next(self) -> b.BaseBody:
        rng = self.rng
        kind = rng.choices(self._types, self._weights)[0]
        if kind == "stock.counted":
            return b.StockCounted(
                item=rng.choice(self.items),
                location=rng.choice(self.locations),
                count=rng.randint(0, 200),
            )
        if kind == "offer.posted":
            return b.OfferPosted(
                title=f"Spare {rng.choice(FOOD)}",
                category="food",
                item=rng.choice(self.items),
                quantity=rng.randint(1, 20),
                location=rng.choice(self.locations),
                until=self._day(rng.randint(1, 30)),
            )
        if kind == "need.posted":
            return b.NeedPosted(
                title=f"Need {rng.choice(FOOD)}",
                category="food",
                quantity=rng.randint(1, 20),
                urgency=rng.choice(b.URGENCIES),  # type: ignore[arg-type]
                location=rng.choice(self.locations),
            )
        if kind == "claim.made" and self.posts:
            return b.ClaimMade(target=rng.choice(self.posts), quantity=rng.randint(1, 5))
        return self.adjustment()

    def adjustment(self) -> b.StockAdjusted:
        rng = self.rng
        incoming = rng.random() < 0.6
        delta = rng.randint(1, 40) if incoming else -rng.randint(1, 20)
        expires = self._day(rng.randint(3, 60)) if incoming and rng.random() < 0.4 else None
        reason = rng.choice(
            ("donation", "transfer")
            if incoming
            else ("distribution", "distribution", "spoilage", "transfer")
        )
        return b.StockAdjusted(
            item=rng.choice(self.items),
            location=rng.choice(self.locations),
            delta=delta,
            reason=reason,  # type: ignore[arg-type]
            expires=expires,
        )

    def _day(self, offset: int) -> str:
        return (DAY_ONE + timedelta(days=offset)).isoformat()


async def fill(data_dir: Path, events: int, authors: int) -> int:
    """Create node A in ``data_dir`` holding ``events`` events in all; return the count."""
    node = await Node.init(data_dir, "A", Group.new("Bench group"))
    try:
        store = node.store
        keys = [node.key]
        for i in range(1, authors):
            key = SigningKey.generate()
            joined = store.first_event_body(f"Volunteer {i}", bytes(key.verify_key))
            await store.append(key, [("member.joined", joined)])
            keys.append(key)
        mix = Mix(SEED, define=True)
        remaining = events - await store.count()
        turn = 0
        while remaining > 0:
            written = await store.append(keys[turn % len(keys)], mix.batch(min(BATCH, remaining)))
            mix.observe(written)
            remaining -= len(written)
            turn += 1
        return await store.count()
    finally:
        await node.close()


# -- the child processes ------------------------------------------------------------


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """This process's peak resident set size so far (``RUSAGE_CHILDREN``: that of its
    largest child that ended, such as node B's projector), in MiB."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


class Pipe:
    """One JSON object a line: commands on stdin, replies on stdout."""

    async def command(self) -> dict[str, Any]:
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if not line:
            return {"cmd": "quit"}
        command: dict[str, Any] = json.loads(line)
        return command

    def reply(self, **fields: object) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


async def serve_role(data_dir: Path) -> None:
    """Node A: ``Node.serve`` on 127.0.0.1 (any free port) plus append commands."""
    pipe = Pipe()
    node = await Node.open(data_dir)
    try:
        await _serve_commands(node, pipe)
    finally:  # also on failure: aiosqlite's thread would keep the process alive
        await node.close()
    pipe.reply(rss=peak_rss_mb())


async def _serve_commands(node: Node, pipe: Pipe) -> None:
    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def say(line: str) -> None:
        if line.startswith("listening on ") and not listening.done():
            listening.set_result(int(line.rsplit(":", 1)[1]))

    serving = asyncio.create_task(node.serve(listen="127.0.0.1:0", peers=(), stop=stop, say=say))
    first: set[asyncio.Future[Any]] = {serving, listening}
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not listening.done():
        serving.result()  # raises what stopped it
        raise RuntimeError("serve ended before listening")
    pipe.reply(port=listening.result())
    mix = Mix(SEED + 1, define=False)
    try:
        while True:
            cmd = await pipe.command()
            if cmd["cmd"] == "append":
                written = await node.store.append(node.key, mix.batch(cmd["n"]))
                pipe.reply(count=len(written), bytes=sum(len(e.raw) for e in written))
            elif cmd["cmd"] == "live":
                sent: list[tuple[str, float]] = []
                start = time.monotonic()
                for i in range(cmd["n"]):
                    await asyncio.sleep(max(0.0, start + i * cmd["gap"] - time.monotonic()))
                    envelope = await node.post(mix.adjustment())
                    sent.append((envelope.hash.hex(), time.monotonic()))
                pipe.reply(sent=sent)
            elif cmd["cmd"] == "digest":
                pipe.reply(
                    digest=await node.store.read(node.runner.digest), count=await node.store.count()
                )
            elif cmd["cmd"] == "quit":
                break
    finally:
        stop.set()
        await serving


async def client_role(data_dir: Path, group_dir: Path) -> None:
    """Node B: a new member of A's group that syncs, or stays connected, when told."""
    pipe = Pipe()
    node = await Node.init(data_dir, "B", load_group(group_dir))
    try:
        await Receiver(node).commands(pipe)
    finally:  # also on failure: aiosqlite's thread would keep the process alive
        await node.close()
    pipe.reply(rss=peak_rss_mb(), rss_children=peak_rss_mb(resource.RUSAGE_CHILDREN))


class Receiver:
    """Node B's commands and instruments: how many events its log gained and when the
    commit that added the last one returned, how many it held, when each live one came."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = node.store
        self.added = 0  # written by the hook on the database thread only
        self.last_commit = 0.0
        self.held = 0
        self.recording = False
        self.collected: list[bytes] = []
        self.arrived: dict[str, float] = {}
        self.changed = asyncio.Event()
        self._receive = self.store.receive
        self.store.receive = self._counting_receive  # type: ignore[method-assign]
        self.store.add_hook(self._hook, before_commit=self._count)
        self.store.on_change(self._stamp)
        self._stop = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    async def _counting_receive(self, batch: Any, *, authenticated: bool = False) -> Any:
        result = await self._receive(batch, authenticated=authenticated)
        self.held += result.held
        return result

    def _hook(self, _db: object, added: Sequence[Envelope]) -> None:  # in the transaction
        if self.recording:
            self.collected.extend(e.hash for e in added)

    def _count(self, db: sqlite3.Connection) -> None:  # before each commit
        self.added = last_arrival(db)

    def _stamp(self) -> None:  # after the commit
        now = self.last_commit = time.monotonic()
        done = self.collected[:]
        del self.collected[: len(done)]
        for hash_ in done:
            self.arrived[hash_.hex()] = now
        self.changed.set()

    async def commands(self, pipe: Pipe) -> None:
        pipe.reply(ready=True)
        while True:
            cmd = await pipe.command()
            if cmd["cmd"] == "cold":
                profiles = ThreadProfiles("B, cold sync") if cmd["profile"] else None
                if profiles is not None:
                    profiles.wrap(self.store._conn)
                    profiles.start()
                if cmd["one_shot"]:
                    reply = await self.sync_once(cmd["address"])
                else:
                    reply = await self.cold_session(cmd["address"], cmd["expected"])
                if profiles is not None:
                    profiles.stop()
                    print(profiles.report(PROFILE_TOP), file=sys.stderr, flush=True)
                pipe.reply(**reply)
            elif cmd["cmd"] == "sync":
                pipe.reply(**await self.sync_once(cmd["address"]))
            elif cmd["cmd"] == "live_start":
                await self.live_start(cmd["address"])
                pipe.reply(ready=True)
            elif cmd["cmd"] == "live_wait":
                pipe.reply(arrived=await self.live_wait(cmd["n"], cmd["timeout"]))
            elif cmd["cmd"] == "digest":
                pipe.reply(
                    digest=await self.store.read(self.node.runner.digest),
                    count=await self.store.count(),
                )
            elif cmd["cmd"] == "quit":
                return

    async def sync_once(self, address: str) -> dict[str, object]:
        """``Node.sync_once`` (``potluck sync``), timed to the last commit and to its end."""
        self.held = 0
        start = self.last_commit = time.monotonic()
        report = await self.node.sync_once(address)
        seconds = time.monotonic() - start
        return {
            "seconds": seconds,
            "stored_seconds": self.last_commit - start,
            "received": report["received"],
            "bytes_in": report["bytes_in"],
            "bytes_out": report["bytes_out"],
            "held": self.held,
            "count": await self.store.count(),
            "pending": await self.store.pending_count(),
        }

    async def cold_session(self, address: str, expected: int) -> dict[str, object]:
        """A long-lived session (``PeerManager``, the machinery of ``Node.serve``) dialing
        A, timed from before the dial until the commit that adds the ``expected``-th
        event returns; then the session is closed."""
        self.held = 0
        target = self.added + expected
        start = self.last_commit = time.monotonic()
        manager = PeerManager(self.store, self.node.key)
        await manager.start()
        manager.add_peer(address, "manual")
        sessions: list[Session] = []
        async with self.node.folding_behind():
            try:
                progress, since = self.added, time.monotonic()
                while self.added < target:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 1.0)
                    self.changed.clear()
                    sessions = list(manager.sessions) or sessions
                    if self.added > progress:
                        progress, since = self.added, time.monotonic()
                    elif time.monotonic() - since > STALL_SECONDS:
                        raise RuntimeError(
                            f"cold sync stalled at "
                            f"{self.added - target + expected} of {expected} "
                            "events"
                        )
                stored_seconds = self.last_commit - start
                await self._projected()
                projected_seconds = time.monotonic() - start
                sessions = list(manager.sessions) or sessions
            finally:
                await manager.stop()
        stats = sessions[0].stats if sessions else SessionStats()
        return {
            "seconds": time.monotonic() - start,
            "stored_seconds": stored_seconds,
            "projected_seconds": projected_seconds,
            "received": stats.events_in,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "held": self.held,
            "count": await self.store.count(),
            "pending": await self.store.pending_count(),
        }

    async def _projected(self) -> None:
        """Wait until the projector (projections/projector.py) has folded every stored
        event: the cold sync is timed to stored *and* projected."""
        since, behind = time.monotonic(), -1
        while True:
            now = await self.store.read(self.node.runner.behind)
            if now == 0:
                return
            if now != behind:
                since, behind = time.monotonic(), now
            elif time.monotonic() - since > STALL_SECONDS:
                raise RuntimeError(f"the projections stalled {now} events behind the log")
            await asyncio.sleep(0.002)

    async def live_start(self, address: str) -> None:
        """``Node.serve`` dialing A; returns once it says it is caught up with A."""
        caught_up = asyncio.Event()

        def say(line: str) -> None:
            if line.startswith("caught up with"):
                caught_up.set()

        self._stop.clear()
        self._serving = asyncio.create_task(
            self.node.serve(listen=None, peers=[address], stop=self._stop, say=say)
        )
        await asyncio.wait_for(caught_up.wait(), CAUGHT_UP_TIMEOUT)
        self.recording = True

    async def live_wait(self, n: int, timeout: float) -> dict[str, float]:
        """Wait until ``n`` live events arrived (or ``timeout``), stop serving, return
        when each arrived (hash hex -> monotonic seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.arrived) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.recording = False
        self._stop.set()
        if self._serving is not None:
            await self._serving
        arrived, self.arrived = self.arrived, {}
        return arrived


async def sink_role() -> None:
    """A websocket server that counts binary messages; a text message asks for the count."""
    pipe = Pipe()

    async def handler(ws: ServerConnection) -> None:
        count = 0
        async for message in ws:
            if isinstance(message, str):
                await ws.send(str(count))
                count = 0
            else:
                count += 1

    async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:
        pipe.reply(port=server.sockets[0].getsockname()[1])
        while (await pipe.command())["cmd"] != "quit":
            pass
    pipe.reply(rss=peak_rss_mb())


# -- the orchestrator ---------------------------------------------------------------


class Child:
    """One subprocess of this script in a role; ``call`` sends a command, returns the reply."""

    def __init__(self, *args: str) -> None:
        self.role = " ".join(args)
        self.rss_children = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} exited ({self.proc.wait()}) without answering")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, cmd: str, **fields: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def quit(self) -> float:
        """Its peak RSS; that of its largest child is left in ``rss_children``."""
        reply = self.call("quit")
        self.rss_children = float(reply.get("rss_children", 0.0))
        self.proc.wait(timeout=30)
        return float(reply["rss"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True, slots=True)
class RunResult:
    cold_events: float
    cold_mb: float
    cold_held: int
    rss_a: float
    rss_b: float
    rss_projector: float
    catch_up_ms: float
    catch_up_bytes: int
    catch_up_encoded: int
    live_ms: list[float]
    live_lost: int
    digests_equal: bool


def run_once(
    template: Path, expected: int, args: argparse.Namespace, *, profile: bool = False
) -> RunResult | None:
    """One cold sync, catch-up and live phase on a copy of ``template``; ``profile``: the
    cold sync only, under cProfile in B (no figures)."""
    with tempfile.TemporaryDirectory(prefix="potluck-bench-sync-") as tmp:
        a_dir, b_dir = Path(tmp) / "A", Path(tmp) / "B"
        shutil.copytree(template, a_dir)
        children: list[Child] = []
        try:
            a = Child("--role", "serve", "--data-dir", str(a_dir))
            children.append(a)
            address = f"127.0.0.1:{a.reply()['port']}"
            b_node = Child("--role", "client", "--data-dir", str(b_dir), "--group-from", str(a_dir))
            children.append(b_node)
            b_node.reply()

            cold = b_node.call(
                "cold", address=address, expected=expected, one_shot=args.one_shot, profile=profile
            )
            if cold["count"] != expected + 1 or cold["pending"]:
                raise RuntimeError(
                    f"B holds {cold['count']} events ({cold['pending']} held) "
                    f"after the cold sync, not {expected + 1}"
                )
            if profile:
                a.quit()
                b_node.quit()
                return None

            added = a.call("append", n=CATCH_UP)
            catch = b_node.call("sync", address=address)
            if catch["received"] != CATCH_UP:
                raise RuntimeError(f"catch-up received {catch['received']}, not {CATCH_UP}")

            b_node.call("live_start", address=address)
            sent = a.call("live", n=args.live, gap=args.gap / 1000)["sent"]
            arrived = b_node.call("live_wait", n=args.live, timeout=LIVE_TIMEOUT)["arrived"]
            live = [(arrived[h] - t) * 1000 for h, t in sent if h in arrived]

            digests_equal = a.call("digest") == b_node.call("digest")
            rss_a, rss_b = a.quit(), b_node.quit()
            rss_projector = b_node.rss_children
        finally:
            for child in children:
                child.kill()

    print(
        f"run: cold {expected:,} events stored in {cold['stored_seconds']:.2f} s, "
        f"stored and projected in {cold['projected_seconds']:.2f} s, "
        f"session ended after {cold['seconds']:.2f} s "
        f"({cold['bytes_in']:,} B in, {cold['bytes_out']:,} B out, {cold['held']:,} held "
        f"until their deps or prev arrived); catch-up stored in "
        f"{catch['stored_seconds'] * 1000:.0f} ms, returned after "
        f"{catch['seconds'] * 1000:.0f} ms; live {len(live)}/{args.live} arrived; "
        f"rss A {rss_a:.0f} MB, B {rss_b:.0f} MB (its projector {rss_projector:.0f} MB)",
        file=sys.stderr,
        flush=True,
    )
    return RunResult(
        cold_events=expected / cold["projected_seconds"],
        cold_mb=cold["bytes_in"] / cold["projected_seconds"] / 1e6,
        cold_held=cold["held"],
        rss_a=rss_a,
        rss_b=rss_b,
        rss_projector=rss_projector,
        catch_up_ms=catch["stored_seconds"] * 1000,
        catch_up_bytes=catch["bytes_in"] + catch["bytes_out"],
        catch_up_encoded=added["bytes"],
        live_ms=live,
        live_lost=args.live - len(live),
        digests_equal=digests_equal,
    )


def websocket_rate(messages: int, *, deflate: bool) -> float:
    """Binary 200 B messages per second from this process to a sink process on loopback,
    timed until the sink has counted the last one."""
    sink = Child("--role", "sink")
    try:
        port = sink.reply()["port"]
        rate = asyncio.run(_send_messages(port, messages, deflate))
        sink.quit()
    finally:
        sink.kill()
    return rate


async def _send_messages(port: int, messages: int, deflate: bool) -> float:
    pool = [os.urandom(WS_MESSAGE) for _ in range(WS_POOL)]
    async with connect(
        f"ws://127.0.0.1:{port}/", compression="deflate" if deflate else None, max_size=None
    ) as ws:
        negotiated = ws.response is not None and "permessage-deflate" in ws.response.headers.get(
            "Sec-WebSocket-Extensions", ""
        )
        if negotiated != deflate:
            raise RuntimeError(f"permessage-deflate negotiated: {negotiated}, wanted {deflate}")
        for message in pool:  # warm up: connection, buffers, compressor
            await ws.send(message)
        await ws.send("count")
        await ws.recv()
        start = time.perf_counter()
        for i in range(messages):
            await ws.send(pool[i % WS_POOL])
        await ws.send("count")
        counted = int(await ws.recv())
        elapsed = time.perf_counter() - start
    if counted != messages:
        raise RuntimeError(f"the sink counted {counted} messages, not {messages}")
    return messages / elapsed


def prepare(template: Path, args: argparse.Namespace) -> int:
    """Fill node A in ``template`` unless it already holds one; return its event count."""
    if (template / LOG_FILE).exists():

        async def count() -> int:
            node = await Node.open(template)
            try:
                return await node.store.count()
            finally:
                await node.close()

        events = asyncio.run(count())
        print(f"node A: reusing {events:,} events in {template}", file=sys.stderr, flush=True)
        return events
    start = time.perf_counter()
    events = asyncio.run(fill(template, args.events, args.authors))
    print(
        f"node A: filled with {events:,} events by {args.authors} authors in "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return events


def _line(name: str, value: float, unit: str, digits: int = 0) -> str:
    return f"{name}: {value:,.{digits}f} {unit}"


def _p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def orchestrate(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if args.template is not None:
            template = Path(args.template)
        else:
            template = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="potluck-bench-a-")))
                / "A"
            )
        expected = prepare(template, args)

        if args.profile:
            run_once(template, expected, args, profile=True)
            print("note: the profiled cold sync above is not counted", file=sys.stderr)

        results: list[RunResult] = []
        ws_plain: list[float] = []
        ws_deflate: list[float] = []
        sqlite_rates: list[float] = []
        verify_rates: list[float] = []
        for _ in range(args.runs):
            result = run_once(template, expected, args)
            assert result is not None
            results.append(result)
            ws_plain.append(websocket_rate(args.ws_messages, deflate=False))
            ws_deflate.append(websocket_rate(args.ws_messages, deflate=True))
            sqlite_rates.append(ceiling.sqlite_insert_rate(min(expected, 200_000)))
            verify_rates.append(ceiling.ed25519_rates(args.sigs)[1])

    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    cold = med([r.cold_events for r in results])
    plain, deflate = med(ws_plain), med(ws_deflate)
    sqlite_rate, verify_rate = med(sqlite_rates), med(verify_rates)
    catch_bytes = med([r.catch_up_bytes for r in results])
    encoded = med([r.catch_up_encoded for r in results])
    equal = all(r.digests_equal for r in results)
    lost = sum(r.live_lost for r in results)

    print(f"node A: {expected:,} events; {args.runs} run(s)", flush=True)
    print(_line("cold sync", cold, "events/s"))
    print(_line("cold sync", med([r.cold_mb for r in results]), "MB/s", 1))
    print(_line("cold sync held out of order", med([r.cold_held for r in results]), "events"))
    print(_line("peak rss A", med([r.rss_a for r in results]), "MB"))
    print(_line("peak rss B", med([r.rss_b for r in results]), "MB"))
    print(_line("peak rss B projector", med([r.rss_projector for r in results]), "MB"))
    print(_line("catch-up 1000", med([r.catch_up_ms for r in results]), "ms"))
    print(_line("catch-up 1000", catch_bytes, "bytes"))
    print(_line("live p50", med([med(r.live_ms) for r in results if r.live_ms]), "ms", 1))
    print(_line("live p99", med([_p99(r.live_ms) for r in results if r.live_ms]), "ms", 1))
    print(_line("websocket loopback", plain, "msgs/s"))
    print(_line("websocket loopback deflate", deflate, "msgs/s"))
    print(_line("sqlite insert (raw)", sqlite_rate, "rows/s"))
    print(_line("ed25519 verify", verify_rate, "verifies/s"))
    print(f"cold sync / sqlite ceiling: {cold / sqlite_rate:.2f}")
    print(f"cold sync / ed25519 verify ceiling: {cold / verify_rate:.2f}")
    print(f"websocket deflate / plain: {deflate / plain:.2f}")
    print(f"catch-up 1000 wire / events' encoded size: {catch_bytes / encoded:.2f}")
    print(f"live events lost: {lost}")
    print(f"digest A == B: {'yes' if equal else 'no'}")
    return 0 if equal and not lost else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events node A holds")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--authors", type=int, default=5, help="authors of A's events")
    parser.add_argument("--live", type=int, default=200, help="live events per run")
    parser.add_argument("--gap", type=float, default=20.0, help="ms between live events")
    parser.add_argument(
        "--ws-messages", type=int, default=100_000, help="websocket messages per loopback run"
    )
    parser.add_argument("--sigs", type=int, default=20_000, help="Ed25519 ops per run")
    parser.add_argument(
        "--template", metavar="DIR", help="keep node A here; reused when it already holds a node"
    )
    parser.add_argument(
        "--one-shot",
        action="store_true",
        help="cold sync with Node.sync_once (potluck sync) instead of a long-lived session",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra, uncounted cold sync under cProfile in B (top 20 to stderr)",
    )
    parser.add_argument("--role", choices=("serve", "client", "sink"), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--group-from", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "serve":
        asyncio.run(serve_role(Path(args.data_dir)))
        return 0
    if args.role == "client":
        asyncio.run(client_role(Path(args.data_dir), Path(args.group_from)))
        return 0
    if args.role == "sink":
        asyncio.run(sink_role())
        return 0
    for name in ("events", "runs", "authors", "live", "ws_messages", "sigs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.events < args.authors + ITEMS + LOCATIONS:
        parser.error("--events is too small for the definitions and the authors")
    if args.gap < 0:
        parser.error("--gap must not be negative")
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
