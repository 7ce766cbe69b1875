"""One node's memory as its log grows: does it level off? (next to bench/load.py)

Five minutes of bench/load.py at a rate the machine sustains give each node a few
thousand events: too few to fill the two things in a node that grow with the log, the
runner's cache of live projection states (``LIVE_CACHE_LIMIT`` entities,
projections/runner.py) and SQLite's page cache (``cache_size`` = 64 MiB, eventlog/store.py).
So the RSS slope of a short load run is expected to be positive. This fills one node
far enough to see both stop: it appends ``--events`` events of bench/sync.py's mix
through ``Store.append`` (the write path and store hook of ``Node.post``, in batches
of ``--batch`` to be quick) and every ``--step`` events prints VmRSS, Python's
allocated blocks (after a collection), the live states cached and the log's size.

Usage::

    python bench/memory.py [--events 120000] [--step 5000] [--batch 50] [--seed 1]

Ends with ``NAME: VALUE UNIT`` lines: the growth of RSS and of blocks over the last
quarter of the events, per 10,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()  # bench/sync.py would otherwise hide the ``sync`` package
bench_sync = _path.load("sync")
proc_status = _path.load("_load_worker").proc_status

from eventlog.identity import Group  # noqa: E402
from node.app import LOG_FILE, Node  # noqa: E402

Row = tuple[int, float, int, int, float]  # events, RSS MB, blocks, states, log MB


async def fill(data_dir: Path, events: int, step: int, batch: int, seed: int) -> list[Row]:
    node = await Node.init(data_dir, "A", Group.new("Memory bench"))
    mix = bench_sync.Mix(seed, define=True)
    node.store.add_hook(lambda _db, added: mix.observe(added))  # claims need posts
    rows: list[Row] = []
    try:
        written = await node.store.count()
        while written < events:
            target = min(events, (written // step + 1) * step)
            while written < target:
                appended = await node.store.append(
                    node.key, mix.batch(min(batch, target - written))
                )
                written += len(appended)
            gc.collect()
            rows.append(
                (
                    written,
                    proc_status()["VmRSS"] / 1024,
                    sys.getallocatedblocks(),
                    len(getattr(node.runner, "_live", ())),
                    (data_dir / LOG_FILE).stat().st_size / (1 << 20),
                )
            )
            print(
                f"{rows[-1][0]:>9,} events  rss {rows[-1][1]:6.1f} MB  blocks "
                f"{rows[-1][2]:>9,}  live states {rows[-1][3]:>6,}  log "
                f"{rows[-1][4]:6.1f} MB",
                flush=True,
            )
    finally:
        await node.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--step", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.events, args.step, args.batch) < 1 or args.events < 4 * args.step:
        parser.error("need positive sizes and --events >= 4 x --step")
    with tempfile.TemporaryDirectory(prefix="potluck-memory-") as tmp:
        rows = asyncio.run(fill(Path(tmp) / "node", args.events, args.step, args.batch, args.seed))
    tail = [r for r in rows if r[0] >= rows[-1][0] * 3 // 4]
    span = (tail[-1][0] - tail[0][0]) / 10_000
    print(f"rss at the end: {rows[-1][1]:.1f} MB")
    print(
        f"rss growth over the last quarter: {(tail[-1][1] - tail[0][1]) / span:.2f} "
        "MB per 10k events"
    )
    print(
        f"blocks growth over the last quarter: {(tail[-1][2] - tail[0][2]) / span:,.0f} "
        "blocks per 10k events"
    )
    print(f"log size at the end: {rows[-1][4]:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
