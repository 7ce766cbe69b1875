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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State as WsState

from node.errors import StorageError
from node.events import Envelope
from node.store import Store
from sync.protocol import (
    MAX_FRAME_BYTES,
    EventsWanted,
    Role,
    State,
    SyncProtocol,
    VectorWanted,
)

READ_SLICE = 500  # events read from the store per send_events call
MAX_BACKLOG = 2 << 20  # bytes queued in the core before a sender waits for credit
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
MAX_QUEUE = 256  # frames websockets buffers before it stops reading; credit (4 MiB)
# already bounds what a peer may have in flight, and with the default 16 a one-shot
# sync of many small batches stalled in the close handshake (tests/test_sync.py)

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
    started: float = field(default_factory=time.monotonic)


class Session:
    """Drives one ``SyncProtocol`` over one websocket until either side ends it.

    ``one_shot``: after our catch-up is sent and the peer's vector is known, say
    ``bye``; the run ends once both sides said it (``potluck sync``). A long-lived
    session (``potluck serve``) answers a peer's ``bye`` with its own once its
    catch-up is sent.
    """

    def __init__(
        self, ws: Connection, protocol: SyncProtocol, store: Store, *,
        address: str, one_shot: bool = False,
        on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.store = store
        self.address = address
        self.one_shot = one_shot
        self.stats = SessionStats()
        self._on_stored = on_stored
        self._send_lock = asyncio.Lock()
        self._credit = asyncio.Event()
        self._senders: set[asyncio.Task[None]] = set()
        self._bye_sent = False
        self._peer_closed = False
        self.error: str | None = None

    @property
    def peer_key(self) -> bytes | None:
        return self.protocol.peer_key

    @property
    def open(self) -> bool:
        return self.protocol.state in (State.OPEN, State.PEER_DONE)

    async def run(self) -> None:
        """Run until the connection ends; never raises for what the peer does."""
        try:
            await self._flush()
            async for frame in self.ws:
                if isinstance(frame, str):
                    self.protocol.fail("malformed-frame", "text frames are not used")
                else:
                    self.stats.bytes_in += len(frame)
                    self.protocol.receive_data(frame)
                    self._credit.set()
                await self._process()
                if self.protocol.close_expected():
                    break
            else:
                self.protocol.receive_eof()
        except ConnectionClosed:
            self.protocol.receive_eof()
        except StorageError as exc:
            self.protocol.fail("store-failed", str(exc))
        finally:
            await self._finish()

    async def _finish(self) -> None:
        for task in self._senders:
            task.cancel()
        for task in list(self._senders):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(ConnectionClosed, Exception):
            await self._flush()
        error = self.protocol.error
        if error is not None:
            self.error = f"{error.code}: {error.reason}"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)

    async def _process(self) -> None:
        for batch in self.protocol.events_received():
            result = await self.store.receive(batch.envelopes, authenticated=True)
            if result.rejected:
                envelope, exc = result.rejected[0]
                self.protocol.fail(exc.code, f"event {envelope.author.hex()[:12]}/"
                                   f"{envelope.seq}: {exc}")
                break
            self.stats.events_in += len(result.stored)
            self.protocol.send_credit(batch.size)
            if result.stored and self._on_stored is not None:
                self._on_stored(self, result.stored)
        for request in self.protocol.requests():
            if isinstance(request, VectorWanted):
                self.protocol.send_have(await self.store.vector())
            elif isinstance(request, EventsWanted):
                self._start_sender(request)
        self._maybe_bye()
        await self._flush()

    def _start_sender(self, want: EventsWanted) -> None:
        task = asyncio.create_task(self._send_author(want.author, want.from_seq))
        self._senders.add(task)
        task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        self._senders.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.protocol.fail("store-failed", str(task.exception()))
        if self._maybe_bye():
            # the peer already said bye and waits for ours: nothing else will wake us
            asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _send_author(self, author: bytes, from_seq: int) -> None:
        """Stream ``author``'s events from ``from_seq`` in slices, within the backlog."""
        seq = max(from_seq, 1)
        while self.protocol.can_send_events or self.protocol.state == State.PEER_DONE:
            while self.protocol.outgoing_backlog > MAX_BACKLOG:
                self._credit.clear()
                await self._credit.wait()
            raws = await self.store.read_raw(author, seq, READ_SLICE)
            if not raws:
                return
            self.protocol.send_events(raws)
            self.stats.events_out += len(raws)
            await self._flush()
            seq += len(raws)

    def push(self, author: bytes, raws: Sequence[bytes]) -> None:
        """Live push: offer new events of one author; the core drops what the peer has."""
        if self.protocol.can_send_events and not self._bye_sent:
            self.protocol.send_events(raws)
            for request in self.protocol.requests():
                if isinstance(request, EventsWanted):
                    self._start_sender(request)

    async def flush(self) -> None:
        await self._flush()

    def _maybe_bye(self) -> bool:
        """Say bye once nothing is left to send, as the session's mode wants; the caller
        flushes. Returns True when it did."""
        if self._bye_sent or self._senders or self.protocol.outgoing_backlog:
            return False
        state = self.protocol.state
        ready = (self.one_shot and state == State.OPEN
                 and self.protocol.peer_vector_complete) or state == State.PEER_DONE
        if ready:
            self._bye_sent = True
            self.protocol.send_bye()
        return ready

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed, Exception):
            await self._flush()

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


def make_protocol(role: Role, key: SigningKey, store: Store) -> SyncProtocol:
    return SyncProtocol(role, device_key=key, group_secret=store.group.secret,
                        group=store.group.id)


async def connect_session(
    address: str, key: SigningKey, store: Store, *, one_shot: bool = False,
    on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
) -> Session:
    """Open a websocket to ``host:port``; the caller drives the returned session (``run``)."""
    uri = f"ws://{format_address(address)}/potluck"
    try:
        ws = await connect(uri, max_size=MAX_FRAME_BYTES, max_queue=MAX_QUEUE,
                           compression=None,
                           open_timeout=OPEN_TIMEOUT, close_timeout=CLOSE_TIMEOUT,
                           ping_interval=20, ping_timeout=20)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise DialError(f"cannot reach {address}: {exc}") from None
    return Session(ws, make_protocol(Role.INITIATOR, key, store), store, address=address,
                   one_shot=one_shot, on_stored=on_stored)


async def listen(
    host: str, port: int, key: SigningKey, store: Store,
    on_session: Callable[[Session], Awaitable[None]],
    on_stored: Callable[[Session, Sequence[Envelope]], None] | None = None,
) -> Server:
    """Accept sessions on ``host:port``; ``on_session`` runs each one (and awaits it)."""

    async def handler(ws: ServerConnection) -> None:
        remote = ws.remote_address
        address = f"{remote[0]}:{remote[1]}" if remote else "unknown"
        session = Session(ws, make_protocol(Role.RESPONDER, key, store), store,
                          address=address, on_stored=on_stored)
        await on_session(session)

    return await serve(handler, host, port, max_size=MAX_FRAME_BYTES, max_queue=MAX_QUEUE,
                       compression=None,
                       close_timeout=CLOSE_TIMEOUT, ping_interval=20, ping_timeout=20)


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
