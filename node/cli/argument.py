"""Forgiving readers for what people type (issue 19, item 9): a date-time with a space
instead of the ``T``, ``3 slots`` for ``--slots``, a name where a slug is asked. Only
what has one meaning is accepted; the error for the rest says what would work."""

from __future__ import annotations

import re
import unicodedata

import click

from eventlog.errors import UsageError

SLUG_MAX = 40
_SPACED = re.compile(r"(\d{4}-\d{2}-\d{2})\s+(\d{1,2}:\d{2}.*)")


class DateTime(click.ParamType[str]):
    """A shift time: ``2026-12-12T09:00`` or ``2026-12-12 09:00`` (one space or more
    between date and time, an hour of one digit too); the event keeps the ``T`` form."""

    name = "datetime"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value).strip()
        spaced = _SPACED.fullmatch(text)
        if spaced:
            date, time = spaced.groups()
            text = f"{date}T{time.zfill(5) if len(time.split(':')[0]) == 1 else time}"
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            self.fail(f"'{text}' has no time of day: give one, like '{text} 09:00'", param, ctx)
        return text


class Date(click.ParamType[str]):
    """A calendar date ``YYYY-MM-DD``; surrounding spaces are ignored."""

    name = "date"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        return str(value).strip()


class Count(click.ParamType[int]):
    """A whole number, also written with its noun: ``3``, ``3 slots``, ``1 slot``; a
    number with another word (``3 cans`` for ``--slots``) stays an error that says
    what to give."""

    name = "integer"

    def __init__(self, noun: str) -> None:
        self.noun = noun

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        found = re.fullmatch(r"(-?\d+)\s*([A-Za-z]*)", text)
        if found and found.group(2).lower() in ("", self.noun, self.noun + "s"):
            return int(found.group(1))
        self.fail(
            f"'{text}' is not a number of {self.noun}s: give a whole number, like 3", param, ctx
        )


class Hours(click.ParamType[float]):
    """A number of hours: ``2.5``, ``2.5h``, ``2.5 h``, ``3 hours``."""

    name = "float"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        text = str(value).strip()
        found = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*(h|hrs?|hours?)?", text, re.IGNORECASE)
        if found:
            return float(found.group(1))
        self.fail(f"'{text}' is not a number of hours: give one like 2.5", param, ctx)


DATE = Date()
DATETIME = DateTime()
HOURS = Hours()


def slug_of(name: str) -> str:
    """The slug for a name: ``Canned beans`` -> ``canned-beans``, ``Crème brûlée`` ->
    ``creme-brulee``; at most 40 characters, cut at a hyphen when it can be."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > SLUG_MAX:
        slug = slug[:SLUG_MAX]
        slug = slug.rsplit("-", 1)[0] if "-" in slug else slug
    return slug.strip("-")


def slug_and_name(first: str, second: str | None, what: str) -> tuple[str, str, bool]:
    """``add SLUG NAME`` as it was, or ``add NAME`` with the slug made from the name:
    (slug, name, whether the name was given). One argument that is already a slug
    names no name: a defined one keeps its own (``role add driver --weekly-hours 6``
    changes the hours, not the name)."""
    if second is not None:
        return first, second, True
    slug = slug_of(first)
    if not slug:
        raise UsageError(
            f"cannot make a slug from '{first}': give one first, like "
            f"'potluck {what} add my-{what} \"{first}\"'"
        )
    return slug, first, slug != first.strip()
