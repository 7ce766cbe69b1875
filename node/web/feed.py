"""ChangeFeed: one watcher of the log per web app, fanned out to every open page.

Why polling: the log can grow from three places, this process's own posts, sync
and the ``potluck`` CLI run in another process on the same data directory.
SQLite tells no one about another process's commit, so the only signal that covers
all three is the log's own arrival counter: ``SELECT max(id) FROM events``. One task
reads it every ``interval`` seconds (300 ms: under the issue's one-second budget, and
a read of an indexed maximum costs microseconds) while at least one page listens, and
stops when the last one leaves. When the store offers ``on_change`` (called after
each commit in this process), that wakes the watcher at once, so this process's own
writes show without waiting for the next tick.

Bounded: each listener has a queue of one; a slow page skips to the newest counter
instead of piling up notifications. A listener that goes away (tab closed) is removed
in its generator's ``finally``; ``close()`` ends every listener (server shutdown).

``ShareWatch`` is the other half of "forms never lie": after a form saved an event,
the page asks how many connected peers have it. That lives in the serving node's sync
sessions, not in the log, so it is polled from the ``PeerVectors`` hook the node gives
``create_app`` (nothing when the node does not sync). ``merged`` puts both on the one
``/events`` stream of a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from eventlog.errors import PotluckError

log = logging.getLogger(__name__)

INTERVAL = 0.3
HEARTBEAT = 15.0

_CLOSED = -1

T = TypeVar("T")


class ChangeFeed:
    """Tells listeners the log's arrival counter each time it changes."""

    def __init__(
        self, last_id: Callable[[], Awaitable[int]], *, interval: float = INTERVAL
    ) -> None:
        self._last_id = last_id
        self._interval = interval
        self._listeners: set[asyncio.Queue[int]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._last: int | None = None
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def notify(self) -> None:
        """Something was just committed in this process: look now, not at the next tick."""
        if self._wake is not None:
            self._wake.set()

    async def listen(self, *, heartbeat: float = HEARTBEAT) -> AsyncGenerator[int | None]:
        """Yield the counter now, then each new value; None every ``heartbeat`` s of quiet.

        The heartbeat lets the caller write to the connection, which is how a peer that
        vanished without closing it (a phone leaving the Wi-Fi) is noticed.
        """
        if self._closed:
            return
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        self._listeners.add(queue)
        self._start()
        try:
            yield await self._last_id()
            while True:
                try:
                    value = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield None
                    continue
                if value == _CLOSED:
                    return
                yield value
        finally:
            self._listeners.discard(queue)
            if not self._listeners:
                self._stop()

    def close(self) -> None:
        """End every listener and the watcher; later ``listen`` calls end at once."""
        self._closed = True
        for queue in list(self._listeners):
            _put_latest(queue, _CLOSED)
        self._stop()

    def _start(self) -> None:
        if self.running:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="potluck-web-feed")

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        assert self._wake is not None
        while True:
            try:
                current = await self._last_id()
            except (PotluckError, ValueError) as exc:  # failed or closed: say so, go on
                log.warning("web feed cannot read the log: %s", exc)
                current = self._last if self._last is not None else 0
            if current != self._last:
                self._last = current
                for queue in list(self._listeners):
                    _put_latest(queue, current)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)


def _put_latest(queue: asyncio.Queue[int], value: int) -> None:
    """Replace whatever the queue holds by ``value`` (only the newest matters)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(value)


PeerVectors = Callable[[], list[dict[bytes, tuple[int, bytes]]]]
"""What each connected peer device has of the log, as sync knows it: one vector
(author -> (seq, head hash)) per peer. Provided by the serving node (node/app.py)."""


class ShareWatch:
    """How many connected peers have one of this node's events, for the pages that ask.

    A page that just saved an event (this node's ``seq``) listens with ``watch(seq)``:
    it gets the count now, then each time it grows. One task reads ``vectors`` every
    ``interval`` seconds while at least one page listens, whatever their number.

    The count only grows: a peer that had the event keeps it even after it
    disconnects, so the largest count seen is still true ("shared with 2 peers"),
    while the count of the moment would fall back to 0 when the Wi-Fi drops.
    """

    def __init__(self, vectors: PeerVectors, author: bytes, *, interval: float = INTERVAL) -> None:
        self._vectors = vectors
        self._author = author
        self._interval = interval
        self._listeners: dict[asyncio.Queue[int], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def count(self, seq: int) -> int:
        """Connected peers whose vector holds this node's event ``seq`` right now."""
        return _holding(self._heads(), seq)

    async def watch(self, seq: int) -> AsyncGenerator[int]:
        """Yield the count for this node's event ``seq`` now, then each larger one."""
        if self._closed:
            return
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        best = self.count(seq)
        self._listeners[queue] = seq
        self._start()
        try:
            yield best
            while True:
                value = await queue.get()
                if value == _CLOSED:
                    return
                if value > best:
                    best = value
                    yield value
        finally:
            self._listeners.pop(queue, None)
            if not self._listeners:
                self._stop()

    def close(self) -> None:
        """End every watcher; later ``watch`` calls end at once."""
        self._closed = True
        for queue in list(self._listeners):
            _put_latest(queue, _CLOSED)
        self._stop()

    def _heads(self) -> list[int]:
        """This node's head seq in each connected peer's vector (0: none of it)."""
        try:
            vectors = self._vectors()
        except Exception as exc:  # the page must not break because sync did
            log.warning("web page cannot read the peers' vectors: %s", exc)
            return []
        return [vector.get(self._author, (0, b""))[0] for vector in vectors]

    def _start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._poll(), name="potluck-web-shares"
            )

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            heads = self._heads()
            for queue, seq in list(self._listeners.items()):
                _put_latest(queue, _holding(heads, seq))


def _holding(heads: list[int], seq: int) -> int:
    return sum(head >= seq for head in heads)


async def merged(*sources: AsyncGenerator[T]) -> AsyncGenerator[T]:
    """Items of every source as they come; ends when the first source ends.

    Each source runs in its own task and is closed (its ``finally`` runs) when the
    merge ends, including when the consumer is cancelled (a page closed).
    """
    queue: asyncio.Queue[list[T] | None] = asyncio.Queue()  # None: a source ended

    async def pump(source: AsyncGenerator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait([item])
        finally:
            queue.put_nowait(None)
            await source.aclose()

    tasks = [asyncio.get_running_loop().create_task(pump(s)) for s in sources]
    try:
        while (box := await queue.get()) is not None:
            yield box[0]
    finally:
        for task in tasks:
            task.cancel()
