"""Errors of the node, as a tree.

Why a tree: callers decide by branch. A peer or a file that breaks the rules raises an
``InvalidEvent`` (the connection or import is refused, nothing is stored); a person who
asks for something that cannot be done raises a ``UsageError`` (one line on stderr).

    PotluckError
    ├── InvalidEvent              the event breaks a rule of docs/events.md §validity
    │   ├── MalformedEvent        not canonical msgpack / wrong field types
    │   ├── OversizedEvent        larger than MAX_EVENT_BYTES
    │   ├── UnknownGroup          event of another group
    │   ├── BadSignature          Ed25519 signature does not verify
    │   ├── SeqGap                seq does not continue the author's chain
    │   ├── PrevMismatch          prev is not the hash of the author's previous event
    │   ├── HlcRegression         hlc not above prev and every dep
    │   ├── NotAMember            author never joined the group with a valid proof
    │   └── InvalidBody           a body field is missing or bad (names the field)
    ├── UsageError                local misuse: bad argument, unknown id, no node here
    │   ├── NotFound              no entity matches the id or slug
    │   └── AmbiguousId           a prefix matches more than one entity
    └── StorageError              the disk failed us (full, read-only, corrupt)
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args


class PotluckError(Exception):
    """Root of every error Potluck raises on purpose."""


class InvalidEvent(PotluckError):
    """An event breaks a validity rule; ``code`` is stable and used on the wire."""

    code = "invalid-event"


class MalformedEvent(InvalidEvent):
    code = "malformed-event"


class OversizedEvent(InvalidEvent):
    code = "oversized-event"


class UnknownGroup(InvalidEvent):
    code = "unknown-group"


class BadSignature(InvalidEvent):
    code = "bad-signature"


class SeqGap(InvalidEvent):
    code = "seq-gap"


class PrevMismatch(InvalidEvent):
    code = "prev-mismatch"


class HlcRegression(InvalidEvent):
    code = "hlc-regression"


class NotAMember(InvalidEvent):
    code = "not-a-member"


BodyProblem: TypeAlias = Literal[
    "not-a-map",
    "required",
    "not-text",
    "too-long",
    "control-character",
    "not-a-slug",
    "not-a-language-tag",
    "not-a-positive-integer",
    "not-a-non-negative-integer",
    "not-a-non-zero-integer",
    "out-of-range",
    "bad-hours",
    "not-a-choice",
    "bad-date",
    "bad-datetime",
    "bad-bytes",
    "not-a-list",
    "too-many-items",
    "repeated-item",
    "bad-version",
    "newer-version",
    "mixed-timezones",
    "end-before-start",
]
"""What can be wrong with a body field: stable names a reader (the web) can translate."""

BODY_PROBLEMS: tuple[str, ...] = get_args(BodyProblem)


class InvalidBody(InvalidEvent):
    """A body field is wrong; the message starts with the field's name.

    Besides the English message (what the CLI prints), the error carries its meaning as
    values, so a reader can say it in another language without parsing English:
    ``field`` (the body field), ``problem`` (one of ``BODY_PROBLEMS``) and ``params``
    (the numbers and texts the message names). ``code`` stays "invalid-body": it is the
    wire code of every body error.
    """

    code = "invalid-body"

    def __init__(self, field: str, problem: BodyProblem, text: str, /, **params: object) -> None:
        """``text`` is the English message after the field, a ``str.format`` template
        filled from ``params``; the same values go to translators."""
        super().__init__(f"{field}: {text.format(**params)}")
        self.field = field
        self.problem: BodyProblem = problem
        self.params: dict[str, object] = params


class UsageError(PotluckError):
    """The person asked for something that cannot be done; nothing was written."""


class NotFound(UsageError):
    pass


class AmbiguousId(UsageError):
    pass


class StorageError(PotluckError):
    """The database could not be written or read (disk full, read-only, corrupt)."""
