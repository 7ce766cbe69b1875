"""A helper process that signs a long run of this node's new events while the
database thread stores and folds the ones already signed.

Why a process: each event's ``prev`` is the hash of the signed event before it
(decision 0007), so one run is signed in order, but nothing makes the database wait
for it. A thread cannot take that work: signing and SQLite both need the GIL between
their C calls, and a signer thread made every insert wait for it (decision 0010). On
the two cores of an old laptop the process signs while the database thread works.

The parent starts it (``python -m node.signer``) on the first large append, and sends
the device key's 32-byte seed down the pipe, never on a command line or to a file.
Frames both ways are a 4-byte big-endian length, then msgpack:

- parent to child, first: the seed (bin 32); the child answers ``b"R"`` once ready;
- parent to child, a run: ``[group, prev or nil, [[seq, hlc, type, body, deps], ...]]``;
- child to parent: chunks of ``[[sig, raw], ...]``, growing from ``FIRST_CHUNK`` events
  to ``MAX_CHUNK``, until the run is signed.

The child signs with ``events.seal``, the same function the parent uses, so the bytes
are the ones the parent would have made. The parent checks each chunk still (every
raw names the prev it should, the last signature verifies) and, on any trouble with the
child, signs the rest of the run itself: a broken helper makes appends slower, never
wrong. The child exits when its input closes, so it never outlives its node.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

import msgpack
from nacl.signing import SigningKey

from node import events
from node.errors import PotluckError
from node.events import Envelope, Unsigned

FIRST_CHUNK = 64
"""Events in the first chunk back: the database waits for these alone."""
MAX_CHUNK = 128
"""Chunks double up to this and stay there: the database stores and folds a chunk in
about the time the child signs the next, so small chunks keep both busy and leave the
database little to do after the last (chunks of 512 left it 11 ms a batch)."""
MIN_RUN = 256
"""Shorter runs are signed in place: the round trip would cost more than it hides."""
AVAILABLE = os.name == "posix"
"""Where pipes can be polled (``select``) and widened; elsewhere every run is signed
in place."""
PIPE_BYTES = 1 << 20
"""The child's answers a pipe holds unread: a few chunks of MAX_CHUNK (~350 KB each)."""
_LENGTH = struct.Struct(">I")
_PREV_ENTRY = b"\xa4prev\xc4\x20"  # "prev" then the header of 32 bytes of bin 8
_READY = b"R"


class SignerFailed(Exception):
    """The helper process died, answered nonsense or signed what was not asked."""


def _write_frame(out: IO[bytes], value: object) -> None:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    out.write(_LENGTH.pack(len(data)) + data)
    out.flush()


def _read_exactly(inp: IO[bytes], n: int) -> bytes:
    data = inp.read(n)
    if data is None or len(data) != n:
        raise EOFError
    return bytes(data)


def _read_frame(inp: IO[bytes]) -> object:
    (length,) = _LENGTH.unpack(_read_exactly(inp, _LENGTH.size))
    return msgpack.unpackb(_read_exactly(inp, length), raw=False)


class Signer:
    """The parent's side: one helper process signing for one device key."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "node.signer"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        self._ready = False
        _widen(self._out)
        try:
            _write_frame(self._in, key.encode())
        except OSError:
            self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None

    def ready(self) -> bool:
        """True once the child has started; never waits (it takes ~0.1 s to start,
        and the append that started it signs in place meanwhile)."""
        if self._ready or self._proc is None:
            return self._ready
        readable, _, _ = select.select([self._out], [], [], 0)
        if readable:
            if self._out.read(1) == _READY:
                self._ready = True
            else:
                self.close()
        return self._ready

    def sign(self, group: bytes, prev: bytes | None,
             run: Sequence[Unsigned]) -> Iterator[list[Envelope]]:
        """Signed envelopes of ``run`` after ``prev``, in chunks, as the child signs
        them. Raises SignerFailed (and stops the child) on any trouble; a caller that
        stops early also stops it, since its unread answers would confuse the next."""
        if self._proc is None:
            raise SignerFailed("the signing process is not running")
        author = bytes(self.key.verify_key)
        done = 0
        try:
            _write_frame(self._in, [group, prev, [[e.seq, e.hlc, e.type, e.body, list(e.deps)]
                                                  for e in run]])
            while done < len(run):
                answer = _read_frame(self._out)
                if not isinstance(answer, list) or not answer:
                    raise SignerFailed("the signing process answered nonsense")
                chunk = self._check(group, author, prev, run[done:done + len(answer)], answer)
                done += len(chunk)
                prev = chunk[-1].hash
                yield chunk
        except (OSError, EOFError, ValueError, TypeError, msgpack.UnpackException,
                PotluckError) as exc:
            self.close()
            raise SignerFailed(f"the signing process failed: {exc}") from None
        finally:
            if done < len(run):
                self.close()

    def _check(self, group: bytes, author: bytes, prev: bytes | None,
               asked: Sequence[Unsigned], answer: list[object]) -> list[Envelope]:
        """Envelopes of the child's answer, if it signed exactly what was asked."""
        if len(answer) > len(asked):
            raise SignerFailed("the signing process signed more than it was asked")
        chunk: list[Envelope] = []
        for event, item in zip(asked, answer, strict=False):
            if not (isinstance(item, list) and len(item) == 2
                    and all(isinstance(part, bytes) for part in item)):
                raise SignerFailed("the signing process answered nonsense")
            sig, raw = item
            if prev is not None and _PREV_ENTRY + prev not in raw:
                raise SignerFailed("the signing process broke the chain")
            env = events.sealed(group, author, prev, event, sig, raw)
            chunk.append(env)
            prev = env.hash
        # The last one in full: decoded, compared and its signature verified. With
        # every prev checked above, that signature covers the whole chunk.
        last, event = chunk[-1], asked[len(chunk) - 1]
        decoded = events.decode(last.raw)
        if ((decoded.author, decoded.group, decoded.seq, decoded.hlc, decoded.type,
             decoded.deps, decoded.prev)
                != (author, group, event.seq, event.hlc, event.type, event.deps, last.prev)
                or events.pack(decoded.body) != events.pack(event.body)):
            raise SignerFailed("the signing process signed something else")
        events.verify_signature(decoded)
        return chunk

    def close(self) -> None:
        """Stop the child: closing its input ends it; a stuck one is killed."""
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _widen(pipe: IO[bytes]) -> None:
    """Let the pipe hold PIPE_BYTES: with Linux's default 64 KiB, the child stopped
    signing at every chunk until the parent, busy storing the one before, read it."""
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl  # Linux only, and at most /proc/sys/fs/pipe-max-size

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child: sign runs until the parent closes the pipe."""
    seed = _read_frame(inp)
    if not isinstance(seed, bytes):
        raise SystemExit("potluck signer: expected a key")
    key = SigningKey(seed)
    out.write(_READY)
    out.flush()
    while True:
        try:
            request = _read_frame(inp)
        except EOFError:
            return
        assert isinstance(request, list) and len(request) == 3
        group: bytes = request[0]
        prev: bytes | None = request[1]
        run: list[list[Any]] = request[2]
        chunk: list[list[bytes]] = []
        size = FIRST_CHUNK
        for seq, hlc, type_, body, deps in run:
            event = Unsigned(seq, hlc, type_, body, tuple(deps))
            sig, raw = events.seal(key, group, prev, event)
            chunk.append([sig, raw])
            prev = events.blake2b256(raw)
            if len(chunk) == size:
                _write_frame(out, chunk)
                chunk, size = [], min(size * 2, MAX_CHUNK)
        if chunk:
            _write_frame(out, chunk)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides when this one ends,
    # by closing the pipe, so that a run it is storing is never cut short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
