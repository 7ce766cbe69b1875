"""Which tables an append writes, in pages per event, read from the WAL itself.

A commit writes every page its transaction changed into the write-ahead log, one frame
a page, and each frame's header names its page. This fills a node with ``--warm``
events (``bench/append.py``'s mix, ``Store.append`` in batches of ``--batch``), stops
SQLite's automatic checkpoints, appends ``--events`` more, and maps the page numbers of
the frames in the WAL to their tables and indexes with ``dbstat``. Random keys show up
here as tables that take a page of their own for most events of a batch.

Usage::

    python bench/wal_pages.py [--warm 30000] [--events 20000] [--batch 1000]

Prints ``pages per event: ...``, ``bytes per event: ...`` and one line per table or
index, most written first.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()
Workload = _path.load("append").Workload

from eventlog.identity import Group  # noqa: E402
from node.app import LOG_FILE, Node  # noqa: E402

WAL_HEADER = 32
FRAME_HEADER = 24


async def measure(warm: int, events: int, batch: int) -> tuple[Counter[str], int, int]:
    """(frames per table, frames, page size) of appending ``events`` after ``warm``."""
    with tempfile.TemporaryDirectory(prefix="potluck-wal-") as tmp:
        data_dir = Path(tmp) / "node"
        node = await Node.init(data_dir, "Bench", Group.new("Bench group"))
        try:
            store, workload = node.store, Workload()

            async def append(n: int) -> None:
                while n > 0:
                    written = await store.append(node.key, workload.batch(min(batch, n)))
                    workload.observe(written)
                    n -= len(written)

            await append(warm)
            await store.read(
                lambda db: (
                    db.execute("PRAGMA wal_autocheckpoint = 0").fetchall(),
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
                )
            )
            await append(events)
            names = await store.read(
                lambda db: dict(db.execute("SELECT pageno, name FROM dbstat").fetchall())
            )
            wal = (data_dir / (LOG_FILE + "-wal")).read_bytes()
        finally:
            await node.close()
    page_size = struct.unpack(">I", wal[8:12])[0]
    tables: Counter[str] = Counter()
    frames = 0
    for offset in range(WAL_HEADER, len(wal) - FRAME_HEADER + 1, FRAME_HEADER + page_size):
        (page,) = struct.unpack(">I", wal[offset : offset + 4])
        tables[names.get(page, "(freed or new)")] += 1
        frames += 1
    return tables, frames, page_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--warm", type=int, default=30_000, help="events before measuring")
    parser.add_argument("--events", type=int, default=20_000, help="events measured")
    parser.add_argument("--batch", type=int, default=1_000, help="events per append call")
    args = parser.parse_args(argv)
    for name in ("events", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warm < 0:
        parser.error("--warm must be at least 0")
    tables, frames, page_size = asyncio.run(measure(args.warm, args.events, args.batch))
    print(f"pages per event: {frames / args.events:.2f}")
    print(f"bytes per event: {frames * page_size / args.events:,.0f} B")
    for name, count in tables.most_common():
        print(f"{name}: {count / args.events:.3f} pages/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
