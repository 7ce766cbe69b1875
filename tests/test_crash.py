"""Kill -9 while appending: the log must reopen intact with every acknowledged event.

tests/crash_appender.py appends in a loop and prints each acknowledged seq; this test
SIGKILLs it at random moments, many times on the same data directory, and after each
kill reopens the log and checks it (docs/reliability.md: a node killed at any instant
restarts with a consistent log).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from eventlog import events
from eventlog.identity import DEVICE_KEY_FILE, check_membership_proof, load_device_key, load_group
from eventlog.store import Store

APPENDER = Path(__file__).with_name("crash_appender.py")
ROOT = Path(__file__).resolve().parent.parent
LOG_FILE = "log.db"
KILLS = 24
SEED = 20240611


class Appender:
    """One run of the appender, with its acknowledged seqs collected as they arrive."""

    def __init__(self, data_dir: Path, seed: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(APPENDER), str(data_dir), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.acked: list[int] = []
        self.first_ack = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith(b"\n"):  # a line cut by the kill was never a promise
                self.acked.append(int(line))
                self.first_ack.set()

    def kill(self) -> tuple[list[int], bytes]:
        """SIGKILL the appender; return its acknowledged seqs and its stderr."""
        exited = self.proc.poll()
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        assert exited is None, f"appender died by itself ({exited}): {stderr.decode()}"
        return self.acked, stderr


async def check_log(data_dir: Path) -> int:
    """Reopen the log after a kill, check it, and return the author's head seq.

    The lead extends this with the projections' checks once they exist.
    """
    if not (data_dir / DEVICE_KEY_FILE).exists():
        return 0  # killed before the identity was written: nothing was acknowledged
    key, group = load_device_key(data_dir), load_group(data_dir)
    author = bytes(key.verify_key)
    store = await Store.open(data_dir / LOG_FILE, group)
    try:
        integrity = await store.read(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0])
        assert integrity == "ok"
        heads = await store.heads()
        assert set(heads) <= {author}
        if author not in heads:
            assert await store.count() == 0
            return 0
        head = heads[author]
        previous: events.Envelope | None = None
        seq = 1
        while seq <= head.seq:
            batch = [events.decode(raw) for raw in await store.read_raw(author, seq, 300)]
            assert batch, f"the chain stops at seq {seq - 1}, the head is {head.seq}"
            events.verify_chain(batch, previous)
            previous, seq = batch[-1], batch[-1].seq + 1
        assert previous is not None and previous.hash == head.hash
        first = events.decode((await store.read_raw(author, 1, 1))[0])
        assert first.type == "member.joined"
        assert check_membership_proof(group, author, first.body["proof"])
        assert await store.count() == head.seq
        assert await store.pending_count() == 0 and await store.forks() == []
        return head.seq
    finally:
        await store.close()


def test_log_survives_sigkill_during_appends_with_every_acknowledged_event(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    all_acked: list[int] = []
    last_head = 0
    runs_with_acks = 0
    for _ in range(KILLS):
        appender = Appender(data_dir, rng.randrange(1 << 30))
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.05, 0.5))  # may land while opening the log
        else:
            assert appender.first_ack.wait(timeout=30), "the appender never acknowledged"
            time.sleep(rng.uniform(0.05, 0.5))
        acked, _ = appender.kill()
        runs_with_acks += bool(acked)
        all_acked += acked
        assert acked == sorted(acked)
        head = asyncio.run(check_log(data_dir))
        assert head >= last_head, "the log lost events it had after an earlier crash"
        assert all(seq <= head for seq in all_acked), (
            f"acknowledged seq {max(all_acked)} but the head after the kill is {head}"
        )
        last_head = head
    assert runs_with_acks >= KILLS // 2
    assert last_head > 10
