"""The sync protocol core: one connection as a sans-I/O state machine.

How it works
============

A ``SyncProtocol`` is one side of one connection. It never touches a socket, a clock,
the disk or the event loop. The transport feeds it what arrived and writes what it
produced; the node answers the questions it asks. Everything that happens on the wire
is decided here, so the whole protocol can be tested by handing bytes from one object
to another (docs/protocol.md is the specification; § numbers below refer to it).
What a frame looks like and whether it is well formed is sync/wire.py's; what it means
in the state the connection is in, and what the answer is, is this module's.

*Inputs* are ``receive_data(frame)`` for each binary websocket frame and
``receive_eof()`` when the stream ends; *commands* are ``send_have``,
``send_events``, ``send_evidence``, ``send_credit``, ``send_bye`` and ``fail``.
*Outputs* are read back and drained: ``data_to_send()`` (frames to write, in order),
``events_received()`` (verified batches for the store), ``evidence_received()``
(verified forks for the store), ``requests()`` (what the node must look up:
``VectorWanted``, ``EventsWanted``, ``EvidenceWanted``), ``close_expected()`` and
``error``. Call the outputs after every input or command.

*States.* Every side first sends ``hello`` (protocol name, versions, a fresh nonce);
both pick the highest common version, so they agree without another round trip
(§versions). Both hellos, nonces included, are the Noise prologue, and the initiator
writes message 1 only once it has the responder's hello: a message 1 recorded from
another session fails to authenticate, as garbage does (§hello). Then
the three Noise messages run (§handshake): the initiator, the websocket client, waits
for message 2; the responder for messages 1 and 3. After them the connection is
OPEN and every frame is AEAD-encrypted with a per-direction counter as nonce
(§frames). ``bye`` is a half close: "I will send no more have or events". The side
that said it is LOCAL_DONE, the side that heard it PEER_DONE, and both byes make it
CLOSED. Any error makes it FAILED. Every legal step, for messages received and for
commands given, is one entry of ``TRANSITIONS``: (role, state, message or command)
-> next state. Anything missing there is refused: a message is an
``UnexpectedMessage`` naming the state, a command a ``LocalProtocolError``. Once
CLOSED or FAILED, commands are ignored, because drivers race with endings.

*Members* (version 3, §members). Each side's handshake payload carries its own
``member.joined`` (``joined``), checked on arrival: that very key, seq 1, the group's
membership proof, its signature. A false one fails with ``not-a-member``; a true one
is ``peer_member``. A peer that presents none must be found in the node's log: the
driver checks that on ``VectorWanted`` and calls ``fail("not-a-member", ...)``.

*Errors.* ``receive_data`` never raises for what the peer does. The first
``ProtocolError`` is recorded in ``error``, the state becomes FAILED, and, once the
handshake is done, an encrypted ``error`` frame with the code goes out so the peer
knows why; before that nothing is said to a peer that has not proven itself. Then
``close_expected()`` is true. Later input is discarded.

*Catch-up.* Both sides send their vector (author -> seq, head hash) in ``have``
messages, the last one flagged ``end``. Once the peer's vector is complete, every
author where we are ahead, or at the same seq with a different head (a fork), becomes
an ``EventsWanted`` for the node, which reads its log and calls ``send_events``. The
core remembers what the peer has (its vector plus everything sent or received since),
drops events the peer already has, and refuses to open a gap: a batch that starts
past the peer's head becomes an ``EventsWanted`` for the missing range instead. So
live push and relay are just ``send_events`` to every connection; nothing echoes.

*Flow control.* The receiver grants credit in bytes of event data (§credit): its
window on open, then more with ``send_credit`` as it stores batches. The sender packs
events of one author into frames of at most 1 MiB of events, never beyond its credit;
the rest waits in a queue (``outgoing_backlog``) until credit comes. A peer that
sends beyond its credit fails with ``credit-exceeded``.

*Verification.* Each received batch is decoded event by event, checked to be one
author's contiguous chain, checked against the group and the ``validate`` hook, and
authenticated by its hash links plus the signature of its last event (§batch). A batch
that starts mid-chain is authentic in itself; the store still links its first event to
its own head (``Received.from_genesis`` is false).

*Fork evidence* (version 2, §evidence). Events travel only where vectors differ, so a
fork one node found would never reach a peer whose head is the same first version,
and the two would show different projections for good. So each side also tells its
*fork points* (author -> lowest seq it holds two versions of) in ``have``, and where
the peer's point is missing or higher, asks the node (``EvidenceWanted``) for the two
versions, which go in one ``evidence`` message. The receiver verifies both versions
on their own (no chain to lean on) and hands an ``EvidenceReceived`` to the store.
As with events, the core remembers the peer's points (announced, sent, received) and
drops evidence the peer has, so relaying new evidence to every connection is just
``send_evidence`` on each: nothing echoes, and known evidence is never sent twice.
A version 1 peer would not understand the message: it gets neither the points nor
the evidence.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import msgpack
from nacl.signing import SigningKey

from eventlog.errors import InvalidEvent, MalformedEvent
from eventlog.events import (
    HASH_BYTES,
    KEY_BYTES,
    MAX_EVENT_BYTES,
    Envelope,
    check_group,
    decode,
    verify_chain,
    verify_signature,
)
from eventlog.identity import Group, check_membership_proof, group_id_of
from sync import wire
from sync.errors import (
    BadEvidence,
    ConnectionLost,
    CreditExceeded,
    EventRejected,
    FrameTooLarge,
    HaveLimit,
    LocalProtocolError,
    MalformedFrame,
    PeerNotAMember,
    ProtocolError,
    RemoteError,
    UnexpectedMessage,
    VersionMismatch,
)
from sync.handshake import Handshake, Session
from sync.limits import DEFAULT_LIMITS

# Re-exported (``as``): these names were defined here before sync/wire.py took them.
from sync.wire import ADDED_IN as ADDED_IN
from sync.wire import BYE as BYE
from sync.wire import CODE_PATTERN as CODE_PATTERN
from sync.wire import CREDIT as CREDIT
from sync.wire import ERROR as ERROR
from sync.wire import EVENTS as EVENTS
from sync.wire import EVIDENCE as EVIDENCE
from sync.wire import EVIDENCE_VERSION as EVIDENCE_VERSION
from sync.wire import HANDSHAKE as HANDSHAKE
from sync.wire import HAVE as HAVE
from sync.wire import HELLO as HELLO
from sync.wire import MAX_BATCH_BYTES as MAX_BATCH_BYTES
from sync.wire import MAX_CLEAR_FRAME_BYTES as MAX_CLEAR_FRAME_BYTES
from sync.wire import MAX_CREDIT_GRANT as MAX_CREDIT_GRANT
from sync.wire import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from sync.wire import MAX_HAVE_ENTRIES as MAX_HAVE_ENTRIES
from sync.wire import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from sync.wire import MAX_REASON_CHARS as MAX_REASON_CHARS
from sync.wire import MAX_VERSIONS as MAX_VERSIONS
from sync.wire import MEMBER_VERSION as MEMBER_VERSION
from sync.wire import MESSAGE_TYPES as MESSAGE_TYPES
from sync.wire import NONCE_BYTES as NONCE_BYTES
from sync.wire import PROTOCOL_NAME as PROTOCOL_NAME
from sync.wire import VERSIONS as VERSIONS
from sync.wire import Message as Message

# Limits of a connection's flow control (docs/protocol.md §credit, §limits).
MAX_CREDIT: Final = 1 << 40  # outstanding credit, either way
DEFAULT_WINDOW: Final = 4 << 20  # credit granted to the peer on open

Vector: TypeAlias = Mapping[bytes, tuple[int, bytes]]


class Role(enum.Enum):
    INITIATOR = "initiator"  # the side that dialled (websocket client)
    RESPONDER = "responder"


class State(enum.Enum):
    HELLO = "hello"  # our hello is sent; waiting for the peer's
    AWAIT_MESSAGE_1 = "await-message-1"  # responder
    AWAIT_MESSAGE_2 = "await-message-2"  # initiator
    AWAIT_MESSAGE_3 = "await-message-3"  # responder
    OPEN = "open"
    LOCAL_DONE = "local-done"  # we said bye; the peer may still send
    PEER_DONE = "peer-done"  # the peer said bye; we may still send
    CLOSED = "closed"  # both said bye
    FAILED = "failed"


# This side's commands, which move the state too, as messages received do.
SEND_HAVE, SEND_EVENTS, SEND_EVIDENCE, SEND_CREDIT, SEND_BYE = (
    "send have",
    "send events",
    "send evidence",
    "send credit",
    "send bye",
)

_AFTER_HANDSHAKE: Final[dict[State, dict[str, State]]] = {
    State.OPEN: {
        HAVE: State.OPEN,
        EVENTS: State.OPEN,
        EVIDENCE: State.OPEN,
        CREDIT: State.OPEN,
        BYE: State.PEER_DONE,
        ERROR: State.FAILED,
        SEND_HAVE: State.OPEN,
        SEND_EVENTS: State.OPEN,
        SEND_EVIDENCE: State.OPEN,
        SEND_CREDIT: State.OPEN,
        SEND_BYE: State.LOCAL_DONE,
    },
    State.LOCAL_DONE: {
        HAVE: State.LOCAL_DONE,
        EVENTS: State.LOCAL_DONE,
        EVIDENCE: State.LOCAL_DONE,
        CREDIT: State.LOCAL_DONE,
        BYE: State.CLOSED,
        ERROR: State.FAILED,
        SEND_CREDIT: State.LOCAL_DONE,
    },
    State.PEER_DONE: {
        CREDIT: State.PEER_DONE,
        ERROR: State.FAILED,
        SEND_HAVE: State.PEER_DONE,
        SEND_EVENTS: State.PEER_DONE,
        SEND_EVIDENCE: State.PEER_DONE,
        SEND_CREDIT: State.PEER_DONE,
        SEND_BYE: State.CLOSED,
    },
    State.CLOSED: {},
    State.FAILED: {},
}

# Every transition of the protocol (docs/protocol.md §states): role -> state ->
# message received or command given -> next state.
TRANSITIONS: Final[Mapping[Role, Mapping[State, Mapping[str, State]]]] = {
    Role.INITIATOR: {
        State.HELLO: {HELLO: State.AWAIT_MESSAGE_2},
        State.AWAIT_MESSAGE_2: {HANDSHAKE: State.OPEN},
        **_AFTER_HANDSHAKE,
    },
    Role.RESPONDER: {
        State.HELLO: {HELLO: State.AWAIT_MESSAGE_1},
        State.AWAIT_MESSAGE_1: {HANDSHAKE: State.AWAIT_MESSAGE_3},
        State.AWAIT_MESSAGE_3: {HANDSHAKE: State.OPEN},
        **_AFTER_HANDSHAKE,
    },
}


@dataclass(frozen=True, slots=True)
class Received:
    """One verified batch of one author's events, in seq order.

    Every envelope is authentic: the links inside the batch and the last signature
    were checked (§batch). When ``from_genesis`` is false the batch starts mid-chain
    and the store must check that ``envelopes[0]`` follows its head
    (``eventlog.events.check_follows``). After storing, return ``size`` bytes of credit
    with ``send_credit``.
    """

    author: bytes
    envelopes: tuple[Envelope, ...]
    size: int

    @property
    def from_genesis(self) -> bool:
        return self.envelopes[0].seq == 1


@dataclass(frozen=True, slots=True)
class VectorWanted:
    """The handshake is done: answer with ``send_have(store heads)``."""


@dataclass(frozen=True, slots=True)
class EventsWanted:
    """The peer lacks events of ``author``: answer with ``send_events`` from ``from_seq``.

    ``from_seq`` is the peer's own head seq when it has one: the core drops that
    overlap unless its hash differs from ``peer_head``, which is how a fork's
    evidence reaches the peer. Read and send in slices while ``outgoing_backlog``
    is small, so memory stays bounded.
    """

    author: bytes
    from_seq: int
    peer_seq: int
    peer_head: bytes | None


@dataclass(frozen=True, slots=True)
class EvidenceWanted:
    """The peer lacks our evidence that ``author`` forked at ``seq``: answer with
    ``send_evidence`` of the two versions the node holds at its lowest fork point for
    ``author`` (it may be lower than ``seq`` by then)."""

    author: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class EvidenceReceived:
    """Two verified versions of one (author, seq): proof that ``author`` equivocated.

    Each version's group and signature were checked on its own (§evidence). Record both
    as fork evidence; nothing else is owed to the peer (evidence takes no credit).
    """

    author: bytes
    seq: int
    versions: tuple[Envelope, Envelope]


Request: TypeAlias = VectorWanted | EventsWanted | EvidenceWanted


@dataclass(frozen=True, slots=True)
class Member:
    """Who a session's peer is: its device key, and the ``member.joined`` that makes it
    a member (with the name it joined under)."""

    key: bytes
    name: str
    joined: Envelope


@dataclass(slots=True)
class _Outgoing:
    author: bytes
    raws: list[bytes]
    pos: int = 0


class SyncProtocol:
    """One side of one sync connection; see the module essay and docs/protocol.md.

    ``group`` (when given) refuses events of another group; ``validate`` is called on
    every received envelope and may raise an InvalidEvent (for instance NotAMember).
    ``window`` is the credit granted to the peer on open. ``joined`` is this node's
    own ``member.joined`` (wire bytes), presented in the handshake from version 3.
    ``ephemeral`` and ``nonce`` fix the X25519 ephemeral key and the hello's nonce, for
    tests only. ``have_entries`` and ``have_bytes`` bound what the peer's ``have``
    messages make this side hold: entries of its vector and fork points, and bytes of
    ``have`` frames in all (``have-limit``, sync/limits.py). Right after construction
    ``data_to_send()`` holds our hello.
    """

    def __init__(
        self,
        role: Role,
        *,
        device_key: SigningKey,
        group_secret: bytes,
        group: bytes | None = None,
        validate: Callable[[Envelope], None] | None = None,
        versions: Sequence[int] = VERSIONS,
        window: int = DEFAULT_WINDOW,
        joined: bytes | None = None,
        ephemeral: bytes | None = None,
        nonce: bytes | None = None,
        have_entries: int = DEFAULT_LIMITS.have_entries,
        have_bytes: int = DEFAULT_LIMITS.have_bytes,
    ) -> None:
        if not versions or not all(type(v) is int and 1 <= v <= 0xFFFF for v in versions):
            raise LocalProtocolError("versions must be integers 1..65535")
        if not MAX_EVENT_BYTES <= window <= MAX_CREDIT_GRANT:
            raise LocalProtocolError(f"window must be {MAX_EVENT_BYTES}..{MAX_CREDIT_GRANT} bytes")
        if len(group_secret) != 32:
            raise LocalProtocolError("group secret must be 32 bytes")
        if nonce is not None and len(nonce) != NONCE_BYTES:
            raise LocalProtocolError(f"nonce must be {NONCE_BYTES} bytes")
        self.role = role
        self._device_key = device_key
        self._group_secret = group_secret
        self._group = group
        self._validate = validate
        self._versions = sorted(set(versions))
        self._window = window
        self._ephemeral = ephemeral
        self._joined = joined
        self._member: Member | None = None
        self._state = State.HELLO
        self._error: ProtocolError | None = None
        self._eof = False
        self.version: int | None = None
        self._handshake: Handshake | None = None
        self._session: Session | None = None
        self._out: list[bytes] = []
        self._received: list[Received] = []
        self._requests: list[Request] = []
        self._pending_wants: set[EventsWanted | EvidenceWanted] = set()
        self._ours: dict[bytes, tuple[int, bytes]] = {}
        self._peer: dict[bytes, tuple[int, bytes]] = {}
        self._our_forks: dict[bytes, int] = {}  # author -> lowest forked seq we can prove
        self._peer_forks: dict[bytes, int] = {}  # the same, as far as we know the peer's
        self._have_entries = have_entries
        self._have_bytes = have_bytes
        self._have_received = 0  # bytes of have frames received
        self._frame_bytes = 0  # size of the frame being handled
        self._evidence: list[EvidenceReceived] = []
        self._evidence_sent = 0
        self._peer_vector_complete = False
        self._credit_in = 0  # event bytes the peer may still send us
        self._events_in = 0  # events in every events message received (sync/limits.py)
        self._credit_out = 0  # event bytes we may still send
        self._events_queued = 0  # events accepted by send_events for the peer
        self._queue: deque[_Outgoing] = deque()
        self._backlog = 0
        self._bye_requested = False
        self._handlers: dict[str, Callable[[Message], None]] = {
            HELLO: self._on_hello,
            HANDSHAKE: self._on_handshake,
            HAVE: self._on_have,
            EVENTS: self._on_events,
            EVIDENCE: self._on_evidence,
            CREDIT: self._on_credit,
            ERROR: self._on_error,
            BYE: self._on_bye,
        }
        nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._hello = wire.pack(wire.make_hello(self._versions, nonce))
        self._peer_hello = b""
        self._out.append(self._hello)

    # -- what the driver reads ------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> ProtocolError | None:
        """Why the connection failed (ours or the peer's ``RemoteError``), else None."""
        return self._error

    @property
    def peer_key(self) -> bytes | None:
        """The peer's Ed25519 device key, proven by the handshake; None before it."""
        return self._session.peer_key if self._session is not None else None

    @property
    def peer_member(self) -> Member | None:
        """The peer as the ``member.joined`` it presented and we verified (version 3);
        None before the handshake or when it presented none (§members)."""
        return self._member

    @property
    def peer_vector(self) -> dict[bytes, tuple[int, bytes]]:
        """What the peer has, as far as we know: author -> (seq, head hash)."""
        return dict(self._peer)

    @property
    def peer_vector_complete(self) -> bool:
        """True once the peer's first whole vector arrived."""
        return self._peer_vector_complete

    @property
    def peer_forks(self) -> dict[bytes, int]:
        """The peer's fork points as far as we know: author -> lowest forked seq."""
        return dict(self._peer_forks)

    @property
    def can_send_events(self) -> bool:
        """True when ``send_have`` and ``send_events`` are allowed now."""
        return self._state in (State.OPEN, State.PEER_DONE) and not self._bye_requested

    @property
    def can_send_evidence(self) -> bool:
        """True when ``send_evidence`` is allowed now and the peer understands it."""
        return self.can_send_events and self._speaks_evidence

    @property
    def _speaks_evidence(self) -> bool:
        return self.version is not None and self.version >= EVIDENCE_VERSION

    @property
    def outgoing_backlog(self) -> int:
        """Event bytes queued by ``send_events`` and waiting for the peer's credit."""
        return self._backlog

    @property
    def credit(self) -> int:
        """Event bytes we may send before the peer grants more."""
        return self._credit_out

    @property
    def events_in(self) -> int:
        """Events in every ``events`` message received so far, counted before they are
        verified: what per-peer rate limits account (sync/limits.py)."""
        return self._events_in

    @property
    def events_queued(self) -> int:
        """Events ``send_events`` queued for the peer: what it lacked, not what it had."""
        return self._events_queued

    @property
    def evidence_sent(self) -> int:
        """``evidence`` messages written: evidence the peer lacked, not what it had."""
        return self._evidence_sent

    def data_to_send(self) -> list[bytes]:
        """Frames to write, in order, each as one binary websocket frame. Drains."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Received]:
        """Verified batches to store, in arrival order. Drains."""
        out, self._received = self._received, []
        return out

    def evidence_received(self) -> list[EvidenceReceived]:
        """Verified fork evidence to record, in arrival order. Drains."""
        out, self._evidence = self._evidence, []
        return out

    def requests(self) -> list[Request]:
        """What the node must look up and answer with a command. Drains."""
        out, self._requests = self._requests, []
        self._pending_wants.clear()
        return out

    def close_expected(self) -> bool:
        """True once the connection is over: write ``data_to_send()``, then close."""
        return self._state in (State.CLOSED, State.FAILED)

    # -- inputs ---------------------------------------------------------------------

    def receive_data(self, frame: bytes) -> None:
        """Feed one binary frame. Never raises for the peer's faults: see ``error``."""
        if self._state is State.FAILED or self._eof:
            return
        try:
            kind, message = self._open_frame(frame)
            self._frame_bytes = len(frame)
            if kind == HELLO:
                self._peer_hello = frame
            self._state = self._next(kind)
            self._handlers[kind](message)
        except ProtocolError as exc:
            self._fail(exc)

    def receive_eof(self) -> None:
        """The stream ended. Before both byes this is ``connection-lost``."""
        if self._eof:
            return
        self._eof = True
        if not self.close_expected():
            self._fail(
                ConnectionLost(
                    f"stream ended in state {self._state.name} before both sides said bye"
                )
            )

    # -- commands -------------------------------------------------------------------

    def send_have(self, vector: Vector, forks: Mapping[bytes, int] | None = None) -> None:
        """Send (part of) our vector: author -> (seq, head hash), and our fork points:
        author -> lowest seq we hold two versions of (version 2 on; empty in the normal
        case, when nothing is added to the frames). Call on VectorWanted with the
        store's heads and fork points; later calls announce newer heads."""
        if self.close_expected():
            return
        self._check_command(SEND_HAVE)
        entries: list[list[object]] = []
        for author, (seq, head) in vector.items():
            if (
                len(author) != KEY_BYTES
                or type(seq) is not int
                or seq < 1
                or len(head) != HASH_BYTES
            ):
                raise LocalProtocolError("vector entries are author -> (seq >= 1, head)")
            _advance(self._ours, author, seq, head)
            entries.append([author, seq, head])
        points: list[list[object]] = []
        if forks and self._speaks_evidence:  # a version 1 peer would not use them
            for author, seq in forks.items():
                if len(author) != KEY_BYTES or type(seq) is not int or seq < 1:
                    raise LocalProtocolError("fork points are author -> seq >= 1")
                _lower(self._our_forks, author, seq)
                points.append([author, seq])
        for message in wire.make_haves(entries, points):
            self._write(message)
        if self._peer_vector_complete:
            for author in vector:
                self._compare(author)
            for author in forks or ():
                self._compare_forks(author)

    def send_events(self, raws: Sequence[bytes]) -> None:
        """Queue encoded events of ONE author, contiguous, in seq order.

        Events the peer already has are dropped; a batch that would leave a gap
        becomes an EventsWanted instead; before the peer's vector is complete the
        batch is only remembered (the vector comparison will ask for it). Frames go
        out as credit allows: check ``outgoing_backlog`` before reading more.
        """
        if self.close_expected():
            return
        self._check_command(SEND_EVENTS)
        if not raws:
            return
        author, first_seq = _peek(raws[0])
        last_author, last_seq = _peek(raws[-1])
        if last_author != author or last_seq - first_seq != len(raws) - 1:
            raise LocalProtocolError("send_events takes one author's contiguous events")
        last_hash = _hash_of(raws[-1])
        _advance(self._ours, author, last_seq, last_hash)
        if not self._peer_vector_complete:
            return
        peer_seq, peer_head = self._peer.get(author, (0, None))
        if last_seq < peer_seq:
            return
        i = max(0, peer_seq - first_seq)
        if first_seq + i == peer_seq and _hash_of(raws[i]) == peer_head:
            i += 1  # the overlap: the peer has this very event
        if i == len(raws):
            return
        if first_seq + i > peer_seq + 1:
            self._want(author, peer_seq, peer_head)
            return
        batch = list(raws[i:])
        self._peer[author] = (last_seq, last_hash)
        self._events_queued += len(batch)
        self._queue.append(_Outgoing(author, batch))
        self._backlog += sum(len(raw) for raw in batch)
        self._flush()

    def send_evidence(self, first: bytes, second: bytes) -> None:
        """Prove that an author equivocated: two versions (wire bytes) of one
        (author, seq), as the store keeps them in ``forks``.

        Dropped when the peer is known to hold evidence for that author at this seq or
        below (it announced it, sent it, or got it from us), so relaying new evidence
        to every connection echoes nothing; dropped too on a version 1 connection,
        whose peer would not understand it. Before the peer's vector is complete it is
        only remembered: the comparison then asks for it (``EvidenceWanted``). Goes out
        at once: evidence takes no credit (§evidence).
        """
        if self.close_expected():
            return
        self._check_command(SEND_EVIDENCE)
        if not self._speaks_evidence:
            return
        author, seq = _fork_of(first, second)
        _lower(self._our_forks, author, seq)
        if not self._peer_vector_complete:
            return
        known = self._peer_forks.get(author)
        if known is not None and known <= seq:
            return
        self._peer_forks[author] = seq
        self._evidence_sent += 1
        self._write(wire.make_evidence(first, second))

    def send_credit(self, size: int) -> None:
        """Let the peer send ``size`` more event bytes; call after storing a batch
        with its ``Received.size``."""
        if self.close_expected():
            return
        self._check_command(SEND_CREDIT)
        if type(size) is not int or not 1 <= size <= MAX_CREDIT_GRANT:
            raise LocalProtocolError(f"credit must be 1..{MAX_CREDIT_GRANT} bytes")
        if self._credit_in + size > MAX_CREDIT:
            raise LocalProtocolError("outstanding credit would pass 2^40 bytes")
        self._credit_in += size
        self._write(wire.make_credit(size))

    def send_bye(self) -> None:
        """Promise to send no more have or events. The bye frame follows every queued
        event, so it may wait for credit; until then the state does not change."""
        if self.close_expected():
            return
        self._check_command(SEND_BYE)
        self._bye_requested = True
        self._flush()

    def fail(self, code: str, reason: str) -> None:
        """End the connection with ``code`` (e.g. the store refused an event)."""
        if self.close_expected():
            return
        if not CODE_PATTERN.fullmatch(code):
            raise LocalProtocolError(f"error code {code!r} is not [a-z0-9-], 1..64 chars")
        self._fail(ProtocolError(reason, code=code))

    # -- the machine ----------------------------------------------------------------

    def _next(self, kind: str) -> State:
        """The transition for message ``kind`` from here; refuse what the table lacks."""
        next_state = TRANSITIONS[self.role][self._state].get(kind)
        if next_state is None:
            raise UnexpectedMessage(f"{kind} message not allowed in state {self._state.name}")
        return next_state

    def _check_command(self, command: str) -> None:
        if command not in TRANSITIONS[self.role][self._state]:
            raise LocalProtocolError(f"cannot {command} in state {self._state.name}")
        if self._bye_requested and command != SEND_CREDIT:
            raise LocalProtocolError(f"cannot {command} after send_bye")

    def _fail(self, exc: ProtocolError) -> None:
        if self._error is not None:
            return  # the first error is the reason
        tell_peer = self._session is not None and not self._eof and not isinstance(exc, RemoteError)
        self._state = State.FAILED
        self._error = exc
        self._queue.clear()
        self._backlog = 0
        if tell_peer:
            self._write(wire.make_error(exc.code, exc.reason))

    def _write(self, message: Message) -> None:
        data = wire.pack(message)
        if self._session is not None:
            data = self._session.send.encrypt(data)
        self._out.append(data)

    def _open_frame(self, frame: bytes) -> tuple[str, Message]:
        """Size check, decrypt, parse: a map with a known string type ``t``."""
        limit = MAX_FRAME_BYTES if self._session is not None else MAX_CLEAR_FRAME_BYTES
        if len(frame) > limit:
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes, limit {limit} in state {self._state.name}"
            )
        data = self._session.receive.decrypt(frame) if self._session is not None else frame
        return wire.parse(data, self.version)

    def _on_hello(self, message: Message) -> None:
        versions = wire.read_hello(message)
        common = set(self._versions) & set(versions)
        if not common:
            raise VersionMismatch(
                f"peer speaks {PROTOCOL_NAME} versions {sorted(versions)}, this node "
                f"speaks {self._versions}: upgrade the older node"
            )
        self.version = max(common)
        members = self.version >= MEMBER_VERSION
        if members and wire.read_nonce(message) is None:
            raise MalformedFrame(f"hello: version {self.version} needs a nonce")
        initiator = self.role is Role.INITIATOR
        first, second = (
            (self._hello, self._peer_hello) if initiator else (self._peer_hello, self._hello)
        )
        # Both hellos are the Noise prologue: a downgrade fails the handshake (§versions).
        prologue = b"".join(len(h).to_bytes(4, "big") + h for h in (first, second))
        self._handshake = Handshake(
            initiator=initiator,
            device_key=self._device_key,
            group_secret=self._group_secret,
            prologue=prologue,
            ephemeral=self._ephemeral,
            credential=(self._joined or b"") if members else None,
        )
        if initiator:
            self._write(wire.make_handshake(self._handshake.start()))

    def _on_handshake(self, message: Message) -> None:
        noise = wire.read_handshake(message)
        assert self._handshake is not None
        reply = self._handshake.receive(noise)
        if reply is not None:
            self._write(wire.make_handshake(reply))
        session = self._handshake.session
        if session is not None:
            self._session, self._handshake = session, None
            if session.peer_credential:  # after our reply: a refusal goes out encrypted
                self._member = self._check_credential(session.peer_key, session.peer_credential)
            self._credit_in = self._window
            self._write(wire.make_credit(self._window))
            self._requests.append(VectorWanted())

    def _check_credential(self, key: bytes, raw: bytes) -> Member:
        """The peer's own ``member.joined``, presented in the handshake (§members)."""
        who = key.hex()[:12]
        try:
            joined = decode(raw)
            group = self._group if self._group is not None else group_id_of(self._group_secret)
            check_group(joined, group)
            verify_signature(joined)
        except InvalidEvent as exc:
            raise PeerNotAMember(
                f"device key {who} presented an invalid member.joined: {exc}"
            ) from None
        name = joined.body.get("name")
        if (
            joined.author != key
            or joined.seq != 1
            or joined.type != "member.joined"
            or not isinstance(name, str)
            or not check_membership_proof(
                Group(group, self._group_secret, name), key, joined.body.get("proof")
            )
        ):
            raise PeerNotAMember(
                f"device key {who} presented no member.joined of its own with a valid "
                "membership proof"
            )
        return Member(key, name, joined)

    def _on_have(self, message: Message) -> None:
        self._have_received += self._frame_bytes
        if self._have_received > self._have_bytes:
            self._drop_peer_vector()
            raise HaveLimit(
                f"{self._have_received} bytes of have frames received, "
                f"limit {self._have_bytes} a session"
            )
        have = wire.read_have(message, forks=self._speaks_evidence)
        for author, seq, head in have.vector:
            known = self._peer.get(author)
            # The peer's first vector is the truth; later ones only move forward.
            if not self._peer_vector_complete or known is None or seq > known[0]:
                self._peer[author] = (seq, head)
        for author, seq in have.forks:
            _lower(self._peer_forks, author, seq)  # fork points only go down
        held = len(self._peer) + len(self._peer_forks)
        if held > self._have_entries:  # at most one frame (8192 entries) over, then freed
            self._drop_peer_vector()
            raise HaveLimit(
                f"the peer's vector and fork points reached {held} entries, "
                f"limit {self._have_entries} a session"
            )
        if self._peer_vector_complete:
            for author, _, _ in have.vector:
                self._compare(author)
            for author, _ in have.forks:
                self._compare_forks(author)
        elif have.end:
            self._peer_vector_complete = True
            for author in list(self._ours):
                self._compare(author)
            for author in list(self._our_forks):
                self._compare_forks(author)

    def _drop_peer_vector(self) -> None:
        """Free what the peer's have messages made us hold: the session ends."""
        self._peer = {}
        self._peer_forks = {}

    def _on_events(self, message: Message) -> None:
        batch = wire.read_events(message)
        author, raws, size = batch.author, batch.raws, batch.size
        if size > self._credit_in:
            raise CreditExceeded(
                f"peer sent {size} event bytes with only {self._credit_in} granted"
            )
        self._credit_in -= size
        self._events_in += len(raws)
        try:
            envelopes = tuple(decode(raw) for raw in raws)
            for envelope in envelopes:
                if envelope.author != author:
                    raise MalformedEvent("an event's author is not the batch's author")
                if self._group is not None:
                    check_group(envelope, self._group)
                if self._validate is not None:
                    self._validate(envelope)
            _verify_batch(envelopes)
        except InvalidEvent as exc:
            raise EventRejected(exc) from None
        last = envelopes[-1]
        _advance(self._ours, author, last.seq, last.hash)
        _advance(self._peer, author, last.seq, last.hash)
        self._received.append(Received(author, envelopes, size))

    def _on_evidence(self, message: Message) -> None:
        """Two versions of one (author, seq), each checked on its own (§evidence)."""
        raws = wire.read_evidence(message)
        try:
            first, second = decode(raws[0]), decode(raws[1])
        except InvalidEvent as exc:
            raise EventRejected(exc) from None
        if first.author != second.author:
            raise BadEvidence("evidence: the two versions have different authors")
        if first.seq != second.seq:
            raise BadEvidence(
                f"evidence: the versions have seqs {first.seq} and {second.seq}, not one"
            )
        if first.hash == second.hash:
            raise BadEvidence("evidence: the two versions are the same event")
        try:
            for envelope in (first, second):
                if self._group is not None:
                    check_group(envelope, self._group)
                if self._validate is not None:
                    self._validate(envelope)
            for envelope in (first, second):  # no chain links them: each one's own
                verify_signature(envelope)
        except InvalidEvent as exc:
            raise EventRejected(exc) from None
        author, seq = first.author, first.seq
        _lower(self._peer_forks, author, seq)  # the peer has it, and we will
        _lower(self._our_forks, author, seq)
        self._evidence.append(EvidenceReceived(author, seq, (first, second)))
        self._compare_forks(author)  # we may know a lower point than the one just sent

    def _on_credit(self, message: Message) -> None:
        size = wire.read_credit(message)
        if self._credit_out + size > MAX_CREDIT:
            raise MalformedFrame("credit: outstanding credit would pass 2^40 bytes")
        self._credit_out += size
        self._flush()

    def _on_error(self, message: Message) -> None:
        code, reason = wire.read_error(message)
        self._error = RemoteError(reason, code=code)
        self._queue.clear()
        self._backlog = 0

    def _on_bye(self, message: Message) -> None:
        """Nothing to do: the transition is the whole meaning of bye."""

    def _compare(self, author: bytes) -> None:
        """Ask the node for what the peer lacks of ``author``, if anything (§catch-up)."""
        ours = self._ours.get(author)
        if ours is None or not self.can_send_events:
            return
        peer_seq, peer_head = self._peer.get(author, (0, None))
        if ours[0] > peer_seq or (ours[0] == peer_seq and ours[1] != peer_head):
            self._want(author, peer_seq, peer_head)

    def _compare_forks(self, author: bytes) -> None:
        """Ask the node for our evidence against ``author`` if the peer lacks it: it
        knows no fork point of theirs, or only a higher one (§evidence)."""
        ours = self._our_forks.get(author)
        if ours is None or not self._peer_vector_complete or not self.can_send_evidence:
            return
        theirs = self._peer_forks.get(author)
        if theirs is None or theirs > ours:
            request = EvidenceWanted(author, ours)
            if request not in self._pending_wants:
                self._pending_wants.add(request)
                self._requests.append(request)

    def _want(self, author: bytes, peer_seq: int, peer_head: bytes | None) -> None:
        request = EventsWanted(author, max(1, peer_seq), peer_seq, peer_head)
        if request not in self._pending_wants:
            self._pending_wants.add(request)
            self._requests.append(request)

    def _flush(self) -> None:
        """Write queued events as credit allows, then a requested bye."""
        while self._queue:
            item = self._queue[0]
            budget = min(MAX_BATCH_BYTES, self._credit_out)
            size, end = 0, item.pos
            while end < len(item.raws) and size + len(item.raws[end]) <= budget:
                size += len(item.raws[end])
                end += 1
            if end == item.pos:
                return  # waiting for credit
            batch, item.pos = item.raws[item.pos : end], end
            self._credit_out -= size
            self._backlog -= size
            self._write(wire.make_events(item.author, batch))
            if item.pos == len(item.raws):
                self._queue.popleft()
        if self._bye_requested:
            self._bye_requested = False
            self._state = TRANSITIONS[self.role][self._state][SEND_BYE]
            self._write(wire.make_bye())


def _advance(table: dict[bytes, tuple[int, bytes]], author: bytes, seq: int, head: bytes) -> None:
    known = table.get(author)
    if known is None or seq > known[0]:
        table[author] = (seq, head)


def _lower(table: dict[bytes, int], author: bytes, seq: int) -> None:
    known = table.get(author)
    if known is None or seq < known:
        table[author] = seq


def _fork_of(first: bytes, second: bytes) -> tuple[bytes, int]:
    """(author, seq) of two of our stored versions of one event, or a driver error."""
    try:
        a, b = decode(first), decode(second)
    except InvalidEvent as exc:
        raise LocalProtocolError(f"send_evidence: {exc}") from None
    if (a.author, a.seq) != (b.author, b.seq) or a.hash == b.hash:
        raise LocalProtocolError("send_evidence takes two versions of one (author, seq)")
    return a.author, a.seq


def _peek(raw: bytes) -> tuple[bytes, int]:
    """Author and seq of one of our own encoded events, without full verification."""
    try:
        fields = msgpack.unpackb(raw, raw=False)
        author, seq = fields["author"], fields["seq"]
    except (*wire.UNPACK_ERRORS, KeyError):  # anything that is not an event map
        raise LocalProtocolError("send_events takes encoded events (Envelope.raw)") from None
    if not isinstance(author, bytes) or type(seq) is not int:
        raise LocalProtocolError("send_events takes encoded events (Envelope.raw)")
    return author, seq


def _hash_of(raw: bytes) -> bytes:
    try:
        return decode(raw).hash
    except InvalidEvent as exc:
        raise LocalProtocolError(f"send_events: {exc}") from None


def _verify_batch(envelopes: tuple[Envelope, ...]) -> None:
    """Links inside the batch and the last signature (§batch); raise InvalidEvent."""
    if len(envelopes) == 1:
        verify_signature(envelopes[0])
    else:
        verify_chain(envelopes[1:], previous=envelopes[0])
