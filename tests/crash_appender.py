"""Append to a log forever, printing each acknowledged seq; tests/test_crash.py kills it.

Usage: python tests/crash_appender.py DATA_DIR SEED

The first run in DATA_DIR writes the device key and the group there (as ``potluck init``
would); later runs reuse them, so every run extends the same author's chain. After each
``append`` returns (the commit is durable), one line with the last seq is printed and
flushed: a line on stdout is a promise that the event survives any crash.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from nacl.signing import SigningKey

from eventlog.identity import (
    DEVICE_KEY_FILE,
    Group,
    load_device_key,
    load_group,
    save_device_key,
    save_group,
)
from eventlog.store import Store

LOG_FILE = "log.db"


def identity(data_dir: Path) -> tuple[SigningKey, Group]:
    if not (data_dir / DEVICE_KEY_FILE).exists():
        save_group(data_dir, Group.new("Crash test"))
        save_device_key(data_dir, SigningKey.generate())  # written last: marks "done"
    return load_device_key(data_dir), load_group(data_dir)


async def run(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    key, group = identity(data_dir)
    author = bytes(key.verify_key)
    store = await Store.open(data_dir / LOG_FILE, group)
    if author not in await store.heads():
        await store.append(key, [("member.joined", store.first_event_body("Crash", author))])
    n = 0
    while True:
        drafts: list[tuple[str, dict[str, object]]] = []
        for _ in range(rng.randint(1, 8)):
            n += 1
            drafts.append(
                ("offer.posted", {"title": f"Offer {seed}-{n}", "quantity": rng.randint(1, 50)})
            )
        written = await store.append(key, drafts)
        sys.stdout.write(f"{written[-1].seq}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(run(Path(sys.argv[1]), int(sys.argv[2])))
