"""What sync needs of the log: ``SyncLog``, a structural type the store satisfies.

Why a protocol and not ``eventlog.store.Store``: the transport, the peer manager and
bundles use a dozen of the store's methods, and naming exactly those says what any
other log (an in-memory one for tests, another backend) must do to be synced. It also
keeps sync/ from leaning on the store's internals (its SQL, its hooks, its signer).
tests/conformance_sync_log.py is the behaviour behind the names: any implementation
must pass it.

``PeerBook`` is what the peer manager needs besides: where it remembers peers (the
``peers`` table, created and written by eventlog/store like every table of the log).
A log that is only synced (a bundle's source, a test double) need not remember peers,
so the two are apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import Head, PeerRow, ReceiveResult


class SyncLog(Protocol):
    """The log as sync/transport.py, sync/peers.py and sync/bundle.py use it.

    Authors are 32-byte device keys, raws the wire bytes of one event, arrival numbers
    (``id``) the order in which this log stored its events, ascending from 1.
    """

    @property
    def group(self) -> Group:
        """The group whose events this log holds (sessions and bundles check it)."""
        ...

    async def vector(self) -> dict[bytes, tuple[int, bytes]]:
        """author -> (seq, head hash) of the last event held of each author."""
        ...

    async def heads(self) -> dict[bytes, Head]:
        """author -> the head as stored (seq, hash, hlc)."""
        ...

    async def receive(
        self, batch: Iterable[Envelope], *, authenticated: bool = False
    ) -> ReceiveResult:
        """Store events from a peer or a bundle, idempotently; hold what cannot follow
        yet and release it when its predecessor arrives; durable on return."""
        ...

    async def read_raw(self, author: bytes, from_seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` raws of ``author`` from ``from_seq`` on, in seq order."""
        ...

    async def read_arrivals(
        self, wants: Mapping[bytes, int], after_id: int, limit: int
    ) -> tuple[int, list[tuple[bytes, int, bytes]]]:
        """(author, seq, raw) of ``wants``' authors from their wanted seq on, among the
        next ``limit`` arrivals after ``after_id``; with the last arrival number read."""
        ...

    async def first_arrival(self, wants: Mapping[bytes, int]) -> int | None:
        """The smallest arrival number among ``wants``' wanted events; None if none."""
        ...

    async def last_id(self) -> int:
        """The arrival number of the newest event; 0 for an empty log."""
        ...

    async def read_after(self, last_id: int, limit: int) -> list[tuple[int, bytes, int, bytes]]:
        """(id, author, seq, raw) of up to ``limit`` events after ``last_id``, in order."""
        ...

    async def pending_count(self) -> int:
        """Events held back, waiting for an event they follow or name."""
        ...

    async def fork_points(self) -> dict[bytes, int]:
        """author -> lowest seq at which this log holds two versions of their event."""
        ...

    async def fork_evidence(self, author: bytes) -> tuple[bytes, bytes] | None:
        """Two versions (raws) at ``author``'s lowest fork point; None without a fork."""
        ...

    async def record_evidence(
        self, first: Envelope, second: Envelope, *, authenticated: bool = False
    ) -> bool:
        """Keep two versions of one (author, seq) as fork evidence; True if new."""
        ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit in this process that changed the log."""
        ...


class PeerBook(Protocol):
    """Where the peer manager remembers peers (the ``peers`` table)."""

    async def remember_peer(self, address: str, found: str) -> None:
        """Add a dial address; an existing one keeps how it was found."""
        ...

    async def known_peers(self) -> list[PeerRow]:
        """Every remembered peer, by address."""
        ...

    async def record_peer(
        self,
        address: str,
        key: bytes | None,
        *,
        connected: bool,
        error: str | None = None,
        behind: int | None = None,
        ahead: int | None = None,
        found: str = "inbound",
        remote: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """What a session to ``address`` showed: its key, state, lag and last error."""
        ...

    async def mark_peers_disconnected(self) -> None:
        """No session is open (the node starts or stops)."""
        ...


class PeeredLog(SyncLog, PeerBook, Protocol):
    """A log the peer manager both syncs and remembers its peers in: the node's store."""
