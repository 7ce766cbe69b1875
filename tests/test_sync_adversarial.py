"""A running node under attack over real websockets, while an honest peer stays connected.

Ana runs ``Node.serve`` on a free loopback port; Bo runs ``Node.serve`` dialling her and
stays connected throughout. The attacker drives a ``SyncProtocol`` by hand over a plain
websockets client (tests/synchelp.py ``RawPeer``), so it can complete a real handshake
and then write frames no honest node writes. After each attack: Ana refused it with its
own error code (docs/protocol.md §12), stored nothing, and still serves: Bo receives
her next event, over the session he had before the attack (no reconnect).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgpack
import pytest
from helpers import until
from nacl.signing import SigningKey
from synchelp import (
    Author,
    RawPeer,
    Serving,
    close_all,
    digest,
    events_message,
    has_seq,
    new_nodes,
    same_vectors,
    stock,
    stop_all,
    with_signature,
    within,
)

from eventlog import body as b
from eventlog import events
from eventlog.events import MAX_EVENT_BYTES, Envelope
from eventlog.identity import Group
from node.app import Node
from projections import views
from sync.bundle import BundleSealer, import_bundle
from sync.protocol import (
    MAX_BATCH_BYTES,
    MAX_CLEAR_FRAME_BYTES,
    MAX_FRAME_BYTES,
    Role,
    State,
    SyncProtocol,
)
from sync.transport import Session

Frame = bytes | str
CLOSE_MESSAGE_TOO_BIG = 1009  # RFC 6455: the websocket library refused the frame


def offer(title: str) -> dict[str, object]:
    return b.OfferPosted(title=title).to_body()


@dataclass
class Net:
    ana: Node
    bo: Node
    a: Serving  # Ana's serve, listening
    b: Serving  # Bo's serve, dialling Ana

    @property
    def port(self) -> int:
        assert self.a.port is not None
        return self.a.port

    async def raw_peer(self, key: SigningKey | None = None) -> RawPeer:
        """A hand-driven peer that holds the group secret, after the handshake."""
        group = self.ana.group
        peer = await RawPeer.connect(
            self.port, key or SigningKey.generate(), secret=group.secret, group=group.id
        )
        await peer.handshake()
        return peer


@pytest.fixture
async def net(tmp_path: Path, group: Group) -> AsyncIterator[Net]:
    ana, bo = await new_nodes(tmp_path, group, "Ana", "Bo")
    servings: list[Serving] = []
    try:
        a = await Serving(ana).start()
        servings.append(a)
        b = await Serving(bo, listen=None, peers=[a.address]).start()
        servings.append(b)
        await b.wait_line("caught up with")
        yield Net(ana, bo, a, b)
    finally:
        await stop_all(servings[::-1])
        await close_all([ana, bo])


async def snapshot(node: Node) -> tuple[object, ...]:
    """Everything an invalid event could have left behind."""
    store = node.store
    return (
        await store.count(),
        await store.vector(),
        await store.pending_count(),
        await store.forks(),
        await digest(node),
    )


async def still_serving(net: Net) -> None:
    """Bo, connected before the attack, receives Ana's next event on the same session;
    a new peer can still complete a handshake."""
    [env] = await net.ana.store.append(net.ana.key, stock(1, first=77))
    await until(lambda: has_seq(net.bo, env.author, env.seq), what="Bo gets Ana's event")
    assert net.b.count("peer connected") == 1, net.b.lines
    assert net.b.count("peer lost") == 0, net.b.lines
    fresh = await net.raw_peer()
    assert fresh.protocol.state is State.OPEN
    await fresh.close()


# -- a stranger ------------------------------------------------------------------------


async def test_a_stranger_without_the_group_secret_cannot_complete_the_handshake(net: Net) -> None:
    before = await snapshot(net.ana)
    stranger = await RawPeer.connect(
        net.port,
        SigningKey.generate(),
        secret=secrets.token_bytes(32),
        group=secrets.token_bytes(32),
    )
    try:
        await stranger.flush()  # our hello
        hello = await stranger.read()
        assert hello is not None and len(hello) <= MAX_CLEAR_FRAME_BYTES
        # the node's hello says nothing of the group or its device (the nonce is fresh
        # random bytes, docs/protocol.md §hello)
        assert set(msgpack.unpackb(hello, raw=False)) == {"t", "protocol", "versions", "nonce"}
        await stranger.flush()  # Noise message 1, sealed with the wrong secret
        assert await stranger.read() is None  # closed without a word
        assert stranger.frames_in == [hello]  # no message 2, no encrypted frame
        assert stranger.protocol.state is not State.OPEN
        assert stranger.protocol.peer_key is None
        assert stranger.protocol.peer_vector == {}
        assert stranger.protocol.events_received() == []
    finally:
        await stranger.close()
    assert await snapshot(net.ana) == before
    await still_serving(net)


# -- frames refused after a real handshake ---------------------------------------------


def flipped_bit(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    frame = bytearray(peer.message({"t": "credit", "bytes": 1}))
    frame[len(frame) // 2] ^= 0x10
    return [bytes(frame)]


def replayed(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    frame = peer.message({"t": "credit", "bytes": 1})  # valid once
    return [frame, frame]


def reordered(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    first = peer.message({"t": "credit", "bytes": 1})
    second = peer.message({"t": "credit", "bytes": 2})
    return [second, first]


def malformed_msgpack(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.seal(b"\xc1\x93\x01garbage")]  # 0xc1 is never used by msgpack


def not_a_map(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.seal(msgpack.packb(["events", 1, 2], use_bin_type=True))]


def unknown_type(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.message({"t": "gossip", "rumour": "the pantry is empty"})]


def hello_again(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.message({"t": "hello", "protocol": "potluck-sync", "versions": [1]})]


def oversized_batch(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    """More than 1 MiB of event bytes in one events message, in a frame under the limit."""
    author = secrets.token_bytes(32)
    return [peer.message(events_message(author, [bytes(MAX_BATCH_BYTES + 1)]))]


def other_group(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    stranger = Author(Group.new("Another group"))
    chain = [stranger.joined(), stranger.write("offer.posted", offer("Soup"))]
    return [peer.message(events_message(stranger.author, [e.raw for e in chain]))]


def forged_signature(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    mal = Author(group)
    joined = mal.joined()
    forged = with_signature(joined, SigningKey.generate().sign(b"something else").signature)
    return [peer.message(events_message(mal.author, [forged]))]


def forged_chain(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    """A valid first event, then one whose body was changed after signing: the last
    signature of the batch does not verify."""
    mal = Author(group)
    joined = mal.joined()
    posted = mal.write("offer.posted", offer("Soup"))
    forged = with_signature(posted, bytes(64))
    return [peer.message(events_message(mal.author, [joined.raw, forged]))]


def not_a_member(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    mal = Author(group)
    joined = mal.write("member.joined", {"name": "Mal", "proof": bytes(32)})
    return [peer.message(events_message(mal.author, [joined.raw]))]


def seq_gap(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    mal = Author(group)
    first = mal.joined()
    mal.write("offer.posted", offer("Soup"))
    third = mal.write("offer.posted", offer("Bread"))
    return [peer.message(events_message(mal.author, [first.raw, third.raw]))]


def wrong_author(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    mal = Author(group)
    return [peer.message(events_message(secrets.token_bytes(32), [mal.joined().raw]))]


def text_frame(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return ["hello, is this the pantry?"]


def not_an_event(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.message(events_message(mal.author, [b"\x93\x01\x02\x03"]))]


def oversized_event(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    return [peer.message(events_message(mal.author, [bytes(MAX_EVENT_BYTES + 1)]))]


def prev_mismatch(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    """Mal's seq 2, signed, but linked to something that is not his seq 1."""
    assert mal.head is not None
    bad = events.create(
        mal.key,
        group=group.id,
        seq=2,
        prev=secrets.token_bytes(32),
        deps=[],
        hlc=mal.head.hlc + 1,
        type="offer.posted",
        body=offer("Soup"),
    )
    return [peer.message(events_message(mal.author, [bad.raw]))]


def hlc_regression(peer: RawPeer, group: Group, mal: Author) -> list[Frame]:
    """Mal's seq 2, stamped before his seq 1."""
    assert mal.head is not None
    bad = events.create(
        mal.key,
        group=group.id,
        seq=2,
        prev=mal.head.hash,
        deps=[],
        hlc=mal.head.hlc - 1,
        type="offer.posted",
        body=offer("Soup"),
    )
    return [peer.message(events_message(mal.author, [bad.raw]))]


Attack = Callable[[RawPeer, Group, Author], list[Frame]]

ATTACKS: dict[str, tuple[Attack, str]] = {
    "flipped bit": (flipped_bit, "decrypt-failed"),
    "replayed frame": (replayed, "decrypt-failed"),
    "reordered frames": (reordered, "decrypt-failed"),
    "malformed msgpack": (malformed_msgpack, "malformed-frame"),
    "msgpack that is not a map": (not_a_map, "malformed-frame"),
    "unknown message type": (unknown_type, "unknown-message"),
    "hello after the handshake": (hello_again, "unexpected-message"),
    "events batch over 1 MiB": (oversized_batch, "frame-too-large"),
    "event of another group": (other_group, "unknown-group"),
    "forged signature": (forged_signature, "bad-signature"),
    "forged last signature of a chain": (forged_chain, "bad-signature"),
    "first event without membership proof": (not_a_member, "not-a-member"),
    "gap in a batch": (seq_gap, "seq-gap"),
    "event of another author than the batch's": (wrong_author, "malformed-event"),
    "bytes that are not an event": (not_an_event, "malformed-event"),
    "event over 64 KiB": (oversized_event, "oversized-event"),
    "event not linked to its author's head": (prev_mismatch, "prev-mismatch"),
    "event stamped before its predecessor": (hlc_regression, "hlc-regression"),
    "text frame": (text_frame, "malformed-frame"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_the_node_refuses_a_bad_frame_with_its_own_code_and_keeps_serving(
    net: Net, name: str
) -> None:
    attack, code = ATTACKS[name]
    mal = Author(net.ana.group)  # a member whose first event both nodes hold
    await net.ana.store.receive([mal.joined()])
    await until(lambda: has_seq(net.bo, mal.author, 1), what="Mal's join reaches Bo")
    before = await snapshot(net.ana)
    peer = await net.raw_peer()
    try:
        for frame in attack(peer, net.ana.group, mal):
            await within(peer.send(frame))
        refused, _close = await peer.outcome()
    finally:
        await peer.close()
    assert refused == code, f"{name}: got {refused}, {peer.protocol.error}"
    assert await snapshot(net.ana) == before, f"{name} left something behind"
    await still_serving(net)


async def test_a_frame_over_the_limit_is_refused_by_the_websocket_before_it_is_buffered(
    net: Net,
) -> None:
    before = await snapshot(net.ana)
    peer = await net.raw_peer()
    try:
        await within(peer.send(bytes(MAX_FRAME_BYTES + 1)))
        refused, close = await peer.outcome()
    finally:
        await peer.close()
    assert close == CLOSE_MESSAGE_TOO_BIG, (refused, close)
    assert await snapshot(net.ana) == before
    await still_serving(net)


async def test_an_unproven_peer_cannot_send_a_large_cleartext_frame(net: Net) -> None:
    """Before the handshake the limit is 4096 bytes: the node closes without a word."""
    peer = await RawPeer.connect(
        net.port, SigningKey.generate(), secret=net.ana.group.secret, group=net.ana.group.id
    )
    try:
        await within(peer.send(bytes(MAX_CLEAR_FRAME_BYTES + 1)))
        refused, _close = await peer.outcome()
    finally:
        await peer.close()
    assert refused is None  # no error frame before the handshake
    assert peer.protocol.peer_key is None and peer.protocol.peer_vector == {}
    await still_serving(net)


# -- forks -------------------------------------------------------------------------------


async def test_a_fork_is_kept_as_evidence_and_the_forked_author_leaves_the_projections(
    net: Net,
) -> None:
    ana = net.ana
    mal = Author(ana.group)
    joined = mal.joined()
    posted = mal.write("offer.posted", offer("Fork A"))
    other = mal.after(joined, "offer.posted", offer("Fork B"))  # same author and seq
    assert (other.author, other.seq) == (posted.author, posted.seq)
    assert other.hash != posted.hash

    peer = await net.raw_peer()
    try:
        await within(peer.send(peer.message(events_message(mal.author, [joined.raw, posted.raw]))))
        await until(lambda: has_seq(ana, mal.author, 2), what="Ana stores Mal's chain")
        assert await ana.store.read(lambda db: views.board_entry(db, posted.hash)) is not None
        count = await ana.store.count()

        await within(peer.send(peer.message(events_message(mal.author, [other.raw]))))

        async def forked() -> bool:
            return await ana.store.forks() == [(mal.author, 2, 2)]

        await until(forked, what="Ana keeps the fork's evidence")
        # the evidence is kept, not stored in the log: the first version stays
        assert await ana.store.count() == count
        assert await ana.store.get(other.hash) is None
        assert (await ana.store.vector())[mal.author] == (2, posted.hash)
        # Mal is left out of the projections from the fork on, not before it
        assert await ana.store.read(lambda db: views.board_entry(db, posted.hash)) is None
        assert mal.author in await ana.names()
        [flagged] = await ana.forks()
        assert (flagged["key"], flagged["seq"], flagged["versions"]) == (mal.author.hex(), 2, 2)
        # a fork is evidence, not a protocol error: the session goes on, and quietly
        during = await peer.frames_during(1.0)
        assert during is not None, f"the node closed: {peer.protocol.error}"
        assert len(during) <= 3, "the node keeps talking after a fork"
        assert peer.protocol.error is None and peer.protocol.state is State.OPEN
        # sending the same evidence again changes nothing
        before = await snapshot(ana)
        await within(peer.send(peer.message(events_message(mal.author, [other.raw]))))
        await peer.frames_during(0.3)
        assert await snapshot(ana) == before
    finally:
        await peer.close()
    await still_serving(net)


async def branches_apart(
    tmp_path: Path, group: Group
) -> tuple[Node, Node, Author, Envelope, Envelope, list[Serving]]:
    """Ana and Bo each listening, apart; Mal gives Ana his left branch at seq 2 and Bo
    his right one. Then Bo comes back dialling Ana."""
    ana, bo = await new_nodes(tmp_path, group, "Ana", "Bo")
    a = await Serving(ana).start()
    b = await Serving(bo).start()  # listening, not dialling anyone yet
    mal = Author(group)
    joined = mal.joined()
    left = mal.write("offer.posted", offer("Left"))
    right = mal.after(joined, "offer.posted", offer("Right"))
    for serving, branch in ((a, left), (b, right)):
        assert serving.port is not None
        peer = await RawPeer.connect(
            serving.port, SigningKey.generate(), secret=group.secret, group=group.id
        )
        await peer.handshake()
        await within(peer.send(peer.message(events_message(mal.author, [joined.raw, branch.raw]))))
        await until(partial(has_seq, serving.node, mal.author, 2), what="the branch is stored")
        await peer.close()
    assert await ana.store.forks() == await bo.store.forks() == []
    await b.stop()
    b = await Serving(bo, peers=[a.address]).start()
    return ana, bo, mal, left, right, [b, a]


async def test_nodes_holding_two_branches_of_a_fork_exchange_the_evidence_once_and_agree(
    tmp_path: Path, group: Group
) -> None:
    """When they meet, each sends the other its version (evidence), both flag Mal, both
    show the same projections, and the session stays up and quiet: no loop, no
    reconnect storm."""
    ana, bo, mal, left, right, servings = await branches_apart(tmp_path, group)
    b, a = servings
    try:

        async def both_flagged() -> bool:
            expected = [(mal.author, 2, 2)]
            return await ana.store.forks() == expected == await bo.store.forks()

        await until(both_flagged, what="both nodes hold both versions")
        await until(lambda: has_seq(ana, bo.author, 1), what="Bo's join reaches Ana")
        await until(lambda: has_seq(bo, ana.author, 1), what="Ana's join reaches Bo")
        # each log keeps its own first version; the projections leave both out
        assert (await ana.store.vector())[mal.author] == (2, left.hash)
        assert (await bo.store.vector())[mal.author] == (2, right.hash)
        assert await ana.store.get(right.hash) is None and await bo.store.get(left.hash) is None
        assert await digest(ana) == await digest(bo)
        # Mal goes on writing on the left branch, through Ana: Bo records it as
        # evidence of the fork, not as a protocol error
        assert a.port is not None
        peer = await RawPeer.connect(
            a.port, SigningKey.generate(), secret=group.secret, group=group.id
        )
        await peer.handshake()
        more = mal.write("offer.posted", offer("Left again"))
        await within(peer.send(peer.message(events_message(mal.author, [more.raw]))))
        await until(lambda: has_seq(ana, mal.author, 3), what="Ana stores Mal's third")
        await peer.close()

        async def recorded() -> bool:
            return (mal.author, 3, 1) in await bo.store.forks()

        await until(recorded, what="Bo keeps Mal's third as evidence")
        assert await bo.store.get(more.hash) is None
        assert await digest(ana) == await digest(bo)
        # the honest session stays up: no error, no reconnect, during a quiet second
        await a.wait_line("peer connected")
        await b.wait_line("peer connected")
        counts = (a.count("peer connected"), b.count("peer connected"))
        await asyncio.sleep(1.0)  # the scenario: a quiet second in which nothing may happen
        assert (a.count("peer connected"), b.count("peer connected")) == counts == (1, 1)
        assert a.count("peer lost") == b.count("peer lost") == 0, (a.lines, b.lines)
        [to_ana] = [p for p in await bo.peers() if p["address"] == a.address]
        assert to_ana["connected"] and to_ana["last_error"] is None
    finally:
        await stop_all(servings)
        await close_all([ana, bo])


async def test_honest_events_still_flow_between_nodes_holding_two_branches_of_a_fork(
    tmp_path: Path, group: Group
) -> None:
    ana, bo, _mal, _left, _right, servings = await branches_apart(tmp_path, group)
    try:

        async def both_flagged() -> bool:
            return bool(await ana.store.forks()) and bool(await bo.store.forks())

        await until(both_flagged, what="both nodes hold both versions")
        await until(lambda: has_seq(bo, ana.author, 1), what="Ana's join reaches Bo")
        await until(lambda: has_seq(ana, bo.author, 1), what="Bo's join reaches Ana")
        for node, other in ((ana, bo), (bo, ana)):
            [env] = await node.store.append(node.key, stock(1))
            await until(
                partial(has_seq, other, env.author, env.seq),
                what="an honest event after the fork",
                timeout=2,
            )
        assert await ana.store.pending_count() == await bo.store.pending_count() == 0
        assert await digest(ana) == await digest(bo)
    finally:
        await stop_all(servings)
        await close_all([ana, bo])


async def test_fork_evidence_found_by_one_node_reaches_a_peer_with_the_same_head(
    tmp_path: Path, group: Group
) -> None:
    """Ana and Bo are connected; Mal's chain reaches both through Ana; then Mal hands Bo
    a second version of his seq 2. Bo flags Mal and leaves him out of his projections;
    Ana, who holds the very same events, must learn of the fork too, or the two nodes
    show different boards forever."""
    ana, bo = await new_nodes(tmp_path, group, "Ana", "Bo")
    servings: list[Serving] = []
    try:
        a = await Serving(ana).start()
        b = await Serving(bo, peers=[a.address]).start()
        servings += [a, b]
        await b.wait_line("caught up with")
        mal = Author(group)
        joined = mal.joined()
        left = mal.write("offer.posted", offer("Left"))
        right = mal.after(joined, "offer.posted", offer("Right"))
        for serving, raws in ((a, [joined.raw, left.raw]), (b, [right.raw])):
            assert serving.port is not None
            peer = await RawPeer.connect(
                serving.port, SigningKey.generate(), secret=group.secret, group=group.id
            )
            await peer.handshake()
            await within(peer.send(peer.message(events_message(mal.author, raws))))
            if serving is a:
                await until(lambda: has_seq(bo, mal.author, 2), what="relayed to Bo")
            else:
                await until(lambda: _forks(bo), what="Bo flags Mal")
            await peer.close()
        await until(lambda: _forks(ana), what="Ana learns of the fork", timeout=2)
        assert await digest(ana) == await digest(bo)
    finally:
        await stop_all(servings[::-1])
        await close_all([ana, bo])


async def _forks(node: Node) -> bool:
    return bool(await node.store.forks())


# -- fork evidence travels when vectors are equal (protocol version 2, §evidence) --------


def forked_mal(group: Group) -> tuple[Author, Envelope, Envelope, Envelope]:
    """Mal's seq 1 and two versions of his seq 2."""
    mal = Author(group)
    joined = mal.joined()
    left = mal.write("offer.posted", offer("Left"))
    right = mal.after(joined, "offer.posted", offer("Right"))
    return mal, joined, left, right


async def hand_over(serving: Serving, author: bytes, raws: list[bytes]) -> None:
    """A peer with the group secret gives ``serving`` these events, then leaves."""
    assert serving.port is not None
    group = serving.node.group
    peer = await RawPeer.connect(
        serving.port, SigningKey.generate(), secret=group.secret, group=group.id
    )
    try:
        await peer.handshake()
        await within(peer.send(peer.message(events_message(author, raws))))
        await peer.frames_during(0.2)  # let the node read it before we hang up
    finally:
        await peer.close()


async def flagged(node: Node, author: bytes, seq: int = 2) -> bool:
    return (author, seq, 2) in await node.store.forks()


def sessions_of(*servings: Serving) -> list[Session]:
    return [
        s
        for serving in servings
        if serving.node.peer_manager is not None
        for s in serving.node.peer_manager.sessions
    ]


def count_recordings(node: Node) -> list[bool]:
    """Every ``record_evidence`` result of ``node`` from now on: True when it was new."""
    results: list[bool] = []
    original = node.store.record_evidence

    async def counting(*args: Envelope, **kwargs: bool) -> bool:
        new = await original(*args, **kwargs)
        results.append(new)
        return new

    node.store.record_evidence = counting  # type: ignore[method-assign]
    return results


async def test_fork_evidence_reaches_a_peer_with_the_same_head_when_they_meet(
    tmp_path: Path, group: Group
) -> None:
    """At the start of a session, each side learns the other's forks, whichever side
    holds them: a one-shot ``potluck sync`` dialling a node that knows of a fork, and
    a one-shot sync bringing a fork to the node it dials. Each then says bye only once
    its evidence is out, and the three nodes end with the same projections."""
    ana, bo, cy = await new_nodes(tmp_path, group, "Ana", "Bo", "Cy")
    servings: list[Serving] = []
    try:
        a = await Serving(ana).start()
        servings.append(a)
        mal, joined, left, right = forked_mal(group)
        await hand_over(a, mal.author, [joined.raw, left.raw])
        await until(lambda: has_seq(ana, mal.author, 2), what="Ana stores Mal's chain")
        for node in (bo, cy):
            await within(node.sync_once(a.address), 20)
            assert await same_vectors(ana, node)
        result = await within(bo.store.receive([right]))  # e.g. from a bundle
        assert result.forks == [(mal.author, 2)]
        assert await ana.store.forks() == [] and await digest(ana) != await digest(bo)
        sent = await within(bo.sync_once(a.address), 20)  # the dialling side holds it
        assert await flagged(ana, mal.author), "Ana learns of the fork from Bo"
        assert (sent["evidence_in"], sent["evidence_out"]) == (0, 1)  # potluck sync --json
        got = await within(cy.sync_once(a.address), 20)  # the listening side holds it
        assert await flagged(cy, mal.author), "Cy learns of the fork from Ana"
        assert (got["evidence_in"], got["evidence_out"]) == (1, 0)
        assert await digest(ana) == await digest(bo) == await digest(cy)
        assert await same_vectors(ana, bo, cy)
    finally:
        await stop_all(servings)
        await close_all([ana, bo, cy])


async def test_known_evidence_is_neither_recorded_nor_relayed_again_and_all_goes_quiet(
    tmp_path: Path, group: Group
) -> None:
    """Three nodes connected in a triangle: a fork found by one reaches the other two,
    each session carries the evidence at most once each way, then nothing more moves.
    The same evidence sent again and again changes nothing and goes nowhere."""
    ana, bo, cy = await new_nodes(tmp_path, group, "Ana", "Bo", "Cy")
    servings: list[Serving] = []
    try:
        a = await Serving(ana).start()
        b = await Serving(bo, peers=[a.address]).start()
        c = await Serving(cy, listen=None, peers=[a.address, b.address]).start()
        servings += [c, b, a]
        await c.wait_line("caught up with", 2)
        await b.wait_line("caught up with")
        mal, joined, left, right = forked_mal(group)
        await hand_over(a, mal.author, [joined.raw, left.raw])
        for node in (ana, bo, cy):
            await until(partial(has_seq, node, mal.author, 2), what="Mal's chain everywhere")
        recorded = {
            name: count_recordings(node) for name, node in (("Ana", ana), ("Bo", bo), ("Cy", cy))
        }
        await hand_over(b, mal.author, [right.raw])  # Bo finds the fork

        async def everywhere() -> bool:
            return all([await flagged(node, mal.author) for node in (ana, bo, cy)])

        await until(everywhere, what="every node learns of the fork", timeout=3)
        assert await digest(ana) == await digest(bo) == await digest(cy)

        def totals() -> tuple[int, int]:
            sessions = sessions_of(a, b, c)
            return (
                sum(s.stats.evidence_out for s in sessions),
                sum(s.stats.evidence_in for s in sessions),
            )

        await until(
            lambda: totals()[0] >= 2 and totals()[1] == totals()[0],
            what="every evidence message sent to be received",
        )
        sent, received = totals()
        assert 2 <= sent <= 6, sent  # 3 sessions, at most once each way
        assert received == sent
        assert sum(new for results in recorded.values() for new in results) == 2  # Ana, Cy
        assert all(new is False for new in recorded["Bo"])  # Bo found it himself
        await asyncio.sleep(1.0)  # the scenario: a quiet second in which nothing may move
        assert totals() == (sent, received), "evidence still moving after a quiet second"

        # the same evidence, again and again: recorded once, relayed never
        before = await snapshot(ana)
        calls = len(recorded["Ana"])
        peer = await RawPeer.connect(
            a.port or 0, SigningKey.generate(), secret=group.secret, group=group.id
        )
        try:
            await peer.handshake()
            assert peer.protocol.peer_forks == {mal.author: 2}  # Ana's have said so
            for _ in range(5):
                await within(
                    peer.send(peer.message({"t": "evidence", "events": [left.raw, right.raw]}))
                )
            during = await peer.frames_during(0.5)
            assert during is not None and peer.protocol.error is None
            assert peer.protocol.state is State.OPEN
        finally:
            await peer.close()
        assert recorded["Ana"][calls:] == [False] * 5
        assert await snapshot(ana) == before
        # Kept on purpose: nothing may happen, and only time passing can show that it did not.
        await asyncio.sleep(0.3)
        assert totals() == (sent, received), "known evidence was relayed"
        assert sum(serving.count("peer lost") for serving in (a, b, c)) == 0
    finally:
        await stop_all(servings)
        await close_all([ana, bo, cy])


async def test_a_version_one_peer_is_served_without_fork_points_or_evidence(
    net: Net, group: Group
) -> None:
    """A node of protocol version 1 does not know the evidence message: a node holding
    fork evidence syncs with it as before and never sends it one. A version 2 peer in
    the same position gets the evidence at the start of its session."""
    mal, joined, left, right = forked_mal(group)
    await hand_over(net.a, mal.author, [joined.raw, left.raw])
    await hand_over(net.a, mal.author, [right.raw])
    await until(lambda: flagged(net.ana, mal.author), what="Ana flags Mal")
    # an old peer presents no member.joined in the handshake: Ana must know its key
    old = Author(group)
    await hand_over(net.a, old.author, [old.joined("Old").raw])
    await until(lambda: has_seq(net.ana, old.author, 1), what="Ana knows the old peer")
    for versions in ((1,), (1, 2)):
        ws_peer = await RawPeer.connect(
            net.port, SigningKey.generate(), secret=group.secret, group=group.id
        )
        peer = RawPeer(
            ws_peer.ws,
            SyncProtocol(
                Role.INITIATOR,
                device_key=old.key,
                group_secret=group.secret,
                group=group.id,
                versions=versions,
            ),
        )
        try:
            await peer.handshake()
            assert peer.protocol.version == max(versions)
            peer.protocol.send_have({})  # an empty vector: Ana sends everything she has
            await peer.flush()
            during = await peer.frames_during(1.0)
            assert during is not None and peer.protocol.error is None, peer.protocol.error
            got = [e for batch in peer.protocol.events_received() for e in batch.envelopes]
            assert (mal.author, 2) in {(e.author, e.seq) for e in got}
            evidence = peer.protocol.evidence_received()
            if versions == (1,):
                assert evidence == [] and peer.protocol.peer_forks == {}
            else:
                assert [(e.author, e.seq) for e in evidence] == [(mal.author, 2)]
                assert {e.hash for e in evidence[0].versions} == {left.hash, right.hash}
        finally:
            await peer.close()
    await still_serving(net)


async def test_fork_evidence_from_a_bundle_import_is_relayed_to_connected_peers(
    net: Net, group: Group, tmp_path: Path
) -> None:
    mal, joined, left, right = forked_mal(group)
    await hand_over(net.a, mal.author, [joined.raw, left.raw])
    await until(lambda: has_seq(net.bo, mal.author, 2), what="relayed to Bo")
    sealer = BundleSealer(group.secret)
    path = tmp_path / "right.potluck"
    path.write_bytes(
        sealer.header + sealer.events_chunk(mal.author, [right.raw]) + sealer.end_chunk()
    )
    imported = await within(import_bundle(net.bo.store, path))
    assert imported.forks == [(mal.author, 2)]
    await until(lambda: flagged(net.ana, mal.author), what="Ana learns of it", timeout=2)
    assert await digest(net.ana) == await digest(net.bo)


async def test_fork_evidence_carried_by_a_bundle_is_relayed_to_connected_peers(
    net: Net, group: Group, tmp_path: Path
) -> None:
    """The bundle holds no event Bo lacks, only the proof (format 2): Bo keeps it and
    hands it on to Ana, who holds the same first version as Bo."""
    mal, joined, left, right = forked_mal(group)
    await hand_over(net.a, mal.author, [joined.raw, left.raw])
    await until(lambda: has_seq(net.bo, mal.author, 2), what="relayed to Bo")
    sealer = BundleSealer(group.secret, version=2)
    path = tmp_path / "proof.potluck"
    path.write_bytes(
        sealer.header + sealer.evidence_chunk(left.raw, right.raw) + sealer.end_chunk()
    )
    imported = await within(import_bundle(net.bo.store, path))
    assert (imported.stored, imported.evidence, imported.forks) == (0, 1, [(mal.author, 2)])
    await until(lambda: flagged(net.ana, mal.author), what="Ana learns of it", timeout=2)
    assert await digest(net.ana) == await digest(net.bo)
