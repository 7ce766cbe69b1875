"""Load: N node processes on loopback, writing continuously; do they converge, and do
their memory, file descriptors and asyncio tasks stay flat? (issue 6 item 6)

Set-up, with the code of the CLI: node 0 is ``Node.init`` of a new group (``potluck init
--new-group``) and defines 10 locations and 50 items; node i joins with an invite code
naming node i-1's address (``potluck invite`` / ``potluck init --join``), so it dials
i-1 from the invite. The other links of ``--topology`` are ``--peer`` addresses:

- ``chords`` (default): a ring plus N/4 random chords of at least N/4 hops, the
  later-started node dialing; each node keeps 2-4 sessions and most events reach a node
  by relay (20 nodes: 25 links, diameter 6-8 hops);
- ``ring``: the ring alone (diameter N/2);
- ``mesh``: every node dials every earlier one. On loopback every session comes from
  127.0.0.1, so beyond 17 nodes node 0 would refuse some (the inbound limit per remote
  address, sync/limits.py) and the set-up would never settle: refused at the start.

Each node is a process of bench/_load_worker.py (``Node.serve`` on 127.0.0.1 and
``Node.post``), started one after the other so every dial finds its target listening.
Phases: wait until every node holds the set-up events and has all its sessions open,
then a short settle; that sample is *before*. ``go``: every node posts ``--rate``
events per second (Poisson) for ``--seconds``, sampling itself every ``--sample`` s.
``stop``; wait (at most ``--converge-timeout``) until every node holds every event
written (same version vector); *convergence* is the time from the last write anywhere
to the moment the last node held everything (0.25 s sampling). A settle, then the
projection digests and the *after* sample. Finally SIGTERM (as ``potluck serve`` gets
on shutdown), SIGKILL after a timeout. *Lag* is, at each sample, how many of the events
written anywhere by then the node did not hold yet.

The default rate, 0.5 events/s per node (10/s for the group, 36,000 an hour), is what a
shared 2-core machine sustains for 20 nodes: every node stores and folds every event,
at about 4 ms of CPU each. At 1/s per node the lag reached 12-19 s, at 3/s it grew
without bound (docs/reliability.md, Load).

RSS slope: least squares of each node's VmRSS over the write phase after ``--warmup``
seconds, in MB per minute (1 MB = 2^20 B). Two caches grow with the log until full: the
runner's live projection states (4,096 entities) and SQLite's page cache (64 MiB); so a
short run shows a positive slope, and bench/memory.py fills one node until both level
off. Python's allocated block count (``sys.getallocatedblocks``) has its own slope.

Usage::

    python bench/load.py [--nodes 20] [--seconds 300] [--rate 0.5] [--seed 1]
                         [--topology chords|ring|mesh] [--sample 5] [--warmup 60]
                         [--dir DIR] [--profile-node K] [--trace-node K]

``--dir`` keeps each node's data directory and log (``serve``'s status lines) and
``samples.json``. Prints ``NAME: VALUE UNIT`` lines; exits 1 if the nodes did not
converge, the digests differ, or fds or tasks grew by more than a small constant.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()  # bench/sync.py would otherwise hide the ``sync`` package
bench_sync = _path.load("sync")

from eventlog.identity import Group  # noqa: E402
from node.app import Node  # noqa: E402

try:  # the inbound sessions a node accepts from one address (all of ours: 127.0.0.1)
    from sync.limits import DEFAULT_LIMITS

    PER_ADDRESS: int | None = DEFAULT_LIMITS.per_address
except ImportError:  # a tree without per-peer limits
    PER_ADDRESS = None

WORKER = Path(__file__).resolve().parent / "_load_worker.py"
READY_TIMEOUT = 60.0
ACK_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
FD_SLACK = 2  # allowed growth of fds per node from before to after (no leak)
TASK_SLACK = 3  # likewise for tasks: a names() refresh or a flush may be in flight
MB = 1 << 20
TOPOLOGIES = ("chords", "ring", "mesh")

Sample = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Config:
    nodes: int = 20
    seconds: float = 300.0
    rate: float = 0.5
    seed: int = 1
    topology: str = "chords"
    sample: float = 5.0
    warmup: float = 60.0
    settle: float = 3.0
    converge_timeout: float = 120.0
    base: Path | None = None  # kept when given; a temporary directory otherwise
    profile_node: int | None = None  # its log gets a cProfile of the write phase
    trace_node: int | None = None  # its log gets tracemalloc's growth over the writes


@dataclass(slots=True)
class Result:
    config: Config
    links: list[tuple[int, int]]
    diameter: int
    written: int = 0
    refused: int = 0
    write_seconds: float = 0.0
    expected: int = 0
    converged: bool = False
    converge_seconds: float | None = None
    digests_equal: bool = False
    counts: list[int] = field(default_factory=list)
    before: list[Sample] = field(default_factory=list)
    after: list[Sample] = field(default_factory=list)
    rss_slopes: list[float] = field(default_factory=list)  # MB/min per node
    block_slopes: list[float] = field(default_factory=list)  # blocks/min per node
    db_slopes: list[float] = field(default_factory=list)  # MB/min per node
    rss_end_writes: list[float] = field(default_factory=list)  # MB, last write sample
    lags: list[float] = field(default_factory=list)  # events a node lacked, per sample
    cpu_ms_per_event: list[float] = field(default_factory=list)  # per node, go to after
    receives_per_event: float = 0.0  # receive transactions per event received
    duplicates_per_event: float = 0.0  # copies dropped as duplicates per event received
    end_lags: list[float] = field(default_factory=list)  # the same at the last write sample
    peak_rss: float = 0.0  # MB, max VmHWM
    clean_exits: int = 0
    setup_seconds: float = 0.0

    def delta(self, key: str) -> int:
        """The largest growth of ``key`` from before to after over the nodes."""
        return int(max(a[key] - b[key] for b, a in zip(self.before, self.after, strict=True)))

    @property
    def leak_free(self) -> bool:
        return self.delta("fds") <= FD_SLACK and self.delta("tasks") <= TASK_SLACK

    @property
    def ok(self) -> bool:
        return self.converged and self.digests_equal and self.leak_free


# -- topology -----------------------------------------------------------------------


def make_links(n: int, topology: str, rng: random.Random) -> list[tuple[int, int]]:
    """(dialer, target) pairs, dialer > target so the target is listening already;
    (i, i-1) is the invite's address, the rest are ``--peer``."""
    if topology == "mesh":
        return [(i, j) for i in range(n) for j in range(i)]
    links = [(i, i - 1) for i in range(1, n)]
    if n > 2:
        links.append((n - 1, 0))
    if topology == "chords":
        have = {frozenset(link) for link in links}
        candidates = [
            (i, j) for i in range(n) for j in range(i) if min(i - j, n - (i - j)) >= max(2, n // 4)
        ]
        rng.shuffle(candidates)
        for i, j in candidates[: n // 4]:
            if frozenset((i, j)) not in have:
                links.append((i, j))
    return links


def diameter(n: int, links: Sequence[tuple[int, int]]) -> int:
    near: list[set[int]] = [set() for _ in range(n)]
    for a, c in links:
        near[a].add(c)
        near[c].add(a)
    worst = 0
    for start in range(n):
        seen, frontier, hops = {start}, {start}, 0
        while frontier:
            frontier = {m for k in frontier for m in near[k]} - seen
            seen |= frontier
            hops += bool(frontier)
        worst = max(worst, hops if len(seen) == n else n)
    return worst


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (held together, so no port twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


async def create_nodes(dirs: Sequence[Path], ports: Sequence[int], seed: int) -> int:
    """The data directories, as ``potluck init`` and ``init --join`` make them; returns
    the number of events every node will hold before the writes."""
    first = await Node.init(dirs[0], "Node 00", Group.new("Load bench"))
    try:
        definitions = bench_sync.LOCATIONS + bench_sync.ITEMS
        await first.store.append(first.key, bench_sync.Mix(seed, define=True).batch(definitions))
        codes = [await first.invite([f"127.0.0.1:{ports[i - 1]}"]) for i in range(1, len(dirs))]
    finally:
        await first.close()
    for i, code in enumerate(codes, 1):
        node = await Node.join(dirs[i], f"Node {i:02}", code)
        await node.close()
    return len(dirs) + int(definitions)


# -- the processes --------------------------------------------------------------------


class Proc:
    """One worker process; a thread puts its stdout lines on the shared inbox."""

    def __init__(
        self, index: int, argv: list[str], log: Path, inbox: queue.Queue[tuple[int, Sample | None]]
    ) -> None:
        self.index = index
        self.log = log
        self._log_file: TextIO = log.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True
        )
        self._reader = threading.Thread(target=self._read, args=(inbox,), daemon=True)
        self._reader.start()

    def _read(self, inbox: queue.Queue[tuple[int, Sample | None]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                inbox.put((self.index, json.loads(line)))
        inbox.put((self.index, None))

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
            self.proc.stdin.flush()

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        self._log_file.close()


class Driver:
    """Starts the workers, runs the phases, and keeps what they report."""

    def __init__(self, config: Config, base: Path) -> None:
        self.config = config
        self.base = base
        self.inbox: queue.Queue[tuple[int, Sample | None]] = queue.Queue()
        self.procs: list[Proc] = []
        self.latest: dict[int, Sample] = {}
        self.samples: dict[int, list[tuple[str, Sample]]] = {}
        self.replies: dict[str, dict[int, Sample]] = {
            "ready": {},
            "stopped": {},
            "digest": {},
            "bye": {},
        }
        self.phase = "start"
        self.ending = False

    def _handle(self, index: int, message: Sample | None) -> None:
        if message is None:
            if not self.ending:
                code = self.procs[index].proc.wait()
                raise RuntimeError(f"node {index} exited ({code}): see {self.procs[index].log}")
            return
        kind = message.pop("kind")
        if kind == "sample":
            self.latest[index] = message
            self.samples.setdefault(index, []).append((self.phase, message))
        else:
            self.replies[kind][index] = message

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Handle messages until ``until()`` holds (True) or ``timeout`` passes (False)."""
        end = time.monotonic() + timeout
        while not until():
            left = end - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(queue.Empty):
                self._handle(*self.inbox.get(timeout=min(left, 0.5)))
        return True

    def wait(self, what: str, until: Callable[[], bool], timeout: float) -> None:
        if not self.pump(until, timeout):
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def start(self, index: int, peers: Sequence[int], ports: Sequence[int]) -> None:
        argv = [
            sys.executable,
            str(WORKER),
            "--data-dir",
            str(self.base / f"node-{index:02}"),
            "--listen",
            f"127.0.0.1:{ports[index]}",
            "--rate",
            str(self.config.rate),
            "--seed",
            str(self.config.seed * 1000 + index),
            "--sample",
            str(self.config.sample),
        ]
        for peer in peers:
            argv += ["--peer", f"127.0.0.1:{ports[peer]}"]
        if index == self.config.profile_node:
            argv.append("--profile")
        if index == self.config.trace_node:
            argv.append("--tracemalloc")
        self.procs.append(Proc(index, argv, self.base / f"node-{index:02}.log", self.inbox))
        self.wait(f"node {index} to listen", lambda: index in self.replies["ready"], READY_TIMEOUT)

    def broadcast(self, cmd: str) -> None:
        for proc in self.procs:
            proc.send(cmd)

    def stop_all(self) -> None:
        """SIGTERM every worker, wait for all (bounded), then SIGKILL what is left."""
        self.ending = True
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + EXIT_TIMEOUT
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(timeout=max(0.1, end - time.monotonic()))
        for proc in self.procs:
            proc.finish()
        self.pump(lambda: self.inbox.empty(), 1.0)

    def write_phase(self, index: int) -> list[Sample]:
        return [s for phase, s in self.samples.get(index, []) if phase == "write"]


def slope_per_minute(samples: Sequence[Sample], key: str, scale: float) -> float:
    """Least-squares slope of ``key``/``scale`` against time, per minute."""
    if len(samples) < 3:
        return float("nan")
    times = [s["t"] / 60 for s in samples]
    values = [s[key] / scale for s in samples]
    return float(statistics.linear_regression(times, values).slope)


def lags(
    samples: dict[int, list[tuple[str, Sample]]], initial: int, phase: str = "write"
) -> dict[int, list[float]]:
    """For each write-phase sample: the events written anywhere by then (each writer's
    count interpolated at that instant) that the node did not hold yet."""
    written: list[tuple[list[float], list[float]]] = []
    for own in samples.values():
        points = [(s["t"], float(s["written"])) for _, s in own]
        written.append(([t for t, _ in points], [w for _, w in points]))

    def at(times: list[float], values: list[float], t: float) -> float:
        k = bisect.bisect_right(times, t)
        if k == 0:
            return values[0]
        if k == len(times):
            return values[-1]
        t0, t1 = times[k - 1], times[k]
        return values[k - 1] + (values[k] - values[k - 1]) * (t - t0) / (t1 - t0)

    return {
        i: [
            max(0.0, initial + sum(at(ts, ws, s["t"]) for ts, ws in written if ts) - s["count"])
            for p, s in own
            if p == phase
        ]
        for i, own in samples.items()
    }


def plan(config: Config) -> list[tuple[int, int]]:
    """The links of the run; ValueError if a node would refuse some of them."""
    n = config.nodes
    links = make_links(n, config.topology, random.Random(config.seed))
    inbound = max(sum(t == i for _, t in links) for i in range(n))
    if PER_ADDRESS is not None and inbound > PER_ADDRESS:
        raise ValueError(
            f"a node would accept {inbound} sessions from 127.0.0.1, over the "
            f"limit of {PER_ADDRESS} per address (sync/limits.py): use fewer "
            "nodes or another topology"
        )
    return links


def run(config: Config) -> Result:
    """The whole bench; raises if a node dies or the set-up does not settle."""
    with contextlib.ExitStack() as stack:
        if config.base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="potluck-load-")))
        else:
            base = config.base
            base.mkdir(parents=True, exist_ok=True)
        driver = Driver(config, base)
        stack.callback(driver.stop_all)
        return _run(config, driver)
    raise AssertionError("unreachable")  # for mypy: ExitStack may swallow exceptions


def _run(config: Config, driver: Driver) -> Result:
    n = config.nodes
    links = plan(config)
    result = Result(config, links, diameter(n, links))
    degree = [sum(i in link for link in links) for i in range(n)]
    began = time.monotonic()
    ports = free_ports(n)
    dirs = [driver.base / f"node-{i:02}" for i in range(n)]
    initial = asyncio.run(create_nodes(dirs, ports, config.seed))
    for i in range(n):
        driver.start(i, [t for d, t in links if d == i and t != i - 1], ports)

    def settled() -> bool:
        return len(driver.latest) == n and all(
            s["sessions"] == degree[i] and s["count"] == initial for i, s in driver.latest.items()
        )

    if not driver.pump(settled, config.converge_timeout):
        missing = {
            i: (s["count"], s["sessions"])
            for i, s in driver.latest.items()
            if s["sessions"] != degree[i] or s["count"] != initial
        }
        raise TimeoutError(
            f"set-up did not settle: node -> (events of {initial}, sessions) "
            f"{missing}; degrees {degree}"
        )
    driver.pump(lambda: False, config.settle)
    result.before = [dict(driver.latest[i]) for i in range(n)]
    result.setup_seconds = time.monotonic() - began

    driver.phase = "write"
    driver.broadcast("go")
    go = time.monotonic()
    driver.pump(lambda: False, config.seconds)
    driver.broadcast("stop")
    driver.wait(
        "every node to stop writing", lambda: len(driver.replies["stopped"]) == n, ACK_TIMEOUT
    )
    driver.phase = "converge"
    stopped = driver.replies["stopped"].values()
    result.written = sum(s["written"] for s in stopped)
    result.refused = sum(s["refused"] for s in stopped)
    result.write_seconds = time.monotonic() - go
    last_write = max(s["last_write"] for s in stopped)
    result.expected = expected = initial + result.written
    result.converged = driver.pump(  # the same events everywhere, sessions or not
        lambda: (
            all(s["count"] == expected for s in driver.latest.values())
            and len({s["vh"] for s in driver.latest.values()}) == 1
        ),
        config.converge_timeout,
    )
    if result.converged:
        full = [
            min(s["t"] for _, s in driver.samples[i] if s["count"] == expected) for i in range(n)
        ]
        result.converge_seconds = max(0.0, max(full) - last_write)

    driver.phase = "after"
    driver.pump(lambda: False, config.settle)
    driver.broadcast("digest")
    driver.wait("every node's digest", lambda: len(driver.replies["digest"]) == n, ACK_TIMEOUT)
    replies = [driver.replies["digest"][i] for i in range(n)]
    result.after = replies
    gone = [
        (
            a["cpu_s"] - b["cpu_s"],
            a["count"] - b["count"],
            a["received"] - b["received"],
            a["receives"] - b["receives"],
            a["duplicates"] - b["duplicates"],
        )
        for b, a in zip(result.before, replies, strict=True)
    ]
    result.cpu_ms_per_event = [1000 * cpu / max(1, events) for cpu, events, *_ in gone]
    received = max(1, sum(g[2] for g in gone))
    result.receives_per_event = sum(g[3] for g in gone) / received
    result.duplicates_per_event = sum(g[4] for g in gone) / received
    result.counts = [r["count"] for r in replies]
    result.digests_equal = len({r["digest"] for r in replies}) == 1

    (driver.base / "samples.json").write_text(json.dumps(driver.samples))
    behind = lags(driver.samples, initial)
    for i in range(n):
        result.lags += behind[i]
        result.end_lags += behind[i][-1:]
        writes = driver.write_phase(i)
        steady = [s for s in writes if s["t"] >= go + config.warmup]
        result.rss_slopes.append(slope_per_minute(steady, "rss_kb", 1024))
        result.block_slopes.append(slope_per_minute(steady, "blocks", 1))
        result.db_slopes.append(slope_per_minute(steady, "db_kb", 1024))
        if writes:
            result.rss_end_writes.append(writes[-1]["rss_kb"] / 1024)
    driver.stop_all()
    byes = driver.replies["bye"]
    result.clean_exits = sum(p.proc.returncode == 0 and p.index in byes for p in driver.procs)
    hwm = [b["hwm_kb"] for b in byes.values()] + [r["hwm_kb"] for r in replies]
    result.peak_rss = max(hwm) / 1024
    return result


# -- the report -----------------------------------------------------------------------


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v == v]  # drops NaN (too few samples)


def report(result: Result) -> Iterator[str]:
    """``NAME: VALUE UNIT`` lines."""
    c = result.config
    med = statistics.median

    def line(name: str, value: float, unit: str, digits: int = 0) -> str:
        return f"{name}: {value:,.{digits}f} {unit}".rstrip()

    def spread(name: str, key: str) -> Iterator[str]:
        yield line(f"{name} before (median)", med(s[key] for s in result.before), "")
        yield line(f"{name} after (median)", med(s[key] for s in result.after), "")
        yield line(f"{name} max growth before to after", result.delta(key), "")

    yield line("nodes", c.nodes, "processes")
    yield f"topology: {c.topology}, {len(result.links)} links, diameter {result.diameter} hops"
    yield line("set-up (init, join, start, first sync)", result.setup_seconds, "s", 1)
    yield line("target rate", c.rate, "events/s per node", 1)
    yield line("write phase", result.write_seconds, "s", 1)
    yield line("events written", result.written, "events")
    yield line("events refused by Node.post", result.refused, "events")
    yield line("events/s written", result.written / result.write_seconds, "events/s", 1)
    yield line("events/s per node", result.written / result.write_seconds / c.nodes, "events/s", 2)
    if result.lags:
        rate = result.written / result.write_seconds
        yield line("lag during writes median", med(result.lags), "events")
        yield line("lag during writes max", max(result.lags), "events")
        yield line("lag during writes max, in time", max(result.lags) / rate, "s", 1)
        yield line("lag at end of writes max", max(result.end_lags), "events")
    yield f"converged: {'yes' if result.converged else 'no'}"
    if result.converge_seconds is not None:
        yield line("convergence after writes stop", result.converge_seconds, "s", 2)
    yield (
        f"counts equal: {'yes' if len(set(result.counts)) == 1 else 'no'} "
        f"({min(result.counts):,}-{max(result.counts):,} of {result.expected:,} events)"
    )
    yield f"digests equal: {'yes' if result.digests_equal else 'no'}"
    yield line("cpu per event held, per node (median)", med(result.cpu_ms_per_event), "ms", 2)
    yield line("receive transactions per event received", result.receives_per_event, "", 2)
    yield line("duplicate copies per event received", result.duplicates_per_event, "", 2)
    rss = _finite(result.rss_slopes)
    if rss:
        yield line("rss slope median", med(rss), "MB/min", 2)
        yield line("rss slope max", max(rss), "MB/min", 2)
        yield line("log size slope median", med(_finite(result.db_slopes)), "MB/min", 2)
        yield line("python blocks slope median", med(_finite(result.block_slopes)), "blocks/min")
        yield line("python blocks slope max", max(_finite(result.block_slopes)), "blocks/min")
    yield line(
        "rss before writes (median)", med(s["rss_kb"] for s in result.before) / 1024, "MB", 1
    )
    if result.rss_end_writes:
        yield line("rss at end of writes (median)", med(result.rss_end_writes), "MB", 1)
    yield line(
        "rss after convergence (median)", med(s["rss_kb"] for s in result.after) / 1024, "MB", 1
    )
    yield line("peak rss (max over nodes)", result.peak_rss, "MB", 1)
    yield line("log size after (median)", med(s["db_kb"] for s in result.after) / 1024, "MB", 1)
    yield from spread("fds", "fds")
    yield from spread("tasks", "tasks")
    yield from spread("threads", "threads")
    yield line(
        "sessions open after (sum)",
        sum(s["sessions"] for s in result.after),
        f"of {2 * len(result.links)}",
    )
    yield line("held events after (max)", max(s["pending"] for s in result.after), "events")
    yield line("clean exits on SIGTERM", result.clean_exits, f"of {c.nodes}")
    yield f"ok: {'yes' if result.ok else 'no'}"


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the writes")
    parser.add_argument("--rate", type=float, default=0.5, help="events/s per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--topology", choices=TOPOLOGIES, default="chords")
    parser.add_argument("--sample", type=float, default=5.0, help="s between samples")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="s of writes left out of the RSS slope"
    )
    parser.add_argument("--converge-timeout", type=float, default=120.0)
    parser.add_argument("--dir", type=Path, help="keep the data directories and logs here")
    parser.add_argument(
        "--profile-node",
        type=int,
        metavar="K",
        help="cProfile node K's write phase into DIR/node-K.log",
    )
    parser.add_argument(
        "--trace-node",
        type=int,
        metavar="K",
        help="tracemalloc node K's write phase into DIR/node-K.log",
    )
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.rate <= 0 or args.seconds <= 0 or args.sample <= 0:
        parser.error("need --nodes >= 2 and positive --rate, --seconds, --sample")
    config = Config(
        nodes=args.nodes,
        seconds=args.seconds,
        rate=args.rate,
        seed=args.seed,
        topology=args.topology,
        sample=args.sample,
        warmup=args.warmup,
        converge_timeout=args.converge_timeout,
        base=args.dir,
        profile_node=args.profile_node,
        trace_node=args.trace_node,
    )
    try:
        plan(config)
    except ValueError as exc:
        parser.error(str(exc))
    # Ctrl-C or SIGTERM unwind through run(), which stops the workers (a shell may have
    # started us with SIGINT ignored; the workers also quit when our pipe closes)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    result = run(config)
    for text in report(result):
        print(text, flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
