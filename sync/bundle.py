"""Offline bundles: the same catch-up as a sync session, carried in a file.

A bundle holds the events one node has and another lacks, for a USB stick, an SD card
or an e-mail attachment. It is sealed with a key only members can derive from the group
secret, so a finder learns neither the group nor anything about its events; and every
event keeps its own signature, so importing checks authorship exactly as sync does (the
seal proves *a member* wrote the file; the signatures prove *who* wrote each event).
Byte layout and reasons: docs/decisions/0006-invites-and-bundles.md.

    header  = "POTLUCKB" | version (1 byte) | salt (16) | tag (16)
    tag     = BLAKE2b-128(key=secret, "potluck bundle tag v1" | salt)
    key     = BLAKE2b-256(key=secret, "potluck bundle key v1" | salt)
    chunk   = flags (1; bit 0 = final) | length (4, big-endian) | nonce (24) | sealed
    sealed  = XChaCha20-Poly1305(key, nonce, msgpack, ad = header | index (8) | flags)
    msgpack = {"author": key, "events": [wire bytes...]}  or, final: {"count": N}
              or, from version 2: {"evidence": [wire bytes, wire bytes]}

The chunk index and the final flag are sealed in, so chunks cannot be reordered,
dropped, moved between files, or cut off after any chunk without the import noticing
(the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, 2015, with random
nonces). Import streams one chunk (at most about 1 MiB) at a time and stores each
chunk before reading the next: what came before a damaged chunk stays imported.

Version 2 adds *fork evidence*: two versions of one (author, seq), as sync's
``evidence`` message carries them (docs/protocol.md §8a), one chunk each, after the
events. Without it a node that only ever meets bundles would keep showing a member who
equivocated, while the node that wrote the bundle had cut them off. A bundle with no
evidence to carry is still written as version 1, for older Potluck to read.

The *vector file* (``--since``) is what a node has, carried the other way so the
bundle holds only what is new: JSON ``{"<author hex>": <seq>, ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgpack
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from eventlog import events
from eventlog.errors import InvalidEvent, MalformedEvent, UsageError
from eventlog.identity import GROUP_SECRET_BYTES, Group, replace_durably
from sync.errors import BadEvidence
from sync.log import SyncLog

MAGIC = b"POTLUCKB"
FORMAT_VERSION = 1
EVIDENCE_VERSION = 2
"""The format of a bundle that carries fork evidence; read from this release on."""
READABLE_VERSIONS = (FORMAT_VERSION, EVIDENCE_VERSION)
SALT_BYTES = 16
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 1 + SALT_BYTES + TAG_BYTES
NONCE_BYTES = 24
MAC_BYTES = 16
FLAG_FINAL = 0x01
CHUNK_BYTES = 1 << 20
"""Most plaintext bytes in one chunk; the reader refuses a larger one unread."""
MAX_REASONS = 20
_READ_BATCH = 500
_TAG_CONTEXT = b"potluck bundle tag v1"
_KEY_CONTEXT = b"potluck bundle key v1"
_FRAME_HEAD = 1 + 4


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What ``export_bundle`` wrote."""

    events: int
    bytes: int
    authors: int
    evidence: int = 0  # forks proven (two versions of one event each)


@dataclass(slots=True)
class ImportResult:
    """What ``import_bundle`` did, in counts (a bundle may hold millions of events).

    ``stored``: new events now in the log (with any held earlier that they released).
    ``held``: events of the bundle now set aside in the log, waiting for an event they
    follow that is not here yet (sync or a later bundle brings it; they are then stored).
    ``rejected``: events refused (bad signature, not a member...); ``reasons`` says why
    for the first ``MAX_REASONS`` of them. ``forks``: (author, seq) equivocations seen,
    in the events or proven by the bundle's evidence. ``evidence``: proofs of a fork that
    were new here (a proof that does not hold is counted in ``rejected``).
    """

    stored: int = 0
    duplicates: int = 0
    held: int = 0
    rejected: int = 0
    forks: list[tuple[bytes, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    events: int = 0
    chunks: int = 0
    evidence: int = 0


class BundleDamaged(UsageError):
    """The file is cut short or altered from chunk ``chunk`` on (1-based). Everything
    before it was imported and stays: ``imported`` says what that was."""

    def __init__(self, message: str, chunk: int, imported: ImportResult) -> None:
        super().__init__(message)
        self.chunk = chunk
        self.imported = imported


# -- sealing (pure) --------------------------------------------------------------------


def _tag(secret: bytes, salt: bytes) -> bytes:
    return hashlib.blake2b(_TAG_CONTEXT + salt, digest_size=TAG_BYTES, key=secret).digest()


def _key(secret: bytes, salt: bytes) -> bytes:
    return hashlib.blake2b(_KEY_CONTEXT + salt, digest_size=32, key=secret).digest()


def _aad(header: bytes, index: int, flags: int) -> bytes:
    return header + index.to_bytes(8, "big") + bytes([flags])


class BundleSealer:
    """Writes a bundle's bytes for a group secret: ``header``, then one ``events_chunk``
    per author run, then ``end_chunk``. Pure; ``export_bundle`` does the file work."""

    def __init__(
        self, secret: bytes, salt: bytes | None = None, version: int = FORMAT_VERSION
    ) -> None:
        if len(secret) != GROUP_SECRET_BYTES:
            raise ValueError("a group secret is 32 bytes")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"no bundle format {version}")
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
        self.version = version
        self.header = MAGIC + bytes([version]) + salt + _tag(secret, salt)
        self._key = _key(secret, salt)
        self.index = 0
        self.count = 0

    def events_chunk(self, author: bytes, raws: Sequence[bytes]) -> bytes:
        """A chunk of one author's events (wire bytes, in seq order)."""
        self.count += len(raws)
        return self.seal(_packb({"author": author, "events": list(raws)}), final=False)

    def evidence_chunk(self, first: bytes, second: bytes) -> bytes:
        """A chunk proving a fork: two versions (wire bytes) of one (author, seq)."""
        if self.version < EVIDENCE_VERSION:
            raise ValueError("fork evidence needs bundle format 2")
        return self.seal(_packb({"evidence": [first, second]}), final=False)

    def end_chunk(self) -> bytes:
        """The last chunk: it says how many events came before it."""
        return self.seal(_packb({"count": self.count}), final=True)

    def seal(self, plaintext: bytes, *, final: bool) -> bytes:
        """The next chunk around ``plaintext`` (tests use it to build odd bundles)."""
        flags = FLAG_FINAL if final else 0
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, _aad(self.header, self.index, flags), nonce, self._key
        )
        self.index += 1
        return bytes([flags]) + len(sealed).to_bytes(4, "big") + nonce + sealed


def chunk_size(raws: Sequence[bytes]) -> int:
    """An upper bound of the plaintext size of an events chunk holding ``raws``."""
    return 64 + sum(len(raw) + 5 for raw in raws)


def _packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


# -- export ----------------------------------------------------------------------------


async def export_bundle(
    store: SyncLog, path: Path, since: Mapping[bytes, int] | None = None
) -> BundleInfo:
    """Write every event of ``store`` newer than ``since`` (author -> seq) to ``path``.

    Atomic: the bundle is written beside ``path``, flushed to the disk, then renamed,
    so ``path`` is either the old file or a whole new bundle, never half of one.
    """
    since = since or {}
    proofs = [
        proof
        for proof in [await store.fork_evidence(author) for author in await store.fork_points()]
        if proof is not None
    ]
    sealer = BundleSealer(
        store.group.secret, version=EVIDENCE_VERSION if proofs else FORMAT_VERSION
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    written = 0
    authors = 0
    try:
        file = await asyncio.to_thread(_create, tmp)
        try:
            written += await _write(file, sealer.header)
            for author, head in (await store.heads()).items():
                seq = since.get(author, 0) + 1
                if seq <= head.seq:
                    authors += 1
                pending: list[bytes] = []
                size = chunk_size(())
                while seq <= head.seq:
                    raws = await store.read_raw(author, seq, _READ_BATCH)
                    if not raws:
                        break
                    seq += len(raws)
                    for raw in raws:
                        if pending and size + len(raw) + 5 > CHUNK_BYTES:
                            written += await _write(file, sealer.events_chunk(author, pending))
                            pending, size = [], chunk_size(())
                        pending.append(raw)
                        size += len(raw) + 5
                if pending:
                    written += await _write(file, sealer.events_chunk(author, pending))
            for first, second in proofs:  # after the events, before the final chunk
                written += await _write(file, sealer.evidence_chunk(first, second))
            written += await _write(file, sealer.end_chunk())
            await asyncio.to_thread(os.fsync, file.fileno())
        finally:
            file.close()
        await asyncio.to_thread(replace_durably, tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(_write_problem(path, exc)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return BundleInfo(events=sealer.count, bytes=written, authors=authors, evidence=len(proofs))


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


async def _write(file: BinaryIO, data: bytes) -> int:
    await asyncio.to_thread(file.write, data)
    return len(data)


def _write_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk or USB stick is full; nothing was written"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: not allowed here (read-only?); nothing was written"
    if exc.errno == errno.ENOENT:
        return f"cannot write {path}: the folder {path.parent} does not exist"
    if exc.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder; give a file name"
    return f"cannot write {path}: {exc.strerror or exc}; nothing was written"


# -- import ----------------------------------------------------------------------------


def is_bundle_of(path: Path, group: Group) -> bool:
    """Whether the bundle at ``path`` was made for ``group``: reads the header only.

    Raises UsageError when ``path`` is not a bundle at all.
    """
    try:
        with path.open("rb") as file:
            head = file.read(HEADER_BYTES)
    except OSError as exc:
        raise UsageError(_read_problem(path, exc)) from None
    _check_header(path, head)
    return hmac.compare_digest(head[-TAG_BYTES:], _tag(group.secret, _salt(head)))


def _salt(header: bytes) -> bytes:
    return header[len(MAGIC) + 1 : len(MAGIC) + 1 + SALT_BYTES]


def _check_header(path: Path, head: bytes) -> None:
    if len(head) < len(MAGIC) or not head.startswith(MAGIC):
        empty = " (it is empty)" if not head else ""
        raise UsageError(f"{path} is not a Potluck bundle{empty}")
    if len(head) == len(MAGIC):
        raise UsageError(f"the bundle {path} is damaged: it ends inside its header")
    if head[len(MAGIC)] == 0:
        raise UsageError(f"the bundle {path} is damaged: its header is wrong")
    if head[len(MAGIC)] not in READABLE_VERSIONS:
        raise UsageError(
            f"the bundle {path} was made by a newer Potluck (bundle format "
            f"{head[len(MAGIC)]}): update Potluck on this device to import it"
        )
    if len(head) < HEADER_BYTES:
        raise UsageError(f"the bundle {path} is damaged: it ends inside its header")


def _read_problem(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no file {path}"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder, not a bundle file"
    return f"cannot read {path}: {exc.strerror or exc}"


async def import_bundle(store: SyncLog, path: Path) -> ImportResult:
    """Store the events of the bundle at ``path``; checked like events from a peer.

    Idempotent: importing the same bundle again stores nothing new. Raises UsageError
    for a file that is not a bundle, a newer format, or another group's bundle (nothing
    imported), and BundleDamaged (a UsageError) for a cut or altered file (what came
    before the damage is kept).
    """
    try:
        file = await asyncio.to_thread(path.open, "rb")
    except OSError as exc:
        raise UsageError(_read_problem(path, exc)) from None
    try:
        return await _import(store, path, file)
    finally:
        file.close()


async def _import(store: SyncLog, path: Path, file: BinaryIO) -> ImportResult:
    header = await _read(file, HEADER_BYTES)
    _check_header(path, header)
    secret = store.group.secret
    if not hmac.compare_digest(header[-TAG_BYTES:], _tag(secret, _salt(header))):
        raise UsageError(
            f"this bundle belongs to another group, not {store.group.name}: nothing was imported"
        )
    key = _key(secret, _salt(header))
    pending_before = await store.pending_count()
    result = ImportResult()

    async def damaged(index: int, reason: str) -> BundleDamaged:
        result.held = max(0, await store.pending_count() - pending_before)
        if index == result.chunks + 1:  # every chunk, end marker included, was fine
            message = (
                f"the bundle {path} has bytes after its end ({reason}): everything "
                f"in it was imported ({result.stored} new events)"
            )
        elif result.chunks:
            message = (
                f"the bundle is damaged at chunk {index + 1} ({reason}): nothing "
                f"after it was imported; what came before it was kept "
                f"({result.stored} new events, {result.duplicates} already here)"
            )
        else:
            message = f"the bundle is damaged at chunk {index + 1} ({reason}): nothing was imported"
        return BundleDamaged(message, index + 1, result)

    index = 0
    proofs = 0  # evidence chunks read, to name a refused one
    while True:
        head = await _read(file, _FRAME_HEAD)
        if len(head) < _FRAME_HEAD:
            raise await damaged(index, "the file ends before it")
        flags, length = head[0], int.from_bytes(head[1:], "big")
        if flags & ~FLAG_FINAL:
            raise await damaged(index, "it is not marked as a chunk")
        if not MAC_BYTES <= length <= CHUNK_BYTES + MAC_BYTES:
            raise await damaged(index, "its length is impossible")
        body = await _read(file, NONCE_BYTES + length)
        if len(body) < NONCE_BYTES + length:
            raise await damaged(index, "the file ends inside it")
        try:
            plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
                body[NONCE_BYTES:], _aad(header, index, flags), body[:NONCE_BYTES], key
            )
        except CryptoError:
            raise await damaged(
                index, "its bytes were changed, or chunks are out of order"
            ) from None
        try:
            content = msgpack.unpackb(plain, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises many types for bad input
            content = None
        if flags & FLAG_FINAL:
            if (
                not isinstance(content, dict)
                or set(content) != {"count"}
                or content["count"] != result.events
            ):
                raise await damaged(index, "its end marker does not match what came before")
            if await _read(file, 1):
                raise await damaged(index + 1, "perhaps two files were joined")
            break
        if (
            header[len(MAGIC)] >= EVIDENCE_VERSION
            and isinstance(content, dict)
            and set(content) == {"evidence"}
        ):
            proofs += 1
            if not await _import_evidence(store, content["evidence"], proofs, result):
                raise await damaged(index, "its contents are not understood")
            result.chunks += 1
            index += 1
            continue
        batch = _events_of(content, result)
        if batch is None:
            raise await damaged(index, "its contents are not understood")
        received = await store.receive(batch)
        result.stored += len(received.stored)
        result.duplicates += received.duplicates
        result.forks.extend(received.forks)
        for env, exc in received.rejected:
            _reject(result, f"{env.author.hex()[:12]}/{env.seq}", exc)
        result.chunks += 1
        index += 1
    result.held = max(0, await store.pending_count() - pending_before)
    return result


async def _import_evidence(store: SyncLog, raws: object, number: int, result: ImportResult) -> bool:
    """Keep the bundle's ``number``-th proof of a fork; False if the chunk is not two
    byte strings. A proof that does not hold (not two versions of one event, another
    group, a forged signature) is refused like a bad event and the import goes on."""
    if not (
        isinstance(raws, list) and len(raws) == 2 and all(isinstance(raw, bytes) for raw in raws)
    ):
        return False
    where = f"evidence {number}"
    try:
        first, second = events.decode(raws[0]), events.decode(raws[1])
        new = await store.record_evidence(first, second)
    except InvalidEvent as exc:
        _reject(result, where, exc)
        return True
    except ValueError as exc:  # record_evidence: not two versions of one event
        _reject(result, where, BadEvidence(str(exc)))
        return True
    if new:
        result.evidence += 1
        if (first.author, first.seq) not in result.forks:
            result.forks.append((first.author, first.seq))
    return True


def _events_of(content: object, result: ImportResult) -> list[events.Envelope] | None:
    """The envelopes of an events chunk; bad events are counted in ``result``."""
    if not isinstance(content, dict) or set(content) != {"author", "events"}:
        return None
    author, raws = content["author"], content["events"]
    if not isinstance(author, bytes) or not isinstance(raws, list):
        return None
    batch: list[events.Envelope] = []
    for raw in raws:
        result.events += 1
        try:
            if not isinstance(raw, bytes):
                raise MalformedEvent("an event is not bytes")
            env = events.decode(raw)
            if env.author != author:
                raise MalformedEvent("the event's author is not its chunk's author")
        except InvalidEvent as exc:
            _reject(result, f"event {result.events}", exc)
            continue
        batch.append(env)
    return batch


def _reject(result: ImportResult, where: str, exc: InvalidEvent | BadEvidence) -> None:
    result.rejected += 1
    if len(result.reasons) < MAX_REASONS:
        result.reasons.append(f"{where}: {exc.code}: {exc}")


async def _read(file: BinaryIO, n: int) -> bytes:
    data: bytes = await asyncio.to_thread(file.read, n)
    return data


# -- vector files ----------------------------------------------------------------------


async def write_vector_file(store: SyncLog, path: Path) -> dict[bytes, int]:
    """Write what ``store`` has (author -> seq) to ``path``, atomically; return it.

    Carry the file to a node that has more, export a bundle there with ``since`` read
    from it, and carry the bundle back: it holds only what this node lacks.
    """
    vector = {author: seq for author, (seq, _) in (await store.vector()).items()}
    text = (
        json.dumps({author.hex(): seq for author, seq in sorted(vector.items())}, indent=1) + "\n"
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        await asyncio.to_thread(_write_small, tmp, text.encode("utf-8"))
        await asyncio.to_thread(replace_durably, tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(_write_problem(path, exc)) from None
    return vector


def _write_small(path: Path, data: bytes) -> None:
    with _create(path) as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def read_vector_file(path: Path) -> dict[bytes, int]:
    """The vector in ``path`` (JSON ``{"<author hex>": seq}``); UsageError if it is not
    one, naming the first bad entry."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(_read_problem(path, exc)) from None
    what = (
        f"{path} is not a vector file (it should hold JSON like "
        '{"<64 hex digits>": <number>, ...})'
    )
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(what) from None
    if not isinstance(fields, dict):
        raise UsageError(what)
    vector: dict[bytes, int] = {}
    for name, seq in fields.items():
        try:
            author = bytes.fromhex(name)
        except ValueError:
            author = b""
        if len(author) != 32 or len(name) != 64:
            raise UsageError(f"{what}: '{name[:70]}' is not an author key")
        if type(seq) is not int or seq < 0:
            raise UsageError(f"{what}: the count of {name[:12]} is not a whole number")
        vector[author] = seq
    return vector
