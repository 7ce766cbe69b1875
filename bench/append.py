"""Append and rebuild throughput of a real node, next to this machine's raw ceilings.

Each run creates a node in a fresh temporary directory (``Node.init``: the store, the
projection runner hooked into it, the ``member.joined``), then appends ``--events``
events through ``Store.append(key, drafts)``, the path ``Node.post`` uses: signed,
durable (WAL, ``synchronous=FULL``), projections updated in the same transaction, in
batches of ``--batch``. Then it rebuilds every projection from the log
(``store.write(runner.rebuild)``) and checks the digest equals the incremental one.

The events are a seeded, realistic mix (``Workload``): item, location and role
definitions first, then about 50% ``stock.adjusted`` (some with an expiry), 5%
``stock.counted``, 15% offers and needs, 20% claims and their steps on recent posts,
10% shifts (scheduled, signed up, completed). Ids of offers, claims and shifts are the
hashes of earlier events, so a batch only refers to events of earlier batches. Only the
``Store.append`` calls are timed; building the next batch of bodies is not.

Usage::

    python bench/append.py [--events 100000] [--batch 1000] [--runs 3] [--profile]

Prints one ``NAME: VALUE UNIT`` line per figure (medians over ``--runs`` runs), the raw
SQLite insert and Ed25519 sign ceilings measured in the same run (bench/ceiling.py), and
the ratios to them. ``--profile`` runs cProfile over the append phase of the first run,
on both the database thread (where the work is) and the event-loop thread, and prints
the top 25 functions by tottime of each to stderr; figures from such a run are slowed
by the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()
ceiling = _path.load("ceiling")
ThreadProfiles = _path.load("_profile").ThreadProfiles

from eventlog import body as b  # noqa: E402
from eventlog.events import Envelope  # noqa: E402
from eventlog.identity import Group  # noqa: E402
from node.app import LOG_FILE, Node  # noqa: E402

SEED = 20_260_601
ITEMS = 50
LOCATIONS = 10
ROLES = 3
RECENT_POSTS = 200
"""Claims go to one of the last this-many offers and needs."""
RECENT_CLAIMS = 500
RECENT_SHIFTS = 100
PROFILE_TOP = 25

WEIGHTS: dict[str, int] = {
    "stock.adjusted": 50,
    "stock.counted": 5,
    "offer.posted": 8,
    "need.posted": 7,
    "claim.made": 11,
    "claim.confirmed": 5,
    "claim.released": 2,
    "claim.fulfilled": 2,
    "shift.scheduled": 4,
    "shift.signed_up": 4,
    "shift.completed": 2,
}
"""Percent of the events after the definitions. A type with nothing to refer to yet (a
claim before any offer, a step on a claim already released) falls back to
``stock.adjusted``, so the mix realised is printed to stderr. This node is the only
author, so it signs up at most once per shift: sign-ups cannot outnumber shifts."""

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
PLACES: tuple[tuple[str, b.LocationKind], ...] = (
    ("pantry", "pantry"),
    ("fridge", "fridge"),
    ("kitchen", "kitchen"),
    ("home", "home"),
    ("hub", "hub"),
    ("other", "other"),
)
STORAGE: tuple[b.Storage, ...] = ("ambient", "fridge", "freezer")
DAY_ONE = date(2026, 6, 1)


class Workload:
    """Deterministic bodies for the mix above, given the ids of what was written so far."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.items = [f"{FOOD[i % len(FOOD)]}-{i}" for i in range(ITEMS)]
        self.locations = [f"{PLACES[i % len(PLACES)][0]}-{i}" for i in range(LOCATIONS)]
        self.roles = [f"role-{i}" for i in range(ROLES)]
        self._types = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())
        self._queue: deque[b.BaseBody] = deque(self._definitions())
        self.posts: deque[bytes] = deque(maxlen=RECENT_POSTS)
        self.claims: deque[tuple[bytes, str]] = deque(maxlen=RECENT_CLAIMS)
        self.shifts: deque[tuple[bytes, str]] = deque(maxlen=RECENT_SHIFTS)
        self.mix: Counter[str] = Counter()

    def _definitions(self) -> list[b.BaseBody]:
        bodies: list[b.BaseBody] = []
        for i, slug in enumerate(self.locations):
            name, kind = PLACES[i % len(PLACES)]
            bodies.append(b.LocationDefined(slug=slug, name=f"{name.title()} {i}", kind=kind))
        for i, slug in enumerate(self.items):
            bodies.append(
                b.ItemDefined(
                    slug=slug,
                    name=f"{FOOD[i % len(FOOD)].title()} {i}",
                    unit="pack",
                    category="food",
                    storage=STORAGE[i % len(STORAGE)],
                )
            )
        for slug in self.roles:
            bodies.append(
                b.RoleDefined(slug=slug, name=slug.title(), description="", weekly_hours=4.0)
            )
        return bodies

    def batch(self, n: int) -> list[b.BaseBody]:
        out: list[b.BaseBody] = []
        while len(out) < n:
            body = self._queue.popleft() if self._queue else self._next()
            self.mix[body.TYPE] += 1
            out.append(body)
        return out

    def observe(self, written: Sequence[Envelope]) -> None:
        """Remember the ids of posts, claims and shifts just written, for later events."""
        for env in written:
            if env.type in ("offer.posted", "need.posted"):
                self.posts.append(env.hash)
            elif env.type == "claim.made":
                self.claims.append((env.hash, "pending"))
            elif env.type == "shift.scheduled":
                self.shifts.append((env.hash, "scheduled"))

    def _next(self) -> b.BaseBody:
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
        if kind.startswith("claim.") and kind != "claim.made":
            step = self._claim_step(kind)
            if step is not None:
                return step
        if kind == "shift.scheduled":
            start = datetime(2026, 6, 1, 9) + timedelta(
                days=rng.randint(0, 90), hours=rng.randint(0, 8)
            )
            return b.ShiftScheduled(
                role=rng.choice(self.roles),
                location=rng.choice(self.locations),
                start=start.isoformat(timespec="minutes"),
                end=(start + timedelta(hours=3)).isoformat(timespec="minutes"),
                slots=rng.randint(1, 6),
            )
        if kind in ("shift.signed_up", "shift.completed"):
            shift = self._shift_step(kind)
            if shift is not None:
                return shift
        return self._adjustment()

    def _adjustment(self) -> b.StockAdjusted:
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

    def _claim_step(self, kind: str) -> b.ClaimStep | None:
        """A step the board allows from the claim's status (this node holds and claims)."""
        allowed = {
            "claim.confirmed": ("pending",),
            "claim.released": ("pending", "confirmed"),
            "claim.fulfilled": ("pending", "confirmed"),
        }[kind]
        for _ in range(8):
            if not self.claims:
                return None
            i = self.rng.randrange(len(self.claims))
            claim, status = self.claims[i]
            if status in allowed:
                new = kind.split(".")[1]
                self.claims[i] = (claim, new)
                cls: type[b.ClaimStep] = {
                    "claim.confirmed": b.ClaimConfirmed,
                    "claim.released": b.ClaimReleased,
                    "claim.fulfilled": b.ClaimFulfilled,
                }[kind]
                return cls(claim=claim)
        return None

    def _shift_step(self, kind: str) -> b.BaseBody | None:
        want = "scheduled" if kind == "shift.signed_up" else "signed_up"
        for _ in range(8):
            if not self.shifts:
                return None
            i = self.rng.randrange(len(self.shifts))
            shift, status = self.shifts[i]
            if status == want:
                if kind == "shift.signed_up":
                    self.shifts[i] = (shift, "signed_up")
                    return b.ShiftSignedUp(shift=shift)
                self.shifts[i] = (shift, "completed")
                return b.ShiftCompleted(shift=shift, hours=self.rng.choice((2.0, 2.5, 3.0)))
        return None

    def _day(self, offset: int) -> str:
        return (DAY_ONE + timedelta(days=offset)).isoformat()


@dataclass(frozen=True, slots=True)
class RunResult:
    appended: int
    append_seconds: float
    folded: int
    rebuild_seconds: float
    db_bytes: int
    log_events: int
    digest_matches: bool
    mix: Counter[str]


async def run_once(events: int, batch: int, profiles: ThreadProfiles | None) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="potluck-bench-") as tmp:
        data_dir = Path(tmp) / "node"
        node = await Node.init(data_dir, "Bench", Group.new("Bench group"))
        try:
            store, runner, key = node.store, node.runner, node.key
            if profiles is not None:
                profiles.wrap(store._conn)
            workload = Workload()
            elapsed = 0.0
            remaining = events
            while remaining > 0:
                drafts = workload.batch(min(batch, remaining))
                if profiles is not None:
                    profiles.start()
                start = time.perf_counter()
                written = await store.append(key, drafts)
                elapsed += time.perf_counter() - start
                if profiles is not None:
                    profiles.stop()
                workload.observe(written)
                remaining -= len(written)

            log_events = await store.count()
            await store.read(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
            db_bytes = (data_dir / LOG_FILE).stat().st_size

            incremental = await store.read(runner.digest)
            start = time.perf_counter()
            folded = await store.write(runner.rebuild)
            rebuild_seconds = time.perf_counter() - start
            rebuilt = await store.read(runner.digest)
        finally:
            await node.close()
    return RunResult(
        events,
        elapsed,
        folded,
        rebuild_seconds,
        db_bytes,
        log_events,
        incremental == rebuilt,
        workload.mix,
    )


def _line(name: str, value: float, unit: str) -> str:
    return f"{name}: {value:,.0f} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events appended per run")
    parser.add_argument("--batch", type=int, default=1_000, help="events per append call")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--sigs", type=int, default=20_000, help="Ed25519 signatures per run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the append phase of the first run (top 25 to stderr)",
    )
    args = parser.parse_args(argv)
    for name in ("events", "batch", "runs", "sigs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    results: list[RunResult] = []
    sqlite_rates: list[float] = []
    sign_rates: list[float] = []
    for run in range(args.runs):
        profiles = ThreadProfiles("append phase") if args.profile and run == 0 else None
        results.append(asyncio.run(run_once(args.events, args.batch, profiles)))
        if profiles is not None:
            print(profiles.report(PROFILE_TOP), file=sys.stderr, flush=True)
        sqlite_rates.append(ceiling.sqlite_insert_rate(args.events))
        sign_rates.append(ceiling.ed25519_rates(args.sigs)[0])

    append = statistics.median(r.appended / r.append_seconds for r in results)
    rebuild = statistics.median(r.folded / r.rebuild_seconds for r in results)
    size = statistics.median(r.db_bytes / r.log_events for r in results)
    sqlite_rate = statistics.median(sqlite_rates)
    sign_rate = statistics.median(sign_rates)
    matches = all(r.digest_matches for r in results)

    mix = results[0].mix
    print(
        "mix: " + ", ".join(f"{t} {n * 100 / args.events:.1f}%" for t, n in mix.most_common()),
        file=sys.stderr,
    )
    if args.profile:
        print("note: the first run was profiled, so its figures are slowed", file=sys.stderr)
    print(_line("append", append, "events/s"))
    print(_line("rebuild", rebuild, "events/s"))
    print(_line("sqlite insert (raw)", sqlite_rate, "rows/s"))
    print(_line("ed25519 sign", sign_rate, "sigs/s"))
    print(f"append / sqlite ceiling: {append / sqlite_rate:.2f}")
    print(f"append / ed25519 sign ceiling: {append / sign_rate:.2f}")
    print(f"rebuild / sqlite ceiling: {rebuild / sqlite_rate:.2f}")
    print(_line("db size", size, "bytes/event"))
    print(f"digest after rebuild == incremental: {'yes' if matches else 'no'}")
    return 0 if matches else 1


if __name__ == "__main__":
    raise SystemExit(main())
