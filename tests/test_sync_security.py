"""Security review 2026-12-07, findings 1 and 8, over real websockets on 127.0.0.1.

Finding 1: a handshake recorded from one session (sync runs over plain ws://) must not
tell an outsider which group a node belongs to. A recording relay sits between two real
nodes of one group; its client's hello and message 1 are then replayed to the same node
and to a node of another group, and garbage is sent too: all three replies must be the
same (the node's hello, its nonce aside, then a close with the same code and reason).

Finding 8: holding the group secret is not enough: the session's device key must be a
member. A stranger's key that never joined is refused with ``not-a-member`` (logged by
the refusing node, shown by the stranger's ``potluck sync``); a member who just joined
and never synced presents its member.joined in the handshake and is let in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from helpers import potluck
from nacl.signing import SigningKey
from synchelp import LOCAL, Author, RawPeer, Serving, close_all, new_nodes, stop_all, within
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from eventlog.identity import Group, save_device_key, save_group
from eventlog.store import Store
from node.app import Node
from sync import wire
from sync.errors import RemoteError
from sync.protocol import Role, State, SyncProtocol
from sync.transport import Session, connect_session, listen


class RecordingRelay:
    """A websocket relay to ``target``: every frame passes through unchanged, and the
    client's frames are recorded in order."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.from_client: list[bytes] = []
        self._server: Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"{LOCAL}:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> RecordingRelay:
        self._server = await serve(self._relay, LOCAL, 0, compression=None, max_size=None)
        return self

    async def _relay(self, client: ServerConnection) -> None:
        async with connect(
            f"ws://{self.target}/potluck", compression=None, max_size=None
        ) as upstream:

            async def pump(src: object, dst: object, record: bool) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in src:  # type: ignore[attr-defined]
                        if record:
                            self.from_client.append(frame)
                        await dst.send(frame)  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    await dst.close()  # type: ignore[attr-defined]

            await asyncio.gather(pump(client, upstream, True), pump(upstream, client, False))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await within(self._server.wait_closed(), 5)


async def reply_to(address: str, frames: list[bytes]) -> tuple[list[object], int | None, str]:
    """Send ``frames`` to the node at ``address`` as a dialling client; return what it
    answers: its frames (a hello decoded, without its nonce; we hang up after any other
    frame), and its close code and reason."""
    ws = await within(connect(f"ws://{address}/potluck", compression=None, max_size=None))
    for frame in frames:
        await ws.send(frame)
    answer: list[object] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frame = await within(ws.recv(), 10)
            assert isinstance(frame, bytes)
            message = msgpack.unpackb(frame, raw=False)
            if isinstance(message, dict) and message.get("t") == wire.HELLO:
                message.pop("nonce", None)  # fresh in each session
                answer.append(message)
            else:  # message 2 (or anything else): the node answered; stop here
                answer.append(frame)
                await within(ws.close())
    await within(ws.wait_closed(), 10)
    return answer, ws.close_code, ws.close_reason


@pytest.fixture
async def nodes(tmp_path: Path, group: Group) -> AsyncIterator[list[Node]]:
    ana, bo, cy = await new_nodes(tmp_path, group, "Ana", "Bo", "Cy")
    [eve] = await new_nodes(tmp_path, Group.new("Other group"), "Eve")
    try:
        yield [ana, bo, cy, eve]
    finally:
        await close_all([ana, bo, cy, eve])


async def test_a_replayed_message_1_gets_the_same_reply_as_garbage_and_another_group(
    nodes: list[Node],
) -> None:
    ana, bo, _, eve = nodes
    servings = [await Serving(ana).start(), await Serving(eve).start()]
    relay = await RecordingRelay(servings[0].address).start()
    try:
        moved = await within(bo.sync_once(relay.address), 20)
        assert moved["peer_name"] == "Ana"
        hello, message_1 = relay.from_client[:2]
        assert wire.read_handshake(wire.parse(message_1, None)[1])  # it is message 1
        garbage = wire.pack(wire.make_handshake(os.urandom(len(message_1) - 7)))
        same_group = await reply_to(servings[0].address, [hello, message_1])
        other_group = await reply_to(servings[1].address, [hello, message_1])
        noise = await reply_to(servings[0].address, [hello, garbage])
    finally:
        await relay.stop()
        await stop_all(servings)
    assert same_group == other_group == noise
    answer, code, _ = same_group
    assert len(answer) == 1 and code == 1000  # the node's hello, then a plain close


async def test_a_stranger_holding_the_secret_with_a_key_that_never_joined_is_refused(
    nodes: list[Node], tmp_path: Path, group: Group
) -> None:
    ana = nodes[0]
    serving = await Serving(ana).start()
    store = await Store.open(tmp_path / "stranger.db", group)
    stranger = SigningKey.generate()
    try:
        session = await connect_session(serving.address, stranger, store, one_shot=True)
        await within(session.run(), 20)
        error = session.protocol.error
        assert isinstance(error, RemoteError) and error.code == "not-a-member"
        assert bytes(stranger.verify_key).hex()[:12] in error.reason
        assert await store.count() == 0  # nothing of the log was sent
        await serving.wait_line("refused ")
        [line] = [line for line in serving.lines if line.startswith("refused ")]
        assert "not-a-member" in line and bytes(stranger.verify_key).hex()[:8] in line
    finally:
        await store.close()
        await serving.stop()


async def test_a_stranger_presenting_a_forged_member_joined_is_refused(
    nodes: list[Node], group: Group
) -> None:
    """The proof is for another key: the handshake's credential is checked on arrival."""
    ana = nodes[0]
    serving = await Serving(ana).start()
    try:
        forged = Author(group)
        other = Author(group)
        joined = forged.write(
            "member.joined", {"name": "Mal", "proof": other.joined().body["proof"]}
        )
        assert serving.port is not None
        peer = await RawPeer.connect(
            serving.port, forged.key, secret=group.secret, group=group.id, joined=joined.raw
        )
        await peer.flush()
        while await peer.read() is not None:
            await peer.flush()
        error = peer.protocol.error
        assert isinstance(error, RemoteError) and error.code == "not-a-member"
        assert "presented no member.joined of its own" in error.reason
        await peer.close()
        await serving.wait_line("refused ")
        [line] = [line for line in serving.lines if line.startswith("refused ")]
        assert "not-a-member" in line and forged.author.hex()[:8] in line
    finally:
        await serving.stop()


async def test_a_freshly_joined_member_syncs_at_once_its_join_travelling_in_the_handshake(
    nodes: list[Node],
) -> None:
    ana, _, cy, _ = nodes
    cy_key = bytes(cy.key.verify_key)
    assert not await ana.store.read_raw(cy_key, 1, 1)  # Ana has never heard of Cy
    sessions: list[Session] = []

    async def run(session: Session) -> None:
        sessions.append(session)
        await session.run()

    server = await listen(LOCAL, 0, ana.key, ana.store, run)
    try:
        address = f"{LOCAL}:{server.sockets[0].getsockname()[1]}"
        moved = await within(cy.sync_once(address), 20)
    finally:
        server.close()
        await within(server.wait_closed(), 10)
    assert moved["peer_name"] == "Ana" and moved["sent"] == 1
    [session] = sessions
    # (not session.error: a credit after both byes may make it unexpected-message,
    # docs/reliability.md's observation; Cy's sync_once above checked a clean end)
    assert session.member is not None
    assert (session.member.name, session.member.key) == ("Cy", cy_key)  # from the handshake
    assert await ana.store.read_raw(cy_key, 1, 1)


async def test_the_refused_strangers_potluck_sync_says_why_in_one_line(
    nodes: list[Node], tmp_path: Path, group: Group
) -> None:
    ana = nodes[0]
    data = tmp_path / "stranger"
    data.mkdir(mode=0o700)
    save_device_key(data, SigningKey.generate())
    save_group(data, group)
    store = await Store.open(data / "log.db", group)
    await store.close()
    serving = await Serving(ana).start()
    try:
        proc = await asyncio.to_thread(potluck, data, "sync", serving.address, ok=False)
    finally:
        await serving.stop()
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "that node does not know you as a member of this group" in lines[0]


def test_a_nonce_is_required_in_version_3_only(group: Group) -> None:
    """A node older than version 3 sends no nonce and still syncs; a version 3 hello
    without one is broken (docs/protocol.md §hello)."""
    for versions, code in (([1, 2], None), ([1, 2, 3], "malformed-frame")):
        core = SyncProtocol(
            Role.RESPONDER,
            device_key=SigningKey.generate(),
            group_secret=group.secret,
            group=group.id,
        )
        core.receive_data(
            msgpack.packb({"t": "hello", "protocol": "potluck-sync", "versions": versions})
        )
        assert (core.error.code if core.error else None) == code
        assert core.state is (State.FAILED if code else State.AWAIT_MESSAGE_1)
