"""The sync protocol's frames: what each message looks like on the wire, and what makes
one well formed (docs/protocol.md §frames, §messages, §limits).

Why apart from sync/protocol.py: whether a frame *is* a message (one msgpack map, a
known type ``t``, fields of the right types and sizes) does not depend on the
connection, while what a message *means* (is it allowed now, what it changes) is all
state. This module is the first half: pure functions over maps, no state, no keys.
sync/protocol.py decrypts a frame, calls ``parse``, looks the type up in its
transition table, and only then reads the fields with the ``read_*`` function of that
type, so a message that is both unexpected and malformed is ``unexpected-message``.

*Frames.* Every message is one msgpack map in one binary websocket frame, with string
keys, ``bin`` for bytes and the string field ``t`` naming its type. Keys a version does
not define are ignored. ``hello`` and the three ``handshake`` frames are sent in clear
(at most ``MAX_CLEAR_FRAME_BYTES``); every later frame is AEAD-encrypted
(sync/handshake.py), so on the wire it is the plaintext map plus a 16-byte tag, at most
``MAX_FRAME_BYTES``.

*Messages* (§messages): ``hello`` {protocol, versions, nonce}, ``handshake`` {noise},
``have`` {vector, end, forks (version 2)}, ``events`` {author, events},
``evidence`` {events: two versions} (version 2), ``credit`` {bytes},
``error`` {code, reason} and ``bye`` {}. Each ``make_*`` function builds one; each
``read_*`` checks one's fields and raises ``MalformedFrame`` (or ``FrameTooLarge``,
``VersionMismatch``) for what a peer got wrong.

*Limits* that belong to the frames are here: the size of any frame, of a batch of
events, of a ``have``, of a reason. Limits of the connection (outstanding credit, the
window granted) are the state machine's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import msgpack

from eventlog.events import HASH_BYTES, KEY_BYTES
from sync.errors import FrameTooLarge, MalformedFrame, UnknownMessage, VersionMismatch
from sync.handshake import TAG_BYTES

PROTOCOL_NAME: Final = "potluck-sync"
VERSIONS: Final = (1, 2, 3)
EVIDENCE_VERSION: Final = 2  # the first version with evidence and fork points (§versions)
# The first version whose hellos must carry a nonce and whose handshake carries each
# side's member.joined (§hello, §members).
MEMBER_VERSION: Final = 3
NONCE_BYTES: Final = 16  # the hello's fresh random nonce: binds message 1 to the session

# Limits, docs/protocol.md §limits.
MAX_BATCH_BYTES: Final = 1 << 20  # event bytes in one events message
MAX_MESSAGE_BYTES: Final = MAX_BATCH_BYTES + (64 << 10)  # plaintext of any frame
MAX_FRAME_BYTES: Final = MAX_MESSAGE_BYTES + TAG_BYTES  # any frame on the wire
MAX_CLEAR_FRAME_BYTES: Final = 4096  # hello and handshake frames
MAX_HAVE_ENTRIES: Final = 8192
MAX_VERSIONS: Final = 32
MAX_CREDIT_GRANT: Final = (1 << 32) - 1
MAX_REASON_CHARS: Final = 1024
CODE_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

# What msgpack.unpackb raises for bad input (all ValueError subclasses in msgpack 1.x).
UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.exceptions.UnpackException)

Message: TypeAlias = dict[str, object]

# Message types on the wire (§messages).
HELLO, HANDSHAKE, HAVE, EVENTS, EVIDENCE, CREDIT, ERROR, BYE = (
    "hello",
    "handshake",
    "have",
    "events",
    "evidence",
    "credit",
    "error",
    "bye",
)
MESSAGE_TYPES: Final = frozenset({HELLO, HANDSHAKE, HAVE, EVENTS, EVIDENCE, CREDIT, ERROR, BYE})
# The version that added each type after version 1: in an older negotiated version it
# is ``unknown-message``, as it would be for a node of that version.
ADDED_IN: Final[Mapping[str, int]] = {EVIDENCE: EVIDENCE_VERSION}


@dataclass(frozen=True, slots=True)
class Have:
    """One ``have`` message: part of a vector, and (version 2) part of the fork points."""

    vector: list[tuple[bytes, int, bytes]]  # author, seq, head hash
    end: bool
    forks: list[tuple[bytes, int]]  # author, lowest forked seq


@dataclass(frozen=True, slots=True)
class Events:
    """One ``events`` message: wire bytes of one author's events, not yet decoded."""

    author: bytes
    raws: list[bytes]
    size: int  # event bytes, what the batch costs in credit


# -- encoding -------------------------------------------------------------------------


def pack(message: Message) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def make_hello(versions: Sequence[int], nonce: bytes) -> Message:
    """Every hello carries a fresh nonce, whatever versions it offers: the hellos are
    the Noise prologue, so a message 1 recorded elsewhere fails here (§hello)."""
    return {"t": HELLO, "protocol": PROTOCOL_NAME, "versions": list(versions), "nonce": nonce}


def make_handshake(noise: bytes) -> Message:
    return {"t": HANDSHAKE, "noise": noise}


def make_haves(entries: list[list[object]], points: list[list[object]]) -> list[Message]:
    """A vector's ``have`` messages: the i-th slice of entries and of fork points on the
    i-th message, the last flagged ``end``; no ``forks`` key where there are none."""
    chunks, point_chunks = _chunks(entries), _chunks(points)
    count = max(len(chunks), len(point_chunks), 1)
    messages: list[Message] = []
    for i in range(count):
        message: Message = {
            "t": HAVE,
            "vector": chunks[i] if i < len(chunks) else [],
            "end": i == count - 1,
        }
        if i < len(point_chunks):
            message["forks"] = point_chunks[i]
        messages.append(message)
    return messages


def make_events(author: bytes, raws: list[bytes]) -> Message:
    return {"t": EVENTS, "author": author, "events": raws}


def make_evidence(first: bytes, second: bytes) -> Message:
    return {"t": EVIDENCE, "events": [first, second]}


def make_credit(size: int) -> Message:
    return {"t": CREDIT, "bytes": size}


def make_error(code: str, reason: str) -> Message:
    return {"t": ERROR, "code": code, "reason": reason[:MAX_REASON_CHARS]}


def make_bye() -> Message:
    return {"t": BYE}


# -- decoding -------------------------------------------------------------------------


def parse(data: bytes, version: int | None) -> tuple[str, Message]:
    """A frame's plaintext as a map with a known string type ``t``; ``version`` is the
    negotiated one (None before hello), which decides what types are known."""
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except UNPACK_ERRORS:
        raise MalformedFrame("frame is not one msgpack value") from None
    if not isinstance(message, dict):
        raise MalformedFrame("frame is not a msgpack map")
    kind = message.get("t")
    if not isinstance(kind, str):
        raise MalformedFrame("frame has no string field t")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessage(f"unknown message type {show(kind)}")
    added = ADDED_IN.get(kind)
    if added is not None and version is not None and version < added:
        raise UnknownMessage(f"{kind} is not a message of version {version}")
    return kind, message


def read_hello(message: Message) -> list[int]:
    """The peer's versions; another protocol name is ``version-mismatch``."""
    protocol, versions = message.get("protocol"), message.get("versions")
    if protocol != PROTOCOL_NAME:
        raise VersionMismatch(f"peer speaks {show(protocol)}, not {PROTOCOL_NAME!r}")
    if (
        not isinstance(versions, list)
        or not 1 <= len(versions) <= MAX_VERSIONS
        or not all(type(v) is int and 1 <= v <= 0xFFFF for v in versions)
    ):
        raise MalformedFrame("hello: versions must be a list of 1..32 integers")
    return versions


def read_nonce(message: Message) -> bytes | None:
    """The hello's nonce; None when absent (a node older than version 3 sends none)."""
    nonce = message.get("nonce")
    if nonce is None:
        return None
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise MalformedFrame(f"hello: nonce must be {NONCE_BYTES} bytes")
    return nonce


def read_handshake(message: Message) -> bytes:
    noise = message.get("noise")
    if not isinstance(noise, bytes):
        raise MalformedFrame("handshake: noise must be bytes")
    return noise


def read_have(message: Message, *, forks: bool) -> Have:
    """``forks``: the negotiated version has fork points; before it they are ignored
    like any unknown key."""
    vector, end = message.get("vector"), message.get("end", False)
    if not isinstance(vector, list) or len(vector) > MAX_HAVE_ENTRIES:
        raise MalformedFrame(f"have: vector must be a list of at most {MAX_HAVE_ENTRIES} entries")
    if not isinstance(end, bool):
        raise MalformedFrame("have: end must be a boolean")
    points = message.get("forks") if forks else None
    if points is not None and (not isinstance(points, list) or len(points) > MAX_HAVE_ENTRIES):
        raise MalformedFrame(f"have: forks must be a list of at most {MAX_HAVE_ENTRIES} entries")
    return Have(
        [_have_entry(entry) for entry in vector], end, [_fork_entry(p) for p in points or ()]
    )


def read_events(message: Message) -> Events:
    author, raws = message.get("author"), message.get("events")
    if not isinstance(author, bytes) or len(author) != KEY_BYTES:
        raise MalformedFrame("events: author must be 32 bytes")
    if not isinstance(raws, list) or not raws or not all(isinstance(raw, bytes) for raw in raws):
        raise MalformedFrame("events: events must be a non-empty list of bytes")
    size = sum(len(raw) for raw in raws)
    if size > MAX_BATCH_BYTES:
        raise FrameTooLarge(f"events batch of {size} bytes, limit {MAX_BATCH_BYTES}")
    return Events(author, raws, size)


def read_evidence(message: Message) -> tuple[bytes, bytes]:
    """The two versions' wire bytes, not yet decoded."""
    raws = message.get("events")
    if not isinstance(raws, list) or len(raws) != 2 or not all(isinstance(r, bytes) for r in raws):
        raise MalformedFrame("evidence: events must be a list of two byte strings")
    return raws[0], raws[1]


def read_credit(message: Message) -> int:
    size = message.get("bytes")
    if type(size) is not int or not 1 <= size <= MAX_CREDIT_GRANT:
        raise MalformedFrame(f"credit: bytes must be 1..{MAX_CREDIT_GRANT}")
    return size


def read_error(message: Message) -> tuple[str, str]:
    """Code and reason, the reason cut to ``MAX_REASON_CHARS``."""
    code, reason = message.get("code"), message.get("reason", "")
    if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
        raise MalformedFrame("error: code must be [a-z0-9-], 1..64 chars")
    if not isinstance(reason, str):
        raise MalformedFrame("error: reason must be a string")
    return code, reason[:MAX_REASON_CHARS]


def show(value: object) -> str:
    """A short, safe rendering of a peer's value for an error reason."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _chunks(entries: list[list[object]]) -> list[list[list[object]]]:
    return [entries[i : i + MAX_HAVE_ENTRIES] for i in range(0, len(entries), MAX_HAVE_ENTRIES)]


def _fork_entry(entry: object) -> tuple[bytes, int]:
    if isinstance(entry, list) and len(entry) == 2:
        author, seq = entry
        if (
            isinstance(author, bytes)
            and len(author) == KEY_BYTES
            and type(seq) is int
            and 1 <= seq < (1 << 64)
        ):
            return author, seq
    raise MalformedFrame("have: each fork point is [author (32 bytes), seq >= 1]")


def _have_entry(entry: object) -> tuple[bytes, int, bytes]:
    if isinstance(entry, list) and len(entry) == 3:
        author, seq, head = entry
        if (
            isinstance(author, bytes)
            and len(author) == KEY_BYTES
            and type(seq) is int
            and 1 <= seq < (1 << 64)
            and isinstance(head, bytes)
            and len(head) == HASH_BYTES
        ):
            return author, seq, head
    raise MalformedFrame("have: each entry is [author (32 bytes), seq >= 1, head (32 bytes)]")
