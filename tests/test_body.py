"""Typed event bodies: round trips, field validation, unknown types, versions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, ClassVar, cast, get_args

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from eventlog import body as bodies
from eventlog import events
from eventlog.body import (
    LOCATION_KINDS,
    STOCK_REASONS,
    STORAGES,
    TYPES,
    URGENCIES,
    BaseBody,
    ClaimConfirmed,
    ClaimDeclined,
    ClaimStep,
    MemberJoined,
    NeedPosted,
    OfferPosted,
    RoleDefined,
    ShiftCompleted,
    ShiftScheduled,
    StockAdjusted,
    parse,
    upcaster,
)
from eventlog.errors import InvalidBody, InvalidEvent

ID = bytes(range(32))
KEY = bytes(range(32, 64))

# One valid body per type, as a peer would send it.
VALID: dict[str, dict[str, object]] = {
    "member.joined": {"name": "Ana", "languages": ["es", "en"], "proof": KEY},
    "location.defined": {"slug": "st-marks", "name": "St Mark's pantry", "kind": "pantry"},
    "item.defined": {
        "slug": "beans",
        "name": "Black beans",
        "unit": "can",
        "category": "canned",
        "storage": "ambient",
    },
    "stock.adjusted": {
        "item": "beans",
        "location": "st-marks",
        "delta": -3,
        "reason": "distribution",
        "expires": "2025-03-01",
    },
    "stock.counted": {"item": "beans", "location": "st-marks", "count": 0},
    "offer.posted": {
        "title": "Bread from the bakery",
        "category": "food",
        "item": "bread",
        "quantity": 12,
        "location": "hub-1",
        "until": "2025-03-01",
    },
    "offer.withdrawn": {"offer": ID},
    "need.posted": {
        "title": "Ride to the clinic",
        "category": "transport",
        "urgency": "urgent",
        "by": "2025-03-02",
    },
    "need.withdrawn": {"need": ID},
    "claim.made": {"target": ID, "quantity": 2},
    "claim.confirmed": {"claim": ID},
    "claim.declined": {"claim": ID},
    "claim.released": {"claim": ID},
    "claim.fulfilled": {"claim": ID},
    "role.defined": {
        "slug": "driver",
        "name": "Driver",
        "description": "Drives.\nBrings the van back.",
        "weekly_hours": 4.5,
    },
    "role.assigned": {"role": "driver", "member": KEY, "until": "2025-06-30"},
    "shift.scheduled": {
        "role": "driver",
        "location": "hub-1",
        "start": "2025-03-01T09:00",
        "end": "2025-03-01T12:30",
        "slots": 3,
    },
    "shift.signed_up": {"shift": ID},
    "shift.withdrawn": {"shift": ID},
    "shift.completed": {"shift": ID, "hours": 3.5},
}


def test_registry_holds_every_type_of_the_body_union_under_its_wire_name() -> None:
    assert set(TYPES.values()) == set(get_args(bodies.Body))
    assert all(name == TYPES[name].TYPE for name in TYPES)
    assert set(VALID) == set(TYPES)
    assert all(cls.VERSION == 1 for cls in TYPES.values())


# --- strategies: one per field name (field names mean one thing across types) -------

_PRINTABLE = st.characters(exclude_categories=("Cc", "Cs"))


def _texts(max_chars: int) -> st.SearchStrategy[str]:
    return st.text(_PRINTABLE, min_size=1, max_size=max_chars).filter(str.strip)


_SLUGS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,39}", fullmatch=True)
_DATES = st.dates().map(lambda day: day.isoformat())
_IDS = st.binary(min_size=32, max_size=32)
_POSITIVE = st.integers(1, 1_000_000_000)


def _hours(high: int) -> st.SearchStrategy[float | int]:
    return st.floats(0, high, exclude_min=True, allow_nan=False) | st.integers(1, high)


FIELDS: dict[str, st.SearchStrategy[object]] = {
    "title": _texts(200),
    "name": _texts(100),
    "description": st.text(
        st.characters(exclude_categories=("Cc", "Cs"), include_characters="\n"), max_size=2000
    ),
    "unit": _texts(40),
    "category": _texts(40),
    "slug": _SLUGS,
    "item": _SLUGS,
    "location": _SLUGS,
    "role": _SLUGS,
    "languages": st.lists(
        st.from_regex(r"[a-z]{2,3}(-[A-Z][a-z]{3})?", fullmatch=True), max_size=10, unique=True
    ),
    "proof": _IDS,
    "member": _IDS,
    "offer": _IDS,
    "need": _IDS,
    "claim": _IDS,
    "shift": _IDS,
    "target": _IDS,
    "kind": st.sampled_from(LOCATION_KINDS),
    "storage": st.sampled_from(STORAGES),
    "reason": st.sampled_from(STOCK_REASONS),
    "urgency": st.sampled_from(URGENCIES),
    "delta": st.integers(-1_000_000_000, 1_000_000_000).filter(bool),
    "count": st.integers(0, 1_000_000_000),
    "quantity": _POSITIVE,
    "slots": st.integers(1, 1000),
    "expires": _DATES,
    "until": _DATES,
    "by": _DATES,
    "hours": _hours(24),
    "weekly_hours": _hours(168),
}

_OFFSETS = st.none() | st.integers(-14 * 60, 14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def _shift_times(draw: st.DrawFn) -> dict[str, object]:
    """start and end (after start, same offset), written with seconds to be normalised."""
    zone = draw(_OFFSETS)
    start = draw(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)))
    start = start.replace(microsecond=0, tzinfo=zone)
    end = start + draw(st.timedeltas(timedelta(minutes=1), timedelta(days=2)))
    return {"start": start.isoformat(timespec="seconds"), "end": end.isoformat(timespec="seconds")}


# Fields drawn together because a rule spans them.
JOINT: dict[type[BaseBody], st.SearchStrategy[dict[str, object]]] = {
    ShiftScheduled: _shift_times(),
}


def instances(cls: type[BaseBody]) -> st.SearchStrategy[BaseBody]:
    """Valid values of ``cls``: every optional field sometimes None."""
    joint = JOINT.get(cls, st.just({}))
    fields = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in ("start", "end"):
            continue
        strategy = FIELDS[field.name]
        fields[field.name] = st.none() | strategy if field.default is None else strategy
    return st.tuples(st.fixed_dictionaries(fields), joint).map(
        lambda parts: cls(**parts[0], **parts[1])
    )


ALL_TYPES = pytest.mark.parametrize("cls", TYPES.values(), ids=list(TYPES))


@ALL_TYPES
@given(data=st.data())
def test_from_body_of_to_body_gives_an_equal_value(
    cls: type[BaseBody], data: st.DataObject
) -> None:
    value = data.draw(instances(cls))
    body = value.to_body()
    assert cls.from_body(body) == value
    assert cls.from_body(body).to_body() == body
    assert None not in body.values()
    assert "_v" not in body


SIGNER = SigningKey(bytes(32))
GROUP = bytes(32)


@ALL_TYPES
@settings(max_examples=50)
@given(data=st.data())
def test_body_survives_msgpack_and_the_signed_envelope(
    cls: type[BaseBody], data: st.DataObject
) -> None:
    value = data.draw(instances(cls))
    unpacked = msgpack.unpackb(events.pack(value.to_body()), raw=False)
    assert parse(cls.TYPE, unpacked) == value
    envelope = events.create(
        SIGNER, group=GROUP, seq=1, prev=None, deps=[], hlc=1, type=cls.TYPE, body=value.to_body()
    )
    received = events.decode(envelope.raw)
    assert parse(received.type, received.body) == value


@pytest.mark.parametrize("type_", VALID)
def test_parse_accepts_each_example_body_and_writes_it_back(type_: str) -> None:
    value = parse(type_, VALID[type_])
    assert value is not None
    assert value.to_body() == VALID[type_]


# --- invalid bodies name their field -----------------------------------------------


def _with(type_: str, **changes: object) -> dict[str, object]:
    return {**VALID[type_], **changes}


INVALID: list[tuple[str, dict[str, object], str]] = [
    ("stock.adjusted", _with("stock.adjusted", delta=0), "delta"),
    ("stock.adjusted", _with("stock.adjusted", delta=1_000_000_001), "delta"),
    ("stock.adjusted", _with("stock.adjusted", reason="theft"), "reason"),
    ("stock.counted", _with("stock.counted", count=-1), "count"),
    ("claim.made", _with("claim.made", quantity="3"), "quantity"),
    ("claim.made", _with("claim.made", quantity=2.5), "quantity"),
    ("claim.made", _with("claim.made", quantity=2.0), "quantity"),
    ("claim.made", _with("claim.made", quantity=True), "quantity"),
    ("claim.made", _with("claim.made", quantity=-3), "quantity"),
    ("claim.made", _with("claim.made", target=ID[:31]), "target"),
    ("claim.made", _with("claim.made", target=ID.hex()), "target"),
    ("claim.confirmed", {"claim": ID + b"\x00"}, "claim"),
    ("offer.withdrawn", {"offer": b""}, "offer"),
    ("offer.posted", _with("offer.posted", title="x" * 201), "title"),
    ("offer.posted", _with("offer.posted", title="   "), "title"),
    ("offer.posted", _with("offer.posted", title="bread\nand butter"), "title"),
    ("offer.posted", _with("offer.posted", title="bell\x07"), "title"),
    ("offer.posted", _with("offer.posted", title=b"bread"), "title"),
    ("offer.posted", _with("offer.posted", category="c" * 41), "category"),
    ("offer.posted", _with("offer.posted", until="2024-13-40"), "until"),
    ("offer.posted", _with("offer.posted", item="Beans!"), "item"),
    ("offer.posted", _with("offer.posted", quantity=0), "quantity"),
    ("need.posted", _with("need.posted", by="2024-13-40"), "by"),
    ("need.posted", _with("need.posted", by="20240101"), "by"),
    ("need.posted", _with("need.posted", by="2024-02-30"), "by"),
    ("need.posted", _with("need.posted", urgency="whenever"), "urgency"),
    ("item.defined", _with("item.defined", slug="Beans!"), "slug"),
    ("item.defined", _with("item.defined", slug="-beans"), "slug"),
    ("item.defined", _with("item.defined", slug="b" * 41), "slug"),
    ("item.defined", _with("item.defined", slug="beans\n"), "slug"),
    ("item.defined", _with("item.defined", storage="attic"), "storage"),
    ("location.defined", _with("location.defined", kind="garden"), "kind"),
    ("location.defined", _with("location.defined", name="n" * 101), "name"),
    ("member.joined", _with("member.joined", proof=KEY[:16]), "proof"),
    ("member.joined", _with("member.joined", languages="en"), "languages"),
    ("member.joined", _with("member.joined", languages=["en", "en"]), "languages"),
    ("member.joined", _with("member.joined", languages=["English"]), "languages"),
    ("member.joined", _with("member.joined", languages=["en"] * 11), "languages"),
    ("role.defined", _with("role.defined", weekly_hours=169), "weekly_hours"),
    ("role.defined", _with("role.defined", weekly_hours=0), "weekly_hours"),
    ("role.defined", _with("role.defined", description="d" * 2001), "description"),
    ("role.assigned", _with("role.assigned", member=KEY[:31]), "member"),
    ("shift.completed", _with("shift.completed", hours=24.5), "hours"),
    ("shift.completed", _with("shift.completed", hours=float("nan")), "hours"),
    ("shift.completed", _with("shift.completed", hours=float("inf")), "hours"),
    ("shift.completed", _with("shift.completed", hours=True), "hours"),
    ("shift.completed", _with("shift.completed", hours="3"), "hours"),
    ("shift.scheduled", _with("shift.scheduled", end="2025-03-01T08:00"), "end"),
    ("shift.scheduled", _with("shift.scheduled", end="2025-03-01T09:00"), "end"),
    ("shift.scheduled", _with("shift.scheduled", end="2025-03-01T12:00+01:00"), "end"),
    ("shift.scheduled", _with("shift.scheduled", start="2025-03-01 09:00"), "start"),
    ("shift.scheduled", _with("shift.scheduled", start="2025-03-01T25:00"), "start"),
    ("shift.scheduled", _with("shift.scheduled", start="2025-03-01T09:00:00.5"), "start"),
    ("shift.scheduled", _with("shift.scheduled", slots=0), "slots"),
    ("shift.scheduled", _with("shift.scheduled", slots=1001), "slots"),
]


@pytest.mark.parametrize(
    ("type_", "body", "field"), INVALID, ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(INVALID)]
)
def test_parse_rejects_bad_field_naming_it(type_: str, body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidBody) as caught:
        parse(type_, body)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.code == "invalid-body"


def test_invalid_body_message_says_what_was_expected_and_what_came() -> None:
    with pytest.raises(InvalidBody, match=r"^quantity: must be a positive integer .*got -3$"):
        parse("claim.made", _with("claim.made", quantity=-3))


@pytest.mark.parametrize("type_", VALID)
def test_parse_rejects_body_missing_a_required_field(type_: str) -> None:
    cls = TYPES[type_]
    required = [f.name for f in dataclasses.fields(cls) if f.default is not None]
    for name in required:
        body = {key: value for key, value in VALID[type_].items() if key != name}
        with pytest.raises(InvalidBody, match=f"^{name}: is missing$"):
            parse(type_, body)


def test_category_and_urgency_are_always_written_and_required_on_the_wire() -> None:
    need = NeedPosted(title="Diapers")
    assert need.to_body() == {"title": "Diapers", "category": "general", "urgency": "normal"}
    with pytest.raises(InvalidBody, match="^urgency: is missing$"):
        parse("need.posted", {"title": "Diapers", "category": "general"})
    with pytest.raises(InvalidBody, match="^category: is missing$"):
        parse("offer.posted", {"title": "Bread"})


def test_building_a_value_locally_validates_it_too() -> None:
    with pytest.raises(InvalidBody, match="^delta: "):
        StockAdjusted(item="beans", location="hub", delta=0, reason="donation")
    with pytest.raises(InvalidBody, match="^end: "):
        ShiftScheduled(
            role="r", location="l", start="2025-01-01T10:00", end="2025-01-01T10:00", slots=1
        )


def test_values_are_normalised_so_encoding_twice_changes_nothing() -> None:
    offer = OfferPosted(title="  Bread  ", category=" food ")
    assert (offer.title, offer.category) == ("Bread", "food")
    done = ShiftCompleted(shift=ID, hours=3)
    assert done.hours == 3.0 and isinstance(done.hours, float)
    member = MemberJoined(name="Ana", languages=["en"], proof=KEY)  # type: ignore[arg-type]
    assert member.languages == ("en",)
    assert member.to_body()["languages"] == ["en"]
    role = RoleDefined(slug="r", name="R", description="  ", weekly_hours=1)
    assert role.description == ""


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ("2025-03-01T09:00", "2025-03-01T09:00"),
        ("2025-03-01T09:00:00", "2025-03-01T09:00"),
        ("2025-03-01T09:00:30", "2025-03-01T09:00:30"),
        ("2025-03-01T09:00Z", "2025-03-01T09:00+00:00"),
        ("2025-03-01T09:00:00-05:30", "2025-03-01T09:00-05:30"),
    ],
)
def test_shift_times_are_kept_to_the_minute_in_one_spelling(written: str, kept: str) -> None:
    end = "2025-03-01T23:00" + kept[16:]
    shift = parse("shift.scheduled", _with("shift.scheduled", start=written, end=end))
    assert isinstance(shift, ShiftScheduled)
    assert shift.start == kept


def test_shift_end_is_compared_as_an_instant_when_offsets_differ() -> None:
    shift = parse(
        "shift.scheduled",
        _with("shift.scheduled", start="2025-03-01T09:00+02:00", end="2025-03-01T08:30+00:00"),
    )
    assert isinstance(shift, ShiftScheduled)
    with pytest.raises(InvalidBody, match="^end: "):
        parse(
            "shift.scheduled",
            _with("shift.scheduled", start="2025-03-01T09:00+00:00", end="2025-03-01T10:00+02:00"),
        )


def test_claim_steps_share_a_shape_but_stay_distinct_types() -> None:
    confirmed = parse("claim.confirmed", {"claim": ID})
    declined = parse("claim.declined", {"claim": ID})
    assert isinstance(confirmed, ClaimConfirmed) and isinstance(confirmed, ClaimStep)
    assert isinstance(declined, ClaimDeclined)
    assert confirmed != cast(object, declined)
    assert confirmed.to_body() == declined.to_body() == {"claim": ID}


def test_values_are_frozen() -> None:
    need = NeedPosted(title="Diapers")
    with pytest.raises(dataclasses.FrozenInstanceError):
        need.title = "Formula"  # type: ignore[misc]


# --- unknown types and keys ----------------------------------------------------------


def test_parse_returns_none_for_a_type_this_node_does_not_know() -> None:
    assert parse("skill.offered", {"anything": [1, 2, {"x": None}]}) is None
    assert parse("offer.posted.v9", {}) is None


def test_parse_ignores_unknown_keys_from_a_newer_writer() -> None:
    body = _with("offer.posted", pickup_window="evenings", photo=b"\x89PNG")
    assert parse("offer.posted", body) == parse("offer.posted", VALID["offer.posted"])


def test_parse_treats_nil_optional_field_as_absent() -> None:
    value = parse("offer.posted", _with("offer.posted", item=None))
    assert isinstance(value, OfferPosted)
    assert value.item is None
    assert "item" not in value.to_body()


def test_parse_rejects_a_body_that_is_not_a_map() -> None:
    with pytest.raises(InvalidBody, match="^body: "):
        parse("offer.posted", ["title", "Bread"])  # type: ignore[arg-type]


# --- versions ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class NoteEdited(BaseBody):
    """A test-only type at version 3: v1 had ``text``, v2 renamed it ``note``,
    v3 added ``pinned``."""

    TYPE: ClassVar[str] = "test.note_edited"
    VERSION: ClassVar[int] = 3
    note: Annotated[str, bodies._TITLE]
    pinned: Annotated[int, bodies._NON_NEGATIVE]


@pytest.fixture
def note_type(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Register NoteEdited and its two upcasters; yields the versions each step saw."""
    seen: list[int] = []
    monkeypatch.setitem(TYPES, NoteEdited.TYPE, NoteEdited)

    @upcaster(NoteEdited.TYPE, 1)
    def upcast_v1_v2(body: dict[str, object]) -> dict[str, object]:
        seen.append(1)
        body["note"] = body.pop("text")
        return body

    @upcaster(NoteEdited.TYPE, 2)
    def upcast_v2_v3(body: dict[str, object]) -> dict[str, object]:
        seen.append(2)
        body.setdefault("pinned", 0)
        return body

    yield seen
    del bodies.UPCASTERS[(NoteEdited.TYPE, 1)]
    del bodies.UPCASTERS[(NoteEdited.TYPE, 2)]


def test_version_2_body_routes_through_the_upcaster_to_the_current_version(
    note_type: list[int],
) -> None:
    value: object = parse(NoteEdited.TYPE, {"_v": 2, "note": "hello"})
    assert value == NoteEdited(note="hello", pinned=0)
    assert note_type == [2]


def test_version_1_body_without_v_runs_every_upcaster_in_order(note_type: list[int]) -> None:
    value: object = parse(NoteEdited.TYPE, {"text": "hello", "extra": True})
    assert value == NoteEdited(note="hello", pinned=0)
    assert note_type == [1, 2]


def test_current_version_body_skips_upcasters_and_writes_its_version(note_type: list[int]) -> None:
    value = NoteEdited(note="hi", pinned=2)
    assert value.to_body() == {"note": "hi", "pinned": 2, "_v": 3}
    assert list(value.to_body()) == ["_v", "note", "pinned"]  # canonical as built
    assert cast(object, parse(NoteEdited.TYPE, value.to_body())) == value
    assert note_type == []


def test_upcast_body_is_validated_as_the_current_version(note_type: list[int]) -> None:
    with pytest.raises(InvalidBody, match="^note: "):
        parse(NoteEdited.TYPE, {"text": "x" * 201})


@pytest.mark.parametrize("version", [2, 7])
def test_body_newer_than_this_node_reads_is_refused_naming_v(version: int) -> None:
    with pytest.raises(InvalidBody, match=r"^_v: .*newer") as caught:
        parse("offer.posted", _with("offer.posted", _v=version))
    assert caught.value.field == "_v"


@pytest.mark.parametrize("version", [1, 0, -1, "2", 2.0, True, None])
def test_body_with_a_malformed_or_redundant_v_is_refused(version: object) -> None:
    with pytest.raises(InvalidBody) as caught:
        parse("offer.posted", _with("offer.posted", _v=version))
    assert caught.value.field == "_v"


def test_upcaster_cannot_be_registered_twice_for_one_step(note_type: list[int]) -> None:
    step: Callable[[dict[str, object]], dict[str, object]] = dict
    with pytest.raises(ValueError, match="already"):
        upcaster(NoteEdited.TYPE, 1)(step)


def test_missing_upcaster_is_a_bug_here_not_a_bad_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TYPES, NoteEdited.TYPE, NoteEdited)
    with pytest.raises(LookupError, match="no upcaster"):
        parse(NoteEdited.TYPE, {"text": "hello"})


def test_upcasting_does_not_change_the_callers_map(note_type: list[int]) -> None:
    body: dict[str, object] = {"text": "hello"}
    parse(NoteEdited.TYPE, body)
    assert body == {"text": "hello"}


def test_a_remembered_slug_or_date_does_not_let_a_bad_one_through() -> None:
    """Slugs and dates are remembered once valid; a bad value must fail every time."""
    good = {
        "item": "rice",
        "location": "pantry",
        "delta": 2,
        "reason": "donation",
        "expires": "2026-12-01",
    }
    for _ in range(2):
        assert parse("stock.adjusted", good) is not None
        for field, bad in (
            ("item", "Rice!"),
            ("expires", "2026-02-30"),
            ("expires", "2026-12-1"),
            ("location", 7),
        ):
            with pytest.raises(InvalidBody) as caught:
                parse("stock.adjusted", {**good, field: bad})
            assert caught.value.field == field


@ALL_TYPES
@settings(max_examples=30)
@given(data=st.data())
def test_to_body_writes_keys_in_canonical_order(cls: type[BaseBody], data: st.DataObject) -> None:
    """``events.unsigned`` trusts a typed body's map to be canonical: keep it that way
    (keys sorted, and nothing nested that is not)."""
    body = data.draw(instances(cls)).to_body()
    assert list(body) == sorted(body)
    assert events._is_canonical_order(body)
