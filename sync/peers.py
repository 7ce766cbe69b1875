"""The peer manager: who we talk to, how we find them again, and what they get pushed.

It listens for sessions, dials known addresses (reconnecting with exponential backoff
and jitter), and pushes every event that enters the log, local or received, to every
open session: that one rule is both live push and relay, and the sync core drops what
a peer already has, so nothing echoes back and nothing storms.

New events are noticed two ways: the store calls us after a commit in this process,
and a short poll of the log's last id catches events appended by another process
(a ``potluck offer post`` typed beside a running ``potluck serve``).

Fork evidence is relayed the same way. The same wake-ups and poll read the log's fork
points (author -> lowest forked seq: what projections cut at); when one appears or
moves lower, whatever recorded it (a peer's forked event, a peer's ``evidence``
message, a bundle import in any process), its two versions are offered to every open
session. Each core drops evidence its peer holds, so it is sent once per peer that
lacks it and never back; a point moves only down, so this ends by itself.

Peers are remembered in the log's database (``peers`` table, kept by the store:
eventlog/store/peer.py) so ``potluck peers`` can read them from another process while
``serve`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Sequence

from nacl.signing import SigningKey
from websockets.asyncio.server import Server

from eventlog.events import Envelope
from eventlog.store import PeerRow as PeerRow  # re-exported: it lived here
from eventlog.store.peer import known_peers as known_peers  # re-exported, as PeerRow
from sync.limits import (
    CREDIT_TIMEOUT,
    DEFAULT_LIMITS,
    HANDSHAKE_TIMEOUT,
    HAVE_LIMIT,
    RATE_LIMIT,
    TOO_MANY_CONNECTIONS,
    ConnectionLimits,
    Eviction,
    Limits,
    PendingLimits,
)
from sync.log import PeeredLog
from sync.transport import DialError, Session, connect_session, listen

POLL_SECONDS = 0.2
STATUS_SECONDS = 1.0
RECORD_SECONDS = 10.0  # a connected peer's row is rewritten at least this often (last_seen)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STABLE_SECONDS = 30.0  # a session that lasted this long resets the backoff
CUT_CODES = (RATE_LIMIT, CREDIT_TIMEOUT, HANDSHAKE_TIMEOUT, HAVE_LIMIT)  # said even for a stranger


def lag(
    ours: dict[bytes, tuple[int, bytes]], theirs: dict[bytes, tuple[int, bytes]]
) -> tuple[int, int]:
    """(events the peer lacks from us, events we lack from the peer)."""
    behind = sum(max(0, seq - theirs.get(a, (0, b""))[0]) for a, (seq, _) in ours.items())
    ahead = sum(max(0, seq - ours.get(a, (0, b""))[0]) for a, (seq, _) in theirs.items())
    return behind, ahead


class PeerManager:
    """Runs the sessions of one node. ``say`` receives one status line per change.

    ``limits`` are the per-peer limits of every session, inbound and dialled, and the
    inbound connection limits: ``pending`` counts connections still in their handshake,
    ``connections`` the sessions of members (sync/limits.py, docs/protocol.md §limits)."""

    def __init__(
        self,
        store: PeeredLog,
        key: SigningKey,
        *,
        say: Callable[[str], None] = lambda line: None,
        name_of: Callable[[bytes], str | None] = lambda key: None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.key = key
        self.say = say
        self.name_of = name_of
        self.limits = limits
        self.connections = ConnectionLimits(limits.per_address, limits.inbound)
        self.pending: PendingLimits[Session] = PendingLimits(
            limits.pending_per_address, limits.pending
        )
        self._members: set[Session] = set()  # inbound sessions counted in ``connections``
        self.sessions: set[Session] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dialing: set[str] = set()  # addresses with a dial loop running
        self._wanted: set[str] = set()  # addresses their loop keeps dialing
        self._wake = asyncio.Event()
        self._running = False
        self._caught_up: set[Session] = set()
        self._announced: set[Session] = set()
        self._recorded: dict[Session, tuple[int, int, float]] = {}  # behind, ahead, when
        self._future_said: dict[Session, int] = {}
        self._found: dict[str, str] = {}

    async def start(self, host: str | None = None, port: int | None = None) -> int | None:
        """Start pushing and, when ``host`` is given, listening; return the bound port."""
        await self.store.mark_peers_disconnected()
        self._running = True
        self.store.on_change(self._wake.set)
        self._spawn(self._feed())
        self._spawn(self._status())
        bound: int | None = None
        if host is not None and port is not None:
            self._server = await listen(
                host,
                port,
                self.key,
                self.store,
                self._serve_session,
                on_stored=self._stored,
                limits=self.limits,
                admit=self._admit,
                release=self._release,
                on_forked=self._forked,
                authenticated=self._authenticated,
            )
            bound = self._server.sockets[0].getsockname()[1] if self._server.sockets else port
            self.say(f"listening on {host}:{bound}")
        for row in await self.store.known_peers():
            if row.dial and row.found != "mdns":  # mdns peers are found again, live
                self.add_peer(row.address, row.found)
        return bound

    def add_peer(self, address: str, found: str = "manual") -> None:
        """Keep a session to ``address`` open from now on (remembered across restarts)."""
        if not self._running:
            return
        self._wanted.add(address)
        if address in self._dialing:
            return
        self._dialing.add(address)
        self._found[address] = found
        self._spawn(self._dial_loop(address, found))

    def drop_peer(self, address: str, found: str = "mdns") -> None:
        """Stop re-dialing ``address`` once its current session ends, if it was added as
        ``found`` (an mDNS advert withdrawn; a manual peer at that address stays)."""
        if self._found.get(address) == found:
            self._wanted.discard(address)

    async def stop(self) -> None:
        """Close every session and stop listening; returns when all tasks ended."""
        self._running = False
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.close() for s in list(self.sessions)), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        with contextlib.suppress(Exception):
            await self.store.mark_peers_disconnected()

    # -- sessions ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit(self, host: str, session: Session) -> str | None:
        """Count a new inbound connection as pending its handshake, or refuse it (the
        reason, said now and then); the oldest pending one may be evicted for it."""
        verdict = self.pending.admit(host, session)
        if isinstance(verdict, Eviction):
            evicted = verdict.evicted
            if verdict.report:
                self.say(
                    f"evicted a connection from {evicted.address} before its handshake: "
                    f"{verdict.reason}"
                )
            self._spawn(evicted.refuse(verdict.reason))
            return None
        if verdict is None:
            return None
        if verdict.report:
            self.say(f"refused a connection from {host}: {verdict.reason}")
        return verdict.reason

    def _authenticated(self, host: str, session: Session) -> str | None:
        """The handshake is done: the pending slot becomes a member's, or the member is
        refused (the reason goes to it in an error frame, and to the log)."""
        self.pending.release(session)
        refusal = self.connections.admit(host)
        if refusal is None:
            self._members.add(session)
            return None
        if refusal.report:
            self.say(f"refused a connection from {host}: {refusal.reason}")
        return refusal.reason

    def _release(self, host: str, session: Session) -> None:
        self.pending.release(session)
        if session in self._members:
            self._members.discard(session)
            self.connections.release(host)

    async def _serve_session(self, session: Session) -> None:
        await self._run_session(session, None, "inbound")

    async def _dial_loop(self, address: str, found: str) -> None:
        try:
            await self._dial_until_dropped(address, found)
        finally:
            self._dialing.discard(address)

    async def _dial_until_dropped(self, address: str, found: str) -> None:
        await self.store.remember_peer(address, found)
        delay = BACKOFF_FIRST
        while self._running and address in self._wanted:
            began = time.monotonic()
            try:
                session = await connect_session(
                    address,
                    self.key,
                    self.store,
                    on_stored=self._stored,
                    on_forked=self._forked,
                    limits=self.limits,
                )
            except DialError as exc:
                await self._record(address, None, connected=False, error=str(exc), found=found)
            else:
                await self._run_session(session, address, found)
            if time.monotonic() - began > STABLE_SECONDS:
                delay = BACKOFF_FIRST
            if not self._running or address not in self._wanted:
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _run_session(self, session: Session, address: str | None, found: str) -> None:
        """Track ``session`` while driving it to its end."""
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            await self._ended(session, address, found)

    async def _ended(self, session: Session, address: str | None, found: str) -> None:
        self.sessions.discard(session)
        self._caught_up.discard(session)
        self._recorded.pop(session, None)
        self._future_said.pop(session, None)
        key = session.peer_key
        if session in self._announced and key is not None:
            self._announced.discard(session)
            self.say(
                f"peer lost: {self._label(session)} at {session.address}"
                + (f" ({session.error})" if session.error else "")
            )
        elif session.refused is not None:
            self.say(
                f"refused {self._label(session)} at {session.address} (not-a-member: "
                f"{session.refused})"
            )
        elif session.error and session.error.split(":", 1)[0] in CUT_CODES:
            self.say(f"cut off {self._label(session)} at {session.address} ({session.error})")
        elif address is not None and (session.error or "").startswith(TOO_MANY_CONNECTIONS):
            self.say(f"refused by {address}: {session.error}")  # we dialled: say why
        await self._record(
            address or _inbound(key),
            key,
            connected=False,
            error=session.error,
            found=found,
            remote=session.address,
        )

    def _stored(self, session: Session, stored: Sequence[Envelope]) -> None:
        self._wake.set()  # relay: the feed pushes them to every other session

    def _forked(self, session: Session) -> None:
        self._wake.set()  # relay: the feed offers the evidence to every session

    async def _feed(self) -> None:
        """Push every event that enters the log to every open session, in arrival order;
        then offer evidence of every fork point that appeared or moved lower."""
        last = await self.store.last_id()
        # sessions learn the points held now from each other's have (§evidence)
        points = await self.store.fork_points()
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            while True:
                rows = await self.store.read_after(last, 1000)
                if not rows:
                    break
                last = rows[-1][0]
                runs: list[tuple[bytes, list[bytes]]] = []
                for _id, author, _seq, raw in rows:
                    if runs and runs[-1][0] == author:
                        runs[-1][1].append(raw)
                    else:
                        runs.append((author, [raw]))
                await self._push(runs)
            points = await self._relay_evidence(points)

    async def _push(self, runs: list[tuple[bytes, list[bytes]]]) -> None:
        """Offer ``runs`` to every open session (a method: no loop variable of ``_feed``
        keeps an ended session alive until the next events)."""
        for session in list(self.sessions):
            for author, raws in runs:
                session.push(author, raws)
            with contextlib.suppress(Exception):
                await session.flush()

    async def _relay_evidence(self, known: dict[bytes, int]) -> dict[bytes, int]:
        """Offer every session the evidence of fork points new since ``known``; return
        the points now. One cheap query when nothing forked, the normal case."""
        points = await self.store.fork_points()
        for author, seq in points.items():
            if author in known and known[author] <= seq:
                continue
            versions = await self.store.fork_evidence(author)
            if versions is None:
                continue
            for session in list(self.sessions):
                session.push_evidence(*versions)
                with contextlib.suppress(Exception):
                    await session.flush()
        return points

    async def _status(self) -> None:
        """Record each session's lag and say when a peer is connected and caught up."""
        while self._running:
            await asyncio.sleep(STATUS_SECONDS / 4)
            if not self.sessions:
                continue
            ours = await self.store.vector()
            now = time.monotonic()
            waiting = list(self.sessions)  # emptied: no loop variable keeps a session
            while waiting:
                await self._status_of(waiting.pop(0), ours, now)

    async def _status_of(
        self, session: Session, ours: dict[bytes, tuple[int, bytes]], now: float
    ) -> None:
        """One session's status; its own frame, so no local outlives the round and keeps
        an ended session (and what it held) alive."""
        key = session.peer_key
        if (
            key is None or not session.protocol.peer_vector_complete or session not in self.sessions
        ):  # ended during an await below
            return
        behind, ahead = lag(ours, session.protocol.peer_vector)
        address = session.address if session.protocol.role.name == "INITIATOR" else _inbound(key)
        last = self._recorded.get(session)
        if last is None or last[:2] != (behind, ahead) or now - last[2] > RECORD_SECONDS:
            # a write (an fsync) only when the lag moved, or to refresh last_seen
            self._recorded[session] = (behind, ahead, now)
            await self._record(
                address,
                key,
                connected=True,
                behind=behind,
                ahead=ahead,
                found=self._found.get(address, "inbound"),
                remote=session.address,
            )
            if session not in self.sessions:  # it ended while we wrote: the
                # row must not stay "connected" if our write landed after its end
                await self._record(
                    address,
                    key,
                    connected=False,
                    error=session.error,
                    remote=session.address,
                    found=self._found.get(address, "inbound"),
                )
                return
        if session.stats.future > self._future_said.get(session, 0):
            self._future_said[session] = session.stats.future
            self.say(
                f"held {session.stats.future} events from {self._label(session)} "
                "stamped more than 24 h ahead of this clock: they wait for "
                "their time (check both clocks)"
            )
        if session not in self._announced:
            self._announced.add(session)
            self.say(f"peer connected: {self._label(session)} at {session.address}")
        if session not in self._caught_up and ahead == 0 and behind == 0:
            self._caught_up.add(session)
            self.say(
                f"caught up with {self._label(session)}: received "
                f"{session.stats.events_in} events, sent "
                f"{session.stats.events_out}"
            )

    async def _record(
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
    ) -> None:
        now = int(time.time() * 1000) if key is not None else None
        with contextlib.suppress(Exception):
            await self.store.record_peer(
                address,
                key,
                connected=connected,
                error=error,
                behind=behind,
                ahead=ahead,
                found=found,
                remote=remote,
                now_ms=now,
            )

    def _label(self, session: Session) -> str:
        """'Ana (3f2a9c01)': the member the session's check found (Session.member);
        ``name_of`` only for a peer it did not find (a refused one has no name)."""
        key = session.peer_key
        if key is None:
            return "an unauthenticated peer"
        name = session.member.name if session.member is not None else self.name_of(key)
        return f"{name} ({key.hex()[:8]})" if name else key.hex()[:8]


def _inbound(key: bytes | None) -> str:
    return "inbound:" + (key.hex() if key else "unknown")
