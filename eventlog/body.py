"""Typed event bodies: each event ``type`` as a frozen, validated value (version 1).

The envelope (eventlog/events.py) carries ``type``, a stable wire name such as
``"offer.posted"``, and ``body``, a msgpack map. Each known type has one class here, a
``@dataclass(frozen=True, kw_only=True, slots=True)`` with a past-tense name
(``OfferPosted``), the wire name in ``TYPE`` and the body version in ``VERSION``.
``Cls.from_body(map)`` validates and builds; ``value.to_body()`` gives the map to sign.
``parse(type, map)`` picks the class by wire name.

Contract of a body map:

- Every field is checked when a value is built, whether decoded from a peer or made
  locally by the CLI, so an invalid body can never be signed. Any problem raises
  ``InvalidBody(field, problem)`` naming the field. Text is stripped, datetimes and
  hours are normalised, so ``from_body(x.to_body()) == x`` for every valid ``x``.
- A field whose default is ``None`` is optional: ``to_body`` omits it when it is None,
  and an absent key (or nil) decodes to None. Other defaults (``category="general"``,
  ``urgency="normal"``) are conveniences for Python callers only: the map always
  carries those fields and decoding requires them.
- Unknown keys are ignored. A newer writer of the same version may add *optional*
  fields; older nodes must still read the rest of the event. Anything an older reader
  would misread (a new required field, a changed meaning, a new choice value) needs a
  new version.
- Unknown types are not errors: ``parse`` returns None, because a node stores and
  relays events it does not understand and projections skip them.

Versions. A body without the key ``"_v"`` is version 1, so version-1 bodies never
carry it (``"_v": 1`` is refused: one spelling per body). When a type changes shape,
bump its ``VERSION`` to 2; ``to_body`` then writes ``"_v": 2``, and register one small
step that turns a version-1 map into a version-2 map::

    @upcaster("offer.posted", 1)
    def upcast_v1_v2(body: dict[str, object]) -> dict[str, object]:
        body["pickup"] = body.pop("location", None)
        return body

Decoding runs the chain of steps ``(TYPE, v) -> v + 1`` from the body's version up to
the class's ``VERSION`` on the raw map, then validates the result as the current
version, so the class only ever knows its newest shape. A body whose ``"_v"`` is newer
than this node's class raises ``InvalidBody("_v", ...)``: the node cannot read it.
No upcasters exist yet; ``UPCASTERS`` is the registry, keyed by (TYPE, from_version).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import (
    Annotated,
    ClassVar,
    Literal,
    Self,
    TypeAlias,
    get_args,
    get_type_hints,
)

from eventlog.errors import BodyProblem, InvalidBody

MAX_AMOUNT = 1_000_000_000
MAX_SLOTS = 1000
MAX_LANGUAGES = 10
ID_BYTES = 32
VERSION_KEY = "_v"

LocationKind: TypeAlias = Literal["pantry", "fridge", "kitchen", "home", "hub", "other"]
Storage: TypeAlias = Literal["ambient", "fridge", "freezer"]
StockReason: TypeAlias = Literal["donation", "distribution", "spoilage", "transfer", "correction"]
Urgency: TypeAlias = Literal["low", "normal", "urgent"]

LOCATION_KINDS: tuple[str, ...] = get_args(LocationKind)
STORAGES: tuple[str, ...] = get_args(Storage)
STOCK_REASONS: tuple[str, ...] = get_args(StockReason)
URGENCIES: tuple[str, ...] = get_args(Urgency)


# --- field kinds -----------------------------------------------------------------
# Each kind checks one wire value and returns it normalised; the classes below name
# their kind in the field's annotation: ``title: Annotated[str, _TITLE]``.


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one kind of field is checked: ``check(field, value)`` -> normalised value."""

    check: Callable[[str, object], object]


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# C0 and C1 controls (Unicode category Cc) and lone surrogates (not encodable as UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _text(max_chars: int, *, empty: bool = False, lines: bool = False) -> _Kind:
    """Stripped text of at most ``max_chars`` code points, without control characters.

    ``lines`` allows newlines (long descriptions); ``empty`` allows "".
    """
    control = _CONTROL_BUT_NEWLINE if lines else _CONTROL

    def check(field: str, value: object) -> str:
        if not isinstance(value, str):
            raise InvalidBody(field, "not-text", "must be text, got {got}", got=_show(value))
        text = value.strip()
        if not text and not empty:
            raise InvalidBody(field, "required", "must not be empty")
        if len(text) > max_chars:
            raise InvalidBody(
                field,
                "too-long",
                "must be at most {max} characters, got {n}",
                max=max_chars,
                n=len(text),
            )
        bad = control.search(text)
        if bad is not None:
            raise InvalidBody(
                field,
                "control-character",
                "must not contain control character U+{char}",
                char=f"{ord(bad.group()):04X}",
            )
        return text

    return _Kind(check)


def _pattern(regex: str, what: str, problem: BodyProblem) -> _Kind:
    """Text matching ``regex`` exactly, kept as is."""
    compiled = re.compile(regex)

    def check(field: str, value: object) -> str:
        if not isinstance(value, str) or compiled.fullmatch(value) is None:
            raise InvalidBody(
                field, problem, "must be {what}, got {got}", what=what, got=_show(value)
            )
        return value

    return _Kind(_remembered(check))


REMEMBERED = 4096
"""Valid texts each remembering kind keeps (then it starts again)."""


def _remembered(check: Callable[[str, object], str]) -> Callable[[str, object], object]:
    """``check`` that remembers the texts it accepted: slugs and dates repeat on almost
    every event (the same items, places and days), so the regex and calendar parse run
    once per text rather than once per event (with the one-pass ``from_body``, parsing
    a stored body went from 2.9 to 1.9 µs)."""
    good: dict[str, str] = {}

    def check_remembering(field: str, value: object) -> object:
        if type(value) is str:
            known = good.get(value)
            if known is not None:
                return known
            normalised = check(field, value)
            if len(good) >= REMEMBERED:
                good.clear()
            good[value] = normalised
            return normalised
        return check(field, value)

    return check_remembering


def _integer(low: int, high: int, what: str, problem: BodyProblem, *, zero: bool = True) -> _Kind:
    """An int in ``low..high`` (``zero=False`` excludes 0). bool is not an int here."""

    def check(field: str, value: object) -> int:
        # type() rather than isinstance(): True and IntEnum members must not pass.
        if type(value) is not int or not low <= value <= high or (value == 0 and not zero):
            raise InvalidBody(
                field,
                problem,
                "must be {what}, got {got}",
                what=what,
                got=_show(value),
                min=low,
                max=high,
            )
        return value

    return _Kind(check)


def _hours(high: int) -> _Kind:
    """A finite number of hours in (0, high], stored as float."""

    def check(field: str, value: object) -> float:
        # The range test also refuses NaN and infinity; bool is not a number of hours.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
            raise InvalidBody(
                field,
                "bad-hours",
                "must be a number of hours above 0 and at most {max}, got {got}",
                max=high,
                got=_show(value),
            )
        return float(value)

    return _Kind(check)


def _choice(options: tuple[str, ...]) -> _Kind:
    def check(field: str, value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise InvalidBody(
                field,
                "not-a-choice",
                "must be one of {options}, got {got}",
                options=", ".join(options),
                got=_show(value),
            )
        return value

    return _Kind(check)


_DATE_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _check_date(field: str, value: object) -> str:
    """A calendar date "YYYY-MM-DD", kept as the string."""
    if not isinstance(value, str) or _DATE_FORMAT.fullmatch(value) is None:
        raise InvalidBody(
            field, "bad-date", "must be a date YYYY-MM-DD, got {got}", got=_show(value)
        )
    try:
        date.fromisoformat(value)
    except ValueError:
        raise InvalidBody(
            field, "bad-date", "is not a calendar date: {got}", got=_show(value)
        ) from None
    return value


_DATETIME_FORMAT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)


def _check_datetime(field: str, value: object) -> str:
    """A local or offset datetime to the minute (seconds allowed), normalised.

    Accepts "YYYY-MM-DDTHH:MM", optionally ":SS", optionally "Z" or "+HH:MM"; keeps
    ``isoformat`` to the minute, or to the second when seconds are not 0 (so nothing is
    dropped and normalising twice changes nothing).
    """
    if not isinstance(value, str) or _DATETIME_FORMAT.fullmatch(value) is None:
        raise InvalidBody(
            field,
            "bad-datetime",
            "must be a datetime YYYY-MM-DDTHH:MM[:SS][+HH:MM], got {got}",
            got=_show(value),
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidBody(
            field, "bad-datetime", "is not a calendar datetime: {got}", got=_show(value)
        ) from None
    return moment.isoformat(timespec="minutes" if moment.second == 0 else "seconds")


def _fixed_bytes(size: int, what: str) -> _Kind:
    def check(field: str, value: object) -> bytes:
        if not isinstance(value, bytes) or len(value) != size:
            raise InvalidBody(
                field,
                "bad-bytes",
                "must be {what} of {size} bytes, got {got}",
                what=what,
                size=size,
                got=_show(value),
            )
        return value

    return _Kind(check)


def _list_of(item: _Kind, max_items: int) -> _Kind:
    """A list of distinct items (a tuple in Python, a list on the wire)."""

    def check(field: str, value: object) -> tuple[object, ...]:
        if not isinstance(value, (list, tuple)):
            raise InvalidBody(field, "not-a-list", "must be a list, got {got}", got=_show(value))
        if len(value) > max_items:
            raise InvalidBody(
                field,
                "too-many-items",
                "must have at most {max} items, got {n}",
                max=max_items,
                n=len(value),
            )
        items = tuple(item.check(field, element) for element in value)
        if len(set(items)) != len(items):
            raise InvalidBody(field, "repeated-item", "must not repeat an item")
        return items

    return _Kind(check)


_TITLE = _text(200)
_NAME = _text(100)
_DESCRIPTION = _text(2000, empty=True, lines=True)
_SHORT_TEXT = _text(40)  # units and categories
_SLUG = _pattern(
    r"[a-z0-9][a-z0-9-]{0,39}",
    "a slug of a-z, 0-9 and '-' (at most 40, not starting with '-')",
    "not-a-slug",
)
_LANGUAGES = _list_of(
    _pattern(
        r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,2}",
        "a language tag like 'en' or 'pt-BR'",
        "not-a-language-tag",
    ),
    MAX_LANGUAGES,
)
_POSITIVE = _integer(
    1, MAX_AMOUNT, f"a positive integer (at most {MAX_AMOUNT:,})", "not-a-positive-integer"
)
_NON_NEGATIVE = _integer(
    0, MAX_AMOUNT, f"a non-negative integer (at most {MAX_AMOUNT:,})", "not-a-non-negative-integer"
)
_NON_ZERO = _integer(
    -MAX_AMOUNT,
    MAX_AMOUNT,
    f"a non-zero integer (at most {MAX_AMOUNT:,} either way)",
    "not-a-non-zero-integer",
    zero=False,
)
_SLOTS = _integer(1, MAX_SLOTS, f"a whole number of slots from 1 to {MAX_SLOTS}", "out-of-range")
_SHIFT_HOURS = _hours(24)
_WEEKLY_HOURS = _hours(7 * 24)
_DATE = _Kind(_remembered(_check_date))
_DATETIME = _Kind(_remembered(_check_datetime))
_ID = _fixed_bytes(ID_BYTES, "an event id")  # hash of the event that created the entity
_MEMBER_KEY = _fixed_bytes(32, "a member's public key")
_PROOF = _fixed_bytes(32, "a membership proof")
_LOCATION_KIND = _choice(LOCATION_KINDS)
_STORAGE = _choice(STORAGES)
_STOCK_REASON = _choice(STOCK_REASONS)
_URGENCY = _choice(URGENCIES)


# --- the mechanism ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    kind: _Kind
    optional: bool


_SPECS: dict[type[BaseBody], tuple[_Spec, ...]] = {}


def _specs(cls: type[BaseBody]) -> tuple[_Spec, ...]:
    """The fields of ``cls`` with their kinds, read once from the annotations."""
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = _read_specs(cls)
    return specs


_WIRE_ORDER: dict[type[BaseBody], tuple[_Spec, ...]] = {}


def _wire_order(cls: type[BaseBody]) -> tuple[_Spec, ...]:
    """The fields in the order a canonical map has them (sorted), so that the map
    ``to_body`` builds needs no sorting before it is signed."""
    specs = _WIRE_ORDER.get(cls)
    if specs is None:
        specs = _WIRE_ORDER[cls] = tuple(sorted(_specs(cls), key=lambda spec: spec.name))
    return specs


def _read_specs(cls: type[BaseBody]) -> tuple[_Spec, ...]:
    hints = get_type_hints(cls, include_extras=True)
    specs = []
    for field in fields(cls):  # type: ignore[arg-type]  # every subclass is a dataclass
        kinds = [meta for meta in get_args(hints[field.name])[1:] if isinstance(meta, _Kind)]
        if len(kinds) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs Annotated[..., <kind>]")
        specs.append(_Spec(field.name, kinds[0], field.default is None))
    return tuple(specs)


Upcaster: TypeAlias = Callable[[dict[str, object]], dict[str, object]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""Steps ``(TYPE, v)`` -> function turning a version-v body map into version v+1."""


def upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as the step from ``from_version`` to the next."""

    def register(step: Upcaster) -> Upcaster:
        key = (type_, from_version)
        if from_version < 1:
            raise ValueError(f"versions start at 1, got {from_version}")
        if key in UPCASTERS:
            raise ValueError(f"an upcaster for {type_} v{from_version} already exists")
        UPCASTERS[key] = step
        return step

    return register


def _upcast(cls: type[BaseBody], body: Mapping[str, object]) -> Mapping[str, object]:
    """The body as a map of ``cls.VERSION``, running the upcasters from its version."""
    if VERSION_KEY not in body:
        version = 1
    else:
        version_value = body[VERSION_KEY]
        if type(version_value) is not int or version_value < 2:
            raise InvalidBody(
                VERSION_KEY,
                "bad-version",
                "must be an integer of at least 2 (absent means 1), got {got}",
                got=_show(version_value),
            )
        version = version_value
    if version > cls.VERSION:
        raise InvalidBody(
            VERSION_KEY,
            "newer-version",
            "{type} version {version} is newer than this node reads (up to {max})",
            type=cls.TYPE,
            version=version,
            max=cls.VERSION,
        )
    if version == cls.VERSION:
        return body
    current = {key: value for key, value in body.items() if key != VERSION_KEY}
    while version < cls.VERSION:
        step = UPCASTERS.get((cls.TYPE, version))
        if step is None:
            # Our bug, not the peer's: a class bumped VERSION without its step.
            raise LookupError(f"no upcaster registered for {cls.TYPE} v{version}")
        current = step(current)
        version += 1
    return current


class BaseBody:
    """Base of every body class: validation on construction and the map codec.

    Subclasses are ``@dataclass(frozen=True, kw_only=True, slots=True)`` whose fields
    are annotated ``Annotated[type, KIND]``, set ``TYPE`` and, when they change shape,
    ``VERSION``.
    """

    __slots__ = ()
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for spec in _specs(type(self)):
            value = getattr(self, spec.name)
            if value is None and spec.optional:
                continue
            # Frozen: store the normalised value the only way a frozen dataclass allows.
            object.__setattr__(self, spec.name, spec.kind.check(spec.name, value))
        self._check_together()

    def _check_together(self) -> None:
        """Rules across fields, run after each field is valid; override when needed."""

    @classmethod
    def from_body(cls, body: Mapping[str, object]) -> Self:
        """Validate a body map (any version this node reads) and build the value.

        Raises InvalidBody naming the first bad field; unknown keys are ignored.
        """
        current = body if cls.VERSION == 1 and VERSION_KEY not in body else _upcast(cls, body)
        # One pass that checks each field and sets it, instead of ``cls(**values)``
        # whose __post_init__ reads every field back: every received and re-folded
        # event comes through here.
        value_of = object.__new__(cls)
        for spec in _specs(cls):
            value = current.get(spec.name)
            if value is None:
                if not spec.optional:
                    raise InvalidBody(spec.name, "required", "is missing")
            else:
                value = spec.kind.check(spec.name, value)
            object.__setattr__(value_of, spec.name, value)
        value_of._check_together()
        return value_of

    def to_body(self) -> dict[str, object]:
        """The map to put in the envelope: None optionals omitted, ``"_v"`` after v1.
        Canonical as built (keys sorted, ``"_v"`` first, values never maps), so
        ``events.unsigned`` does not check it again."""
        body: dict[str, object] = {} if self.VERSION == 1 else {VERSION_KEY: self.VERSION}
        for spec in _wire_order(type(self)):
            value = getattr(self, spec.name)
            if value is not None:
                body[spec.name] = list(value) if isinstance(value, tuple) else value
        return body


# --- the types, version 1 (docs/events.md) ----------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberJoined(BaseBody):
    TYPE: ClassVar[str] = "member.joined"
    name: Annotated[str, _NAME]
    languages: Annotated[tuple[str, ...] | None, _LANGUAGES] = None
    proof: Annotated[bytes, _PROOF]


@dataclass(frozen=True, kw_only=True, slots=True)
class LocationDefined(BaseBody):
    TYPE: ClassVar[str] = "location.defined"
    slug: Annotated[str, _SLUG]
    name: Annotated[str, _NAME]
    kind: Annotated[LocationKind, _LOCATION_KIND]


@dataclass(frozen=True, kw_only=True, slots=True)
class ItemDefined(BaseBody):
    TYPE: ClassVar[str] = "item.defined"
    slug: Annotated[str, _SLUG]
    name: Annotated[str, _NAME]
    unit: Annotated[str, _SHORT_TEXT]
    category: Annotated[str, _SHORT_TEXT]
    storage: Annotated[Storage, _STORAGE]


@dataclass(frozen=True, kw_only=True, slots=True)
class StockAdjusted(BaseBody):
    TYPE: ClassVar[str] = "stock.adjusted"
    item: Annotated[str, _SLUG]
    location: Annotated[str, _SLUG]
    delta: Annotated[int, _NON_ZERO]
    reason: Annotated[StockReason, _STOCK_REASON]
    expires: Annotated[str | None, _DATE] = None


@dataclass(frozen=True, kw_only=True, slots=True)
class StockCounted(BaseBody):
    TYPE: ClassVar[str] = "stock.counted"
    item: Annotated[str, _SLUG]
    location: Annotated[str, _SLUG]
    count: Annotated[int, _NON_NEGATIVE]


@dataclass(frozen=True, kw_only=True, slots=True)
class OfferPosted(BaseBody):
    TYPE: ClassVar[str] = "offer.posted"
    title: Annotated[str, _TITLE]
    category: Annotated[str, _SHORT_TEXT] = "general"
    item: Annotated[str | None, _SLUG] = None
    quantity: Annotated[int | None, _POSITIVE] = None
    location: Annotated[str | None, _SLUG] = None
    until: Annotated[str | None, _DATE] = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OfferWithdrawn(BaseBody):
    TYPE: ClassVar[str] = "offer.withdrawn"
    offer: Annotated[bytes, _ID]


@dataclass(frozen=True, kw_only=True, slots=True)
class NeedPosted(BaseBody):
    TYPE: ClassVar[str] = "need.posted"
    title: Annotated[str, _TITLE]
    category: Annotated[str, _SHORT_TEXT] = "general"
    quantity: Annotated[int | None, _POSITIVE] = None
    urgency: Annotated[Urgency, _URGENCY] = "normal"
    location: Annotated[str | None, _SLUG] = None
    by: Annotated[str | None, _DATE] = None


@dataclass(frozen=True, kw_only=True, slots=True)
class NeedWithdrawn(BaseBody):
    TYPE: ClassVar[str] = "need.withdrawn"
    need: Annotated[bytes, _ID]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimMade(BaseBody):
    TYPE: ClassVar[str] = "claim.made"
    target: Annotated[bytes, _ID]  # the offer or need claimed
    quantity: Annotated[int, _POSITIVE]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimStep(BaseBody):
    """A step in a claim's life after it was made; each subclass only sets TYPE."""

    claim: Annotated[bytes, _ID]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimConfirmed(ClaimStep):
    TYPE: ClassVar[str] = "claim.confirmed"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimDeclined(ClaimStep):
    TYPE: ClassVar[str] = "claim.declined"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimReleased(ClaimStep):
    TYPE: ClassVar[str] = "claim.released"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimFulfilled(ClaimStep):
    TYPE: ClassVar[str] = "claim.fulfilled"


@dataclass(frozen=True, kw_only=True, slots=True)
class RoleDefined(BaseBody):
    TYPE: ClassVar[str] = "role.defined"
    slug: Annotated[str, _SLUG]
    name: Annotated[str, _NAME]
    description: Annotated[str, _DESCRIPTION]
    weekly_hours: Annotated[float, _WEEKLY_HOURS]


@dataclass(frozen=True, kw_only=True, slots=True)
class RoleAssigned(BaseBody):
    TYPE: ClassVar[str] = "role.assigned"
    role: Annotated[str, _SLUG]
    member: Annotated[bytes, _MEMBER_KEY]
    until: Annotated[str | None, _DATE] = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ShiftScheduled(BaseBody):
    TYPE: ClassVar[str] = "shift.scheduled"
    role: Annotated[str, _SLUG]
    location: Annotated[str, _SLUG]
    start: Annotated[str, _DATETIME]
    end: Annotated[str, _DATETIME]
    slots: Annotated[int, _SLOTS]

    def _check_together(self) -> None:
        start = datetime.fromisoformat(self.start)
        end = datetime.fromisoformat(self.end)
        if (start.tzinfo is None) != (end.tzinfo is None):
            raise InvalidBody(
                "end", "mixed-timezones", "must carry a timezone offset exactly when start does"
            )
        if end <= start:
            raise InvalidBody(
                "end",
                "end-before-start",
                "must be after start {start}, got {end}",
                start=self.start,
                end=self.end,
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class ShiftSignedUp(BaseBody):
    TYPE: ClassVar[str] = "shift.signed_up"
    shift: Annotated[bytes, _ID]


@dataclass(frozen=True, kw_only=True, slots=True)
class ShiftWithdrawn(BaseBody):
    TYPE: ClassVar[str] = "shift.withdrawn"
    shift: Annotated[bytes, _ID]


@dataclass(frozen=True, kw_only=True, slots=True)
class ShiftCompleted(BaseBody):
    TYPE: ClassVar[str] = "shift.completed"
    shift: Annotated[bytes, _ID]
    hours: Annotated[float, _SHIFT_HOURS]


Body: TypeAlias = (
    MemberJoined
    | LocationDefined
    | ItemDefined
    | StockAdjusted
    | StockCounted
    | OfferPosted
    | OfferWithdrawn
    | NeedPosted
    | NeedWithdrawn
    | ClaimMade
    | ClaimConfirmed
    | ClaimDeclined
    | ClaimReleased
    | ClaimFulfilled
    | RoleDefined
    | RoleAssigned
    | ShiftScheduled
    | ShiftSignedUp
    | ShiftWithdrawn
    | ShiftCompleted
)

TYPES: dict[str, type[Body]] = {cls.TYPE: cls for cls in get_args(Body)}
"""Every known body class by its wire name."""

for _cls in TYPES.values():
    _specs(_cls)  # a class without a kind on a field fails at import, not at first use
del _cls


def references(
    type_: str, body: Mapping[str, object], parsed: BaseBody | None = None
) -> tuple[bytes, ...]:
    """Ids of earlier events that ``body`` names (an offer, a claim, a shift...).

    An entity's id is the hash of the event that created it, so a writer can only name
    what it has seen: the log treats these like deps and holds an event until they are
    there (docs/events.md §validity). Unknown types and invalid bodies name nothing:
    they are stored and relayed, and projections skip them. ``parsed``: the body's typed
    value when the caller has it (this node's own events), so it is not parsed again.
    """
    cls = TYPES.get(type_)
    if cls is None:
        return ()
    specs = _id_specs(cls)
    if not specs:
        return ()
    if not isinstance(parsed, cls):
        try:
            parsed = cls.from_body(body)
        except InvalidBody:
            return ()
    return tuple(getattr(parsed, spec.name) for spec in specs)


_ID_SPECS: dict[type[BaseBody], tuple[_Spec, ...]] = {}


def _id_specs(cls: type[BaseBody]) -> tuple[_Spec, ...]:
    specs = _ID_SPECS.get(cls)
    if specs is None:
        specs = _ID_SPECS[cls] = tuple(spec for spec in _specs(cls) if spec.kind is _ID)
    return specs


def parse(type_: str, body: Mapping[str, object]) -> Body | None:
    """The typed value of an event's body, or None when this node does not know the type.

    Raises InvalidBody when the type is known and the body is not valid for it.
    """
    cls = TYPES.get(type_)
    if cls is None:
        return None
    if not isinstance(body, Mapping):
        raise InvalidBody("body", "not-a-map", "must be a map, got {got}", got=_show(body))
    return cls.from_body(body)
