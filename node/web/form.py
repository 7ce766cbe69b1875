"""Submitted forms -> typed event bodies, or a message beside each bad field.

Contract: each ``*_body`` function reads the strings of one HTML form and returns the
body to post, or raises ``FormInvalid`` naming every field it could check. It writes
nothing and never reads the clock or the database: what the node knows (its items,
places, roles, members) comes in as ``Known``.

Two layers, one truth. The browser only sends strings, so this module turns them into
numbers and dates and checks that a chosen item or place exists here (the messages say
where to add it). Every rule about the values themselves (lengths, ranges, slugs,
dates, end after start) stays in eventlog/body.py: this module builds the body and turns
its ``InvalidBody`` into a message on the right field, so a form cannot accept what
the CLI would refuse, or the reverse. The message comes from the error's ``problem``
and ``params``, never from its English; a check made here that the body also makes
uses the body's problem name, so both read the same.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from eventlog import body as b
from eventlog.errors import InvalidBody
from node.web.errors import FormInvalid
from node.web.i18n import Message, body_problem, problem_message

B = TypeVar("B", bound=b.BaseBody)

MAX_FIELD_CHARS = 4000  # far above any body limit; only bounds what we parse
ADJUST_REASONS: dict[str, int] = {"donation": 1, "distribution": -1, "spoilage": -1}
"""The stock changes the web offers, with the sign each gives the amount."""

_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True, slots=True)
class Known:
    """What this node knows that a form may refer to."""

    items: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()  # keys, hex


@dataclass(slots=True)
class Fields:
    """The values of one submitted form, read field by field; collects the errors.

    A required field that is missing or bad records its message and returns a
    placeholder ("" or 0): ``build`` refuses to make a body while any message is
    recorded, so a placeholder never reaches an event.
    """

    data: Mapping[str, str]
    errors: dict[str, Message] = field(default_factory=dict)

    def raw(self, name: str) -> str:
        return self.data.get(name, "")[:MAX_FIELD_CHARS]

    def text(self, name: str) -> str:
        """The text as typed; the body strips it and decides whether it is too long."""
        return self.raw(name)

    def optional(self, name: str) -> str | None:
        value = self.raw(name).strip()
        return value or None

    def _present(self, name: str, required: bool) -> str | None:
        value = self.raw(name).strip()
        if not value and required:
            self.fail(name, problem_message("required"))
        return value or None

    def integer(self, name: str) -> int:
        return self.optional_integer(name, required=True) or 0

    def optional_integer(self, name: str, *, required: bool = False) -> int | None:
        text = self._present(name, required)
        if text is None:
            return None
        if re.fullmatch(r"[+-]?[0-9]{1,30}", text) is None:
            self.fail(name, Message("error.whole_number"))
            return None
        value = int(text)
        if abs(value) > b.MAX_AMOUNT:
            self.fail(name, Message("error.too_big", {"max": f"{b.MAX_AMOUNT:,}"}))
            return None
        return value

    def number(self, name: str) -> float:
        text = self._present(name, True)
        if text is None:
            return 0.0
        text = text.replace(",", ".")
        if re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,4})?", text) is None:
            self.fail(name, Message("error.number"))
            return 0.0
        return float(text)

    def choice(self, name: str, options: Iterable[str]) -> str:
        value = self.raw(name)
        if value not in set(options):
            self.fail(name, problem_message("not-a-choice"))
            return ""
        return value

    def reference(self, name: str, known: frozenset[str], missing: str) -> str:
        """A slug (or key) chosen from what this node knows; ``missing`` is the message."""
        return self.optional_reference(name, known, missing, required=True) or ""

    def optional_reference(
        self, name: str, known: frozenset[str], missing: str, *, required: bool = False
    ) -> str | None:
        value = self._present(name, required)
        if value is not None and value not in known:
            self.fail(name, Message(missing, {"slug": value[:40]}))
            return None
        return value

    def date(self, name: str) -> str:
        return self.optional_date(name, required=True) or ""

    def optional_date(self, name: str, *, required: bool = False) -> str | None:
        value = self._present(name, required)
        if value is None:
            return None
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            self.fail(name, problem_message("bad-date"))
            return None
        return value

    def time(self, name: str) -> str:
        """'HH:MM' (a browser may send 'HH:MM:SS'; seconds are dropped)."""
        value = self._present(name, True)
        if value is None:
            return ""
        if len(value) not in (5, 8) or _TIME.fullmatch(value[:5]) is None:
            self.fail(name, Message("error.time"))
            return ""
        return value[:5]

    def fail(self, name: str, message: Message) -> None:
        self.errors.setdefault(name, message)

    def build(self, make: Callable[[], B], rename: Mapping[str, str] | None = None) -> B:
        """``make()`` once every field read so far is fine; its InvalidBody names a field.

        ``rename`` maps a body field to the form field that feeds it.
        """
        if self.errors:
            raise FormInvalid(self.errors)
        try:
            return make()
        except InvalidBody as exc:
            target = (rename or {}).get(exc.field, exc.field)
            raise FormInvalid({target: body_problem(exc)}) from None


def offer_body(form: Fields, known: Known) -> b.OfferPosted:
    title = form.text("title")
    category = form.optional("category") or "general"
    item = form.optional_reference("item", known.items, "error.unknown_item")
    quantity = form.optional_integer("quantity")
    location = form.optional_reference("location", known.locations, "error.unknown_location")
    until = form.optional_date("until")
    return form.build(
        lambda: b.OfferPosted(
            title=title,
            category=category,
            item=item,
            quantity=quantity,
            location=location,
            until=until,
        )
    )


def need_body(form: Fields, known: Known) -> b.NeedPosted:
    title = form.text("title")
    category = form.optional("category") or "general"
    quantity = form.optional_integer("quantity")
    urgency = cast(b.Urgency, form.choice("urgency", b.URGENCIES))
    location = form.optional_reference("location", known.locations, "error.unknown_location")
    by = form.optional_date("by")
    return form.build(
        lambda: b.NeedPosted(
            title=title,
            category=category,
            quantity=quantity,
            urgency=urgency,
            location=location,
            by=by,
        )
    )


def claim_body(form: Fields, target: bytes) -> b.ClaimMade:
    quantity = form.integer("quantity")
    return form.build(lambda: b.ClaimMade(target=target, quantity=quantity))


def adjust_body(form: Fields, known: Known) -> b.StockAdjusted:
    item = form.reference("item", known.items, "error.unknown_item")
    location = form.reference("location", known.locations, "error.unknown_location")
    amount = form.integer("amount")
    if amount < 0 or (amount == 0 and "amount" not in form.errors):
        form.fail("amount", problem_message("not-a-positive-integer"))
    reason = cast(b.StockReason, form.choice("reason", ADJUST_REASONS))
    expires = form.optional_date("expires")
    sign = ADJUST_REASONS.get(reason, 1)
    return form.build(
        lambda: b.StockAdjusted(
            item=item,
            location=location,
            delta=sign * amount,
            reason=reason,
            expires=expires if sign > 0 else None,
        ),
        {"delta": "amount"},
    )


def count_body(form: Fields, known: Known) -> b.StockCounted:
    item = form.reference("item", known.items, "error.unknown_item")
    location = form.reference("location", known.locations, "error.unknown_location")
    count = form.integer("count")
    return form.build(lambda: b.StockCounted(item=item, location=location, count=count))


def item_body(form: Fields) -> b.ItemDefined:
    slug = form.text("slug").strip()
    name = form.text("name")
    unit = form.text("unit")
    category = form.optional("category") or "general"
    storage = cast(b.Storage, form.choice("storage", b.STORAGES))
    return form.build(
        lambda: b.ItemDefined(slug=slug, name=name, unit=unit, category=category, storage=storage)
    )


def location_body(form: Fields) -> b.LocationDefined:
    slug = form.text("slug").strip()
    name = form.text("name")
    kind = cast(b.LocationKind, form.choice("kind", b.LOCATION_KINDS))
    return form.build(lambda: b.LocationDefined(slug=slug, name=name, kind=kind))


def shift_body(form: Fields, known: Known) -> b.ShiftScheduled:
    role = form.reference("role", known.roles, "error.unknown_role")
    location = form.reference("location", known.locations, "error.unknown_location")
    day = form.date("date")
    start = form.time("start_time")
    end = form.time("end_time")
    slots = form.integer("slots")
    return form.build(
        lambda: b.ShiftScheduled(
            role=role, location=location, start=f"{day}T{start}", end=f"{day}T{end}", slots=slots
        ),
        {"start": "start_time", "end": "end_time"},
    )


def hours_body(form: Fields, shift: bytes) -> b.ShiftCompleted:
    hours = form.number("hours")
    return form.build(lambda: b.ShiftCompleted(shift=shift, hours=hours))


def role_body(form: Fields) -> b.RoleDefined:
    slug = form.text("slug").strip()
    name = form.text("name")
    weekly_hours = form.number("weekly_hours")
    description = form.text("description")
    return form.build(
        lambda: b.RoleDefined(
            slug=slug, name=name, description=description, weekly_hours=weekly_hours
        )
    )


def assign_body(form: Fields, known: Known) -> b.RoleAssigned:
    role = form.reference("role", known.roles, "error.unknown_role")
    member = form.reference("member", known.members, "error.unknown_member")
    until = form.optional_date("until")
    return form.build(lambda: b.RoleAssigned(role=role, member=bytes.fromhex(member), until=until))
