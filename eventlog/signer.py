"""A helper process that signs a long run of this node's new events while the
database thread stores and folds the ones already signed.

Why a process: each event's ``prev`` is the hash of the signed event before it
(decision 0007), so one run is signed in order, but nothing makes the database wait
for it. A thread cannot take that work: signing and SQLite both need the GIL between
their C calls, and a signer thread made every insert wait for it (decision 0010). On
the two cores of an old laptop the process signs while the database thread works.

The parent starts it (``python -P -m eventlog.signer``, its own package first on the
path) on the first large append, and sends the device key's 32-byte seed down the pipe,
never on a command line or to a file. Frames both ways are a 4-byte big-endian length,
then msgpack:

- parent to child, first: the seed (bin 32); the child answers ``"ready"``;
- parent to child, a run: ``[group, prev or nil]``, then parts of up to ``PART``
  events ``[[seq, hlc, type, body, deps], ...]`` as the parent makes them, then nil;
- child to parent, once it has read the whole run: chunks of wire bytes ``[raw, ...]``,
  growing from ``FIRST_CHUNK`` events to ``MAX_CHUNK``, until the run is signed.

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
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import msgpack
from nacl.signing import SigningKey

from eventlog import events
from eventlog.errors import PotluckError
from eventlog.events import Envelope, Unsigned

FIRST_CHUNK = 64
"""Events in the first chunk back: the database waits for these alone."""
MAX_CHUNK = 128
"""Chunks double up to this and stay there: the database stores and folds a chunk in
about the time the child signs the next, so small chunks keep both busy and leave the
database little to do after the last (chunks of 512 left it 11 ms a batch)."""
PART = 64
"""Events in each frame of a run sent to the child."""
MIN_RUN = 256
"""Shorter runs are signed in place: the round trip would cost more than it hides."""
AVAILABLE = os.name == "posix"
"""Where pipes can be polled (``select``) and widened; elsewhere every run is signed
in place."""
PIPE_BYTES = 1 << 20
"""The child's answers a pipe holds unread: a few chunks of MAX_CHUNK (~350 KB each)."""
_LENGTH = struct.Struct(">I")
_PREV_ENTRY = b"\xa4prev\xc4\x20"  # "prev" then the header of 32 bytes of bin 8
_READY = "ready"
ANSWER_SECONDS = 30.0
"""The longest the parent waits for the next chunk before it signs the rest itself."""


class SignerFailed(Exception):
    """The helper process died, answered nonsense or signed what was not asked."""


def _write_frame(out: IO[bytes], value: object) -> None:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    out.write(_LENGTH.pack(len(data)) + data)
    out.flush()


class Signer:
    """The parent's side: one helper process signing for one device key."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.worked = False  # it has been ready once: worth starting again if it dies
        self._ready = False
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            # the same Potluck as this process: its own directory first on the path,
            # and -P so that the current directory (which may hold another "eventlog")
            # is not
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "eventlog.signer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=child_env(),
            )
        except OSError:  # no interpreter to start (a frozen build): sign in place
            return
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin
        self._out = _Frames(self._proc.stdout.fileno())
        _widen(self._in)
        _widen(self._proc.stdout)
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
        try:
            hello = self._out.next(wait=False)
        except (OSError, EOFError, ValueError, msgpack.UnpackException):
            hello = None
        if hello == _READY:
            self._ready = self.worked = True
        elif hello is not _NOTHING:
            self.close()
        return self._ready

    def sign(
        self, group: bytes, prev: bytes | None, run: Iterable[Unsigned], asked: list[Unsigned]
    ) -> Generator[list[Envelope], None, None]:
        """Signed envelopes of ``run`` after ``prev``, in chunks, as the child signs
        them. ``run`` is sent PART events at a time as it is produced, so the child
        signs the first while the caller prepares the rest; each event taken is added
        to ``asked``, so a caller can sign itself what comes after the chunks it got.
        Raises SignerFailed (and stops the child) on any trouble; a caller that stops
        early also stops it, since its unread answers would confuse the next."""
        if self._proc is None:
            raise SignerFailed("the signing process is not running")
        author = bytes(self.key.verify_key)
        start = len(asked)
        done = start
        try:
            self._send([group, prev])
            part: list[list[object]] = []
            for event in run:  # what goes wrong making the run is the caller's to see
                asked.append(event)
                part.append([event.seq, event.hlc, event.type, event.body, list(event.deps)])
                if len(part) == PART:
                    self._send(part)
                    part = []
            if part:
                self._send(part)
            self._send(None)  # the end of the run
            while done < len(asked):
                chunk = self._receive(group, author, prev, asked[done:])
                done += len(chunk)
                prev = chunk[-1].hash
                yield chunk
        finally:
            if done < len(asked) or done == start:
                self.close(kill=True)

    def _send(self, value: object) -> None:
        try:
            _write_frame(self._in, value)
        except (OSError, ValueError) as exc:  # a closed or broken pipe
            self.close(kill=True)
            raise SignerFailed(f"the signing process is gone: {exc}") from None

    def _receive(
        self, group: bytes, author: bytes, prev: bytes | None, asked: Sequence[Unsigned]
    ) -> list[Envelope]:
        """The next chunk, checked; SignerFailed (and the child stopped) otherwise,
        also when none comes within ANSWER_SECONDS: a stopped child must not hold the
        log's write lock for ever."""
        try:
            answer = self._out.next(wait=True, timeout=ANSWER_SECONDS)
            if not isinstance(answer, list) or not answer:
                raise SignerFailed("the signing process answered nonsense")
            return self._check(group, author, prev, asked, answer)
        except (
            OSError,
            EOFError,
            ValueError,
            TypeError,
            msgpack.UnpackException,
            PotluckError,
            SignerFailed,
            TimeoutError,
        ) as exc:
            self.close(kill=True)
            if isinstance(exc, SignerFailed):
                raise
            raise SignerFailed(f"the signing process failed: {exc}") from None

    def _check(
        self,
        group: bytes,
        author: bytes,
        prev: bytes | None,
        asked: Sequence[Unsigned],
        answer: list[object],
    ) -> list[Envelope]:
        """Envelopes of the child's answer, if it signed exactly what was asked."""
        if len(answer) > len(asked):
            raise SignerFailed("the signing process signed more than it was asked")
        chunk: list[Envelope] = []
        for event, raw in zip(asked, answer, strict=False):
            if type(raw) is not bytes:
                raise SignerFailed("the signing process answered nonsense")
            if prev is not None and _PREV_ENTRY + prev not in raw:
                raise SignerFailed("the signing process broke the chain")
            env = events.sealed(group, author, prev, event, raw)
            chunk.append(env)
            prev = env.hash
        # The last one in full: decoded, compared and its signature verified. With
        # every prev checked above, that signature covers the whole chunk.
        last, event = chunk[-1], asked[len(chunk) - 1]
        decoded = events.decode(last.raw)
        if (
            decoded.author,
            decoded.group,
            decoded.seq,
            decoded.hlc,
            decoded.type,
            decoded.deps,
            decoded.prev,
            decoded.sig,
        ) != (
            author,
            group,
            event.seq,
            event.hlc,
            event.type,
            event.deps,
            last.prev,
            last.sig,
        ) or events.pack(decoded.body) != events.pack(event.body):
            raise SignerFailed("the signing process signed something else")
        events.verify_signature(decoded)
        return chunk

    def close(self, *, kill: bool = False) -> None:
        """Stop the child: closing its input ends it; a stuck one is killed, and so is
        one given up on in the middle of a run (``kill``)."""
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        if kill and proc.poll() is None:
            proc.kill()  # it may be stuck, or blocked writing answers nobody will read
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


def child_env() -> dict[str, str]:
    """This environment, with the directory holding this ``eventlog`` package first on
    PYTHONPATH (a checkout run without installing, or an older tree under test)."""
    env = dict(os.environ)
    home = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [home, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


def _widen(pipe: IO[bytes]) -> None:
    """Let the pipe hold PIPE_BYTES: with Linux's default 64 KiB, the child stopped
    signing at every chunk until the parent, busy storing the one before, read it."""
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl  # Linux only, and at most /proc/sys/fs/pipe-max-size

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Frames:
    """Frames read from a pipe's descriptor, with a look that never waits: the child
    takes in the parts of a run while it signs the ones already there."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def next(self, wait: bool, timeout: float | None = None) -> object:
        """The next frame; _NOTHING if ``wait`` is false and none has fully arrived.
        Raises TimeoutError if ``wait`` and no byte comes for ``timeout`` seconds."""
        while True:
            if len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                end = _LENGTH.size + length
                if len(self._buffer) >= end:
                    frame = msgpack.unpackb(bytes(self._buffer[_LENGTH.size : end]), raw=False)
                    del self._buffer[:end]
                    return frame
            if not wait and not select.select([self._fd], [], [], 0)[0]:
                return _NOTHING
            if wait and timeout is not None and not select.select([self._fd], [], [], timeout)[0]:
                raise TimeoutError(f"no answer in {timeout:.0f} s")
            data = os.read(self._fd, PIPE_BYTES)
            if not data:
                raise EOFError
            self._buffer += data


_NOTHING = object()
_LOOK_EVERY = 16
"""Events signed between looks for more of the run (a look is a system call)."""


def serve(inp: int, out: IO[bytes]) -> None:
    """The child: sign runs until the parent closes the pipe.

    Nothing is written back until the whole run has been read: the parent writes all
    of it before it reads, so neither side can wait on a full pipe for the other."""
    frames = _Frames(inp)
    seed = frames.next(wait=True)
    if not isinstance(seed, bytes):
        raise SystemExit("potluck signer: expected a key")
    key = SigningKey(seed)
    _write_frame(out, _READY)
    while True:
        try:
            header = frames.next(wait=True)
        except EOFError:
            return
        assert isinstance(header, list) and len(header) == 2
        group: bytes = header[0]
        prev: bytes | None = header[1]
        queue: deque[list[Any]] = deque()
        ended = False
        signed: list[list[bytes]] = []  # chunks not yet written
        chunk: list[bytes] = []
        size = FIRST_CHUNK
        while queue or not ended:
            if not ended and (not queue or len(chunk) % _LOOK_EVERY == 0):
                part = frames.next(wait=not queue)
                if part is None:
                    ended = True
                elif part is not _NOTHING:
                    assert isinstance(part, list)
                    queue.extend(part)
                    continue
            if not queue:
                continue
            seq, hlc, type_, body, deps = queue.popleft()
            raw = events.seal(key, group, prev, Unsigned(seq, hlc, type_, body, tuple(deps)))
            chunk.append(raw)
            prev = events.blake2b256(raw)
            if len(chunk) == size:
                signed.append(chunk)
                chunk, size = [], min(size * 2, MAX_CHUNK)
            if ended:
                for ready in signed:
                    _write_frame(out, ready)
                signed = []
        if chunk:
            signed.append(chunk)
        for ready in signed:
            _write_frame(out, ready)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides when this one ends,
    # by closing the pipe, so that a run it is storing is never cut short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.fileno(), sys.stdout.buffer)
