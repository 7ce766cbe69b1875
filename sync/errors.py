"""Errors of sync, as a tree.

Why a tree: a peer that breaks docs/protocol.md (``ProtocolError``) ends that one
connection with a stable ``code`` that travels in the error frame; this side calling
the API wrongly (``LocalProtocolError``) is a bug in the driver and must not be
blamed on the peer. Codes are listed in docs/protocol.md §errors.

    PotluckError                      (node.errors)
    └── SyncError
        ├── ProtocolError             the connection ends; ``code``, ``reason``
        │   ├── VersionMismatch       version-mismatch: no protocol version in common
        │   ├── HandshakeFailed       handshake-failed: wrong group secret or bad key proof
        │   ├── FrameTooLarge         frame-too-large: frame or batch over its limit
        │   ├── DecryptFailed         decrypt-failed: flipped bit, replay, reorder, wrong key
        │   ├── MalformedFrame        malformed-frame: not msgpack, or a field is wrong
        │   ├── UnknownMessage        unknown-message: message type not in this version
        │   ├── UnexpectedMessage     unexpected-message: not allowed in this state
        │   ├── CreditExceeded        credit-exceeded: more event bytes than granted
        │   ├── RateLimited           rate-limit: over a per-peer rate for too long
        │   ├── CreditTimeout         credit-timeout: our queued events got no credit
        │   ├── HandshakeTimeout      handshake-timeout: no handshake and vector in time
        │   ├── EventRejected         an event of a batch is invalid: its InvalidEvent code
        │   ├── BadEvidence           bad-evidence: an evidence message's versions are no fork
        │   ├── PeerNotAMember        not-a-member: the peer's device key never joined
        │   ├── ConnectionLost        connection-lost: end of stream before both byes
        │   └── RemoteError           the peer sent an error frame: the peer's code
        └── LocalProtocolError        this side used the API wrongly; nothing was sent
"""

from __future__ import annotations

from eventlog.errors import InvalidEvent, PotluckError


class SyncError(PotluckError):
    """Root of every error sync/ raises on purpose."""


class ProtocolError(SyncError):
    """The connection cannot go on. ``code`` is stable and sent on the wire."""

    code = "protocol-error"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class VersionMismatch(ProtocolError):
    code = "version-mismatch"


class HandshakeFailed(ProtocolError):
    """The peer did not prove the group secret and its device key; it learnt nothing."""

    code = "handshake-failed"


class FrameTooLarge(ProtocolError):
    code = "frame-too-large"


class DecryptFailed(ProtocolError):
    code = "decrypt-failed"


class MalformedFrame(ProtocolError):
    code = "malformed-frame"


class UnknownMessage(ProtocolError):
    code = "unknown-message"


class UnexpectedMessage(ProtocolError):
    """A known message in a state that does not allow it; the reason names the state."""

    code = "unexpected-message"


class CreditExceeded(ProtocolError):
    code = "credit-exceeded"


class RateLimited(ProtocolError):
    """The peer stayed over a per-peer rate (frames, events, bytes per second) after
    being throttled, or one frame was far beyond it (sync/limits.py)."""

    code = "rate-limit"


class CreditTimeout(ProtocolError):
    """Our events waited for the peer's credit longer than the credit timeout."""

    code = "credit-timeout"


class HandshakeTimeout(ProtocolError):
    """The peer did not finish the handshake and send its vector in time."""

    code = "handshake-timeout"


class HaveLimit(ProtocolError):
    """The peer's ``have`` messages went beyond what a session holds (sync/limits.py)."""

    code = "have-limit"


class EventRejected(ProtocolError):
    """An event of a received batch breaks a rule; ``code`` is the InvalidEvent's code."""

    def __init__(self, cause: InvalidEvent) -> None:
        super().__init__(str(cause), code=cause.code)
        self.cause = cause


class BadEvidence(ProtocolError):
    """An ``evidence`` message whose two versions, each valid, do not prove a fork: the
    same event twice, or two authors, or two seqs (docs/protocol.md §evidence). A
    version that is itself invalid is refused with its event's code instead."""

    code = "bad-evidence"


class PeerNotAMember(ProtocolError):
    """The peer's device key has no ``member.joined`` with a valid membership proof: not
    in our log, and none (or a false one) presented in the handshake (docs/protocol.md
    §members). Holding the group secret is not enough to be a session's peer."""

    code = "not-a-member"


class ConnectionLost(ProtocolError):
    code = "connection-lost"


class RemoteError(ProtocolError):
    """The peer ended the connection with an error frame; ``code`` is the peer's."""


class LocalProtocolError(SyncError):
    """This side called the protocol API wrongly (a driver bug); nothing was sent."""
