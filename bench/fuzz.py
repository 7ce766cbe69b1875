"""Fuzzing the event decoder, body validation and the sync protocol core.

Three targets, each a pure function of one input that must never raise and whose
outputs are checked against invariants (docs/reliability.md):

``decoder``
    ``eventlog.events.decode`` on arbitrary bytes, mostly mutations of valid events (bit
    flips, truncations, splices, crossings of two events). It may only raise an
    ``InvalidEvent``. Whatever it accepts must be the one canonical encoding of what it
    returned, and the pure rules run on it (``check_group``, ``check_follows``,
    ``verify_chain``, ``verify_signature``, ``body.parse``) may only raise
    ``InvalidEvent`` too. A signature that verifies on bytes no signer wrote is a crash.
``body``
    ``eventlog.body.parse`` on a known or unknown type and an arbitrary map (msgpack from
    the input, or fields drawn from a pool of near-valid values). It may only return
    None (unknown type), raise ``InvalidBody``, or return a value that survives the
    wire: encodable, and parsed again (after a msgpack round trip) to an equal value.
``protocol``
    ``SyncProtocol.receive_data`` in every reachable state of both roles (HELLO, the
    three handshake waits, OPEN before and after a catch-up, LOCAL_DONE, PEER_DONE,
    CLOSED, FAILED). Each state is a snapshot of a real handshake between two cores
    with fixed keys, taken while the honest peer's frames were being delivered, so the
    rest of the honest script can be replayed, mutated or interleaved with garbage.
    Frames are raw bytes, plaintexts sealed under the session key (so they reach the
    message handlers, not just the AEAD), mutated real messages, and real frames
    replayed. After every frame a driver answers the core as ``sync/transport.py``
    does. The core must not raise (its contract); ``error`` is set exactly when the
    state is FAILED; every batch handed to the node is one author's contiguous chain,
    of this group, each signature valid; no frame it writes exceeds MAX_FRAME_BYTES.

Engines: atheris (coverage-guided libFuzzer; ``pip install atheris``) runs each target
in a child process with a seed corpus of valid inputs; without atheris, or with
``--engine hypothesis``, hypothesis generates the inputs from a fixed seed. An input that
raises is counted as a crash (saved under ``--crash-dir``) and fuzzing goes on, so the
count of inputs is always the one asked for.

Usage::

    python bench/fuzz.py [--runs 100000] [--seed 1] [--target decoder] [--engine atheris]

Prints ``NAME: VALUE UNIT`` lines per target: inputs, crashes (must be 0), the longest
and mean time per input, the peak memory one input allocated (tracemalloc, measured on
every 50th input) and the child's maximum RSS. Exits 1 if any target crashed.
tests/test_fuzz.py runs the same targets with a few hundred hypothesis examples each.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

import msgpack  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from eventlog import body as b  # noqa: E402
from eventlog import events  # noqa: E402
from eventlog.errors import InvalidBody, InvalidEvent  # noqa: E402
from eventlog.events import Envelope  # noqa: E402
from sync.errors import ProtocolError  # noqa: E402
from sync.protocol import (  # noqa: E402
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    EventsWanted,
    Role,
    State,
    SyncProtocol,
    VectorWanted,
)

TARGETS = ("decoder", "body", "protocol")
TIME_BOUND_S = 1.0  # no single input may take longer (asserted in tests/test_fuzz.py)
TRACE_EVERY = 50  # measure the allocations of every 50th input with tracemalloc
MAX_FRAMES = 12  # frames per protocol input

GROUP_ID = bytes(range(100, 132))
SECRET = bytes(range(32))
ALICE = SigningKey(b"a" * 32)  # the honest peer of the protocol target
BOB = SigningKey(b"b" * 32)  # the core under test
ALICE_EPHEMERAL = bytes([1]) * 32
BOB_EPHEMERAL = bytes([2]) * 32


class InvariantBroken(AssertionError):
    """A target accepted or produced something it must not: a crash like any other."""


# -- fixed, valid inputs -------------------------------------------------------------


def _chain(
    key: SigningKey,
    n: int,
    *,
    bodies: Sequence[tuple[str, dict[str, object]]] = (),
    deps: Sequence[bytes] = (),
    start_hlc: int = 1_700_000_000_000 << 16,
) -> list[Envelope]:
    made: list[Envelope] = []
    prev: Envelope | None = None
    for i in range(n):
        type_, body = (
            bodies[i]
            if i < len(bodies)
            else ("offer.posted", {"title": f"offer {i}", "quantity": i + 1})
        )
        env = events.create(
            key,
            group=GROUP_ID,
            seq=i + 1,
            prev=prev.hash if prev else None,
            deps=list(deps) if i == 1 else [],
            hlc=start_hlc + i * 65_536 + 7,
            type=type_,
            body=body,
        )
        made.append(env)
        prev = env
    return made


@cache
def alice_chain() -> tuple[Envelope, ...]:
    return tuple(
        _chain(
            ALICE,
            6,
            bodies=[
                ("member.joined", {"name": "Alice", "proof": bytes(32)}),
                (
                    "offer.posted",
                    {
                        "title": "Soup",
                        "quantity": 3,
                        "location": "pantry",
                        "x": {"nested": [1, 2.5, None, True, b"\x00", "é", {"k": -7}]},
                    },
                ),
                ("shift.completed", {"shift": bytes(range(32)), "hours": 2.5}),
            ],
            deps=[bytes([9]) * 32, bytes([200]) * 32],
        )
    )


@cache
def bob_chain() -> tuple[Envelope, ...]:
    return tuple(_chain(BOB, 3, bodies=[("member.joined", {"name": "Bob", "proof": bytes(32)})]))


@cache
def seed_events() -> tuple[Envelope, ...]:
    """Valid events of every shape the decoder meets: first and later, with deps, nested
    bodies, floats, an unknown type and a large body."""
    extra = [
        events.create(
            BOB,
            group=GROUP_ID,
            seq=9,
            prev=bytes([5]) * 32,
            deps=[],
            hlc=(1 << 63) - 1,
            type="note.pinned",
            body={"text": "z" * 3000},
        ),
        events.create(ALICE, group=bytes(32), seq=1, prev=None, deps=[], hlc=1, type="x", body={}),
    ]
    return (*alice_chain(), *bob_chain(), *extra)


@cache
def seed_raws() -> frozenset[bytes]:
    return frozenset(e.raw for e in seed_events())


# -- target: decoder ---------------------------------------------------------------


def check_decode(data: bytes) -> None:
    """The decoder and the pure validity rules on ``data``; raise only on a crash."""
    try:
        env = events.decode(data)
    except InvalidEvent:
        return
    if events.pack({**env.signed_fields(), "sig": env.sig}) != data:
        raise InvariantBroken("decode accepted bytes that are not the canonical encoding")
    if env.hash != events.blake2b256(data):
        raise InvariantBroken("the hash is not BLAKE2b-256 of the wire bytes")
    chain = alice_chain()
    rules: list[Callable[[], object]] = [
        lambda: events.check_group(env, GROUP_ID),
        lambda: events.check_follows(env, None),
        lambda: events.check_follows(env, chain[min(max(env.seq - 2, 0), len(chain) - 1)]),
        lambda: events.verify_chain([env], chain[0]),
        lambda: events.check_hlc_above(env, chain[-1].hlc, "dep"),
        lambda: b.parse(env.type, env.body),
    ]
    for rule in rules:
        with contextlib.suppress(InvalidEvent):
            rule()
    try:
        events.verify_signature(env)
    except InvalidEvent:
        return
    if data not in seed_raws():
        raise InvariantBroken("a signature verifies on bytes no signer wrote")


# -- target: body validation ---------------------------------------------------------

TYPE_NAMES: tuple[str, ...] = (*sorted(b.TYPES), "note.pinned")
FIELD_NAMES: tuple[str, ...] = tuple(
    sorted({f for cls in b.TYPES.values() for f in cls.__dataclass_fields__} | {"_v", "extra"})
)
VALUE_POOL: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    7,
    24,
    168,
    169,
    1000,
    1001,
    1_000_000_000,
    1_000_000_001,
    -1_000_000_000,
    -1_000_000_001,
    2**31,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    0.5,
    2.5,
    24.0,
    24.000001,
    168.0,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    " ",
    "rice",
    " Rice ",
    "pantry",
    "r",
    "-rice",
    "a" * 40,
    "a" * 41,
    "x" * 100,
    "x" * 101,
    "x" * 200,
    "x" * 201,
    "y" * 2000,
    "y" * 2001,
    "a\x00b",
    "a\nb",
    "a\tb",
    "\x85",
    "\u2028",
    "é",
    "🍲",
    "pantry",
    "fridge",
    "kitchen",
    "home",
    "hub",
    "other",
    "ambient",
    "freezer",
    "donation",
    "distribution",
    "spoilage",
    "transfer",
    "correction",
    "low",
    "normal",
    "urgent",
    "kg",
    "general",
    "2024-02-29",
    "2023-02-29",
    "2024-13-01",
    "0000-01-01",
    "9999-12-31",
    "2024-1-1",
    "2024-03-02T09:00",
    "2024-03-02T12:00",
    "2024-03-02T09:00:30",
    "2024-03-02T09:00Z",
    "2024-03-02T09:00+02:00",
    "2024-03-02T09:00-23:59",
    "2024-03-02T24:00",
    "0001-01-01T00:00+23:59",
    "9999-12-31T23:59-23:59",
    "2024-03-02 09:00",
    "en",
    "pt-BR",
    "EN",
    "e",
    "zh-Hant-TW",
    "en-",
    ["en"],
    ["en", "pt-BR"],
    ["en", "en"],
    ["en"] * 11,
    [f"l{'a' * i}" for i in range(2)],
    [],
    [1],
    ["rice", None],
    {},
    {"a": 1},
    bytes(32),
    bytes(31),
    bytes(33),
    b"",
    bytes(range(32)),
    b"rice",
)


def _fits(check: Callable[[str, object], object], value: object) -> bool:
    try:
        check("field", value)
    except InvalidBody:
        return False
    return True


@cache
def valid_values() -> dict[str, dict[str, tuple[object, ...]]]:
    """type -> field -> the pool's values that field accepts on its own, so fuzzed
    bodies are often valid and reach the checks across fields and the round trip."""
    return {
        type_: {
            spec.name: tuple(v for v in VALUE_POOL if _fits(spec.kind.check, v))
            for spec in b._specs(cls)
        }
        for type_, cls in b.TYPES.items()
    }


def body_from_bytes(data: bytes) -> tuple[str, object]:
    """A (type, body) from fuzz bytes: msgpack after the first byte, or with the first
    byte's high bit set, one byte per field of the type: below 0x80 a value that field
    accepts, else any pool value (0xff leaves the field out)."""
    if not data:
        return TYPE_NAMES[0], {}
    type_ = TYPE_NAMES[data[0] % len(TYPE_NAMES)]
    rest = data[1:]
    if data[0] & 0x80:
        fits = valid_values().get(type_, {})
        body: dict[str, object] = {}
        names = [*fits, *FIELD_NAMES]
        for name, choice in zip(names, rest, strict=False):
            if choice == 0xFF:
                continue
            good = fits.get(name, ())
            body[name] = (
                good[choice % len(good)]
                if choice < 0x80 and good
                else VALUE_POOL[choice % len(VALUE_POOL)]
            )
        return type_, body
    try:
        decoded = msgpack.unpackb(rest, raw=False, strict_map_key=False)
    except Exception:  # any garbage: the body is then the bytes themselves
        decoded = {"title": rest}
    return type_, decoded


def check_body(type_: str, body: object) -> None:
    """``body.parse``: None, InvalidBody, or a value that survives the wire."""
    try:
        value = b.parse(type_, body)  # type: ignore[arg-type]  # hostile input
    except InvalidBody:
        return
    if value is None:
        if type_ in b.TYPES:
            raise InvariantBroken(f"parse returned None for the known type {type_}")
        return
    wire = events.pack(value.to_body())
    again = b.parse(type_, msgpack.unpackb(wire, raw=False))
    if again != value:
        raise InvariantBroken(f"{type_}: parse(to_body(x)) != x: {value!r} / {again!r}")


def check_body_bytes(data: bytes) -> None:
    check_body(*body_from_bytes(data))


# -- target: the sync protocol core --------------------------------------------------


@dataclass
class Scenario:
    """The core under test in one state, and what the honest peer had still to send."""

    name: str
    target: SyncProtocol
    chain: tuple[Envelope, ...]
    script: list[bytes]
    one_shot: bool
    bye_sent: bool


@dataclass
class _Side:
    protocol: SyncProtocol
    chain: tuple[Envelope, ...]
    one_shot: bool
    bye_sent: bool = False


def drive(side: SyncProtocol, chain: Sequence[Envelope], one_shot: bool, bye_sent: bool) -> bool:
    """Answer the core as sync/transport.py's Session does; return whether bye was sent.

    Credit back for every batch, the vector on VectorWanted, the events asked for on
    EventsWanted, and bye when the session's mode says so.
    """
    for batch in side.events_received():
        check_batch(batch.author, batch.envelopes, batch.size)
        side.send_credit(batch.size)
    for request in side.requests():
        if isinstance(request, VectorWanted):
            head = chain[-1]
            side.send_have({head.author: (head.seq, head.hash)})
        elif isinstance(request, EventsWanted):
            if request.from_seq < 1:
                raise InvariantBroken(f"EventsWanted from seq {request.from_seq}")
            if side.can_send_events:
                side.send_events([e.raw for e in chain[request.from_seq - 1 :]])
    if bye_sent or side.outgoing_backlog:
        return bye_sent
    ready = (
        one_shot and side.state is State.OPEN and side.peer_vector_complete
    ) or side.state is State.PEER_DONE
    if ready:
        side.send_bye()
    return ready


def check_batch(author: bytes, envelopes: Sequence[Envelope], size: int) -> None:
    """What the core hands the node must be authentic (docs/protocol.md §batch)."""
    if not envelopes:
        raise InvariantBroken("an empty batch was handed to the node")
    if size != sum(len(e.raw) for e in envelopes):
        raise InvariantBroken("a batch's size is not its events' bytes")
    for i, env in enumerate(envelopes):
        if env.author != author or env.group != GROUP_ID:
            raise InvariantBroken("a batch holds an event of another author or group")
        if i and (env.seq != envelopes[i - 1].seq + 1 or env.prev != envelopes[i - 1].hash):
            raise InvariantBroken("a batch handed to the node is not a contiguous chain")
        try:
            events.verify_signature(env)
        except InvalidEvent:
            raise InvariantBroken("an event with a bad signature was handed to the node") from None


def check_state(side: SyncProtocol) -> None:
    if (side.state is State.FAILED) != (side.error is not None):
        raise InvariantBroken(f"state {side.state.name} with error {side.error!r}")
    if side.error is not None and not isinstance(side.error, ProtocolError):
        raise InvariantBroken(f"error is not a ProtocolError: {side.error!r}")
    if side.credit < 0 or getattr(side, "_credit_in", 0) < 0:
        raise InvariantBroken("negative credit")
    for frame in side.data_to_send():
        if len(frame) > MAX_FRAME_BYTES:
            raise InvariantBroken(f"the core wrote a frame of {len(frame)} bytes")


def _make(role: Role, key: SigningKey, ephemeral: bytes) -> SyncProtocol:
    return SyncProtocol(
        role, device_key=key, group_secret=SECRET, group=GROUP_ID, ephemeral=ephemeral
    )


def _honest_run(target_role: Role) -> list[Scenario]:
    """Run an honest session, BOB (the target) against ALICE, one frame at a time,
    snapshotting BOB the first time it reaches each state."""
    peer_role = Role.RESPONDER if target_role is Role.INITIATOR else Role.INITIATOR
    target = _Side(
        _make(target_role, BOB, BOB_EPHEMERAL), bob_chain(), one_shot=target_role is Role.INITIATOR
    )
    peer = _Side(
        _make(peer_role, ALICE, ALICE_EPHEMERAL),
        alice_chain(),
        one_shot=peer_role is Role.INITIATOR,
    )
    to_target: list[bytes] = []  # every frame the peer wrote, in order
    consumed = 0
    snapshots: list[tuple[str, SyncProtocol, int, bool]] = []
    seen: set[str] = set()

    def snapshot(name: str) -> None:
        if name not in seen:
            seen.add(name)
            snapshots.append((name, copy.deepcopy(target.protocol), consumed, target.bye_sent))

    snapshot(target.protocol.state.name)
    for _ in range(1000):
        for side in (target, peer):
            side.bye_sent = drive(side.protocol, side.chain, side.one_shot, side.bye_sent)
        snapshot(target.protocol.state.name)  # our own bye moves the state too
        to_target += peer.protocol.data_to_send()
        for frame in target.protocol.data_to_send():
            if not peer.protocol.close_expected():  # a Session stops reading at CLOSED
                peer.protocol.receive_data(frame)
        if target.protocol.close_expected():
            break
        if consumed == len(to_target):
            peer.bye_sent = drive(peer.protocol, peer.chain, peer.one_shot, peer.bye_sent)
            to_target += peer.protocol.data_to_send()
            if consumed == len(to_target):
                break
        target.protocol.receive_data(to_target[consumed])
        consumed += 1
        state = target.protocol.state
        name = state.name
        if state is State.OPEN and target.protocol.peer_vector_complete:
            name = "OPEN_SYNCED"
        snapshot(name)
    if not (target.protocol.state is peer.protocol.state is State.CLOSED):
        raise RuntimeError(
            f"the honest run ended in {target.protocol.state}, {peer.protocol.state}"
        )
    prefix = "responder" if target_role is Role.RESPONDER else "initiator"
    return [
        Scenario(
            f"{prefix}-{name.lower()}",
            protocol,
            bob_chain(),
            to_target[index:consumed],
            target.one_shot,
            bye_sent,
        )
        for name, protocol, index, bye_sent in snapshots
    ]


@cache
def scenarios() -> tuple[Scenario, ...]:
    """Every reachable state of both roles, plus FAILED (garbage after the handshake)."""
    found = _honest_run(Role.RESPONDER) + _honest_run(Role.INITIATOR)
    failed = copy.deepcopy(next(s for s in found if s.name == "responder-open").target)
    failed.receive_data(b"\x00garbage")
    assert failed.state is State.FAILED
    failed.data_to_send()
    found.append(Scenario("responder-failed", failed, bob_chain(), [], False, False))
    return tuple(found)


def _pack(message: object) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


@cache
def templates() -> tuple[bytes, ...]:
    """Plaintexts of every message type, valid as a peer would send them."""
    chain = alice_chain()
    head = chain[-1]
    return (
        _pack({"t": "hello", "protocol": "potluck-sync", "versions": [1]}),
        _pack({"t": "handshake", "noise": bytes(48)}),
        _pack({"t": "have", "vector": [[head.author, head.seq, head.hash]], "end": True}),
        _pack({"t": "have", "vector": [], "end": False}),
        _pack({"t": "events", "author": head.author, "events": [e.raw for e in chain[:4]]}),
        _pack({"t": "events", "author": head.author, "events": [e.raw for e in chain[4:]]}),
        _pack({"t": "credit", "bytes": 65_536}),
        _pack({"t": "error", "code": "store-failed", "reason": "the disk is full"}),
        _pack({"t": "bye"}),
    )


def seal(side: SyncProtocol, plaintext: bytes) -> bytes:
    """``plaintext`` as the peer's next frame: encrypted under the session key with the
    nonce the core expects, or as is before the handshake."""
    session = side._session
    if session is None:
        return plaintext
    sealer = copy.copy(session.receive)
    frame: bytes = sealer.encrypt(plaintext)
    return frame


def overwrite(data: bytes, spec: bytes) -> bytes:
    """Mutate ``data``: spec[0:2] is a position, spec[2] a mode (overwrite, insert,
    truncate, delete), the rest the bytes to write."""
    if len(spec) < 3:
        return data
    pos = int.from_bytes(spec[:2], "big") % (len(data) + 1)
    mode, patch = spec[2] % 4, spec[3:]
    if mode == 0:
        return data[:pos] + patch + data[pos + len(patch) :]
    if mode == 1:
        return data[:pos] + patch + data[pos:]
    if mode == 2:
        return data[:pos]
    return data[:pos] + data[pos + 1 + len(patch) :]


Frame = tuple[int, bytes]


def run_protocol(scenario: int, frames: Sequence[Frame]) -> float:
    """Feed ``frames`` to a copy of scenario ``scenario``'s core; return the longest
    time one frame took (receive_data plus the driver). Raises only on a crash.

    Frame modes: 0 raw bytes; 1 a plaintext sealed as the peer's next frame; 2 a
    template message (payload[0] picks it) mutated by ``overwrite(payload[1:])`` and
    sealed; 3 the honest peer's next real frame, mutated when payload[0] is odd, and
    replayed (not consumed) when bit 1 of payload[0] is set.
    """
    found = scenarios()
    sc = found[scenario % len(found)]
    side = copy.deepcopy(sc.target)
    bye_sent = sc.bye_sent
    cursor = 0
    longest = 0.0
    for mode, payload in list(frames)[:MAX_FRAMES]:
        if mode % 4 == 0:
            frame = payload
        elif mode % 4 == 1:
            frame = seal(side, payload)
        elif mode % 4 == 2:
            base = templates()[(payload[0] if payload else 0) % len(templates())]
            frame = seal(side, overwrite(base, payload[1:]))
        elif sc.script:
            flags = payload[0] if payload else 0
            frame = sc.script[min(cursor, len(sc.script) - 1)]
            if flags & 1:
                frame = overwrite(frame, payload[1:])
            if not flags & 2:
                cursor += 1
        else:
            frame = payload
        began = time.perf_counter()
        side.receive_data(frame)
        bye_sent = drive(side, sc.chain, sc.one_shot, bye_sent)
        longest = max(longest, time.perf_counter() - began)
        check_state(side)
    side.receive_eof()
    drive(side, sc.chain, sc.one_shot, bye_sent)
    check_state(side)
    if not side.close_expected():
        raise InvariantBroken(f"still open after the end of the stream: {side.state.name}")
    return longest


def encode_protocol_input(scenario: int, frames: Sequence[Frame]) -> bytes:
    out = bytearray([scenario % 256])
    for mode, payload in frames:
        out += bytes([mode % 256]) + len(payload).to_bytes(2, "big") + payload[:65_535]
    return bytes(out)


def decode_protocol_input(data: bytes) -> tuple[int, list[Frame]]:
    if not data:
        return 0, []
    frames: list[Frame] = []
    i = 1
    while i < len(data) and len(frames) < MAX_FRAMES:
        mode = data[i]
        size = int.from_bytes(data[i + 1 : i + 3], "big")
        frames.append((mode, data[i + 3 : i + 3 + size]))
        i += 3 + size
    return data[0], frames


def check_protocol_bytes(data: bytes) -> None:
    run_protocol(*decode_protocol_input(data))


# -- seed corpora (atheris) and hypothesis strategies --------------------------------


def seed_corpus(target: str) -> list[bytes]:
    if target == "decoder":
        return [e.raw for e in seed_events()]
    if target == "body":
        seeds = [
            bytes([TYPE_NAMES.index(t)]) + _pack(body)
            for t, body in (
                ("offer.posted", {"title": "Soup", "quantity": 3, "until": "2024-03-01"}),
                (
                    "shift.scheduled",
                    {
                        "role": "cook",
                        "location": "kitchen",
                        "slots": 2,
                        "start": "2024-03-02T09:00",
                        "end": "2024-03-02T12:00",
                    },
                ),
                (
                    "member.joined",
                    {"name": "Ana", "languages": ["en", "pt-BR"], "proof": bytes(32)},
                ),
                (
                    "stock.adjusted",
                    {
                        "item": "rice",
                        "location": "pantry",
                        "delta": -3,
                        "reason": "distribution",
                        "expires": "2024-05-01",
                    },
                ),
                (
                    "role.defined",
                    {"slug": "cook", "name": "Cook", "description": "a\nb", "weekly_hours": 4},
                ),
            )
        ]
        return [
            *seeds,
            *(bytes([0x80 | i]) + bytes(range(i, i + 40)) for i in range(len(TYPE_NAMES))),
        ]
    corpus = []
    for index, sc in enumerate(scenarios()):
        corpus.append(encode_protocol_input(index, [(3, b"\x00")] * len(sc.script)))
        corpus.append(
            encode_protocol_input(index, [(2, bytes([t])) for t in range(len(templates()))])
        )
        corpus.append(encode_protocol_input(index, [(1, t) for t in templates()]))
    return corpus


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.binary(max_size=40)
    | st.sampled_from(VALUE_POOL)
)
MSGPACK_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=25,
)


def _mutate(data: bytes, ops: Sequence[tuple[int, int, int, bytes]], other: bytes) -> bytes:
    for kind, pos, n, patch in ops:
        if not data:
            data = patch
            continue
        pos %= len(data)
        if kind == 0:  # bit flip
            data = data[:pos] + bytes([data[pos] ^ (1 << (n % 8))]) + data[pos + 1 :]
        elif kind == 1:  # truncation
            data = data[:pos]
        elif kind == 2:  # splice in random bytes
            data = data[:pos] + patch + data[pos + n % 8 :]
        elif kind == 3:  # crossing with another event
            data = data[:pos] + other[n % (len(other) + 1) :]
        else:  # a slice repeated
            data = data[:pos] + data[pos : pos + n % 64] * 2 + data[pos + n % 64 :]
    return data


_OPS = st.lists(
    st.tuples(
        st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255), st.binary(max_size=12)
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    seeds = seed_events()
    base = draw(st.sampled_from(seeds)).raw
    other = draw(st.sampled_from(seeds)).raw
    return _mutate(base, draw(_OPS), other)


_ODD_FIELDS = {
    "v": st.sampled_from([0, 2, True, 1.0, "1", None]),
    "group": st.sampled_from([bytes(31), bytes(33), "g" * 32, None]),
    "author": st.sampled_from([bytes(33), bytes(31), "a", None]),
    "seq": st.sampled_from([1, 2, 0, -1, 2**63, 2**64 - 1, True, 1.5, "1"]),
    "prev": st.sampled_from([bytes(32), bytes(31), None, b"", "p"]),
    "deps": st.sampled_from(
        [
            [],
            [bytes(32)],
            [bytes([2]) * 32, bytes([1]) * 32],
            [bytes(32)] * 2,
            [bytes(32)] * 513,
            "x",
            [b"x"],
            None,
        ]
    ),
    "hlc": st.sampled_from([1, 0, -1, 2**64 - 1, 2**63, 1.0, None, True]),
    "type": st.sampled_from(["offer.posted", "", "x" * 64, "x" * 65, 7, "note.pinned"]),
    "body": MSGPACK_VALUES,
    "sig": st.sampled_from([bytes(64), bytes(63), bytes(65), b"", None]),
}


@st.composite
def envelope_maps(draw: st.DrawFn) -> bytes:
    """A real event's map with one to three fields changed to odd values, removed or
    added, packed canonically or not, so that every check of the decoder is reached,
    not only msgpack's."""
    base = draw(st.sampled_from(seed_events()))
    fields: dict[str, object] = msgpack.unpackb(base.raw, raw=False)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*_ODD_FIELDS, "extra"]))
        action = draw(st.integers(0, 4))
        if action == 0:
            fields.pop(name, None)
        elif name == "extra":
            fields[draw(st.text(max_size=6))] = draw(MSGPACK_VALUES)
        else:
            fields[name] = draw(_ODD_FIELDS[name])
    if draw(st.integers(0, 3)):
        try:
            return events.pack(fields)
        except InvalidEvent:
            pass
    return _pack(fields)


decoder_inputs = st.one_of(st.binary(max_size=2048), mutated_events(), envelope_maps())


@st.composite
def body_inputs(draw: st.DrawFn) -> tuple[str, object]:
    type_ = draw(st.sampled_from(TYPE_NAMES))
    if draw(st.integers(0, 9)) == 0:
        return type_, draw(MSGPACK_VALUES)
    fits = valid_values().get(type_, {"text": ("a note",)})
    body: dict[str, object] = {}
    for name in [*fits, *draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=2))]:
        choice = draw(st.integers(0, 19))
        if choice < 15 and fits.get(name):
            body[name] = draw(st.sampled_from(fits[name]))
        elif choice < 17:
            body[name] = draw(st.sampled_from(VALUE_POOL))
        elif choice < 18:
            body[name] = draw(MSGPACK_VALUES)
    return type_, body


_MESSAGE_FIELDS = (
    "t",
    "protocol",
    "versions",
    "noise",
    "vector",
    "end",
    "author",
    "events",
    "bytes",
    "code",
    "reason",
)


@st.composite
def _odd_messages(draw: st.DrawFn) -> bytes:
    """A msgpack message with a real or odd type and fields of real or odd values."""
    chain = alice_chain()
    raws = [e.raw for e in chain]
    message: dict[object, object] = {
        "t": draw(st.sampled_from([*sorted(MESSAGE_TYPES), "nope", 1, None]))
    }
    for name in draw(st.lists(st.sampled_from(_MESSAGE_FIELDS), max_size=4)):
        message[name] = draw(
            st.one_of(
                MSGPACK_VALUES,
                st.just(bytes(ALICE.verify_key)),
                st.lists(st.sampled_from(raws), min_size=1, max_size=4),
                st.lists(mutated_events(), min_size=1, max_size=3),
                st.lists(
                    st.tuples(
                        st.sampled_from([bytes(ALICE.verify_key), bytes(32)]),
                        st.integers(-1, 2**64 - 1),
                        st.sampled_from([chain[-1].hash, bytes(32)]),
                    ).map(list),
                    max_size=3,
                ),
            )
        )
    return _pack(message)


@st.composite
def _events_messages(draw: st.DrawFn) -> bytes:
    """An events message of the honest peer's chain: a slice of it, one event mutated,
    cut, duplicated or reordered, or another author's."""
    raws = [e.raw for e in alice_chain()]
    start = draw(st.integers(0, len(raws) - 1))
    batch = raws[start : draw(st.integers(start + 1, len(raws)))]
    how = draw(st.integers(0, 5))
    if how == 1:
        i = draw(st.integers(0, len(batch) - 1))
        batch[i] = draw(mutated_events())
    elif how == 2:
        batch = batch + batch[-1:]
    elif how == 3:
        batch.reverse()
    elif how == 4:
        batch = [e.raw for e in bob_chain()]
    author = bytes(ALICE.verify_key) if draw(st.integers(0, 5)) else bytes(BOB.verify_key)
    return _pack({"t": "events", "author": author, "events": batch})


_WELL_FORMED = st.one_of(
    _events_messages(),
    st.builds(
        lambda entries, end: _pack({"t": "have", "vector": entries, "end": end}),
        st.lists(
            st.tuples(
                st.sampled_from([bytes(ALICE.verify_key), bytes(BOB.verify_key), bytes(32)]),
                st.integers(1, 8),
                st.sampled_from([alice_chain()[-1].hash, bytes(32)]),
            ).map(list),
            max_size=3,
        ),
        st.booleans(),
    ),
    st.builds(
        lambda n: _pack({"t": "credit", "bytes": n}),
        st.one_of(st.integers(0, 1 << 33), st.just((1 << 32) - 1)),
    ),
    st.builds(
        lambda code, reason: _pack({"t": "error", "code": code, "reason": reason}),
        st.sampled_from(["store-failed", "x", "", "UP", "a" * 65]),
        st.text(max_size=20),
    ),
    st.just(_pack({"t": "bye"})),
    st.builds(
        lambda v: _pack({"t": "hello", "protocol": "potluck-sync", "versions": v}),
        st.lists(st.integers(0, 70_000), max_size=4),
    ),
    st.builds(lambda n: _pack({"t": "handshake", "noise": n}), st.binary(max_size=200)),
)

_FRAMES = st.one_of(
    st.tuples(st.just(0), st.binary(max_size=300)),
    st.tuples(st.just(1), _events_messages()),
    st.tuples(st.just(1), _WELL_FORMED),
    st.tuples(st.just(1), st.one_of(_odd_messages(), st.binary(max_size=200))),
    st.tuples(st.just(2), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just(3), st.binary(max_size=12)),
)
_OPEN_STATES = (
    "responder-open",
    "responder-open_synced",
    "initiator-open",
    "initiator-open_synced",
    "initiator-local_done",
)


def _index_of(name: str) -> int:
    return [s.name for s in scenarios()].index(name)


protocol_inputs = st.tuples(
    st.one_of(st.integers(0, 255), st.sampled_from(_OPEN_STATES).map(_index_of)),
    st.lists(_FRAMES, max_size=MAX_FRAMES),
)


# -- running the engines -------------------------------------------------------------


@dataclass
class Stats:
    inputs: int = 0
    timed: int = 0
    crashes: int = 0
    max_time: float = 0.0
    total_time: float = 0.0
    peak_bytes: int = 0
    first_crashes: list[str] = field(default_factory=list)

    def dump(self, path: Path) -> None:
        data = {**self.__dict__, "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        path.write_text(json.dumps(data))


CHECKS: dict[str, Callable[[bytes], None]] = {
    "decoder": check_decode,
    "body": check_body_bytes,
    "protocol": check_protocol_bytes,
}


def measured(
    check: Callable[[Any], None], stats: Stats, runs: int, stats_path: Path, crash_dir: Path
) -> Callable[[Any], None]:
    """``check`` with its time, memory and any exception recorded; never raises. The
    slowest input is kept as ``crash_dir/slowest``."""
    slowest: list[object] = [b""]

    def one(data: Any) -> None:
        sample = stats.inputs % TRACE_EVERY == 0
        if sample:
            tracemalloc.start()
        began = time.perf_counter()
        try:
            check(data)
        except Exception as exc:  # a crash: record it and go on fuzzing
            stats.crashes += 1
            if len(stats.first_crashes) < 5:
                crash_dir.mkdir(parents=True, exist_ok=True)
                saved = crash_dir / f"crash-{stats.crashes}"
                saved.write_bytes(data if isinstance(data, bytes) else repr(data).encode())
                stats.first_crashes.append(
                    f"{saved}: {''.join(traceback.format_exception_only(exc)).strip()}"
                )
        elapsed = time.perf_counter() - began
        if sample:  # traced inputs run slower: their time is not counted
            stats.peak_bytes = max(stats.peak_bytes, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        else:
            stats.timed += 1
            stats.total_time += elapsed
            if elapsed > stats.max_time:
                stats.max_time = elapsed
                slowest[0] = data
        stats.inputs += 1
        if stats.inputs % 2000 == 0 or stats.inputs >= runs:
            stats.dump(stats_path)
            crash_dir.mkdir(parents=True, exist_ok=True)  # kept to time it again alone
            (crash_dir / "slowest").write_bytes(
                slowest[0] if isinstance(slowest[0], bytes) else repr(slowest[0]).encode()
            )

    return one


def child(
    target: str, engine: str, runs: int, seed: int, stats_path: Path, crash_dir: Path
) -> None:
    """Fuzz one target in this process; the parent reads ``stats_path``, and removes the
    working corpus beside it."""
    for data in seed_corpus(target):  # warm up (caches, lazy imports): not timed
        CHECKS[target](data)
    stats = Stats()
    one = measured(CHECKS[target], stats, runs, stats_path, crash_dir)
    if engine == "atheris":
        import atheris

        corpus = stats_path.parent / "corpus"
        corpus.mkdir(exist_ok=True)
        for i, data in enumerate(seed_corpus(target)):
            (corpus / f"seed-{i}").write_bytes(data)
        functions = _instrument_ours(atheris)
        print(f"INFO: instrumented {functions} functions of node/ and sync/", file=sys.stderr)
        max_len = {"decoder": 8192, "body": 4096, "protocol": 16384}[target]
        atheris.Setup(
            [
                sys.argv[0],
                f"-runs={runs}",
                f"-seed={seed}",
                f"-max_len={max_len}",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
                str(corpus),
            ],
            one,
        )
        atheris.Fuzz()  # exits the process after -runs inputs
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    strategies: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
        "decoder": (decoder_inputs, check_decode),
        "body": (body_inputs(), lambda pair: check_body(*pair)),
        "protocol": (protocol_inputs, lambda sf: run_protocol(*sf)),
    }
    strategy, check = strategies[target]
    runner = given(strategy)(measured(check, stats, runs, stats_path, crash_dir))
    runner = settings(
        max_examples=runs,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(runner)
    fixed_seed(seed)(runner)()
    stats.dump(stats_path)


def _instrument_ours(atheris: Any) -> int:
    """Coverage instrumentation for Potluck's own code only (``instrument_all`` would
    spend minutes on every library loaded, for no feedback worth having)."""
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").split(".")[0] in (
            "node",
            "sync",
        ):
            atheris.instrument_func(obj)
            count += 1
    return count


def _engine_available() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "hypothesis"
    return "atheris"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", action="append", choices=TARGETS)
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default=None)
    parser.add_argument(
        "--crash-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "potluck-fuzz",
        help="where crashing inputs and the slowest one are kept",
    )
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engine = args.engine or _engine_available()
    if args.child:
        child(args.child, engine, args.runs, args.seed, args.stats, args.crash_dir)
        return 0
    if engine == "atheris" and _engine_available() != "atheris":
        print(
            "atheris is not installed: pip install atheris, or --engine hypothesis", file=sys.stderr
        )
        return 2
    version = ""
    if engine == "atheris":
        from importlib.metadata import version as dist_version

        version = " " + dist_version("atheris")
    print(f"fuzz_engine: {engine}{version} (seed {args.seed})")
    failed = False
    for target in args.target or TARGETS:
        with tempfile.TemporaryDirectory() as tmp:
            stats_path = Path(tmp) / "stats.json"
            began = time.monotonic()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    target,
                    "--engine",
                    engine,
                    "--runs",
                    str(args.runs),
                    "--seed",
                    str(args.seed),
                    "--stats",
                    str(stats_path),
                    "--crash-dir",
                    str(args.crash_dir / target),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.monotonic() - began
            if not stats_path.exists():
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                print(f"{target}_crashes: 1 crashes (the child died, exit {proc.returncode})")
                failed = True
                continue
            stats = json.loads(stats_path.read_text())
        if proc.returncode != 0:  # a hang (-timeout) or an out-of-memory kill
            print(proc.stderr[-3000:], file=sys.stderr)
            stats["crashes"] += 1
        timed = max(stats["timed"], 1)
        print(f"{target}_inputs: {stats['inputs']} inputs")
        print(f"{target}_crashes: {stats['crashes']} crashes")
        print(f"{target}_max_time_per_input: {stats['max_time'] * 1000:.2f} ms")
        print(f"{target}_mean_time_per_input: {stats['total_time'] / timed * 1e6:.0f} us")
        print(f"{target}_peak_memory_per_input: {stats['peak_bytes'] / 1024:.0f} KiB")
        print(f"{target}_max_rss: {stats['max_rss_kib'] / 1024:.0f} MiB")
        print(f"{target}_wall_time: {wall:.1f} s")
        found = re.search(r"DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", proc.stderr)
        if found:  # libFuzzer's closing line: edges and features covered, corpus size
            print(f"{target}_coverage_edges: {found[1]} edges")
            print(f"{target}_coverage_features: {found[2]} features")
            print(f"{target}_corpus: {found[3]} inputs")
        for line in stats["first_crashes"]:
            print(f"  {line}", file=sys.stderr)
        failed = failed or stats["crashes"] > 0 or stats["inputs"] < args.runs
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
