"""The projector: a second process that folds the log into the projections behind it.

Why a process: a node receiving a cold sync verified, stored and folded every event on
one core (one GIL: the event loop and the database thread), while the machine's second
core sat idle. Storing alone runs at twice the speed of storing and folding. So while a
node syncs (``Node.folding_behind``), a receive of ``BULK_RECEIVE`` events or more
only stores them (``Store.fold_behind``), and this process folds them from the log, on
the other core, in transactions of its own on the same SQLite file.

What stays true (decision 0012):

- The folded events are always a prefix of the log in arrival order: the runner's
  checkpoint (``(folded)`` in ``proj_meta``) moves in the same transaction as the rows,
  and every fold, in any process, takes the backlog first. A reader sees the
  projections of an earlier moment of the log, never a mix.
- Nothing depends on this process: if it dies, cannot start or is stopped, the next
  write that folds (an append, a small receive) or the node's own ``catch_up`` folds
  the backlog; a node that opens with a backlog (killed mid-sync) folds it first.
- The parent wakes it with a byte on its stdin after each commit; end of input stops it
  between two transactions.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from eventlog import gc_tuning
from eventlog.signer import child_env
from eventlog.store import BUSY_TIMEOUT_S, connect, in_transaction
from projections.runner import Runner

READY = b"ready\n"
CHUNK = 20_000
"""Events folded per transaction: each one hands the write lock back to the receiving
node (the commits, and the fold states of the busiest entities written once each)."""


class Projector:
    """The parent's handle on the projector process of one log."""

    def __init__(self, log_path: Path) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        try:
            # as the signer: this Potluck's own package first, and -P so that the
            # current directory (which may hold another "projections") is not
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "projections.projector", str(log_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=child_env(),
            )
        except OSError:  # no interpreter to start (a frozen build): fold in place
            return
        assert self._proc.stdin is not None and self._proc.stdout is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ready(self) -> bool:
        """True once the child has opened the log and waits for work; never waits
        (starting takes ~0.1 s: the receives meanwhile fold in place)."""
        if self._ready or self._proc is None or self._proc.stdout is None:
            return self._ready
        try:
            said = os.read(self._proc.stdout.fileno(), 16)
        except BlockingIOError:
            return False
        except OSError:
            said = b""
        if said.startswith(READY):
            self._ready = True
        else:  # it ended before it could start (a log of another version)
            self.close()
        return self._ready

    def wake(self) -> None:
        """Tell it the log grew. Never waits: a full pipe already holds a wake-up."""
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            os.write(self._proc.stdin.fileno(), b"\n")
        except BlockingIOError:
            pass
        except (OSError, ValueError):  # it ended: the backlog is folded in place from now on
            self.close()

    def close(self, timeout: float = BUSY_TIMEOUT_S) -> None:
        """Stop it after its current transaction (end of input); kill one that hangs,
        or that has not started: it has folded nothing yet. Waits for it to end."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not self._ready:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(log_path: str, wake: int, said: int) -> int:
    """The child: fold the backlog, CHUNK events a transaction, whenever woken, until
    the parent closes the pipe; ``said``: where it says READY once it has opened the
    log. Returns the exit status (1: the log is not ready)."""
    gc_tuning.tune()
    db = connect(log_path)
    runner = Runner()
    if not runner.ready(db):  # a projection of another version: the node rebuilds
        return 1
    os.write(said, READY)
    while _woken(wake, wait=True):
        while fold_chunk(db, runner) and not _ended(wake):
            pass
    return 0


def fold_chunk(db: sqlite3.Connection, runner: Runner, limit: int = CHUNK) -> int:
    """One transaction of the backlog; the number of events it folded. The events
    are read before the transaction: the receiving node waits for it."""
    read = runner.backlog(db, limit)
    if not read.events and read.last == read.after:
        return 0
    return in_transaction(
        db,
        lambda db: runner.catch_up(db, limit, read),
        [runner.before_commit],
        [runner.rolled_back],
    )


def _woken(fd: int, *, wait: bool) -> bool:
    """Take the wake-ups waiting on ``fd``; False at end of input."""
    if not wait and not select.select([fd], [], [], 0)[0]:
        return True
    return os.read(fd, 4096) != b""


def _ended(fd: int) -> bool:
    return not _woken(fd, wait=False)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides when this one ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(serve(sys.argv[1], sys.stdin.fileno(), sys.stdout.fileno()))
