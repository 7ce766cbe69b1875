"""Crash points: a node that works until it is SIGKILLed, and the checks after each kill.

As a script (``python tests/crash_worker.py ACTIVITY DATA_DIR SEED [EVENTS_FILE]``) it
opens the node in DATA_DIR the way every command does (``Node.open``: WAL recovery,
projection setup) and works forever at one activity:

- ``append``: ``Store.append`` of 1 to 12 typed bodies at a time (stock deltas and counts,
  offers, needs, claims), projections folded in the same transaction;
- ``receive``: a sync's receive side: the batches of EVENTS_FILE (one author's run each,
  as a peer sends them, from a four-member history with deps) go to ``Store.receive``;
  a restarted worker first asks the store what it has (``Store.vector``) and sends only
  what lies beyond, as a peer answering EventsWanted does;
- ``project``: projection updates: full ``Runner.rebuild``s, ``stock.counted`` appends
  (each re-folds its item's whole history) and late batches of another member's old
  stock deltas from EVENTS_FILE (each re-folds the entities it touches).

Before each operation it prints ``begin <op>``, after the commit ``ack <op> <what>``,
each line flushed: an ``ack`` line is a promise that what it names survives any crash.

As a module it is the harness (``run_activity``): it prepares a node, starts the worker,
kills it at a seeded random moment, and after each kill checks the data directory:
``PRAGMA integrity_check`` is ok; the node reopens; every author's chain verifies,
``heads`` matches the events, projections equal a rebuild (``node.doctor.examine``, in
a rolled-back transaction) and, separately, the projection digest equals the digest
after ``Runner.rebuild`` in a copy of the file; every acknowledged event is in the log
(or, for received events still waiting for a predecessor, in ``pending``); and the
vector the node would send a peer covers every event in its log, so the next sync
starts right after them (the restarted receive worker also reports how many events it
was sent again that the log already had: it must be 0).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from helpers import make_key
from nacl.signing import SigningKey

from eventlog import body as b
from eventlog import events
from eventlog.clock import HybridClock, system_ms
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof
from node import doctor
from node.app import LOG_FILE, Node
from projections.runner import Runner

WORKER = Path(__file__).resolve()
ROOT = WORKER.parent.parent
ITEMS = ("rice", "beans", "milk", "oats")
LOCATIONS = ("pantry", "fridge")
DAY_MS = 86_400_000


# -- bodies ------------------------------------------------------------------------


def definitions() -> list[b.BaseBody]:
    bodies: list[b.BaseBody] = [
        b.LocationDefined(slug=slug, name=slug.title(), kind="pantry") for slug in LOCATIONS
    ]
    bodies += [
        b.ItemDefined(slug=slug, name=slug.title(), unit="pack", category="food", storage="ambient")
        for slug in ITEMS
    ]
    return bodies


def random_body(rng: random.Random, posts: list[bytes]) -> b.BaseBody:
    """A body referring only to defined slugs and to offers/needs in ``posts``."""
    item, location = rng.choice(ITEMS), rng.choice(LOCATIONS)
    roll = rng.random()
    if roll < 0.45:
        delta = rng.choice((-3, -1, 1, 2, 5, 8))
        return b.StockAdjusted(
            item=item,
            location=location,
            delta=delta,
            reason="donation" if delta > 0 else "distribution",
        )
    if roll < 0.55:
        return b.StockCounted(item=item, location=location, count=rng.randrange(40))
    if roll < 0.7:
        return b.OfferPosted(title=f"Offer {rng.randrange(10**6)}", quantity=rng.randint(1, 9))
    if roll < 0.8:
        return b.NeedPosted(title=f"Need {rng.randrange(10**6)}", quantity=rng.randint(1, 9))
    if posts:
        return b.ClaimMade(target=rng.choice(posts[-30:]), quantity=1)
    return b.OfferPosted(title="First offer", quantity=3)


# -- pre-made events for receive and project ---------------------------------------


class _Author:
    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.author = bytes(key.verify_key)
        self.head: Envelope | None = None
        self.seen: dict[bytes, int] = {}  # other author -> seq named in our deps


def history(
    group: Group, n_authors: int, n_events: int, seed: int, start_ms: int, key_base: int = 1
) -> list[Envelope]:
    """A causally valid history of several members, with deps, in creation order."""
    rng = random.Random(seed)
    now = [start_ms]

    def wall() -> int:
        now[0] += rng.randint(1, 400)
        return now[0]

    clock = HybridClock(wall)
    authors = [_Author(make_key(key_base + i)) for i in range(n_authors)]
    out: list[Envelope] = []
    posts: list[bytes] = []
    posted: dict[bytes, Envelope] = {}
    queue = definitions()
    while len(out) < n_events:
        who = authors[0] if queue and authors[0].head else rng.choice(authors)
        body: dict[str, object]
        if who.head is None:
            type_, body = (
                "member.joined",
                {
                    "name": f"Member {who.author.hex()[:4]}",
                    "proof": membership_proof(group, who.author),
                },
            )
            deps: list[Envelope] = []
        else:
            parsed = queue.pop(0) if who is authors[0] and queue else random_body(rng, posts)
            type_, body = parsed.TYPE, dict(parsed.to_body())
            deps = [
                a.head
                for a in authors
                if a is not who
                and a.head is not None
                and who.seen.get(a.author, 0) < a.head.seq
                and rng.random() < 0.5
            ]
            if isinstance(parsed, b.ClaimMade):  # a claimer has seen what they claim
                target = posted[parsed.target]
                owner = next(a for a in authors if a.author == target.author)
                if (
                    owner is not who
                    and who.seen.get(owner.author, 0) < target.seq
                    and owner.head not in deps
                ):
                    assert owner.head is not None
                    deps.append(owner.head)
        prev = who.head
        hlc = clock.tick(prev.hlc if prev else 0, *(d.hlc for d in deps))
        env = events.create(
            who.key,
            group=group.id,
            seq=prev.seq + 1 if prev else 1,
            prev=prev.hash if prev else None,
            deps=[d.hash for d in deps],
            hlc=hlc,
            type=type_,
            body=body,
        )
        for dep in deps:
            who.seen[dep.author] = dep.seq
        who.head = env
        out.append(env)
        if type_ in ("offer.posted", "need.posted"):
            posts.append(env.hash)
            posted[env.hash] = env
    return out


def sync_batches(
    envs: Sequence[Envelope], rng: random.Random, *, round_size: int = 150, max_batch: int = 80
) -> list[list[Envelope]]:
    """What a peer sends over several sessions: per round of new events, author by author
    (sorted by key), each author's run cut into batches. Deps on another author's events
    of the same round may arrive after the event (held, then released)."""
    batches: list[list[Envelope]] = []
    for start in range(0, len(envs), round_size):
        round_ = envs[start : start + round_size]
        for author in sorted({e.author for e in round_}):
            run = sorted((e for e in round_ if e.author == author), key=lambda e: e.seq)
            while run:
                cut = rng.randint(1, max_batch)
                batches.append(run[:cut])
                run = run[cut:]
    return batches


def write_batches(path: Path, batches: Sequence[Sequence[Envelope]]) -> None:
    path.write_bytes(
        msgpack.packb([[e.raw for e in batch] for batch in batches], use_bin_type=True)
    )


def read_batches(path: Path) -> list[list[Envelope]]:
    return [
        [events.decode(raw) for raw in batch]
        for batch in msgpack.unpackb(path.read_bytes(), raw=False)
    ]


# -- the worker ----------------------------------------------------------------------


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def work(activity: str, data_dir: Path, seed: int, events_file: Path | None) -> None:
    rng = random.Random(seed)
    node = await Node.open(data_dir)
    say("ready")
    posts = await node.store.read(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT hash FROM events WHERE type IN ('offer.posted', 'need.posted') "
                "ORDER BY id DESC LIMIT 30"
            )
        ]
    )
    batches = read_batches(events_file) if events_file else []
    resume = await _resume(node, batches)
    if activity == "receive":
        for index in resume:
            await _receive(node, index, batches[index])
        say("done")
        await asyncio.Event().wait()
    pending_late = list(resume)
    while True:
        roll = rng.random()
        if activity == "append" or roll < 0.35:
            kind = "append" if activity == "append" else "count"
            say(f"begin {kind}")
            if kind == "append":
                bodies = [random_body(rng, posts) for _ in range(rng.randint(1, 12))]
            else:
                bodies = [
                    b.StockCounted(
                        item=rng.choice(ITEMS),
                        location=rng.choice(LOCATIONS),
                        count=rng.randrange(50),
                    )
                    for _ in range(3)
                ]
            written = await node.store.append(node.key, bodies)
            posts += [e.hash for e in written if e.type in ("offer.posted", "need.posted")]
            say(f"ack {kind} {written[-1].seq}")
        elif roll < 0.7 or not pending_late:
            say("begin rebuild")
            folded = await node.store.write(node.runner.rebuild)
            say(f"ack rebuild {folded}")
        else:
            index = pending_late.pop(0)
            await _receive(node, index, batches[index])


async def _resume(node: Node, batches: list[list[Envelope]]) -> list[int]:
    """Indexes of batches to send, and only their events beyond the node's vector: what a
    peer answering EventsWanted would send. Whole batches already in the log are skipped."""
    vector = {a: s for a, (s, _) in (await node.store.vector()).items()}
    todo = []
    for index, batch in enumerate(batches):
        rest = [e for e in batch if e.seq > vector.get(e.author, 0)]
        if rest:
            batches[index] = rest
            todo.append(index)
    return todo


async def _receive(node: Node, index: int, batch: list[Envelope]) -> None:
    say(f"begin receive {index}")
    result = await node.store.receive(batch)
    if result.rejected:
        say(f"rejected {index} {result.rejected[0][1]}")
    say(f"ack receive {index} {result.duplicates}")


# -- the harness ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much there is to do: enough that most kills land inside an operation."""

    receive_events: int = 2500
    """The four-member history a receive worker is sent, over all its restarts."""
    project_events: int = 2000
    """Events in the log that a projection worker rebuilds."""
    late_events: int = 1500
    """Old events of a late member, received in batches of 25 by a projection worker."""


@dataclass
class Outcome:
    """The figures of one activity's kills."""

    activity: str
    kills: int = 0
    recoveries_ok: int = 0
    acknowledged: int = 0
    acknowledged_events: int = 0
    lost: int = 0
    resent: int = 0
    in_flight: int = 0
    """Kills that landed while an operation had begun and not been acknowledged."""
    landed: Counter[str] = field(default_factory=Counter)
    """Where the kills landed: opening, between operations, or inside which operation."""
    recovery_s: list[float] = field(default_factory=list)
    check_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def figures(self) -> list[str]:
        a = self.activity
        rec = self.recovery_s or [0.0]
        return [
            f"{a} kills: {self.kills} kills",
            f"{a} kills while an operation was in flight: {self.in_flight} kills",
            *(f"{a} kills {where}: {n} kills" for where, n in sorted(self.landed.items())),
            f"{a} recoveries ok: {self.recoveries_ok} kills",
            f"{a} acknowledged: {self.acknowledged} operations",
            f"{a} acknowledged: {self.acknowledged_events} events",
            f"{a} acknowledged lost: {self.lost} events",
            f"{a} re-sent after restart: {self.resent} events",
            f"{a} recovery (open after kill) median: {statistics.median(rec) * 1000:.0f} ms",
            f"{a} recovery (open after kill) max: {max(rec) * 1000:.0f} ms",
            f"{a} checks per kill median: {statistics.median(self.check_s or [0.0]):.2f} s",
        ]


class Worker:
    """One run of the worker, its lines collected as they arrive."""

    def __init__(self, activity: str, data_dir: Path, seed: int, events_file: Path | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        args = [sys.executable, str(WORKER), activity, str(data_dir), str(seed)]
        if events_file is not None:
            args.append(str(events_file))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.lines: list[str] = []
        self.acks = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                continue  # a line cut by the kill was never a promise
            line = raw.decode().strip()
            self.lines.append(line)
            if line.startswith("ack") or line == "done":
                self.acks.set()

    def kill(self) -> str:
        """SIGKILL; return stderr. A worker that died by itself is a failure."""
        exited = self.proc.poll()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        stderr = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        if exited is not None:
            raise AssertionError(f"the worker died by itself ({exited}): {stderr[-2000:]}")
        return stderr


@dataclass
class Plan:
    """One data directory and what has been acknowledged in it so far."""

    data_dir: Path
    events_file: Path | None
    batches: list[list[Envelope]]
    own_seq: int = 0
    acked_batches: set[int] = field(default_factory=set)
    done: bool = False


async def prepare(activity: str, data_dir: Path, seed: int, sizes: Sizes) -> Plan:
    """A node with catalogue definitions; for ``project`` 2,000 events to fold, and a
    late member's old events; for ``receive`` a four-member history to receive."""
    group = Group.new("Crash points")
    node = await Node.init(data_dir, "Crash", group)
    events_file: Path | None = None
    batches: list[list[Envelope]] = []
    rng = random.Random(seed)
    try:
        if activity == "receive":
            envs = history(
                group, 4, sizes.receive_events, seed, system_ms() - 10 * DAY_MS, key_base=1
            )
            batches = sync_batches(envs, rng)
        else:
            written = await node.store.append(node.key, definitions())
            if activity == "project":
                posts: list[bytes] = []
                for _ in range(sizes.project_events // 100):
                    written = await node.store.append(
                        node.key, [random_body(rng, posts) for _ in range(100)]
                    )
                    posts += [e.hash for e in written if e.type == "offer.posted"]
                late = history(
                    group, 1, sizes.late_events, seed, system_ms() - 30 * DAY_MS, key_base=200
                )
                batches = [late[i : i + 25] for i in range(0, len(late), 25)]
        if batches:
            events_file = data_dir.parent / f"{data_dir.name}.events"
            write_batches(events_file, batches)
        own = (await node.store.heads())[node.author].seq
    finally:
        await node.close()
    return Plan(data_dir, events_file, batches, own_seq=own)


def _record(plan: Plan, lines: Sequence[str], outcome: Outcome) -> None:
    for line in lines:
        parts = line.split()
        if parts[:1] == ["ack"]:
            outcome.acknowledged += 1
            if parts[1] in ("append", "count"):
                seq = int(parts[2])
                assert seq > plan.own_seq, f"acknowledged seq {seq} twice"
                outcome.acknowledged_events += seq - plan.own_seq
                plan.own_seq = seq
            elif parts[1] == "receive":
                index = int(parts[2])
                if index not in plan.acked_batches:
                    outcome.acknowledged_events += len(plan.batches[index])
                plan.acked_batches.add(index)
                outcome.resent += int(parts[3])
        elif parts[:1] == ["rejected"]:
            outcome.failures.append(f"{plan.data_dir.name}: {line}")
        elif line == "done":
            plan.done = True
    if lines and lines[-1].startswith("begin"):
        outcome.in_flight += 1
        outcome.landed[f"during {lines[-1].split()[1]}"] += 1
    elif "ready" not in lines:
        outcome.landed["while opening the node"] += 1
    elif lines[-1] == "done":
        outcome.landed["idle, all work done"] += 1
    else:
        outcome.landed["between operations"] += 1


async def check(plan: Plan, outcome: Outcome) -> list[str]:
    """Everything that must hold after a kill; returns the problems found."""
    problems: list[str] = []
    path = plan.data_dir / LOG_FILE
    db = sqlite3.connect(path)
    try:
        integrity = [r[0] for r in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()
    if integrity != ["ok"]:
        return [f"integrity_check: {integrity[:3]}"]
    started = time.perf_counter()
    node = await Node.open(plan.data_dir)
    outcome.recovery_s.append(time.perf_counter() - started)
    try:
        head = (await node.store.heads()).get(node.author)
        if head is None or head.seq < plan.own_seq:
            lost = plan.own_seq - (head.seq if head else 0)
            outcome.lost += lost
            problems.append(f"own head {head.seq if head else 0} < acknowledged {plan.own_seq}")
        vector = await node.store.vector()
        in_log = await node.store.read(_in_log_by_author)
        for author, top in in_log.items():
            if vector.get(author, (0, b""))[0] != top:
                problems.append(
                    f"vector says {vector.get(author)} for {author.hex()[:8]} "
                    f"but the log holds up to #{top}: sync would re-send"
                )
        for index in sorted(plan.acked_batches):
            for env in plan.batches[index]:
                where = await node.store.read(functools.partial(_where, env=env))
                if where is None:
                    outcome.lost += 1
                    problems.append(f"acknowledged {env.author.hex()[:8]}#{env.seq} is gone")
                elif where == "events" and vector[env.author][0] < env.seq:
                    problems.append(f"{env.author.hex()[:8]}#{env.seq} beyond the vector")
    finally:
        await node.close()
    report = await doctor.examine(plan.data_dir)
    problems += [f"doctor: {f.code}: {f.message}" for f in report.findings if f.severity == "error"]
    before, after = _rebuild_in_copy(path)
    if before != after:
        problems.append(f"projection digest {before[:12]} != rebuild {after[:12]}")
    return problems


def _in_log_by_author(db: sqlite3.Connection) -> dict[bytes, int]:
    return dict(db.execute("SELECT author, max(seq) FROM events GROUP BY author"))


def _where(db: sqlite3.Connection, env: Envelope) -> str | None:
    if db.execute(
        "SELECT 1 FROM events WHERE author = ? AND seq = ? AND hash = ?",
        (env.author, env.seq, env.hash),
    ).fetchone():
        return "events"
    if db.execute("SELECT 1 FROM pending WHERE hash = ?", (env.hash,)).fetchone():
        return "pending"
    return None


def _rebuild_in_copy(path: Path) -> tuple[str, str]:
    """(digest as found, digest after Runner.rebuild) in a throwaway copy of the log."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = sqlite3.connect(Path(tmp) / "copy.db", isolation_level=None)
        source = sqlite3.connect(path)
        try:
            source.backup(copy)
        finally:
            source.close()
        try:
            runner = Runner()
            before = runner.digest(copy)
            copy.execute("BEGIN")
            runner.setup(copy)
            runner.rebuild(copy)
            copy.execute("COMMIT")
            return before, runner.digest(copy)
        finally:
            copy.close()


def run_activity(
    activity: str,
    root: Path,
    seed: int,
    kills: int,
    *,
    sizes: Sizes = Sizes(),
    max_delay: float = 0.6,
    early: float = 0.15,
    progress: bool = False,
) -> Outcome:
    """Kill ``kills`` workers doing ``activity`` at seeded random moments; check each."""
    rng = random.Random(f"{activity}-{seed}")
    outcome = Outcome(activity)
    generation = 0

    def fresh() -> Plan:
        nonlocal generation
        generation += 1
        data_dir = root / f"{activity}-{generation}"
        return asyncio.run(prepare(activity, data_dir, rng.randrange(1 << 30), sizes))

    plan = fresh()
    for k in range(kills):
        if plan.done:
            plan = fresh()
        worker = Worker(activity, plan.data_dir, rng.randrange(1 << 30), plan.events_file)
        if rng.random() < early:
            time.sleep(rng.uniform(0.0, 0.4))  # may land while the node opens
        else:
            if not worker.acks.wait(timeout=120):
                worker.kill()
                raise AssertionError(f"{activity}: the worker never acknowledged")
            time.sleep(rng.uniform(0.0, max_delay))
        stderr = worker.kill()
        outcome.kills += 1
        _record(plan, worker.lines, outcome)
        started = time.perf_counter()
        problems = asyncio.run(check(plan, outcome))
        outcome.check_s.append(time.perf_counter() - started)
        if problems:
            outcome.failures.append(
                f"kill {k} ({plan.data_dir.name}): {problems[:5]} stderr: {stderr[-500:]}"
            )
        else:
            outcome.recoveries_ok += 1
        if progress:
            print(
                f"{activity} kill {k + 1}/{kills}: {'ok' if not problems else 'FAILED'}",
                file=sys.stderr,
                flush=True,
            )
    return outcome


def clean(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(
        work(
            sys.argv[1],
            Path(sys.argv[2]),
            int(sys.argv[3]),
            Path(sys.argv[4]) if len(sys.argv) > 4 else None,
        )
    )
