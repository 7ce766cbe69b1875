"""cProfile of both threads of a node, shared by the benchmark scripts.

cProfile only sees the thread that enabled it, and every statement (and the commit's
fsync) runs on aiosqlite's thread, so each call queued there is wrapped.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any


class ThreadProfiles:
    """cProfile on the event-loop thread and, through aiosqlite's queue, the db thread."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.loop = cProfile.Profile()
        self.db = cProfile.Profile()
        self.active = False

    def wrap(self, conn: Any) -> None:
        queue = conn._execute

        async def execute(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return await queue(fn, *args, **kwargs)

            def profiled() -> Any:
                self.db.enable()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.db.disable()

            return await queue(profiled)

        conn._execute = execute

    def start(self) -> None:
        self.active = True
        self.loop.enable()

    def stop(self) -> None:
        self.loop.disable()
        self.active = False

    def report(self, top: int) -> str:
        out = io.StringIO()
        for name, profile in (("database thread", self.db), ("event-loop thread", self.loop)):
            out.write(f"\n=== {self.phase}, {name}: top {top} by tottime ===\n")
            stats = pstats.Stats(profile, stream=out)
            stats.strip_dirs().sort_stats("tottime").print_stats(top)
        return out.getvalue()
