"""Websockets driver for the sans-I/O sync core: one short loop per connection.

The only module that imports websockets. It makes no protocol decisions: it writes what
``SyncProtocol.data_to_send()`` holds, feeds received frames in, hands verified batches
to the store, answers the core's requests from the store, and translates websockets'
exceptions into the end of the stream (docs/protocol.md §13).

permessage-deflate is off: events are signed, mostly incompressible bytes, and
compressing them costs ~30x throughput for a few percent of size (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State as WsState

from eventlog.errors import InvalidEvent, StorageError
from eventlog.events import Envelope, decode
from sync.errors import LocalProtocolError, PeerNotAMember, RemoteError
from sync.limits import (
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_LIMITS,
    TOO_MANY_CONNECTIONS,
    Limits,
    SessionGuard,
)
from sync.log import SyncLog
from sync.protocol import (
    CODE_PATTERN,
    MAX_FRAME_BYTES,
    EventsWanted,
    EvidenceReceived,
    EvidenceWanted,
    Member,
    Received,
    Role,
    State,
    SyncProtocol,
    VectorWanted,
)

READ_SLICE = 2000  # events read from the store per slice (one frame per author)
MAX_BACKLOG = 2 << 20  # bytes queued in the core before a sender waits for credit
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
MAX_QUEUE = 16  # frames websockets buffers before it stops reading (its default): with
# 1 MiB frames, what one peer can make us hold. It was 256 while a one-shot sync of many
# small batches stalled in the close handshake; nothing is sent on a closing socket now
# and 300 authors' small batches both ways close as fast with 16 as with 256.

Connection = ClientConnection | ServerConnection


class DialError(Exception):
    """The address could not be reached or did not speak websockets."""


@dataclass(slots=True)
class SessionStats:
    """What moved on one connection; counts frames as written to the websocket."""

    bytes_in: int = 0
    bytes_out: int = 0
    events_in: int = 0
    events_out: int = 0
    evidence_in: int = 0  # evidence messages received (new or already known)
    evidence_out: int = 0  # evidence messages sent
    future: int = 0  # received events stamped > 24 h ahead of our clock: held, not applied
    started: float = field(default_factory=time.monotonic)


class Session:
    """Drives one ``SyncProtocol`` over one websocket until either side ends it.

    ``one_shot``: after our catch-up is sent and the peer's vector is known, say
    ``bye``; the run ends once both sides said it (``potluck sync``). A long-lived
    session (``potluck serve``) answers a peer's ``bye`` with its own once its
    catch-up is sent. ``on_stored`` is called after events from the peer were stored,
    ``on_forked`` after what the peer sent made this node record fork evidence it did
    not have (a forked event, or an ``evidence`` message): both are for relaying.
    ``on_authenticated`` is called once the handshake proved the peer; a reason it
    returns refuses the peer, in an error frame (connection limits, sync/peers.py).
    """

    def __init__(
        self,
        ws: Connection,
        protocol: SyncProtocol,
        store: SyncLog,
        *,
        address: str,
        one_shot: bool = False,
        on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
        on_forked: Callable[[Session], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        on_authenticated: Callable[[Session], str | None] | None = None,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.store = store
        self.address = address
        self.one_shot = one_shot
        self.stats = SessionStats()
        self.guard = SessionGuard(limits)  # per-peer limits (sync/limits.py)
        self._held: tuple[int | None, int | None] | None = None  # see _hold
        self._on_stored = on_stored
        self._on_forked = on_forked
        self._on_authenticated = on_authenticated
        self._authenticated = False
        self._answering = 0  # requests being answered (reads from the store) right now
        self._send_lock = asyncio.Lock()
        self._credit = asyncio.Event()
        self._wants: dict[bytes, int] = {}  # author -> first seq the peer lacks
        self._sender: asyncio.Task[None] | None = None
        self._evidence_wants: set[bytes] = set()  # authors whose fork proof the peer lacks
        self._evidence_sender: asyncio.Task[None] | None = None
        self._inbox: list[Received] = []  # verified batches waiting for the store
        self._storer: asyncio.Task[None] | None = None
        self._store_failed: str | None = None
        self._bye_sent = False
        self._peer_closed = False
        self.error: str | None = None
        self.member: Member | None = None  # who the peer is, once _admit_member said so

    @property
    def peer_key(self) -> bytes | None:
        return self.protocol.peer_key

    @property
    def refused(self) -> str | None:
        """Why this side refused the peer as no member (§members), else None: the
        credential it presented was false (the core), or our log does not know it."""
        error = self.protocol.error
        if error is None or isinstance(error, RemoteError) or error.code != PeerNotAMember.code:
            return None
        return error.reason

    @property
    def open(self) -> bool:
        return self.protocol.state in (State.OPEN, State.PEER_DONE)

    async def run(self) -> None:
        """Run until the connection ends; never raises for what the peer does."""
        watchdog = asyncio.create_task(self._watch())
        loop = asyncio.get_running_loop()
        try:
            await self._flush()
            async for frame in self.ws:
                resume = 0.0
                if isinstance(frame, str):
                    self.protocol.fail("malformed-frame", "text frames are not used")
                else:
                    self.stats.bytes_in += len(frame)
                    events, backlog = self.protocol.events_in, self.protocol.outgoing_backlog
                    self.protocol.receive_data(frame)
                    self._credit.set()
                    verdict = self.guard.frame(  # throttle or cut a flood (sync/limits.py)
                        len(frame),
                        self.protocol.events_in - events,
                        sent=self.protocol.outgoing_backlog < backlog,
                    )
                    if verdict.code is not None:
                        self.protocol.fail(verdict.code, verdict.reason)
                    if not self._authenticated and self.protocol.peer_key is not None:
                        self._authenticated = True
                        self._claim_slot()
                    resume = loop.time() + verdict.pause
                    self._hold(self.guard.rates.over)
                await self._process()
                if self.protocol.close_expected():
                    break
                if resume > loop.time():  # backpressure: stop reading from this peer
                    await asyncio.sleep(resume - loop.time())
            else:
                self._ended_by_peer()
        except ConnectionClosed:
            self._ended_by_peer()
        except StorageError as exc:
            self.protocol.fail("store-failed", str(exc))
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):  # our error frame, before _discard
                await asyncio.wait_for(self._flush(), CLOSE_TIMEOUT)
            discard = asyncio.create_task(self._discard())
            await self._finish()
            discard.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await discard

    def _claim_slot(self) -> None:
        """The handshake is done: ask for a member's slot; refused, say why."""
        if self._on_authenticated is None:
            return
        refused = self._on_authenticated(self)
        if refused is not None:
            self.protocol.fail(*split_reason(refused))

    def _ended_by_peer(self) -> None:
        """The stream ended. A node that refused us (close 1013, before the handshake)
        gave its reason as the close reason: that, not connection-lost, is the error."""
        reason = self.ws.close_reason if self.ws.close_code == CLOSE_TRY_AGAIN_LATER else None
        if reason and self.protocol.peer_key is None:
            code, text = split_reason(reason, "refused")
            self.protocol.fail(code, f"refused by the node: {text}")
        self.protocol.receive_eof()

    async def refuse(self, reason: str) -> None:
        """Close a connection still in its handshake (evicted): code 1013 and the reason,
        nothing else is said to a peer that has not proven itself."""
        self.protocol.fail(*split_reason(reason))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.ws.close(CLOSE_TRY_AGAIN_LATER, reason[:120]), CLOSE_TIMEOUT
            )

    def _hold(self, on: bool) -> None:
        """While the peer is over a rate limit, websockets reads from its socket only
        once every frame read so far was taken: at most one frame (and one read) waits
        in memory instead of MAX_QUEUE, and TCP's window holds the rest."""
        assembler = self.ws.recv_messages
        if on == (self._held is not None):
            return
        if on:
            self._held = (assembler.high, assembler.low)
            assembler.high = assembler.low = 0
            assembler.maybe_pause()
        else:
            assert self._held is not None
            assembler.high, assembler.low = self._held
            self._held = None
            assembler.maybe_resume()

    async def _discard(self) -> None:
        """Once the read loop ended: drop what the peer still sends, so that websockets
        reads on to its close frame; unread, frames queued before it would hold the
        close handshake until CLOSE_TIMEOUT. Not more than MAX_QUEUE frames: a peer cut
        off mid-flood is not worth parsing, it waits for CLOSE_TIMEOUT (its reading
        paused, ours too) and is then dropped. Dropping it at once would lose our error
        frame: a reset discards what its socket has not read yet."""
        with contextlib.suppress(Exception):
            count = 0
            async for _frame in self.ws:
                count += 1
                if count >= MAX_QUEUE:
                    return

    async def _watch(self) -> None:
        """End a session whose peer never finishes the handshake or leaves our queued
        events without credit (``SessionGuard.tick``)."""
        while not self.protocol.close_expected():
            await asyncio.sleep(self.guard.limits.tick)
            verdict = self.guard.tick(
                ready=(
                    self.protocol.peer_vector_complete or self.protocol.state is State.PEER_DONE
                ),
                backlog=self.protocol.outgoing_backlog,
                authenticated=self.protocol.peer_key is not None,
            )
            if verdict.code is not None and not self.protocol.close_expected():
                self.protocol.fail(verdict.code, verdict.reason)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._flush(), CLOSE_TIMEOUT)
                with contextlib.suppress(Exception):  # ends run's read loop
                    await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)
                return

    async def _finish(self) -> None:
        for task in (self._sender, self._evidence_sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._storer is not None:  # what was received is stored before we end
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._storer
        with contextlib.suppress(ConnectionClosed, Exception):
            await self._flush()
        error = self.protocol.error
        if error is not None:
            self.error = f"{error.code}: {error.reason}"
        elif self._store_failed is not None:
            self.error = self._store_failed
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)

    async def _process(self) -> None:
        received = self.protocol.events_received()
        if received:
            self._inbox.extend(received)
            if self._storer is None or self._storer.done():
                self._storer = asyncio.create_task(self._store_inbox())
                self._storer.add_done_callback(self._task_done)
        for evidence in self.protocol.evidence_received():
            # recorded before the next frame is read: evidence takes no credit, so this
            # is what bounds the memory a peer's evidence can take (one message)
            await self._record_evidence(evidence)
        self._answering += 1  # no bye while our vector is being read (_maybe_bye)
        try:
            while requests := self.protocol.requests():  # incl. what send_have asks
                for request in requests:
                    if isinstance(request, VectorWanted):
                        if not await self._admit_member():
                            break
                        self.protocol.send_have(
                            await self.store.vector(), await self.store.fork_points()
                        )
                    else:
                        self._take(request)
        finally:
            self._answering -= 1
        self._maybe_bye()
        await self._flush()

    async def _admit_member(self) -> bool:
        """Refuse a peer whose device key is no member (docs/protocol.md §members): its
        member.joined is in our log, or it presented one in the handshake (the core
        verified it). Otherwise ``not-a-member``, before the peer is told or sent
        anything of the log."""
        key = self.protocol.peer_key
        if key is None:
            return False
        if self.protocol.peer_member is not None:  # its chain, joined first, follows
            self.member = self.protocol.peer_member
            return True
        first = await self.store.read_raw(key, 1, 1)
        if first:
            joined = decode(first[0])
            name = joined.body.get("name")
            self.member = Member(key, name if isinstance(name, str) else "", joined)
            return True
        self.protocol.fail(
            PeerNotAMember.code,
            f"device key {key.hex()[:12]} is not a member here: this node's log has no "
            "member.joined with a valid membership proof for it, and the handshake "
            "presented none",
        )
        return False

    async def _record_evidence(self, evidence: EvidenceReceived) -> None:
        """Keep the peer's proof of a fork; tell the relay when it was news."""
        self.stats.evidence_in += 1
        try:
            new = await self.store.record_evidence(*evidence.versions, authenticated=True)
        except InvalidEvent as exc:  # the core checked the group: not expected
            self.protocol.fail(
                exc.code, f"evidence {evidence.author.hex()[:12]}/{evidence.seq}: {exc}"
            )
            return
        if new and self._on_forked is not None:
            self._on_forked(self)

    def _take(self, request: EventsWanted | EvidenceWanted) -> None:
        """Hand a request that needs the log to the task that reads and sends it."""
        if isinstance(request, EventsWanted):
            self._want(request)
            return
        self._evidence_wants.add(request.author)
        if self._evidence_sender is None or self._evidence_sender.done():
            self._evidence_sender = asyncio.create_task(self._send_wanted_evidence())
            self._evidence_sender.add_done_callback(self._task_done)

    async def _send_wanted_evidence(self) -> None:
        """Send the versions at each wanted author's lowest fork point (the point may
        have moved lower since the core asked: the lower one is what the peer needs)."""
        while self._evidence_wants and self.protocol.can_send_evidence:
            author = self._evidence_wants.pop()
            versions = await self.store.fork_evidence(author)
            if versions is not None:
                self.push_evidence(*versions)
                await self._flush()
        self._evidence_wants.clear()  # the session can no longer send: moot

    async def _store_inbox(self) -> None:
        """Store every batch received so far in one transaction, then grant credit.

        Why one transaction for many frames: each commit waits for the disk, and the
        frames that arrive while one commit runs go together into the next (group
        commit), so a cold sync pays for a few hundred commits, not one per frame.
        """
        while self._inbox and self.protocol.error is None:
            batches, self._inbox = self._inbox, []
            try:
                result = await self.store.receive(
                    [env for batch in batches for env in batch.envelopes], authenticated=True
                )
            except StorageError as exc:
                # the peer may have said bye already, closing the protocol: keep the
                # cause for ``error`` either way
                self._store_failed = f"store-failed: {exc}"
                self.protocol.fail("store-failed", str(exc))
                return
            if result.rejected:
                envelope, refusal = result.rejected[0]
                self.protocol.fail(
                    refusal.code, f"event {envelope.author.hex()[:12]}/{envelope.seq}: {refusal}"
                )
            else:
                self.stats.events_in += len(result.stored)
                self.stats.future += result.future
                # one grant for the whole transaction: a grant per frame let the sender
                # fill each small grant with a frame of its size, and frames stayed small
                self.protocol.send_credit(sum(batch.size for batch in batches))
                if result.stored and self._on_stored is not None:
                    self._on_stored(self, result.stored)
                if result.forks and self._on_forked is not None:
                    self._on_forked(self)
            self._maybe_bye()
            await self._flush()

    def _want(self, want: EventsWanted) -> None:
        known = self._wants.get(want.author)
        self._wants[want.author] = want.from_seq if known is None else min(known, want.from_seq)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_wanted())
            self._sender.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.protocol.fail("store-failed", str(task.exception()))
        if self._maybe_bye() or self.protocol.error is not None:
            # the peer waits for our bye or our error: the read loop, waiting for the
            # peer, would not send it, so flush here (and close after an error)
            asyncio.get_running_loop().create_task(self._flush_quietly())

    def _can_send(self) -> bool:
        return self.protocol.can_send_events or self.protocol.state == State.PEER_DONE

    async def _send_wanted(self) -> None:
        """Stream what the peer lacks in the order this node stored it, in slices,
        within the backlog; one author's part of a slice goes as one events frame."""
        while self._wants and self._can_send():
            wants, self._wants = self._wants, {}
            first = await self.store.first_arrival(wants)
            if first is None:
                continue
            cursor = first - 1
            while self._can_send():
                while self.protocol.outgoing_backlog > MAX_BACKLOG:
                    self._credit.clear()
                    await self._credit.wait()
                cursor_before = cursor
                cursor, rows = await self.store.read_arrivals(wants, cursor, READ_SLICE)
                if cursor == cursor_before:
                    break
                runs: dict[bytes, list[bytes]] = {}
                for author, _seq, raw in rows:
                    runs.setdefault(author, []).append(raw)
                for raws in runs.values():
                    self.protocol.send_events(raws)
                self.stats.events_out = self.protocol.events_queued
                await self._flush()

    def push(self, author: bytes, raws: Sequence[bytes]) -> None:
        """Live push: offer new events of one author; the core drops what the peer has."""
        if self.protocol.can_send_events and not self._bye_sent:
            self.protocol.send_events(raws)
            self.stats.events_out = self.protocol.events_queued
            # VectorWanted never shows up here: _process drains it in the same step as
            # the frame that ends the handshake, before anything is awaited
            for request in self.protocol.requests():
                if not isinstance(request, VectorWanted):
                    self._take(request)

    def push_evidence(self, first: bytes, second: bytes) -> None:
        """Offer fork evidence (two versions of one event); the core drops it if the
        peer has it or would not understand it (a version 1 peer)."""
        if self.protocol.can_send_evidence and not self._bye_sent:
            # versions that do not decode are damage on our disk (doctor's business),
            # not the peer's: leave them out rather than end the session or the relay
            with contextlib.suppress(LocalProtocolError):
                self.protocol.send_evidence(first, second)
            self.stats.evidence_out = self.protocol.evidence_sent

    async def flush(self) -> None:
        await self._flush()

    def _maybe_bye(self) -> bool:
        """Say bye once nothing is left to send, as the session's mode wants; the caller
        flushes. Returns True when it did."""
        busy = (
            self._answering > 0
            or bool(self._evidence_wants)
            or any(
                task is not None and not task.done()
                for task in (self._sender, self._evidence_sender)
            )
        )
        if self._bye_sent or busy or self._wants or self.protocol.outgoing_backlog:
            return False
        state = self.protocol.state
        ready = (
            self.one_shot and state == State.OPEN and self.protocol.peer_vector_complete
        ) or state == State.PEER_DONE
        if ready:
            self._bye_sent = True
            self.protocol.send_bye()
        return ready

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed, Exception):
            await self._flush()
        if self.protocol.error is not None:  # ends the read loop of ``run``
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)

    async def _flush(self) -> None:
        """Write what the core has for the peer. Once the peer has closed, sending
        stops but reading goes on: its last frames (its bye) may still be buffered."""
        async with self._send_lock:
            for frame in self.protocol.data_to_send():
                if self._peer_closed or self.ws.state is not WsState.OPEN:
                    # a closing websocket's send() waits for the close handshake, which
                    # waits for us to read: skip it, keep reading (their bye may be there)
                    self._peer_closed = True
                    continue
                try:
                    await self.ws.send(frame)
                except ConnectionClosed:
                    self._peer_closed = True
                    continue
                self.stats.bytes_out += len(frame)

    async def close(self, reason: str = "shutting-down") -> None:
        """End the session from our side (shutdown)."""
        if self.protocol.state in (State.OPEN, State.PEER_DONE, State.LOCAL_DONE):
            self.protocol.fail(reason, "the node is shutting down")
        with contextlib.suppress(Exception):
            await self._flush()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)


def split_reason(reason: str, default: str = TOO_MANY_CONNECTIONS) -> tuple[str, str]:
    """A refusal worded ``code: text`` (sync/limits.py) as (code, text); a reason not
    so worded is ``default`` and the whole reason."""
    code, _, text = reason.partition(": ")
    return (code, text) if CODE_PATTERN.fullmatch(code) and text else (default, reason)


def make_protocol(
    role: Role,
    key: SigningKey,
    store: SyncLog,
    joined: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> SyncProtocol:
    """``joined``: our own member.joined, presented in the handshake (own_joined);
    ``limits``: what a peer's ``have`` messages may make this session hold."""
    return SyncProtocol(
        role,
        device_key=key,
        group_secret=store.group.secret,
        group=store.group.id,
        joined=joined,
        have_entries=limits.have_entries,
        have_bytes=limits.have_bytes,
    )


async def own_joined(key: SigningKey, store: SyncLog) -> bytes | None:
    """This node's member.joined (its seq 1), or None if the log lacks it."""
    first = await store.read_raw(bytes(key.verify_key), 1, 1)
    return first[0] if first else None


def dial_problem(exc: BaseException) -> str:
    """What went wrong when dialing, in words a volunteer can act on (also shown by
    ``potluck peers`` and ``serve``), with the system's own message kept at the end."""
    if isinstance(exc, ConnectionRefusedError):
        hint = (
            "nothing is listening there: is 'potluck serve' running on that computer, "
            "and is that its port?"
        )
    elif isinstance(exc, TimeoutError):
        hint = (
            f"no answer within {OPEN_TIMEOUT:.0f} s: check the address, and that both "
            "computers are on the same network"
        )
    elif isinstance(exc, socket.gaierror):
        hint = "that host name is not known here: use the other computer's IP address"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        hint = "this computer has no route to it: check the address and the Wi-Fi"
    elif isinstance(exc, InvalidHandshake):
        hint = "something answered there, but not a Potluck node: check the port"
    elif isinstance(exc, InvalidURI):
        return "that is not an address HOST:PORT"
    else:
        return str(exc) or type(exc).__name__
    return f"{hint} ({exc})" if str(exc) else hint


async def connect_session(
    address: str,
    key: SigningKey,
    store: SyncLog,
    *,
    one_shot: bool = False,
    on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
    on_forked: Callable[[Session], None] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Session:
    """Open a websocket to ``host:port``; the caller drives the returned session (``run``)."""
    uri = f"ws://{format_address(address)}/potluck"
    try:
        ws = await connect(
            uri,
            max_size=MAX_FRAME_BYTES,
            max_queue=MAX_QUEUE,
            compression=None,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            ping_interval=20,
            ping_timeout=20,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise DialError(f"cannot reach {address}: {dial_problem(exc)}") from None
    return Session(
        ws,
        make_protocol(Role.INITIATOR, key, store, await own_joined(key, store), limits),
        store,
        address=address,
        one_shot=one_shot,
        on_stored=on_stored,
        on_forked=on_forked,
        limits=limits,
    )


async def listen(
    host: str,
    port: int,
    key: SigningKey,
    store: SyncLog,
    on_session: Callable[[Session], Awaitable[None]],
    on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    admit: Callable[[str, Session], str | None] | None = None,
    release: Callable[[str, Session], None] | None = None,
    on_forked: Callable[[Session], None] | None = None,
    authenticated: Callable[[str, Session], str | None] | None = None,
) -> Server:
    """Accept sessions on ``host:port``; ``on_session`` runs each one (and awaits it).

    ``admit(remote host, session)`` may refuse a connection before anything is said:
    it returns the reason, sent as the close reason with code 1013 (try again later);
    ``authenticated(remote host, session)`` may refuse it once the handshake is done,
    the reason then goes in an error frame; an admitted one is ``release``d when it
    ends (connection limits, sync/peers.py)."""
    joined = [await own_joined(key, store)]  # read again per connection until present

    async def handler(ws: ServerConnection) -> None:
        remote = ws.remote_address
        address = f"{remote[0]}:{remote[1]}" if remote else "unknown"
        host = str(remote[0]) if remote else "unknown"
        if joined[0] is None:
            joined[0] = await own_joined(key, store)
        session = Session(
            ws,
            make_protocol(Role.RESPONDER, key, store, joined[0], limits),
            store,
            address=address,
            on_stored=on_stored,
            on_forked=on_forked,
            limits=limits,
            on_authenticated=(
                (lambda session: authenticated(host, session))
                if authenticated is not None
                else None
            ),
        )
        refused = admit(host, session) if admit is not None else None
        if refused is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    ws.close(CLOSE_TRY_AGAIN_LATER, refused[:120]), CLOSE_TIMEOUT
                )
            return
        try:
            await on_session(session)
        finally:
            if release is not None:
                release(host, session)

    return await serve(
        handler,
        host,
        port,
        max_size=MAX_FRAME_BYTES,
        max_queue=MAX_QUEUE,
        compression=None,
        close_timeout=CLOSE_TIMEOUT,
        ping_interval=20,
        ping_timeout=20,
    )


def format_address(address: str) -> str:
    """'host:port' for a URI; a bare IPv6 literal gets its brackets."""
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """'host:port', 'host' or '[v6]:port' -> (host, port); raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("an address is host:port")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text else default_port
    if not host or not 0 <= port < 65536:  # 0: any free port (for listening)
        raise ValueError(f"'{text}' is not host:port")
    return host, port
