"""The sync protocol core, bytes in and bytes out: two SyncProtocol objects wired in memory.

No sockets: ``pump`` hands every frame one side writes to the other (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from eventlog.errors import NotAMember
from eventlog.events import MAX_EVENT_BYTES, Envelope, create, pack
from sync.errors import LocalProtocolError, ProtocolError, RemoteError
from sync.handshake import CipherState
from sync.protocol import (
    MAX_BATCH_BYTES,
    MAX_CLEAR_FRAME_BYTES,
    MAX_FRAME_BYTES,
    MAX_HAVE_ENTRIES,
    MESSAGE_TYPES,
    TRANSITIONS,
    EventsWanted,
    EvidenceReceived,
    EvidenceWanted,
    Received,
    Role,
    State,
    SyncProtocol,
    VectorWanted,
)

SECRET = bytes(range(32))
GROUP = b"G" * 32
ALICE, BOB, CAROL = SigningKey(b"a" * 32), SigningKey(b"b" * 32), SigningKey(b"c" * 32)


# -- helpers ------------------------------------------------------------------------


def make(role: Role, key: SigningKey, *, secret: bytes = SECRET, **options: object) -> SyncProtocol:
    return SyncProtocol(role, device_key=key, group_secret=secret, group=GROUP, **options)  # type: ignore[arg-type]


def deliver(src: SyncProtocol, dst: SyncProtocol) -> list[bytes]:
    frames = src.data_to_send()
    for frame in frames:
        dst.receive_data(frame)
    return frames


def pump(a: SyncProtocol, b: SyncProtocol) -> None:
    """Move frames both ways until neither side has anything to say."""
    for _ in range(10_000):
        if not deliver(a, b) and not deliver(b, a):
            return
    raise AssertionError("the two sides never went quiet")


def connect(**options: object) -> tuple[SyncProtocol, SyncProtocol]:
    """A (initiator, ALICE) and b (responder, BOB), handshake done, requests drained."""
    a, b = make(Role.INITIATOR, ALICE, **options), make(Role.RESPONDER, BOB, **options)
    pump(a, b)
    assert a.state is b.state is State.OPEN
    assert a.requests() == b.requests() == [VectorWanted()]
    return a, b


def chain(
    key: SigningKey, n: int, *, after: Envelope | None = None, pad: int = 0, group: bytes = GROUP
) -> list[Envelope]:
    events: list[Envelope] = []
    prev = after
    for _ in range(n):
        seq = prev.seq + 1 if prev else 1
        event = create(
            key,
            group=group,
            seq=seq,
            prev=prev.hash if prev else None,
            deps=[],
            hlc=1000 + seq,
            type="offer.posted",
            body={"item": "rice", "pad": b"x" * pad},
        )
        events.append(event)
        prev = event
    return events


def heads(*chains: list[Envelope]) -> dict[bytes, tuple[int, bytes]]:
    return {c[-1].author: (c[-1].seq, c[-1].hash) for c in chains}


def raws(events: list[Envelope]) -> list[bytes]:
    return [event.raw for event in events]


def seal(sender: SyncProtocol, message: object) -> bytes:
    """A frame as ``sender`` would write it, for messages no honest side sends."""
    data = msgpack.packb(message, use_bin_type=True)
    session = sender._session
    return session.send.encrypt(data) if session is not None else data


def code_of(side: SyncProtocol) -> str | None:
    return side.error.code if side.error is not None else None


def assert_refused(receiver: SyncProtocol, sender: SyncProtocol, code: str) -> None:
    """``receiver`` failed with ``code`` and told ``sender`` in an encrypted error frame."""
    assert receiver.state is State.FAILED and receiver.close_expected()
    assert code_of(receiver) == code
    deliver(receiver, sender)
    assert isinstance(sender.error, RemoteError) and sender.error.code == code
    assert sender.close_expected()


def received(side: SyncProtocol) -> list[Envelope]:
    return [e for batch in side.events_received() for e in batch.envelopes]


def sync_vectors(
    a: SyncProtocol,
    b: SyncProtocol,
    va: dict[bytes, tuple[int, bytes]],
    vb: dict[bytes, tuple[int, bytes]],
) -> None:
    a.send_have(va)
    b.send_have(vb)
    pump(a, b)


# -- handshake and versions ---------------------------------------------------------


def test_handshake_completes_and_each_side_learns_the_others_device_key() -> None:
    a, b = connect()
    assert a.peer_key == bytes(BOB.verify_key)
    assert b.peer_key == bytes(ALICE.verify_key)
    assert a.version == b.version == 3
    assert a.error is None and b.error is None and not a.close_expected()


def test_frames_before_the_handshake_reveal_no_group_key_or_vector() -> None:
    a, b = make(Role.INITIATOR, ALICE), make(Role.RESPONDER, BOB)
    clear: list[bytes] = []
    for _ in range(3):  # hello, then the three handshake messages
        clear += deliver(a, b) + deliver(b, a)
    for frame in clear:
        assert len(frame) <= MAX_CLEAR_FRAME_BYTES
        for secret in (GROUP, SECRET, bytes(ALICE.verify_key), bytes(BOB.verify_key)):
            assert secret not in frame


@pytest.mark.parametrize("stranger_role", [Role.INITIATOR, Role.RESPONDER])
def test_stranger_without_the_group_secret_fails_on_both_sides_and_gets_nothing(
    stranger_role: Role,
) -> None:
    member_role = Role.RESPONDER if stranger_role is Role.INITIATOR else Role.INITIATOR
    stranger = make(stranger_role, CAROL, secret=b"s" * 32)
    member = make(member_role, ALICE)
    pump(stranger, member)
    # Message 1 does not authenticate at the responder, whichever side that is; it
    # closes, and the initiator sees the stream end.
    responder, initiator = (
        (member, stranger) if stranger_role is Role.INITIATOR else (stranger, member)
    )
    assert code_of(responder) == "handshake-failed" and responder.close_expected()
    initiator.receive_eof()
    assert code_of(initiator) == "connection-lost" and initiator.close_expected()
    assert member.peer_key is None and stranger.peer_key is None
    assert stranger.events_received() == [] and stranger.requests() == []
    assert member.requests() == []  # never asked the node for its vector or events
    member.send_events(raws(chain(ALICE, 1)))  # a racing live push is ignored
    assert member.data_to_send() == []


def test_versions_negotiate_the_highest_common_version() -> None:
    a = make(Role.INITIATOR, ALICE, versions=(1, 2, 3))
    b = make(Role.RESPONDER, BOB, versions=(2, 3, 4))
    pump(a, b)
    assert a.version == b.version == 3
    assert a.state is b.state is State.OPEN


def test_version_mismatch_fails_both_sides_with_a_clear_reason() -> None:
    a = make(Role.INITIATOR, ALICE, versions=(1,))
    b = make(Role.RESPONDER, BOB, versions=(2, 3))
    pump(a, b)
    for side in (a, b):
        assert code_of(side) == "version-mismatch" and side.close_expected()
        assert side.error is not None and "[1]" in side.error.reason
        assert "[2, 3]" in side.error.reason
    assert a.data_to_send() == b.data_to_send() == []


def test_hello_of_another_protocol_is_a_version_mismatch() -> None:
    b = make(Role.RESPONDER, BOB, nonce=bytes(range(16)))
    b.receive_data(msgpack.packb({"t": "hello", "protocol": "gossip", "versions": [1]}))
    assert code_of(b) == "version-mismatch"
    our_hello = msgpack.packb(
        {"t": "hello", "protocol": "potluck-sync", "versions": [1, 2, 3], "nonce": bytes(range(16))}
    )
    assert b.data_to_send() == [our_hello]  # and nothing else: no error before the handshake
    assert our_hello.hex() == (  # the example of docs/protocol.md §messages, 68 bytes
        "84a174a568656c6c6fa870726f746f636f6cac706f746c75636b2d73796e63a876657273696f6e73"
        "93010203a56e6f6e6365c410000102030405060708090a0b0c0d0e0f"
    )


def test_hello_altered_in_flight_fails_the_handshake() -> None:
    a = make(Role.INITIATOR, ALICE, versions=(1, 2))
    b = make(Role.RESPONDER, BOB, versions=(1, 2))
    a.receive_data(msgpack.packb({"t": "hello", "protocol": "potluck-sync", "versions": [1]}))
    b.data_to_send()  # b's real hello is dropped by the attacker
    deliver(a, b)  # a's hello and message 1
    assert a.version == 1 and b.version == 2
    assert code_of(b) == "handshake-failed"


# -- catch-up -----------------------------------------------------------------------


def test_have_exchange_yields_events_wanted_for_what_the_peer_lacks() -> None:
    a, b = connect()
    xs, ys, zs = chain(ALICE, 5), chain(BOB, 3), chain(CAROL, 4)
    sync_vectors(a, b, heads(xs, ys), heads(xs[:2], zs))
    x_author, y_author = bytes(ALICE.verify_key), bytes(BOB.verify_key)
    assert a.requests() == [
        EventsWanted(x_author, from_seq=2, peer_seq=2, peer_head=xs[1].hash),
        EventsWanted(y_author, from_seq=1, peer_seq=0, peer_head=None),
    ]
    assert b.requests() == [EventsWanted(bytes(CAROL.verify_key), 1, 0, None)]


def test_wants_wait_for_the_last_have_message_of_a_large_vector() -> None:
    a, b = connect()
    many = {bytes([i % 256, i // 256]) * 16: (1, b"h" * 32) for i in range(MAX_HAVE_ENTRIES + 10)}
    zs = chain(CAROL, 1)
    b.send_have(heads(zs))
    deliver(b, a)
    a.send_have(many)
    first, second = a.data_to_send()
    b.receive_data(first)
    assert b.requests() == []  # a's vector is not complete: b cannot know a lacks zs
    b.receive_data(second)
    assert b.requests() == [EventsWanted(bytes(CAROL.verify_key), 1, 0, None)]


def test_later_have_messages_announce_newer_heads_both_ways() -> None:
    a, b = connect()
    xs = chain(ALICE, 6)
    sync_vectors(a, b, heads(xs[:5]), heads(xs[:2]))
    author = bytes(ALICE.verify_key)
    assert a.requests() == [EventsWanted(author, 2, 2, xs[1].hash)]
    b.send_have(heads(xs[:5]))  # b got them from a third node meanwhile
    pump(a, b)
    a.send_events(raws(xs[1:5]))
    assert a.data_to_send() == []  # nothing to send: b announced it has them
    a.send_have(heads(xs))  # a appended seq 6
    assert a.requests() == [EventsWanted(author, 5, 5, xs[4].hash)]


def test_events_flow_and_are_received_with_their_author() -> None:
    a, b = connect()
    xs = chain(ALICE, 5)
    sync_vectors(a, b, heads(xs), {})
    (want,) = a.requests()
    a.send_events(raws(xs[want.from_seq - 1 :]))
    pump(a, b)
    (batch,) = b.events_received()
    assert isinstance(batch, Received)
    assert batch.author == bytes(ALICE.verify_key) and batch.from_genesis
    assert [e.hash for e in batch.envelopes] == [e.hash for e in xs]
    assert batch.size == sum(len(e.raw) for e in xs)


def test_mid_chain_batch_is_received_but_not_from_genesis() -> None:
    a, b = connect()
    xs = chain(ALICE, 5)
    sync_vectors(a, b, heads(xs), heads(xs[:2]))
    a.send_events(raws(xs[1:]))  # from_seq 2: the overlap with b's head is dropped
    pump(a, b)
    (batch,) = b.events_received()
    assert [e.seq for e in batch.envelopes] == [3, 4, 5] and not batch.from_genesis


def test_send_events_drops_what_the_peer_already_has_so_nothing_echoes() -> None:
    a, b = connect()
    xs = chain(ALICE, 3)
    sync_vectors(a, b, heads(xs), {})
    a.send_events(raws(xs))
    pump(a, b)
    assert len(received(b)) == 3
    a.send_events(raws(xs))  # again: b has them all
    b.send_events(raws(xs))  # relay back to where they came from
    assert a.data_to_send() == [] and b.data_to_send() == []


def test_send_events_that_would_open_a_gap_asks_for_the_missing_range() -> None:
    a, b = connect()
    xs = chain(ALICE, 5)
    sync_vectors(a, b, heads(xs[:3]), heads(xs[:2]))
    assert a.requests() == [EventsWanted(bytes(ALICE.verify_key), 2, 2, xs[1].hash)]
    a.send_events(raws(xs[4:]))  # a live event, seq 5, while b is at 2
    assert a.data_to_send() == []
    assert a.requests() == [EventsWanted(bytes(ALICE.verify_key), 2, 2, xs[1].hash)]


def test_events_sent_before_the_peer_vector_arrives_are_wanted_once_it_does() -> None:
    a, b = connect()
    xs = chain(ALICE, 2)
    a.send_events(raws(xs))
    assert a.data_to_send() == []
    b.send_have({})
    pump(a, b)
    assert a.requests() == [EventsWanted(bytes(ALICE.verify_key), 1, 0, None)]


def test_same_seq_with_different_heads_sends_the_fork_evidence() -> None:
    a, b = connect()
    common = chain(ALICE, 2)
    ours = chain(ALICE, 1, after=common[-1])
    theirs = [
        create(
            ALICE,
            group=GROUP,
            seq=3,
            prev=common[-1].hash,
            deps=[],
            hlc=2000,
            type="offer.posted",
            body={"item": "beans"},
        )
    ]
    sync_vectors(a, b, heads(ours), heads(theirs))
    author = bytes(ALICE.verify_key)
    assert a.requests() == [EventsWanted(author, 3, 3, theirs[0].hash)]
    assert b.requests() == [EventsWanted(author, 3, 3, ours[0].hash)]
    a.send_events(raws(ours))
    b.send_events(raws(theirs))
    pump(a, b)
    assert [e.hash for e in received(b)] == [ours[0].hash]
    assert [e.hash for e in received(a)] == [theirs[0].hash]


# -- fork evidence (version 2) --------------------------------------------------------


def fork(
    key: SigningKey = ALICE,
    seq: int = 2,
    group: bytes = GROUP,
) -> tuple[Envelope, Envelope]:
    """Two versions of ``key``'s event ``seq``: the same prev, different bodies."""
    before = chain(key, seq - 1, group=group)[-1] if seq > 1 else None
    left, right = (
        create(
            key,
            group=group,
            seq=seq,
            prev=before.hash if before else None,
            deps=[],
            hlc=5000 + seq,
            type="offer.posted",
            body={"item": item},
        )
        for item in ("left", "right")
    )
    return left, right


def evidence(left: Envelope | bytes, right: Envelope | bytes) -> dict[str, object]:
    return {
        "t": "evidence",
        "events": [x.raw if isinstance(x, Envelope) else x for x in (left, right)],
    }


def plain(side: SyncProtocol, frame: bytes) -> dict[str, object]:
    """What ``side`` (the receiver of ``frame``) would read, without feeding it."""
    session = side._session
    assert session is not None
    copy = CipherState(session.receive._key)
    copy._nonce = session.receive.nonce
    message: dict[str, object] = msgpack.unpackb(copy.decrypt(frame), raw=False)
    return message


ALICE_KEY = bytes(ALICE.verify_key)


def test_equal_vectors_with_a_fork_point_only_on_one_side_ask_for_the_evidence() -> None:
    a, b = connect()
    left, right = fork()
    xs = chain(ALICE, 2)  # both hold the same first version of seq 2
    a.send_have(heads(xs), {ALICE_KEY: 2})
    b.send_have(heads(xs))
    pump(a, b)
    assert a.requests() == [EvidenceWanted(ALICE_KEY, 2)]
    assert b.requests() == []  # the vectors are equal: no events either way
    assert b.peer_forks == {ALICE_KEY: 2}
    a.send_evidence(left.raw, right.raw)
    (frame,) = a.data_to_send()
    assert plain(b, frame) == evidence(left, right)
    b.receive_data(frame)
    (got,) = b.evidence_received()
    assert got == EvidenceReceived(ALICE_KEY, 2, (left, right))
    assert b.events_received() == [] and b.error is None and b.state is State.OPEN
    assert a.evidence_sent == 1 and a.peer_forks == {ALICE_KEY: 2}


def test_evidence_the_peer_has_is_not_sent_again_nor_echoed_back() -> None:
    a, b = connect()
    left, right = fork()
    sync_vectors(a, b, {}, {})
    a.send_evidence(left.raw, right.raw)
    pump(a, b)
    assert len(b.evidence_received()) == 1
    a.send_evidence(left.raw, right.raw)  # again: b has it
    a.send_evidence(right.raw, left.raw)
    b.send_evidence(left.raw, right.raw)  # relay back to where it came from
    assert a.data_to_send() == [] and b.data_to_send() == []
    assert a.requests() == [] and b.requests() == []
    later, other = fork(seq=5)  # a fork further on changes no fork point: not sent
    a.send_evidence(later.raw, other.raw)
    assert a.data_to_send() == [] and a.evidence_sent == 1


def test_a_lower_fork_point_is_sent_and_an_equal_or_higher_one_is_not() -> None:
    a, b = connect()
    carol = bytes(CAROL.verify_key)
    a.send_have({}, {ALICE_KEY: 3, carol: 2})
    b.send_have({}, {ALICE_KEY: 5, carol: 2})
    pump(a, b)
    assert a.requests() == [EvidenceWanted(ALICE_KEY, 3)]  # b only proves seq 5
    assert b.requests() == []


def test_fork_points_announced_in_the_first_vector_are_compared_when_it_completes() -> None:
    a, b = connect()
    bob = bytes(BOB.verify_key)
    a.send_have({}, {ALICE_KEY: 2})
    b.send_have({}, {bob: 4})
    pump(a, b)
    assert a.requests() == [EvidenceWanted(ALICE_KEY, 2)]
    assert b.requests() == [EvidenceWanted(bob, 4)]


def test_evidence_given_before_the_peer_vector_is_complete_is_asked_for_once_it_is() -> None:
    a, b = connect()
    left, right = fork()
    a.send_evidence(left.raw, right.raw)
    assert a.data_to_send() == []
    b.send_have({})
    pump(a, b)
    assert a.requests() == [EvidenceWanted(ALICE_KEY, 2)]


def test_crossing_evidence_settles_on_the_lower_point_and_goes_quiet() -> None:
    a, b = connect()
    sync_vectors(a, b, {}, {})
    low, other = fork(seq=2)
    high, another = fork(seq=4)
    a.send_evidence(low.raw, other.raw)  # each learnt of a fork from a third node,
    b.send_evidence(high.raw, another.raw)  # and both are in flight at once
    pump(a, b)
    assert [e.seq for e in a.evidence_received()] == [4]
    assert [e.seq for e in b.evidence_received()] == [2]
    assert a.requests() == b.requests() == []  # each knows the other holds seq 2
    assert a.peer_forks == b.peer_forks == {ALICE_KEY: 2}
    a.send_evidence(low.raw, other.raw)
    b.send_evidence(low.raw, other.raw)
    assert a.data_to_send() == b.data_to_send() == []


def test_evidence_that_arrives_before_the_peer_vector_is_compared_with_ours_after_it() -> None:
    """A peer may send evidence before its have; our lower point still reaches it."""
    a, b = connect()
    low, other = fork(seq=2)
    high, another = fork(seq=4)
    a.send_have({}, {ALICE_KEY: 2})
    late = a.data_to_send()  # a's have: b reads it later
    a.receive_data(seal(b, evidence(high, another)))
    assert [e.seq for e in a.evidence_received()] == [4] and a.requests() == []
    a.receive_data(seal(b, {"t": "have", "vector": [], "end": True}))
    assert a.requests() == [EvidenceWanted(ALICE_KEY, 2)]
    a.send_evidence(low.raw, other.raw)
    (frame,) = a.data_to_send()
    for have in late:
        b.receive_data(have)
    assert plain(b, frame) == evidence(low, other)


def test_no_fork_points_leaves_have_frames_as_version_one_wrote_them() -> None:
    xs = chain(ALICE, 3)
    frames = []
    for versions in ((1,), (1, 2)):
        a, b = connect(versions=versions)
        a.send_have(heads(xs), {})
        (frame,) = a.data_to_send()
        assert set(plain(b, frame)) == {"t", "vector", "end"}
        frames.append(len(frame))
    assert frames[0] == frames[1]


def test_fork_points_split_over_have_messages_like_the_vector() -> None:
    a, b = connect()
    points = {bytes([i % 256, i // 256]) * 16: 1 + i % 7 for i in range(MAX_HAVE_ENTRIES + 5)}
    a.send_have(heads(chain(ALICE, 1)), points)
    first, second = a.data_to_send()
    assert len(first) <= MAX_FRAME_BYTES and plain(b, first)["end"] is False
    b.receive_data(first)
    b.receive_data(second)
    assert b.error is None and b.peer_vector_complete
    assert b.peer_forks == points


# -- version 1 peers: no fork points, no evidence


def test_a_version_one_peer_gets_neither_fork_points_nor_evidence() -> None:
    old = make(Role.INITIATOR, ALICE, versions=(1,))
    new = make(Role.RESPONDER, BOB)
    pump(old, new)
    assert old.version == new.version == 1
    assert old.requests() == new.requests() == [VectorWanted()]
    left, right = fork()
    new.send_have({}, {ALICE_KEY: 2})
    (have,) = new.data_to_send()
    assert set(plain(old, have)) == {"t", "vector", "end"}
    old.receive_data(have)
    old.send_have({})
    pump(old, new)
    assert new.requests() == [] and not new.can_send_evidence and new.can_send_events
    new.send_evidence(left.raw, right.raw)  # the relay offers it to everyone: dropped
    assert new.data_to_send() == [] and new.evidence_sent == 0


def test_evidence_on_a_version_one_connection_is_an_unknown_message() -> None:
    a, b = connect(versions=(1,))
    b.receive_data(seal(a, evidence(*fork())))
    assert_refused(b, a, "unknown-message")
    assert b.error is not None and "version 1" in b.error.reason
    assert b.evidence_received() == []


def test_fork_points_sent_to_a_version_one_node_are_ignored() -> None:
    a, b = connect(versions=(1,))
    b.receive_data(
        seal(a, {"t": "have", "vector": [], "end": True, "forks": "not even a list"})
    )  # an unknown key in version 1
    assert b.error is None and b.peer_vector_complete and b.peer_forks == {}


# -- which states take evidence


@pytest.mark.parametrize("state", [State.OPEN, State.LOCAL_DONE])
def test_evidence_is_received_while_the_peer_may_still_send(state: State) -> None:
    me, peer = in_state(Role.INITIATOR, state)
    left, right = fork()
    me.receive_data(seal(peer, evidence(left, right)))
    assert me.state is state and me.error is None
    assert [e.versions for e in me.evidence_received()] == [(left, right)]


def test_evidence_may_be_sent_after_the_peer_said_bye_but_not_after_our_own() -> None:
    a, b = connect()
    sync_vectors(a, b, {}, {})
    a.send_bye()
    pump(a, b)
    assert (a.state, b.state) == (State.LOCAL_DONE, State.PEER_DONE)
    left, right = fork()
    b.send_evidence(left.raw, right.raw)  # b may still send, a may still receive
    pump(a, b)
    assert len(a.evidence_received()) == 1 and a.error is None
    assert not a.can_send_evidence
    with pytest.raises(LocalProtocolError):
        a.send_evidence(left.raw, right.raw)


def test_evidence_after_the_peers_bye_is_unexpected() -> None:
    a, b = connect()
    a.send_bye()
    pump(a, b)
    b.receive_data(seal(a, evidence(*fork())))
    assert_refused(b, a, "unexpected-message")
    assert b.error is not None and "PEER_DONE" in b.error.reason


# -- bad evidence is refused with its own code, and nothing is handed over


def forged(env: Envelope) -> bytes:
    fields = msgpack.unpackb(env.raw, raw=False)
    signed = pack({k: v for k, v in fields.items() if k != "sig"})
    return pack({**fields, "sig": CAROL.sign(signed).signature})


def _same_event() -> dict[str, object]:
    left, _ = fork()
    return evidence(left, left)


def _two_authors() -> dict[str, object]:
    return evidence(fork(ALICE)[0], fork(BOB)[1])


def _two_seqs() -> dict[str, object]:
    return evidence(fork(seq=2)[0], fork(seq=3)[1])


def _bad_first_signature() -> dict[str, object]:
    left, right = fork()
    return evidence(forged(left), right)


def _bad_second_signature() -> dict[str, object]:
    left, right = fork()
    return evidence(left, forged(right))


def _another_group() -> dict[str, object]:
    return evidence(*fork(group=b"H" * 32))


def _one_of_another_group() -> dict[str, object]:
    left, _ = fork()
    return evidence(left, fork(group=b"H" * 32)[1])


def _not_an_event() -> dict[str, object]:
    return evidence(fork()[0], b"\x81\xa1v\x01")


def _oversized() -> dict[str, object]:
    return evidence(fork()[0], bytes(MAX_EVENT_BYTES + 1))


BAD_EVIDENCE: dict[str, tuple[Callable[[], dict[str, object]], str]] = {
    "one version": (lambda: {"t": "evidence", "events": [fork()[0].raw]}, "malformed-frame"),
    "three versions": (
        lambda: {"t": "evidence", "events": [*raws(list(fork())), b"x"]},
        "malformed-frame",
    ),
    "no list": (lambda: {"t": "evidence", "events": b"xy"}, "malformed-frame"),
    "missing": (lambda: {"t": "evidence"}, "malformed-frame"),
    "text": (lambda: {"t": "evidence", "events": ["a", "b"]}, "malformed-frame"),
    "not an event": (_not_an_event, "malformed-event"),
    "oversized": (_oversized, "oversized-event"),
    "the same event twice": (_same_event, "bad-evidence"),
    "two authors": (_two_authors, "bad-evidence"),
    "two seqs": (_two_seqs, "bad-evidence"),
    "bad first signature": (_bad_first_signature, "bad-signature"),
    "bad second signature": (_bad_second_signature, "bad-signature"),
    "another group": (_another_group, "unknown-group"),
    "one of another group": (_one_of_another_group, "unknown-group"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVIDENCE))
def test_bad_evidence_is_refused_with_its_code_and_nothing_is_handed_over(case: str) -> None:
    make_message, code = BAD_EVIDENCE[case]
    a, b = connect()
    sync_vectors(a, b, {}, {})
    b.receive_data(seal(a, make_message()))
    assert_refused(b, a, code)
    assert b.evidence_received() == [] and b.requests() == [] and b.peer_forks == {}


def test_evidence_by_an_author_the_validate_hook_refuses_takes_the_hooks_code() -> None:
    def members_only(envelope: Envelope) -> None:
        if envelope.author != ALICE_KEY:
            raise NotAMember("author never joined")

    a, b = connect(validate=members_only)
    b.receive_data(seal(a, evidence(*fork(CAROL))))
    assert_refused(b, a, "not-a-member")


@pytest.mark.parametrize(
    "forks",
    [
        "xy",
        [[b"a" * 32]],
        [[b"a" * 31, 2]],
        [[b"a" * 32, 0]],
        [[b"a" * 32, True]],
        [[b"a" * 32, 2]] * (MAX_HAVE_ENTRIES + 1),
    ],
)
def test_have_with_bad_fork_points_is_malformed_frame(forks: object) -> None:
    a, b = connect()
    b.receive_data(seal(a, {"t": "have", "vector": [], "end": True, "forks": forks}))
    assert_refused(b, a, "malformed-frame")


def test_send_evidence_takes_two_versions_of_one_event() -> None:
    a, b = connect()
    sync_vectors(a, b, {}, {})
    left, right = fork()
    for first, second in (
        (left.raw, left.raw),
        (left.raw, fork(BOB)[1].raw),
        (left.raw, fork(seq=3)[1].raw),
        (left.raw, b"not an event"),
    ):
        with pytest.raises(LocalProtocolError):
            a.send_evidence(first, second)
    with pytest.raises(LocalProtocolError):
        a.send_have({}, {b"short": 1})
    assert a.data_to_send() == []
    fresh = make(Role.INITIATOR, ALICE)
    with pytest.raises(LocalProtocolError):  # before the handshake
        fresh.send_evidence(left.raw, right.raw)


# -- frames and flow control --------------------------------------------------------


def test_batches_are_split_into_frames_of_at_most_one_mebibyte() -> None:
    a, b = connect()
    xs = chain(ALICE, 40, pad=60_000)  # about 2.4 MB of events
    sync_vectors(a, b, heads(xs), {})
    a.requests()
    a.send_events(raws(xs))
    frames = a.data_to_send()
    assert len(frames) == 3 and all(len(f) <= MAX_FRAME_BYTES for f in frames)
    for frame in frames:
        b.receive_data(frame)
    batches = b.events_received()
    assert [len(batch.envelopes) for batch in batches] == [17, 17, 6]
    assert all(batch.size <= MAX_BATCH_BYTES for batch in batches)
    assert [e.seq for batch in batches for e in batch.envelopes] == list(range(1, 41))


def test_sender_never_exceeds_credit_and_resumes_when_credit_returns() -> None:
    window = 100_000
    a, b = connect(window=window)
    xs = chain(ALICE, 20, pad=20_000)
    sync_vectors(a, b, heads(xs), {})
    a.requests()
    a.send_events(raws(xs))
    got: list[Envelope] = []
    for _ in range(50):
        pump(a, b)
        batches = b.events_received()
        if not batches:
            break
        assert sum(batch.size for batch in batches) <= window
        for batch in batches:
            got += batch.envelopes
            b.send_credit(batch.size)  # stored: give the credit back
    assert [e.seq for e in got] == list(range(1, 21))
    assert a.outgoing_backlog == 0 and a.credit == window


def test_sender_waits_with_a_backlog_when_credit_is_spent() -> None:
    a, b = connect(window=100_000)
    xs = chain(ALICE, 10, pad=20_000)
    sync_vectors(a, b, heads(xs), {})
    a.send_events(raws(xs))
    pump(a, b)
    assert a.outgoing_backlog > 0 and a.credit < len(xs[0].raw)
    assert sum(batch.size for batch in b.events_received()) <= 100_000


def test_events_batch_over_one_mebibyte_is_frame_too_large() -> None:
    a, b = connect()
    xs = chain(ALICE, 17, pad=62_000)
    frame = seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs)})
    assert len(frame) <= MAX_FRAME_BYTES
    b.receive_data(frame)
    assert_refused(b, a, "frame-too-large")


def test_receiver_refuses_events_beyond_its_credit() -> None:
    a, b = connect(window=65_536)
    xs = chain(ALICE, 2, pad=40_000)
    b.receive_data(seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs)}))
    assert_refused(b, a, "credit-exceeded")
    assert b.events_received() == []


# -- error paths ----------------------------------------------------------------------


def flip(frame: bytes, index: int) -> bytes:
    return frame[:index] + bytes([frame[index] ^ 0x80]) + frame[index + 1 :]


def test_flipped_ciphertext_bit_is_decrypt_failed() -> None:
    a, b = connect()
    a.send_have({})
    (frame,) = a.data_to_send()
    b.receive_data(flip(frame, 3))
    assert_refused(b, a, "decrypt-failed")


def test_replayed_frame_is_decrypt_failed() -> None:
    a, b = connect()
    a.send_have({})
    (frame,) = a.data_to_send()
    b.receive_data(frame)
    b.receive_data(frame)
    assert_refused(b, a, "decrypt-failed")


def test_reordered_frames_are_decrypt_failed() -> None:
    a, b = connect()
    a.send_have({})
    a.send_credit(1)
    _first, second = a.data_to_send()
    b.receive_data(second)
    assert_refused(b, a, "decrypt-failed")


@pytest.mark.parametrize("plaintext", [b"\xc1", b"\x92\x01", b"\x81\xa1t\x05", b"\xa5hello"])
def test_malformed_plaintext_is_malformed_frame(plaintext: bytes) -> None:
    a, b = connect()
    assert a._session is not None
    b.receive_data(a._session.send.encrypt(plaintext))
    assert_refused(b, a, "malformed-frame")


@pytest.mark.parametrize(
    "message",
    [
        {"t": "have", "vector": [[b"x", 1, b"h" * 32]], "end": True},
        {"t": "have", "vector": [], "end": "yes"},
        {"t": "events", "author": b"a" * 32, "events": []},
        {"t": "events", "author": b"a" * 32, "events": ["text"]},
        {"t": "credit", "bytes": 0},
        {"t": "credit", "bytes": True},
        {"t": "error", "code": "Not A Code", "reason": ""},
    ],
)
def test_message_with_a_bad_field_is_malformed_frame(message: dict[str, object]) -> None:
    a, b = connect()
    b.receive_data(seal(a, message))
    assert_refused(b, a, "malformed-frame")


def test_malformed_frame_before_the_handshake_fails_without_a_word() -> None:
    b = make(Role.RESPONDER, BOB)
    b.data_to_send()
    b.receive_data(b"\xc1")
    assert code_of(b) == "malformed-frame" and b.close_expected()
    assert b.data_to_send() == []


def test_oversized_frame_is_frame_too_large() -> None:
    a, b = connect()
    b.receive_data(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert_refused(b, a, "frame-too-large")


def test_oversized_frame_before_the_handshake_is_frame_too_large() -> None:
    b = make(Role.RESPONDER, BOB)
    b.receive_data(b"\x00" * (MAX_CLEAR_FRAME_BYTES + 1))
    assert code_of(b) == "frame-too-large"


def test_unknown_message_type_is_unknown_message() -> None:
    a, b = connect()
    b.receive_data(seal(a, {"t": "gossip", "rumour": "x"}))
    assert_refused(b, a, "unknown-message")


def test_message_in_the_wrong_state_is_unexpected_message_naming_the_state() -> None:
    a, b = connect()
    b.receive_data(seal(a, {"t": "hello", "protocol": "potluck-sync", "versions": [1]}))
    assert_refused(b, a, "unexpected-message")
    assert b.error is not None and "OPEN" in b.error.reason


def test_forged_signature_on_the_last_event_is_bad_signature() -> None:
    a, b = connect()
    xs = chain(ALICE, 3)
    fields = msgpack.unpackb(xs[-1].raw, raw=False)
    signed = pack({k: v for k, v in fields.items() if k != "sig"})
    forged = pack({**fields, "sig": CAROL.sign(signed).signature})
    b.receive_data(
        seal(a, {"t": "events", "author": xs[0].author, "events": [*raws(xs[:2]), forged]})
    )
    assert_refused(b, a, "bad-signature")
    assert b.events_received() == []


def test_broken_chain_is_prev_mismatch() -> None:
    a, b = connect()
    xs = chain(ALICE, 2)
    stray = chain(ALICE, 1, after=chain(ALICE, 2, pad=1)[-1])  # seq 3 after another seq 2
    b.receive_data(seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs + stray)}))
    assert_refused(b, a, "prev-mismatch")


def test_batch_with_a_seq_gap_is_seq_gap() -> None:
    a, b = connect()
    xs = chain(ALICE, 4)
    b.receive_data(
        seal(a, {"t": "events", "author": xs[0].author, "events": raws([xs[0], xs[1], xs[3]])})
    )
    assert_refused(b, a, "seq-gap")


def test_event_of_another_group_is_unknown_group() -> None:
    a, b = connect()
    xs = chain(ALICE, 2, group=b"H" * 32)
    b.receive_data(seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs)}))
    assert_refused(b, a, "unknown-group")


def test_event_whose_author_is_not_the_batch_author_is_malformed_event() -> None:
    a, b = connect()
    xs = chain(ALICE, 1)
    b.receive_data(seal(a, {"t": "events", "author": bytes(BOB.verify_key), "events": raws(xs)}))
    assert_refused(b, a, "malformed-event")


def test_validate_hook_refuses_events_with_its_own_code() -> None:
    def members_only(envelope: Envelope) -> None:
        if envelope.author != bytes(ALICE.verify_key):
            raise NotAMember("author never joined")

    a, b = connect(validate=members_only)
    xs = chain(CAROL, 1)
    b.receive_data(seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs)}))
    assert_refused(b, a, "not-a-member")


def test_fail_sends_the_code_to_the_peer_encrypted() -> None:
    a, b = connect()
    a.fail("store-failed", "disk full")
    (frame,) = a.data_to_send()
    assert b"store-failed" not in frame
    b.receive_data(frame)
    assert isinstance(b.error, RemoteError)
    assert (b.error.code, b.error.reason) == ("store-failed", "disk full")
    assert a.close_expected() and b.close_expected()


def test_input_after_failure_is_discarded() -> None:
    _, b = connect()
    b.receive_data(b"junk")
    b.data_to_send()
    b.receive_data(b"more junk")
    assert code_of(b) == "decrypt-failed" and b.data_to_send() == []


# -- bye and the end of the stream ----------------------------------------------------


def test_bye_from_both_sides_closes_cleanly() -> None:
    a, b = connect()
    a.send_bye()
    pump(a, b)
    assert (a.state, b.state) == (State.LOCAL_DONE, State.PEER_DONE)
    b.send_bye()
    pump(a, b)
    assert a.state is b.state is State.CLOSED
    assert a.close_expected() and b.close_expected() and a.error is None
    a.receive_eof()
    assert a.error is None


def test_bye_waits_for_queued_events_and_the_peer_may_still_send() -> None:
    a, b = connect(window=100_000)
    xs, ys = chain(ALICE, 10, pad=20_000), chain(BOB, 2)
    sync_vectors(a, b, heads(xs), heads(ys))
    a.send_events(raws(xs))
    a.send_bye()
    pump(a, b)
    assert a.state is State.OPEN and a.outgoing_backlog > 0  # bye waits for credit
    got: list[Envelope] = []
    while b.state is State.OPEN:
        for batch in b.events_received():
            got += batch.envelopes
            b.send_credit(batch.size)
        pump(a, b)
    got += received(b)
    assert [e.seq for e in got] == list(range(1, 11)) and b.state is State.PEER_DONE
    b.send_events(raws(ys))  # b may still send after a's bye
    b.send_bye()
    pump(a, b)
    assert len(received(a)) == 2 and a.state is b.state is State.CLOSED


def test_events_after_the_peers_bye_are_unexpected() -> None:
    a, b = connect()
    a.send_bye()
    pump(a, b)
    xs = chain(ALICE, 1)
    b.receive_data(seal(a, {"t": "events", "author": xs[0].author, "events": raws(xs)}))
    assert_refused(b, a, "unexpected-message")
    assert b.error is not None and "PEER_DONE" in b.error.reason


def test_end_of_stream_before_bye_is_connection_lost() -> None:
    _, b = connect()
    b.receive_eof()
    assert code_of(b) == "connection-lost" and b.close_expected()
    assert b.data_to_send() == []


def test_commands_in_the_wrong_state_are_local_errors() -> None:
    a = make(Role.INITIATOR, ALICE)
    with pytest.raises(LocalProtocolError):
        a.send_have({})
    b = connect()[1]
    b.send_bye()
    with pytest.raises(LocalProtocolError):
        b.send_have({})
    with pytest.raises(LocalProtocolError):
        b.send_events(raws(chain(BOB, 1)))
    with pytest.raises(LocalProtocolError):
        b.fail("Bad Code", "x")
    b.fail("shutting-down", "bye now")
    b.send_have({})  # ignored once the connection is over
    assert b.state is State.FAILED


def test_send_events_refuses_mixed_or_non_contiguous_events() -> None:
    a, b = connect()
    sync_vectors(a, b, {}, {})
    with pytest.raises(LocalProtocolError):
        a.send_events(raws(chain(ALICE, 1) + chain(BOB, 1)))
    with pytest.raises(LocalProtocolError):
        a.send_events([b"not an event"])


# -- every state refuses what the table does not allow ----------------------------------


def in_state(role: Role, state: State) -> tuple[SyncProtocol, SyncProtocol]:
    """(side under test with ``role`` in ``state``, its peer)."""
    me = make(role, ALICE)
    peer = make(Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR, BOB)
    steps: dict[State, Callable[[], object]] = {
        State.HELLO: lambda: None,
        State.AWAIT_MESSAGE_1: lambda: deliver(peer, me),
        State.AWAIT_MESSAGE_2: lambda: deliver(peer, me),
        State.AWAIT_MESSAGE_3: lambda: (deliver(peer, me), deliver(me, peer), deliver(peer, me)),
        State.OPEN: lambda: pump(me, peer),
        State.LOCAL_DONE: lambda: (pump(me, peer), me.send_bye(), pump(me, peer)),
        State.PEER_DONE: lambda: (pump(me, peer), peer.send_bye(), pump(me, peer)),
        State.CLOSED: lambda: (pump(me, peer), peer.send_bye(), me.send_bye(), pump(me, peer)),
    }
    steps[state]()
    assert me.state is state, (me.state, state)
    me.data_to_send()
    return me, peer


SAMPLES: dict[str, dict[str, object]] = {
    "hello": {"t": "hello", "protocol": "potluck-sync", "versions": [1]},
    "handshake": {"t": "handshake", "noise": b"\x00" * 48},
    "have": {"t": "have", "vector": [], "end": True},
    "events": {"t": "events", "author": b"a" * 32, "events": [b"x"]},
    "evidence": {"t": "evidence", "events": [b"x", b"y"]},
    "credit": {"t": "credit", "bytes": 1},
    "error": {"t": "error", "code": "x", "reason": "x"},
    "bye": {"t": "bye"},
}
REACHABLE = [
    (role, state) for role in Role for state in TRANSITIONS[role] if state is not State.FAILED
]


@pytest.mark.parametrize(("role", "state"), REACHABLE)
def test_every_state_refuses_messages_the_table_does_not_allow(
    role: Role,
    state: State,
) -> None:
    for kind in sorted(MESSAGE_TYPES - set(TRANSITIONS[role][state])):
        me, peer = in_state(role, state)
        me.receive_data(seal(peer, SAMPLES[kind]))
        assert code_of(me) == "unexpected-message", kind
        assert me.error is not None and state.name in me.error.reason


# -- hypothesis: garbage never escapes as anything but a protocol error -------------------


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    place=st.sampled_from(REACHABLE),
    frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)
def test_random_bytes_in_any_state_end_in_a_protocol_error_at_worst(
    place: tuple[Role, State],
    frames: list[bytes],
) -> None:
    me, _ = in_state(*place)
    for frame in frames:
        me.receive_data(frame)
    me.receive_eof()
    assert me.error is None or isinstance(me.error, ProtocolError)
    assert me.close_expected()


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_messages = st.fixed_dictionaries(
    {"t": st.sampled_from(sorted(MESSAGE_TYPES))},
    optional={
        name: _values
        for name in (
            "protocol",
            "versions",
            "noise",
            "vector",
            "end",
            "forks",
            "author",
            "events",
            "bytes",
            "code",
            "reason",
        )
    },
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(REACHABLE), messages=st.lists(_messages, min_size=1, max_size=3))
def test_well_sealed_nonsense_in_any_state_ends_in_a_protocol_error_at_worst(
    place: tuple[Role, State],
    messages: list[dict[str, object]],
) -> None:
    me, peer = in_state(*place)
    for message in messages:
        me.receive_data(seal(peer, message))
    assert me.error is None or isinstance(me.error, ProtocolError)
