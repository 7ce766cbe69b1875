"""Helpers for the sync tests: nodes on real websockets bound to 127.0.0.1.

Every wait here is bounded: ``helpers.until`` polls a condition until a deadline and
``within`` puts a timeout on one await, so a broken sync fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

import msgpack
from helpers import until
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from eventlog import body as b
from eventlog import events
from eventlog.clock import HybridClock
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof
from node.app import Node
from sync.errors import RemoteError
from sync.protocol import Role, State, SyncProtocol

T = TypeVar("T")

LOCAL = "127.0.0.1"


async def within(aw: Awaitable[T], seconds: float = 10.0) -> T:
    """``aw``, or TimeoutError after ``seconds``."""
    return await asyncio.wait_for(aw, seconds)


def stock(
    n: int, *, item: str = "rice", location: str = "pantry", first: int = 1
) -> list[b.StockAdjusted]:
    """``n`` stock adjustments, each with its own delta, so every event differs."""
    return [
        b.StockAdjusted(item=item, location=location, delta=first + i, reason="donation")
        for i in range(n)
    ]


async def append_stock(node: Node, n: int, *, batch: int = 1000, first: int = 1) -> list[Envelope]:
    """Append ``n`` stock adjustments by ``node``'s own key, ``batch`` per transaction."""
    written: list[Envelope] = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        written += await within(node.store.append(node.key, stock(count, first=first + start)), 60)
    return written


async def new_nodes(root: Path, group: Group, *names: str) -> list[Node]:
    """Fresh nodes of ``group``, each in its own data directory under ``root``."""
    return [await within(Node.init(root / name.lower(), name, group)) for name in names]


async def close_all(nodes: Sequence[Node]) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            await within(node.close())


async def digest(node: Node) -> str:
    return await node.store.read(node.runner.digest)


async def seq_of(node: Node, author: bytes) -> int:
    return (await node.store.vector()).get(author, (0, b""))[0]


async def has_seq(node: Node, author: bytes, seq: int) -> bool:
    return await seq_of(node, author) >= seq


async def same_vectors(*nodes: Node) -> bool:
    vectors = [await node.store.vector() for node in nodes]
    return all(v == vectors[0] for v in vectors)


class Serving:
    """``Node.serve`` running in a task; its status lines are kept in ``lines``."""

    def __init__(
        self, node: Node, *, listen: str | None = f"{LOCAL}:0", peers: Sequence[str] = ()
    ) -> None:
        self.node = node
        self.listen = listen
        self.peers = list(peers)
        self.lines: list[str] = []
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        assert self.port is not None, "not listening"
        return f"{LOCAL}:{self.port}"

    async def start(self) -> Serving:
        self._task = asyncio.create_task(
            self.node.serve(
                listen=self.listen, peers=self.peers, stop=self._stop, say=self.lines.append
            )
        )
        if self.listen is not None:
            await until(self._listening, what="the node listens")
        return self

    async def _listening(self) -> bool:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # raises what serve raised
            raise AssertionError("serve ended before listening")
        for line in self.lines:
            found = re.fullmatch(r"listening on (.+):(\d+)", line)
            if found:
                self.port = int(found[2])
                return True
        return False

    def count(self, prefix: str) -> int:
        return sum(line.startswith(prefix) for line in self.lines)

    async def wait_line(self, prefix: str, n: int = 1, seconds: float = 10.0) -> None:
        async def seen() -> bool:
            return self.count(prefix) >= n

        await until(seen, what=f"{n} status line(s) '{prefix}...' in {self.lines}", timeout=seconds)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await within(self._task, 20)
            self._task = None


async def stop_all(servings: Sequence[Serving]) -> None:
    for serving in servings:
        with contextlib.suppress(Exception):
            await serving.stop()


class CountingProxy:
    """A TCP relay on 127.0.0.1 to ``port`` that counts the bytes of every connection in
    each direction: the real wire (HTTP upgrade, websocket framing and frames). With
    ``bytes_per_second`` it is also a slow link: a test can act in the middle of a
    transfer however fast the nodes have become."""

    def __init__(self, port: int, bytes_per_second: float | None = None) -> None:
        self.target = port
        self.pace = bytes_per_second  # None: as fast as it goes; else each chunk waits
        self.up = 0  # client -> node
        self.down = 0  # node -> client
        self.port: int | None = None
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{LOCAL}:{self.port}"

    @property
    def total(self) -> int:
        return self.up + self.down

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._relay, LOCAL, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        node_r, node_w = await within(asyncio.open_connection(LOCAL, self.target))

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
        ) -> None:
            try:
                while data := await reader.read(1 << 16):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    writer.write(data)
                    await writer.drain()
                    if self.pace is not None:
                        await asyncio.sleep(len(data) / self.pace)
            finally:
                writer.close()

        await asyncio.gather(
            pump(client_r, node_w, True), pump(node_r, client_w, False), return_exceptions=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 5)


# -- a peer driven by hand over a raw websocket --------------------------------------


def joined_raw(key: SigningKey, secret: bytes, group: bytes) -> bytes:
    """A valid member.joined for ``key``: what a holder of the group secret can write,
    and presents in the handshake (docs/protocol.md §members)."""
    return Author(Group(group, secret, "Raw"), key).joined().raw


def member_core(secret: bytes, group: bytes, **options: object) -> SyncProtocol:
    """An initiator core with a fresh device key that presents its own member.joined:
    a hostile member, as far as the node can tell."""
    key = SigningKey.generate()
    return SyncProtocol(
        Role.INITIATOR,
        device_key=key,
        group_secret=secret,
        group=group,
        joined=joined_raw(key, secret, group),
        **options,  # type: ignore[arg-type]
    )


class RawPeer:
    """A ``SyncProtocol`` driven by the test over a plain websockets client, so frames
    no honest node would write can be sent, and what the node answers can be read."""

    def __init__(self, ws: ClientConnection, protocol: SyncProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self.frames_in: list[bytes] = []

    @classmethod
    async def connect(
        cls, port: int, key: SigningKey, *, secret: bytes, group: bytes, joined: bytes | None = None
    ) -> RawPeer:
        """``joined``: the member.joined presented in the handshake; by default a valid
        one for ``key`` (a holder of the secret can make it: a hostile member)."""
        if joined is None:
            joined = joined_raw(key, secret, group)
        ws = await within(
            connect(
                f"ws://{LOCAL}:{port}/potluck",
                compression=None,
                max_size=None,
                open_timeout=5,
                close_timeout=2,
            )
        )
        protocol = SyncProtocol(
            Role.INITIATOR, device_key=key, group_secret=secret, group=group, joined=joined
        )
        return cls(ws, protocol)

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.ws.send(frame)

    async def read(self, seconds: float = 5.0) -> bytes | None:
        """The next frame, fed to the protocol; None once the node closed."""
        try:
            frame = await within(self.ws.recv(), seconds)
        except ConnectionClosed:
            self.protocol.receive_eof()
            return None
        assert isinstance(frame, bytes)
        self.frames_in.append(frame)
        self.protocol.receive_data(frame)
        return frame

    async def handshake(self) -> None:
        """Hello and the three Noise messages, then the node's credit and whole vector."""
        await self.flush()
        for _ in range(50):
            if self.protocol.state is State.OPEN and self.protocol.peer_vector_complete:
                self.protocol.requests()
                return
            if await self.read() is None:
                raise AssertionError(f"closed during the handshake: {self.protocol.error}")
            await self.flush()
        raise AssertionError("handshake did not finish in 50 frames")

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt any plaintext as our next frame (the core's own session key)."""
        session = self.protocol._session
        assert session is not None, "no session before the handshake"
        data: bytes = session.send.encrypt(plaintext)
        return data

    def message(self, message: dict[str, object]) -> bytes:
        return self.seal(msgpack.packb(message, use_bin_type=True))

    async def send(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def frames_during(self, seconds: float) -> list[bytes] | None:
        """The frames the node sends within ``seconds``; None if it closed meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        got: list[bytes] = []
        for _ in range(10_000):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                frame = await self.read(left)
            except TimeoutError:
                break
            if frame is None:
                return None
            got.append(frame)
        return got

    async def outcome(self, seconds: float = 10.0) -> tuple[str | None, int | None]:
        """Read until the node closes: (the code of its error frame, the close code)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for _ in range(10_000):
            if await self.read(max(0.1, deadline - loop.time())) is None:
                break
        else:
            raise AssertionError("the node never closed")
        error = self.protocol.error
        code = error.code if isinstance(error, RemoteError) else None
        return code, self.ws.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await within(self.ws.close(), 5)


# -- events written by hand ----------------------------------------------------------


class Author:
    """One device writing its chain by hand (no store), so tests can fork it, forge
    it or write it for another group."""

    def __init__(self, group: Group, key: SigningKey | None = None) -> None:
        self.group = group
        self.key = key or SigningKey.generate()
        self.clock = HybridClock()
        self.head: Envelope | None = None

    @property
    def author(self) -> bytes:
        return bytes(self.key.verify_key)

    def joined(self, name: str = "Mal") -> Envelope:
        return self.write(
            "member.joined", {"name": name, "proof": membership_proof(self.group, self.author)}
        )

    def write(self, type_: str, body: dict[str, object]) -> Envelope:
        """The next event of the chain."""
        self.head = self.after(self.head, type_, body)
        return self.head

    def after(self, prev: Envelope | None, type_: str, body: dict[str, object]) -> Envelope:
        """An event following ``prev`` without moving the head: a branch when ``prev``
        already has a successor."""
        hlc = self.clock.tick(prev.hlc if prev else 0)
        return events.create(
            self.key,
            group=self.group.id,
            seq=prev.seq + 1 if prev else 1,
            prev=prev.hash if prev else None,
            deps=[],
            hlc=hlc,
            type=type_,
            body=body,
        )


def with_signature(env: Envelope, sig: bytes) -> bytes:
    """``env``'s wire bytes with another signature in place of its own."""
    fields = msgpack.unpackb(env.raw, raw=False)
    fields["sig"] = sig
    return events.pack(fields)


def events_message(author: bytes, raws: Sequence[bytes]) -> dict[str, object]:
    return {"t": "events", "author": author, "events": list(raws)}
