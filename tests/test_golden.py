"""Released byte formats stay put: today's code against files written once and committed
(tests/fixtures/README.md: never edited).

``sync-frames-v3.json``: the frames two sans-I/O protocol cores exchange to sync a small
log, handshake included. Everything that could vary is fixed (device keys, X25519
ephemerals, the hellos' nonces, the group, the events and their clock; Ed25519
signatures and the counter nonces are deterministic), so today's frames must be exactly
those bytes.

``sync-frames-v2.json``: the same for version 2, whose hellos had no nonce. Today's
hellos always carry one (security review finding 1), so no core of today writes those
frames again; the file is kept as a record a version 3 node must still understand:
today's Noise engine, given those hellos as prologue, reproduces its handshake byte for
byte, and every later frame decrypts and parses with today's wire module.

``bundle-v1.potluck``: a bundle exported from the same log. Its salt and chunk nonces are
random, so no export repeats its bytes: both files are opened by the byte layout of
sync/bundle.py (decision 0006) and must hold the same format version and the same
plaintext chunks; and the committed file imports into an empty node to the digest
recorded in ``bundle-v1.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
from eventgen import Node, WallClock
from helpers import make_key
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from eventlog import body as b
from eventlog.events import decode
from eventlog.identity import Group
from sync import wire
from sync.bundle import export_bundle, import_bundle
from sync.handshake import Handshake
from sync.protocol import EventsWanted, Role, SyncProtocol, VectorWanted

FIXTURES = Path(__file__).parent / "fixtures"
FRAMES = FIXTURES / "sync-frames-v3.json"
FRAMES_V2 = FIXTURES / "sync-frames-v2.json"
BUNDLE = FIXTURES / "bundle-v1.potluck"
BUNDLE_FACTS = FIXTURES / "bundle-v1.json"

GROUP = Group.from_secret(bytes(range(200, 232)), "Golden pantry")
ANA, BO = make_key(1), make_key(2)
RECORDED_VERSIONS = (1, 2, 3)  # what both sides offered when the v3 frames were recorded
EPHEMERAL = {Role.INITIATOR: bytes([0xE1]) * 32, Role.RESPONDER: bytes([0xE2]) * 32}
NONCE = {Role.INITIATOR: bytes([0xA1]) * 16, Role.RESPONDER: bytes([0xA2]) * 16}

Chains = dict[bytes, list[bytes]]  # author -> wire bytes of its events, in seq order


# -- the fixed log ---------------------------------------------------------------------


async def golden_node(path: Path) -> Node:
    """Ana and Bo join; Ana offers soup and needs nappies; Bo claims 4 of the soup.
    One node with a fake clock, so every event's bytes repeat from run to run."""
    node = await Node.open(path, GROUP, clock=WallClock().reader())
    await node.join(ANA, "Ana")
    await node.join(BO, "Bo")
    [offer] = await node.store.append(ANA, [b.OfferPosted(title="Vegetable soup", quantity=10)])
    await node.store.append(ANA, [b.NeedPosted(title="Nappies", quantity=3, urgency="urgent")])
    await node.store.append(BO, [b.ClaimMade(target=offer.hash, quantity=4)])
    return node


async def chains_of(node: Node) -> Chains:
    return {a: await node.store.read_raw(a, 1, 100) for a in await node.store.vector()}


async def digest_of(node: Node) -> str:
    return await node.store.read(node.runner.digest)


# -- (a) sync frames -------------------------------------------------------------------


def exchange(initiator_has: Chains, responder_has: Chains) -> list[tuple[str, bytes]]:
    """Two cores sync what each has, driven as a node drives them: answer each request,
    return credit for each batch, then both say bye. Every frame, in order, by sender."""
    cores = {
        role: SyncProtocol(
            role,
            device_key=key,
            group_secret=GROUP.secret,
            group=GROUP.id,
            ephemeral=EPHEMERAL[role],
            nonce=NONCE[role],
            versions=RECORDED_VERSIONS,
            joined=next(iter(chains.values()))[0],  # its own member.joined
        )
        for role, key, chains in (
            (Role.INITIATOR, ANA, initiator_has),
            (Role.RESPONDER, BO, responder_has),
        )
    }
    has = {Role.INITIATOR: initiator_has, Role.RESPONDER: responder_has}
    frames: list[tuple[str, bytes]] = []

    def act(role: Role) -> None:
        core, mine = cores[role], has[role]
        for request in core.requests():
            if isinstance(request, VectorWanted):
                core.send_have({a: (len(raws), _hash(raws[-1])) for a, raws in mine.items()})
            elif isinstance(request, EventsWanted):
                core.send_events(mine[request.author][request.from_seq - 1 :])
        for batch in core.events_received():
            core.send_credit(batch.size)

    def pump() -> None:
        for _ in range(1000):
            moved = False
            for src, dst in ((Role.INITIATOR, Role.RESPONDER), (Role.RESPONDER, Role.INITIATOR)):
                for frame in cores[src].data_to_send():
                    frames.append((src.name.lower(), frame))
                    cores[dst].receive_data(frame)
                    moved = True
                act(dst)
            if not moved:
                return
        raise AssertionError("the cores never went quiet")

    pump()
    for core in cores.values():
        core.send_bye()
    pump()
    for core in cores.values():
        assert core.error is None and core.close_expected(), core.state
    return frames


def _hash(raw: bytes) -> bytes:
    return decode(raw).hash


async def golden_frames(tmp_path: Path) -> list[dict[str, str]]:
    """The frames syncing Ana's chain (initiator) with Bo's (responder), as JSON rows."""
    node = await golden_node(tmp_path / "golden.db")
    try:
        chains = await chains_of(node)
    finally:
        await node.close()
    ana, bo = bytes(ANA.verify_key), bytes(BO.verify_key)
    sent = exchange({ana: chains[ana]}, {bo: chains[bo]})
    return [{"from": sender, "frame": frame.hex()} for sender, frame in sent]


async def test_two_cores_sync_a_fixed_log_with_exactly_the_released_frames(
    tmp_path: Path,
) -> None:
    released = json.loads(FRAMES.read_text())
    today = await golden_frames(tmp_path)
    assert len(today) == len(released["frames"])
    for n, (now, then) in enumerate(zip(today, released["frames"], strict=True)):
        assert now == then, f"frame {n} differs from the released one"


def test_the_version_2_frames_still_authenticate_and_parse_with_todays_code() -> None:
    """Decoding only (tests/fixtures/README.md): see the module docstring."""
    frames = [
        (row["from"], bytes.fromhex(row["frame"]))
        for row in json.loads(FRAMES_V2.read_text())["frames"]
    ]
    (_, hello_i), (_, hello_r) = frames[0], frames[1]
    for hello in (hello_i, hello_r):
        kind, message = wire.parse(hello, None)
        assert kind == wire.HELLO and wire.read_hello(message) == [1, 2]
        assert wire.read_nonce(message) is None
    prologue = b"".join(len(h).to_bytes(4, "big") + h for h in (hello_i, hello_r))
    sides = {
        role: Handshake(
            initiator=role is Role.INITIATOR,
            device_key=key,
            group_secret=GROUP.secret,
            prologue=prologue,
            ephemeral=EPHEMERAL[role],
        )
        for role, key in ((Role.INITIATOR, ANA), (Role.RESPONDER, BO))
    }
    noise = [wire.read_handshake(wire.parse(frame, None)[1]) for _, frame in frames[2:5]]
    assert sides[Role.INITIATOR].start() == noise[0]
    assert sides[Role.RESPONDER].receive(noise[0]) == noise[1]
    assert sides[Role.INITIATOR].receive(noise[1]) == noise[2]
    assert sides[Role.RESPONDER].receive(noise[2]) is None
    kinds = []
    for sender, frame in frames[5:]:
        session = sides[Role.RESPONDER if sender == "initiator" else Role.INITIATOR].session
        assert session is not None
        kinds.append(wire.parse(session.receive.decrypt(frame), 2)[0])
    assert set(kinds) == {wire.HAVE, wire.EVENTS, wire.CREDIT, wire.BYE}


# -- (b) bundle ------------------------------------------------------------------------


def opened_bundle(data: bytes, secret: bytes) -> tuple[int, list[tuple[int, Any]]]:
    """(format version, [(flags, decoded plaintext) per chunk]), read by the documented
    layout: header = "POTLUCKB" | version | salt (16) | tag (16); chunk = flags |
    length (4, big-endian) | nonce (24) | XChaCha20-Poly1305 sealed, ad = header |
    index (8, big-endian) | flags; key = BLAKE2b-256(key=secret, context | salt)."""
    assert data[:8] == b"POTLUCKB"
    version, salt, tag = data[8], data[9:25], data[25:41]
    header = data[:41]
    assert (
        tag == hashlib.blake2b(b"potluck bundle tag v1" + salt, digest_size=16, key=secret).digest()
    )
    key = hashlib.blake2b(b"potluck bundle key v1" + salt, digest_size=32, key=secret).digest()
    chunks: list[tuple[int, Any]] = []
    at = 41
    while at < len(data):
        flags, length = data[at], int.from_bytes(data[at + 1 : at + 5], "big")
        nonce, sealed = data[at + 5 : at + 29], data[at + 29 : at + 29 + length]
        ad = header + len(chunks).to_bytes(8, "big") + bytes([flags])
        plain = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, ad, nonce, key)
        chunks.append((flags, msgpack.unpackb(plain, raw=False)))
        at += 29 + length
    assert chunks and chunks[-1][0] == 1, "the last chunk is the final one"
    return version, chunks


async def test_todays_export_of_the_fixed_log_holds_what_the_released_bundle_holds(
    tmp_path: Path,
) -> None:
    node = await golden_node(tmp_path / "golden.db")
    try:
        await export_bundle(node.store, tmp_path / "today.potluck")
        facts = json.loads(BUNDLE_FACTS.read_text())
        assert await node.store.count() == facts["events"]
    finally:
        await node.close()
    today = opened_bundle((tmp_path / "today.potluck").read_bytes(), GROUP.secret)
    assert today == opened_bundle(BUNDLE.read_bytes(), GROUP.secret)


async def test_the_released_bundle_imports_into_an_empty_node_with_the_same_digest(
    tmp_path: Path,
) -> None:
    """The same events and the same projections as the log the bundle was made from.
    The digest recorded beside the bundle is that of its release's projections; a newer
    projection version changes it (the board's version 3), so the digest compared is
    today's fold of the fixed log."""
    facts = json.loads(BUNDLE_FACTS.read_text())
    golden = await golden_node(tmp_path / "golden.db")
    try:
        want = (await digest_of(golden), [e.hash async for e in golden.store.iter_events()])
    finally:
        await golden.close()
    node = await Node.open(tmp_path / "empty.db", GROUP)
    try:
        result = await import_bundle(node.store, BUNDLE)
        assert (result.stored, result.rejected, result.held) == (facts["events"], 0, 0)
        assert await node.store.count() == facts["events"]
        got = (await digest_of(node), [e.hash async for e in node.store.iter_events()])
        assert got == want
    finally:
        await node.close()
