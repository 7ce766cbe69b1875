"""One node of bench/load.py, in its own process so RSS, fds and tasks are its own.

It opens a real node (``Node.open`` on a directory made by ``Node.init``/``Node.join``,
the code of ``potluck init``), runs ``Node.serve`` on 127.0.0.1 with ``--peer``
addresses (the code of ``potluck serve``), and, once told ``go``, posts events through
``Node.post`` (the code of ``potluck offer post``, ``claim make``, ``stock adjust``...)
at ``--rate`` events per second, Poisson-spaced, in the mix of bench/sync.py (stock
adjustments and counts, offers, needs, claims on any node's offers and needs).

Talks JSON lines. stdin: ``go``, ``stop`` (stop writing), ``digest``; EOF, SIGINT or
SIGTERM end it cleanly. stdout: ``ready`` (the port), ``sample`` every ``--sample``
seconds, and every 0.25 s after ``stop`` (so the driver sees convergence promptly),
``stopped``, ``digest``, and ``bye`` with the peak RSS as it exits. Status
lines of ``serve`` go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()  # bench/sync.py would otherwise hide the ``sync`` package
Mix = _path.load("sync").Mix
ThreadProfiles = _path.load("_profile").ThreadProfiles

from eventlog.errors import UsageError  # noqa: E402
from eventlog.events import Envelope  # noqa: E402
from eventlog.store import ReceiveResult  # noqa: E402
from node.app import Node  # noqa: E402

FAST_SAMPLE = 0.25  # seconds between samples after ``stop``
SERVE_STOP_TIMEOUT = 30.0
POST_TYPES = ("offer.posted", "need.posted")
PROFILE_TOP = 25
TRACE_FRAMES = 6


def emit(kind: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def _database_kb(db: sqlite3.Connection) -> int:
    """The log's size as SQLite sees it (WAL included; the -wal file itself keeps its
    high-water size after a checkpoint, so its length says little)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    return int(pages * db.execute("PRAGMA page_size").fetchone()[0] // 1024)


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in KiB, from /proc (the figures ``ps`` shows)."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0])
    return found


class Worker:
    """The node, its writer and its instruments."""

    def __init__(self, node: Node, args: argparse.Namespace) -> None:
        self.node = node
        self.args = args
        self.rng = random.Random(args.seed)
        self.mix = Mix(args.seed, define=False)
        # claims target any node's offers and needs: the hook (on the database thread)
        # feeds the mix's bounded deque, whose append is atomic
        node.store.add_hook(self._seen)
        # relay cost: how many receive transactions and duplicate copies per new event
        self.receives = self.received = self.duplicates = 0
        self._receive = node.store.receive
        node.store.receive = self._counting_receive  # type: ignore[method-assign]
        self.written = 0
        self.refused = 0
        self.last_write = 0.0
        self.writing = asyncio.Event()
        self.posting = asyncio.Lock()
        self.stopped = False  # after ``stop``: sample fast, to time the convergence
        self.profiles = ThreadProfiles("write phase") if args.profile else None
        self.snapshot: tracemalloc.Snapshot | None = None
        if self.profiles is not None:
            self.profiles.wrap(node.store._conn)
        self.quit = asyncio.Event()
        self.stop_serving = asyncio.Event()
        self.port = 0

    async def _counting_receive(
        self, batch: Iterable[Envelope], *, authenticated: bool = False
    ) -> ReceiveResult:
        result = await self._receive(batch, authenticated=authenticated)
        self.receives += 1
        self.received += len(result.stored)
        self.duplicates += result.duplicates
        return result

    def _seen(self, _db: object, added: Sequence[Envelope]) -> None:
        self.mix.posts.extend(e.hash for e in added if e.type in POST_TYPES)

    async def sample(self) -> dict[str, object]:
        """What the driver plots: memory, fds, tasks, and how much of the log we hold."""
        status = proc_status()
        manager = self.node.peer_manager
        sessions = sum(s.open for s in manager.sessions) if manager else 0
        heads = await self.node.store.vector()
        vh = hashlib.blake2b(
            b"".join(a + s.to_bytes(8, "big") + h for a, (s, h) in sorted(heads.items())),
            digest_size=8,
        ).hexdigest()
        return {
            "t": time.monotonic(),
            "rss_kb": status["VmRSS"],
            "hwm_kb": status["VmHWM"],
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "blocks": sys.getallocatedblocks(),
            "count": sum(s for s, _ in heads.values()),
            "vh": vh,
            "pending": await self.node.store.pending_count(),
            "sessions": sessions,
            "db_kb": await self.node.store.read(_database_kb),
            "cpu_s": sum(os.times()[:2]),
            "receives": self.receives,
            "received": self.received,
            "duplicates": self.duplicates,
            "written": self.written,
            "writing": self.writing.is_set(),
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.quit.set)
        listening: asyncio.Future[int] = loop.create_future()

        def say(line: str) -> None:
            print(f"{time.monotonic():.3f} {line}", file=sys.stderr, flush=True)
            if line.startswith("listening on ") and not listening.done():
                listening.set_result(int(line.rsplit(":", 1)[1]))

        serving = asyncio.create_task(
            self.node.serve(
                listen=self.args.listen, peers=self.args.peer, stop=self.stop_serving, say=say
            )
        )
        first: set[asyncio.Future[Any]] = {serving, listening}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            serving.result()  # raises what stopped it
            raise RuntimeError("serve ended before listening")
        self.port = listening.result()
        emit("ready", port=self.port, pid=os.getpid())
        tasks = [
            asyncio.create_task(self._commands()),
            asyncio.create_task(self._sampler()),
            asyncio.create_task(self._writer()),
        ]
        try:
            await self.quit.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stop_serving.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, SERVE_STOP_TIMEOUT)

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                cmd = json.loads(line)["cmd"]
                if cmd == "go":
                    self.writing.set()
                    if self.profiles is not None:
                        self.profiles.start()
                    if self.args.tracemalloc:
                        tracemalloc.start(TRACE_FRAMES)
                        self.snapshot = tracemalloc.take_snapshot()
                elif cmd == "stop":
                    self.writing.clear()
                    self.stopped = True
                    if self.profiles is not None:
                        self.profiles.stop()
                        print(self.profiles.report(PROFILE_TOP), file=sys.stderr, flush=True)
                    if self.snapshot is not None:
                        self._growth(self.snapshot)
                    async with self.posting:  # the post in flight counts
                        emit(
                            "stopped",
                            written=self.written,
                            refused=self.refused,
                            last_write=self.last_write,
                        )
                elif cmd == "digest":
                    digest = await self.node.store.read(self.node.runner.digest)
                    emit("digest", digest=digest, **await self.sample())
        finally:
            self.quit.set()  # EOF: the driver is gone

    def _growth(self, before: tracemalloc.Snapshot) -> None:
        """Where Python memory grew during the writes, by allocating traceback."""
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        print("=== tracemalloc: growth over the write phase ===", file=sys.stderr)
        for stat in after.compare_to(before, "traceback")[:PROFILE_TOP]:
            print(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks", file=sys.stderr)
            for frame in stat.traceback.format()[-2 * TRACE_FRAMES :]:
                print("    " + frame, file=sys.stderr)
        sys.stderr.flush()

    async def _sampler(self) -> None:
        while True:
            emit("sample", **await self.sample())
            writing = self.writing.is_set()
            pause = FAST_SAMPLE if self.stopped else self.args.sample
            end = time.monotonic() + pause
            while time.monotonic() < end and self.writing.is_set() == writing:
                await asyncio.sleep(min(FAST_SAMPLE, end - time.monotonic()))

    async def _writer(self) -> None:
        """Poisson arrivals at ``--rate`` on a fixed schedule; a writer more than a second
        behind it skips ahead rather than bursting."""
        due = 0.0
        while True:
            if not self.writing.is_set():
                await self.writing.wait()
                due = time.monotonic()
            due += self.rng.expovariate(self.args.rate)
            now = time.monotonic()
            due = max(due, now - 1.0)
            await asyncio.sleep(max(0.0, due - now))
            async with self.posting:
                if not self.writing.is_set():
                    continue
                try:
                    await self.node.post(self.mix.next())
                except UsageError as exc:  # e.g. a claim on a post this node lacks
                    self.refused += 1
                    print(f"refused: {exc}", file=sys.stderr, flush=True)
                    continue
                self.written += 1
                self.last_write = time.monotonic()


async def main_async(args: argparse.Namespace) -> None:
    node = await Node.open(Path(args.data_dir))
    try:
        await Worker(node, args).run()
    finally:  # also on failure: aiosqlite's thread would keep the process alive
        await node.close()
    emit("bye", hwm_kb=proc_status()["VmHWM"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--peer", action="append", default=[], help="host:port to dial")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the write phase; top functions to stderr at stop",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="Python memory growth over the write phase to stderr at stop",
    )
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
