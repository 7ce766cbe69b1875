"""Nodes with projections on real SQLite files, and random mutual-aid activity between them.

``Node`` is one store with the projection runner hooked in, as a running node has it.
``Network`` is a few authors, each with its own node, doing random valid operations
(``Op``) and exchanging events at random points, so the event set it leaves has
concurrency (work done apart), deps and late arrivals. Everything is deterministic
given the operations: the group is fixed and every node reads one shared fake clock
(each with its own skew), so hypothesis can replay a failure.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helpers import make_key
from nacl.signing import SigningKey

from eventlog import body as b
from eventlog.clock import HybridClock
from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import Store
from projections.runner import Runner

START_MS = 1_700_000_000_000  # 2023-11-14: in the past, so no event is "from the future"

TABLES = (
    "members",
    "items",
    "locations",
    "board_entries",
    "board_claims",
    "inventory",
    "roster_shifts",
    "roster_signups",
    "roster_hours",
    "roles",
    "role_assignments",
)

Draft = tuple[str, Mapping[str, object]]


def fixed_group(n: int = 1) -> Group:
    """A group whose id and secret are fixed, so event hashes repeat from run to run."""
    return Group(bytes([n]) * 32, bytes([n + 100]) * 32, f"Group {n}")


class WallClock:
    """One fake wall clock for every node of a test: each read advances it 1 ms."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now = start_ms

    def reader(self, skew_ms: int = 0) -> Callable[[], int]:
        def now_ms() -> int:
            self.now += 1
            return self.now + skew_ms

        return now_ms


class Node:
    """One log with the projections hooked in, on its own SQLite file."""

    def __init__(self, store: Store, runner: Runner) -> None:
        self.store = store
        self.runner = runner

    @classmethod
    async def open(
        cls,
        path: Path,
        group: Group,
        *,
        clock: Callable[[], int] | None = None,
        durable: bool = False,
    ) -> Node:
        store = await Store.open(path, group)
        if clock is not None:
            store.clock = HybridClock(clock)
        if not durable:  # tests do not need fsync; the log's rules are the same
            await store.read(lambda db: db.execute("PRAGMA synchronous = OFF"))
        runner = Runner()
        await store.write(runner.setup)
        runner.attach(store)
        return cls(store, runner)

    async def close(self) -> None:
        await self.store.close()

    # -- writing -------------------------------------------------------------------

    async def join(self, key: SigningKey, name: str) -> Envelope:
        body = self.store.first_event_body(name, bytes(key.verify_key))
        return await self.append(key, "member.joined", body)

    async def append(self, key: SigningKey, type_: str, body: Mapping[str, object]) -> Envelope:
        (env,) = await self.store.append(key, [(type_, body)])
        return env

    async def append_many(self, key: SigningKey, drafts: Sequence[Draft]) -> list[Envelope]:
        return await self.store.append(key, drafts)

    async def receive(self, envelopes: Iterable[Envelope]) -> list[Envelope]:
        """Store a peer's events; return those that entered the log (held ones did not)."""
        result = await self.store.receive(envelopes)
        assert result.rejected == [], result.rejected
        assert result.forks == []
        return result.stored

    async def send_to(self, other: Node) -> list[Envelope]:
        """Give ``other`` every event it lacks, as one pass of a sync session does.

        Returns the events that entered ``other``'s log.
        """
        vector = {author: seq for author, (seq, _) in (await other.store.vector()).items()}
        stored: list[Envelope] = []
        async for batch in self.store.read_since(vector):
            stored.extend(await other.receive(batch))
        return stored

    # -- reading -------------------------------------------------------------------

    async def events(self) -> list[Envelope]:
        return [env async for env in self.store.iter_events()]

    async def rows(self, table: str) -> list[dict[str, object]]:
        """The rows of a projection table as dicts, without the hidden entity column."""

        def query(db: sqlite3.Connection) -> list[dict[str, object]]:
            cursor = db.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            return [
                {k: v for k, v in zip(names, row, strict=True) if k != "_entity"} for row in cursor
            ]

        return await self.store.read(query)

    async def dump(self) -> dict[str, list[tuple[object, ...]]]:
        """Every projection table, rows sorted: equal dumps mean equal projections.

        The hidden entity column holds this node's number for the entity, so it is
        shown as the entity's name, which every node and a rebuild agree on."""

        def query(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
            names = dict(db.execute("SELECT id, name FROM proj_entities"))
            out = {}
            for table in TABLES:
                rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
                out[table] = sorted(((names[row[0]], *row[1:]) for row in rows), key=repr)
            return out

        return await self.store.read(query)

    async def digest(self) -> str:
        return await self.store.read(self.runner.digest)

    async def rebuild(self) -> str:
        """Rebuild every projection from the log; return the digest after it."""
        await self.store.write(self.runner.rebuild)
        return await self.digest()

    async def vector(self) -> dict[bytes, tuple[int, bytes]]:
        return await self.store.vector()


# -- random activity ----------------------------------------------------------------

ITEMS = ("rice", "beans", "milk")
LOCATIONS = ("pantry", "fridge")
ROLES = ("driver", "cook")
STARTS = ("2026-11-27T09:00", "2026-11-30T18:30", "2027-01-01T08:00")  # W48, W49, 2026-W53
DELTAS = (-4, -2, -1, 1, 2, 3, 5, 8)
STEPS = ("claim.confirmed", "claim.declined", "claim.released", "claim.fulfilled")

KINDS = (
    "item",
    "location",
    "adjust",
    "count",
    "burst",
    "offer",
    "need",
    "withdraw",
    "claim",
    "claim",
    "step",
    "step",
    "shift",
    "signup",
    "unsignup",
    "complete",
    "role",
    "assign",
    "junk",
    "sync",
    "sync",
    "sync",
)
"""Operation kinds; repeats make a kind more frequent when drawn uniformly. Not drawn
here: ``settle`` (a release or fulfilment, for tests/test_conflicts.py)."""

Op = tuple[str, int, int, int]
"""(kind, actor, x, y): the actor is an author's index, x and y pick among choices."""


@dataclass
class Peer:
    """One author with its own node, and what that node holds (to pick known targets)."""

    name: str
    key: SigningKey
    node: Node
    seen: dict[bytes, Envelope] = field(default_factory=dict)

    @property
    def author(self) -> bytes:
        return bytes(self.key.verify_key)

    def known(self, *types: str) -> list[Envelope]:
        return [env for env in self.seen.values() if env.type in types]


class Network:
    """Authors each on their own node; ``run`` performs one ``Op``."""

    def __init__(
        self, root: Path, n_authors: int, *, skews: Sequence[int] = (), group: Group | None = None
    ) -> None:
        self.root = root
        self.n = n_authors
        self.group = group or fixed_group()
        self.wall = WallClock()
        self.skews = list(skews) + [0] * (n_authors - len(skews))
        self.peers: list[Peer] = []
        self.nodes: list[Node] = []  # every node opened, closed by ``close``

    async def start(self) -> Network:
        """Open a node per author and write each author's ``member.joined``.

        Call ``close`` afterwards even when this raises.
        """
        for i in range(self.n):
            name = f"Member {i}"
            node = await self._open(f"peer{i}.db", self.skews[i])
            peer = Peer(name, make_key(i), node)
            env = await node.join(peer.key, name)
            peer.seen[env.hash] = env
            self.peers.append(peer)
        return self

    async def fresh(self) -> Node:
        """An empty node of the same group (a new device joining later)."""
        return await self._open(f"fresh{len(self.nodes)}.db", 0)

    async def _open(self, name: str, skew_ms: int) -> Node:
        node = await Node.open(self.root / name, self.group, clock=self.wall.reader(skew_ms))
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        """Close every node this network opened (their threads would outlive the test)."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            await node.close()

    async def run_all(self, ops: Iterable[Op]) -> None:
        for op in ops:
            await self.run(op)

    async def run(self, op: Op) -> None:
        kind, actor, x, y = op
        peer = self.peers[actor % self.n]
        if kind == "sync":
            other = self.peers[x % self.n]
            if other is not peer:
                if y % 3 in (0, 2):
                    await self.sync(peer, other)
                if y % 3 in (1, 2):
                    await self.sync(other, peer)
            return
        drafts = self.drafts(peer, kind, x, y)
        if drafts:
            for env in await peer.node.append_many(peer.key, drafts):
                peer.seen[env.hash] = env

    async def sync(self, source: Peer, target: Peer) -> None:
        for env in await source.node.send_to(target.node):
            target.seen[env.hash] = env

    async def sync_all(self) -> None:
        """Sync twice around the ring: each pass stores all it is given, so every node
        then holds every event."""
        for _ in range(2):
            for i, peer in enumerate(self.peers):
                await self.sync(peer, self.peers[(i + 1) % self.n])
        vectors = [await peer.node.vector() for peer in self.peers]
        assert all(v == vectors[0] for v in vectors), "nodes differ after syncing all"

    def union(self) -> list[Envelope]:
        """Every distinct event any node holds, in canonical order."""
        merged: dict[bytes, Envelope] = {}
        for peer in self.peers:
            merged.update(peer.seen)
        return sorted(merged.values(), key=lambda env: env.key)

    def drafts(self, peer: Peer, kind: str, x: int, y: int) -> list[Draft]:
        """The events ``peer`` writes for one op; [] when it has nothing to act on."""
        if kind == "item":
            return [
                (
                    "item.defined",
                    {
                        "slug": ITEMS[x % 3],
                        "name": f"Item {y % 4}",
                        "unit": "kg",
                        "category": "food",
                        "storage": b.STORAGES[y % 3],
                    },
                )
            ]
        if kind == "location":
            return [
                (
                    "location.defined",
                    {
                        "slug": LOCATIONS[x % 2],
                        "name": f"Place {y % 4}",
                        "kind": b.LOCATION_KINDS[y % 6],
                    },
                )
            ]
        if kind == "adjust":
            return [_adjust(x, y)]
        if kind == "count":
            return [_count(x, y)]
        if kind == "burst":  # several events in one append, one transaction
            return [_adjust(x, y), _count(x, y + 3), _adjust(x, y + 1)][: 1 + y % 3]
        if kind == "offer":
            body: dict[str, object] = {"title": f"Offer {x % 5}", "category": "food"}
            if y % 5:
                body["quantity"] = 1 + y % 10
            if y % 2:
                body["item"] = ITEMS[x % 3]
            return [("offer.posted", body)]
        if kind == "need":
            need: dict[str, object] = {
                "title": f"Need {x % 5}",
                "category": "food",
                "urgency": b.URGENCIES[y % 3],
            }
            if y % 4:
                need["quantity"] = 1 + y % 6
            return [("need.posted", need)]
        if kind == "withdraw":
            own = [e for e in peer.known("offer.posted", "need.posted") if e.author == peer.author]
            if not own:
                return []
            post = own[x % len(own)]
            if post.type == "offer.posted":
                return [("offer.withdrawn", {"offer": post.hash})]
            return [("need.withdrawn", {"need": post.hash})]
        if kind == "claim":
            targets = peer.known("offer.posted", "need.posted")
            if not targets:
                return []
            return [
                ("claim.made", {"target": targets[x % len(targets)].hash, "quantity": 1 + y % 6})
            ]
        if kind == "step":
            claims = peer.known("claim.made")
            if not claims:
                return []
            claim = claims[x % len(claims)]
            target = peer.seen.get(claim.body["target"])  # type: ignore[arg-type]
            if y % 4 == 3:  # anyone may try anything; the fold ignores what is not theirs
                step = STEPS[(y // 4) % 4]
            elif target is not None and peer.author == target.author:
                step = ("claim.confirmed", "claim.declined", "claim.fulfilled")[y % 4]
            elif peer.author == claim.author:
                step = ("claim.released", "claim.fulfilled", "claim.released")[y % 4]
            else:
                step = STEPS[y % 4]
            return [(step, {"claim": claim.hash})]
        if kind == "settle":  # the last word each side may have: release or fulfil
            claims = peer.known("claim.made")
            if not claims:
                return []
            claim = claims[x % len(claims)]
            if peer.author == claim.author and y % 2:
                return [("claim.released", {"claim": claim.hash})]
            return [("claim.fulfilled", {"claim": claim.hash})]
        if kind == "shift":
            start = STARTS[y % 3]
            end = start[:11] + f"{int(start[11:13]) + 2:02d}" + start[13:]
            return [
                (
                    "shift.scheduled",
                    {
                        "role": ROLES[x % 2],
                        "location": LOCATIONS[y % 2],
                        "start": start,
                        "end": end,
                        "slots": 1 + x % 3,
                    },
                )
            ]
        if kind in ("signup", "unsignup", "complete"):
            shifts = peer.known("shift.scheduled")
            if not shifts:
                return []
            shift = shifts[x % len(shifts)].hash
            if kind == "signup":
                return [("shift.signed_up", {"shift": shift})]
            if kind == "unsignup":
                return [("shift.withdrawn", {"shift": shift})]
            return [("shift.completed", {"shift": shift, "hours": 0.5 * (1 + y % 8)})]
        if kind == "role":
            return [
                (
                    "role.defined",
                    {
                        "slug": ROLES[x % 2],
                        "name": f"Role {y % 3}",
                        "description": "",
                        "weekly_hours": float(y % 10),
                    },
                )
            ]
        if kind == "assign":
            assign: dict[str, object] = {
                "role": ROLES[x % 2],
                "member": self.peers[y % self.n].author,
            }
            if y % 2:
                assign["until"] = f"2027-0{1 + x % 9}-15"
            return [("role.assigned", assign)]
        if kind == "junk":  # stored and relayed, skipped by projections
            junk: list[Draft] = [
                ("note.pinned", {"text": f"note {x}"}),
                (
                    "stock.adjusted",
                    {"item": "rice", "location": "pantry", "delta": 0, "reason": "donation"},
                ),
                ("offer.posted", {"title": "   "}),
                ("claim.made", {"target": _unknown_id(x), "quantity": 0}),
            ]
            return [junk[y % 4]]
        raise ValueError(f"unknown op kind {kind!r}")


def _adjust(x: int, y: int) -> Draft:
    delta = DELTAS[(x + y) % len(DELTAS)]
    body: dict[str, object] = {
        "item": ITEMS[x % 3],
        "location": LOCATIONS[y % 2],
        "delta": delta,
        "reason": "donation" if delta > 0 else "distribution",
    }
    if delta > 0 and y % 3:
        body["expires"] = f"2026-12-{1 + y % 28:02d}"
    return ("stock.adjusted", body)


def _count(x: int, y: int) -> Draft:
    return ("stock.counted", {"item": ITEMS[x % 3], "location": LOCATIONS[y % 2], "count": y % 20})


def _unknown_id(n: int) -> bytes:
    """An id no event has: a claim on it targets something never posted."""
    return hashlib.blake2b(b"never posted %d" % n, digest_size=32).digest()


def shuffled_delivery(
    envelopes: Sequence[Envelope], rng: random.Random, max_dups: int = 10, max_chunk: int = 8
) -> list[list[Envelope]]:
    """The events in a random order, some twice, cut into chunks of random size."""
    delivery = list(envelopes)
    rng.shuffle(delivery)
    for _ in range(rng.randint(0, max_dups)):
        delivery.insert(rng.randint(0, len(delivery)), rng.choice(envelopes))
    chunks = []
    while delivery:
        size = rng.randint(1, max_chunk)
        chunks.append(delivery[:size])
        delivery = delivery[size:]
    return chunks
