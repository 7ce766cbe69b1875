"""What projections need of the log they fold: ``ProjectionLog``.

Why a protocol rather than ``eventlog.store.Store``: the runner (``Runner.attach``) and
the node that composes it (node/app.py: rebuilds, the projector's wake-ups, folding
behind the log) use five of the store's methods, and naming exactly those keeps the
projections from growing into the rest of the store's surface. ``Store`` satisfies it
(tests/test_projection_log.py checks it with mypy and on a real file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Protocol, TypeVar

from eventlog.store import ProjectionHook

T = TypeVar("T")


class ProjectionLog(Protocol):
    """The log as projections see it: hooks inside its write transactions, and
    functions run on its database thread."""

    def add_hook(
        self,
        hook: ProjectionHook,
        on_rollback: Callable[[], None] | None = None,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Run ``hook`` with the events each write transaction adds, inside it;
        ``on_rollback`` when such a transaction is undone; ``before_commit`` at the end
        of every write transaction, before its COMMIT."""
        ...

    def fold_behind(self, ready: Callable[[], bool] | None) -> None:
        """While ``ready()``, let large receives store without running the hooks (a
        process folding behind the log takes them later); None: fold every receive."""
        ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that added events."""
        ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn`` on the database thread."""
        ...

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction; roll it back if ``fn`` raises."""
        ...
