"""The signed event envelope: canonical encoding, hash, signature, pure validation.

Wire form (docs/events.md §envelope): one msgpack map with string keys in sorted order
and the smallest integer encodings (msgpack's own), binary fields as ``bin``, text as
``str``. The *signed bytes* are that map without ``sig``; ``sig`` is Ed25519 over them;
``hash = BLAKE2b-256(wire bytes)``, signature included, so that the next event's ``prev``
commits to this one's signature too (decision 0007). Decoding re-encodes and demands
the same bytes, so there is exactly one encoding of each event and hashes agree on
every node.

Why a chain check here: an author's events link by ``prev``. Once a batch's hashes
chain and the last event's signature verifies, every earlier event in the batch is
authenticated by the hash chain (``verify_chain``); checking every signature is the
slow path.

Pure: no I/O. The store looks up prev/deps and calls the rule functions.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias, cast

import msgpack
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from eventlog.errors import (
    BadSignature,
    HlcRegression,
    MalformedEvent,
    OversizedEvent,
    PrevMismatch,
    SeqGap,
    UnknownGroup,
)

ENVELOPE_VERSION = 1
KEY_BYTES = 32
HASH_BYTES = 32
SIG_BYTES = 64
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPS = 512
MAX_TYPE_CHARS = 64
MAX_INT = 1 << 63  # seq and hlc are SQLite integers: signed 64-bit

# msgpack values a body may hold; dict keys are str.
Value: TypeAlias = "bool | int | float | str | bytes | list[Value] | dict[str, Value] | None"
Body: TypeAlias = "dict[str, Value]"


_NESTED = (dict, list, tuple)


def canonical(value: object) -> object:
    """Return ``value`` with every map's keys sorted, so packing is deterministic."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise MalformedEvent(f"map key {key!r} is not a string")
        return {
            key: canonical(item) if isinstance(item, _NESTED) else item
            for key, item in sorted(value.items())
        }
    if isinstance(value, (list, tuple)):
        return [canonical(item) if isinstance(item, _NESTED) else item for item in value]
    return value


@functools.lru_cache(maxsize=8)
def _secret_key(seed: bytes) -> bytes:
    return bytes(crypto_sign_seed_keypair(seed)[1])


def sign_bytes(key: SigningKey, message: bytes) -> bytes:
    """Ed25519 signature of ``message``: libsodium's binding without PyNaCl's wrapper
    objects, which cost a third as much again as the signature itself."""
    return bytes(crypto_sign(message, _secret_key(key.encode()))[:SIG_BYTES])


def _is_canonical_order(value: object) -> bool:
    """True when every map in ``value`` has string keys already in sorted order.

    Written as plain loops: it runs on every received event's body, and generator
    expressions made it a third of a cold sync's decoding time.
    """
    kind = type(value)
    if kind is dict:
        assert isinstance(value, dict)
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                return False
        if keys != sorted(keys):
            return False
        for item in value.values():
            if type(item) in _CONTAINERS and not _is_canonical_order(item):
                return False
        return True
    if kind is list:
        assert isinstance(value, list)
        for item in value:
            if type(item) in _CONTAINERS and not _is_canonical_order(item):
                return False
        return True
    return kind is not msgpack.ExtType  # extension types are never used


_CONTAINERS = frozenset({dict, list, msgpack.ExtType})


_TOP_ORDER = {
    False: ("author", "body", "deps", "group", "hlc", "prev", "seq", "sig", "type", "v"),
    True: ("author", "body", "deps", "group", "hlc", "seq", "sig", "type", "v"),
}


def pack(value: object) -> bytes:
    """Canonical msgpack bytes of ``value``."""
    return _packb(canonical(value))


def _packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One signed event, immutable. ``raw`` is its wire bytes, ``hash`` its id."""

    group: bytes
    author: bytes
    seq: int
    prev: bytes | None
    deps: tuple[bytes, ...]
    hlc: int
    type: str
    body: Body
    sig: bytes
    raw: bytes = field(repr=False, compare=False)
    hash: bytes = field(compare=False)
    v: int = ENVELOPE_VERSION
    parsed: object = field(default=None, repr=False, compare=False)
    """The typed body (eventlog.body) when the writer already validated it; else None."""

    @property
    def key(self) -> tuple[int, bytes, int]:
        """The canonical order of projections: (hlc, author, seq)."""
        return (self.hlc, self.author, self.seq)

    def signed_fields(self) -> dict[str, object]:
        return _signed_fields(
            self.v,
            self.group,
            self.author,
            self.seq,
            self.prev,
            self.deps,
            self.hlc,
            self.type,
            self.body,
        )


_set = object.__setattr__


def _envelope(
    group: bytes,
    author: bytes,
    seq: int,
    prev: bytes | None,
    deps: tuple[bytes, ...],
    hlc: int,
    type_: str,
    body: Body,
    sig: bytes,
    raw: bytes,
    hash_: bytes,
    parsed: object = None,
) -> Envelope:
    """An Envelope of checked fields, built without the frozen dataclass's keyword
    ``__init__``: every event decoded or created is one, and that ``__init__`` cost more
    than hashing the event."""
    env = object.__new__(Envelope)
    _set(env, "group", group)
    _set(env, "author", author)
    _set(env, "seq", seq)
    _set(env, "prev", prev)
    _set(env, "deps", deps)
    _set(env, "hlc", hlc)
    _set(env, "type", type_)
    _set(env, "body", body)
    _set(env, "sig", sig)
    _set(env, "raw", raw)
    _set(env, "hash", hash_)
    _set(env, "v", ENVELOPE_VERSION)
    _set(env, "parsed", parsed)
    return env


def _signed_fields(
    v: int,
    group: bytes,
    author: bytes,
    seq: int,
    prev: bytes | None,
    deps: Sequence[bytes],
    hlc: int,
    type_: str,
    body: Mapping[str, object],
) -> dict[str, object]:
    """The signed map, built with its keys already in canonical (sorted) order."""
    fields: dict[str, object] = {
        "author": author,
        "body": body,
        "deps": list(deps),
        "group": group,
        "hlc": hlc,
    }
    if prev is not None:
        fields["prev"] = prev
    fields["seq"] = seq
    fields["type"] = type_
    fields["v"] = v
    return fields


class Unsigned(NamedTuple):
    """One of this node's new events before signing: every field but prev and sig,
    already checked and canonical (``unsigned``). prev is the hash of the signed event
    before it, so it is only known while signing the run in order (``seal_run``)."""

    seq: int
    hlc: int
    type: str
    body: Body
    deps: tuple[bytes, ...]
    parsed: object = None


def unsigned(
    seq: int,
    hlc: int,
    type_: str,
    body: Mapping[str, object],
    deps: Sequence[bytes] = (),
    parsed: object = None,
) -> Unsigned:
    """Check and canonicalise a new event's fields. ``parsed`` is carried along for
    this node's projections, never encoded."""
    if not (0 < seq < MAX_INT):
        raise MalformedEvent(f"seq: {seq!r} is not an integer in 1..2^63-1")
    if not (0 < hlc < MAX_INT):
        raise MalformedEvent(f"hlc: {hlc!r} is not an integer in 1..2^63-1")
    if parsed is not None and type(body) is dict:
        # a typed body's map, made fresh and canonical by to_body(): ours to keep as is
        body_c = cast(Body, body)
    else:
        body_c = cast(Body, dict(body))
        if not _is_canonical_order(body_c):
            body_c = cast(Body, canonical(body_c))
    deps_c = tuple(sorted(set(deps))) if deps else ()
    return tuple.__new__(Unsigned, (seq, hlc, type_, body_c, deps_c, parsed))


def seal(key: SigningKey, group: bytes, prev: bytes | None, event: Unsigned) -> bytes:
    """The wire bytes of ``event`` after ``prev``: the one place events are signed,
    here and in the signing process (eventlog/signer.py), so both give the same bytes."""
    fields = _signed_fields(
        ENVELOPE_VERSION,
        group,
        bytes(key.verify_key),
        event.seq,
        prev,
        event.deps,
        event.hlc,
        event.type,
        event.body,
    )
    signed = _packb(fields)
    sig = sign_bytes(key, signed)
    raw = _insert_sig(signed, len(fields), event.type, sig)
    if len(raw) > MAX_EVENT_BYTES:
        raise OversizedEvent(f"event is {len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    return raw


def sealed(
    group: bytes, author: bytes, prev: bytes | None, event: Unsigned, raw: bytes
) -> Envelope:
    """The Envelope of ``event`` signed into ``raw`` (by ``seal``); its signature is
    read back from where ``seal`` put it."""
    end = len(raw) - _tail(event.type)
    return _envelope(
        group,
        author,
        event.seq,
        prev,
        event.deps,
        event.hlc,
        event.type,
        event.body,
        raw[end - SIG_BYTES : end],
        raw,
        blake2b256(raw),
        event.parsed,
    )


def seal_run(
    key: SigningKey, group: bytes, prev: bytes | None, run: Iterable[Unsigned]
) -> list[Envelope]:
    """Sign ``run``, consecutive events of ``key``'s author after ``prev``, in order."""
    author = bytes(key.verify_key)
    out: list[Envelope] = []
    for event in run:
        env = sealed(group, author, prev, event, seal(key, group, prev, event))
        out.append(env)
        prev = env.hash
    return out


def create(
    key: SigningKey,
    *,
    group: bytes,
    seq: int,
    prev: bytes | None,
    deps: Sequence[bytes],
    hlc: int,
    type: str,
    body: Mapping[str, object],
    parsed: object = None,
) -> Envelope:
    """Sign a new event. The caller (the node) picks seq, prev, deps and hlc.

    The body is canonicalised here; a peer's ``decode(raw)`` gives an equal value.
    """
    [env] = seal_run(key, group, prev, [unsigned(seq, hlc, type, body, deps, parsed)])
    return env


_SIG_ENTRY = b"\xa3sig\xc4\x40"  # "sig" then the header of 64 bytes of bin 8


def _insert_sig(signed: bytes, entries: int, type_: str, sig: bytes) -> bytes:
    """The wire bytes: ``signed`` (a map of ``entries`` < 15 pairs, so a one-byte
    header) with the ``sig`` pair spliced in before ``type``, where it sorts. Splicing
    instead of packing the map again; ``decode`` still checks the result is canonical."""
    cut = len(signed) - _tail(type_)
    return b"".join((bytes((0x80 | (entries + 1),)), signed[1:cut], _SIG_ENTRY, sig, signed[cut:]))


def _tail(type_: str) -> int:
    """Bytes after the signature in an event's wire bytes: "type" (5 bytes), the type
    string with its 1-3 byte header, "v" (2), 1 (1)."""
    name = len(type_.encode())
    return 5 + (1 if name < 32 else 2 if name < 256 else 3) + name + 2 + 1


def _with_sig(signed_fields: dict[str, object], sig: bytes) -> dict[str, object]:
    """The full map: ``sig`` sorts between ``seq`` and ``type``. ``seal`` splices the
    bytes instead (``_insert_sig``); tests pack this map to check the splice and to
    forge events."""
    full: dict[str, object] = {}
    for name, value in signed_fields.items():
        if name == "type":
            full["sig"] = sig
        full[name] = value
    return full


def decode(raw: bytes) -> Envelope:
    """Parse wire bytes into an Envelope, checking structure, not signature or chain.

    Raises OversizedEvent or MalformedEvent naming the bad field.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise OversizedEvent(f"event is {len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for bad input
        raise MalformedEvent(f"not msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedEvent("event is not a map")
    top = tuple(fields)
    if top != _TOP_ORDER[False] and top != _TOP_ORDER[True]:
        _check_field_names(fields)  # names the missing or unknown field, if any
    v = fields["v"]
    if v != ENVELOPE_VERSION or type(v) is not int:
        raise MalformedEvent(f"v: envelope version {v!r} not supported")
    group = _bin(fields, "group", KEY_BYTES)
    author = _bin(fields, "author", KEY_BYTES)
    seq = fields["seq"]
    if type(seq) is not int or not 0 < seq < MAX_INT:
        raise MalformedEvent(f"seq: {seq!r} is not an integer in 1..2^63-1")
    prev = fields.get("prev")
    if seq == 1:
        if "prev" in fields:
            raise MalformedEvent("prev: must be absent when seq is 1")
    else:
        prev = _bin(fields, "prev", HASH_BYTES)
    deps = fields["deps"]
    if not isinstance(deps, list) or len(deps) > MAX_DEPS:
        raise MalformedEvent(f"deps: must be a list of at most {MAX_DEPS} hashes")
    for dep in deps:
        if not isinstance(dep, bytes) or len(dep) != HASH_BYTES:
            raise MalformedEvent("deps: every dep must be a 32-byte hash")
    if deps != sorted(set(deps)):
        raise MalformedEvent("deps: must be sorted and unique")
    hlc = fields["hlc"]
    if type(hlc) is not int or not 0 < hlc < MAX_INT:
        raise MalformedEvent(f"hlc: {hlc!r} is not an integer in 1..2^63-1")
    type_ = fields["type"]
    if not isinstance(type_, str) or not 0 < len(type_) <= MAX_TYPE_CHARS:
        raise MalformedEvent("type: must be a non-empty string")
    body = fields["body"]
    if not isinstance(body, dict):
        raise MalformedEvent("body: must be a map")
    sig = _bin(fields, "sig", SIG_BYTES)
    if top != _TOP_ORDER[seq == 1] or not _is_canonical_order(body) or _packb(fields) != raw:
        raise MalformedEvent("encoding is not canonical")
    return _envelope(
        group, author, seq, prev, tuple(deps), hlc, type_, body, sig, raw, blake2b256(raw)
    )


_FIELDS = frozenset(_TOP_ORDER[False])


def _check_field_names(fields: Mapping[str, object]) -> None:
    keys = set(fields)
    missing = _FIELDS - {"prev"} - keys
    if missing:
        raise MalformedEvent(f"missing field {sorted(missing)[0]}")
    extra = keys - _FIELDS
    if extra:
        raise MalformedEvent(f"unknown field {sorted(extra)[0]}")


def _bin(fields: Mapping[str, object], name: str, size: int) -> bytes:
    value = fields.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedEvent(f"{name}: must be {size} bytes")
    return value


def verify_signature(envelope: Envelope) -> None:
    """Raise BadSignature unless the author's key signed the event."""
    signed = _packb(envelope.signed_fields())
    try:
        VerifyKey(envelope.author).verify(signed, envelope.sig)
    except (BadSignatureError, ValueError):
        raise BadSignature(
            f"signature of event {envelope.author.hex()[:12]}/{envelope.seq} does not verify"
        ) from None


def check_group(envelope: Envelope, group: bytes) -> None:
    if envelope.group != group:
        raise UnknownGroup(
            f"event belongs to group {envelope.group.hex()[:12]}, not this group {group.hex()[:12]}"
        )


def check_follows(envelope: Envelope, previous: Envelope | None) -> None:
    """Check that ``envelope`` continues ``previous`` (the author's seq-1 event).

    ``previous`` is None only when envelope.seq == 1.
    """
    if previous is None:
        if envelope.seq != 1:
            raise SeqGap(
                f"seq {envelope.seq} of {envelope.author.hex()[:12]} arrived before its predecessor"
            )
        return
    if envelope.seq != previous.seq + 1:
        raise SeqGap(f"seq {envelope.seq} does not follow seq {previous.seq}")
    if envelope.prev != previous.hash:
        raise PrevMismatch(f"prev of seq {envelope.seq} is not the hash of seq {previous.seq}")
    check_hlc_above(envelope, previous.hlc, "prev")


def check_hlc_above(envelope: Envelope, hlc: int, what: str) -> None:
    if envelope.hlc <= hlc:
        raise HlcRegression(f"hlc of seq {envelope.seq} is not above its {what}")


def verify_chain(batch: Sequence[Envelope], previous: Envelope | None) -> None:
    """Authenticate a contiguous batch of one author's events cheaply.

    Checks each event follows the one before (seq, prev hash, hlc) and verifies only
    the last signature: the signed hash chain covers the rest (docs/protocol.md §batch).
    """
    if not batch:
        return
    author = batch[0].author
    before = previous
    for envelope in batch:
        if envelope.author != author:
            raise MalformedEvent("a chain batch must hold one author's events")
        check_follows(envelope, before)
        before = envelope
    verify_signature(batch[-1])
