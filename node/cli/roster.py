"""Who does which work when: ``role``, ``shift`` and the ``roster`` they add up to."""

from __future__ import annotations

import datetime
import functools
import sqlite3
from collections.abc import Callable

import click

from eventlog import body as b
from node.app import Node
from node.cli import phrase, render
from node.cli.argument import DATE, DATETIME, HOURS, Count, slug_and_name
from node.cli.common import act, act_on, created, define, json_option, show
from projections import views

SHIFT_TYPES = ("shift.scheduled",)


@click.group()
def role() -> None:
    """Roles people hold, with the hours they ask for."""


@role.command("add")
@click.argument("slug")
@click.argument("name", required=False)
@click.option("--weekly-hours", type=HOURS, default=None, help="Needed for a new role.")
@click.option("--description", default=None, help="What the role involves.")
@json_option
def role_add(
    slug: str,
    name: str | None,
    weekly_hours: float | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Define a role ('role add "Food distribution" --weekly-hours 4', or with a slug
    'role add driver Driver ...'). Again for a defined role changes only what is given."""
    slug, name, named = slug_and_name(slug, name, "role")
    text = define(
        "role",
        slug,
        {"name": name if named else None, "weekly_hours": weekly_hours, "description": description},
        {"name": name, "description": ""},
        lambda f: b.RoleDefined(slug=slug, **f),  # type: ignore[arg-type]
    )
    created("role", slug, text, as_json)


@role.command("assign")
@click.argument("role_slug", metavar="ROLE")
@click.argument("member", metavar="MEMBER")
@click.option("--until", metavar="YYYY-MM-DD", type=DATE, default=None)
@json_option
def role_assign(role_slug: str, member: str, until: str | None, as_json: bool) -> None:
    """Give ROLE to MEMBER (a name or a key prefix)."""

    async def build(node: Node) -> b.BaseBody:
        return b.RoleAssigned(role=role_slug, member=await node.resolve_member(member), until=until)

    def said(db: sqlite3.Connection, body: b.BaseBody) -> str:
        assert isinstance(body, b.RoleAssigned)
        who = phrase.member_name(db, body.member)
        role_name = phrase.name_of(db, "roles", body.role)
        until_text = f" until {body.until}" if body.until else ""
        return f"{who} now holds the role {role_name} ({body.role}){until_text}."

    id_, text = act(build, said)
    created("role.assigned", id_, text, as_json)


@click.group()
def shift() -> None:
    """Shifts that need people."""


@shift.command("add")
@click.argument("role_slug", metavar="ROLE")
@click.option("--location", "location_slug", required=True)
@click.option("--start", type=DATETIME, required=True, metavar="ISO", help="e.g. 2026-12-01 09:00")
@click.option("--end", type=DATETIME, required=True, metavar="ISO")
@click.option("--slots", type=Count("slot"), required=True)
@json_option
def shift_add(
    role_slug: str, location_slug: str, start: str, end: str, slots: int, as_json: bool
) -> None:
    """Schedule a shift; prints its id."""
    body = b.ShiftScheduled(
        role=role_slug, location=location_slug, start=start, end=end, slots=slots
    )

    def said(db: sqlite3.Connection, _: b.BaseBody) -> str:
        where = phrase.shift_words(db, role_slug, location_slug, start, end)
        return f"New shift: {where}, {slots} slot{'s' if slots != 1 else ''}."

    id_, text = act(body, said)
    created("shift", id_, text, as_json)


def _shift_said(past: str) -> Callable[[sqlite3.Connection, b.BaseBody], str]:
    """``You signed up for Driver at Church pantry, 2026-12-12 09:00 to 12:00 (2 of 3
    slots filled).``"""

    def said(db: sqlite3.Connection, body: b.BaseBody) -> str:
        assert isinstance(body, b.ShiftSignedUp | b.ShiftWithdrawn | b.ShiftCompleted)
        target = body.shift
        found = phrase.shift(db, target.hex())
        if found is None:
            return f"You {past} shift {target.hex()}."
        where = phrase.shift_words(
            db, str(found["role"]), str(found["location"]), str(found["start"]), str(found["end"])
        )
        filled = f" ({found['filled']} of {found['slots']} slots filled)"
        if isinstance(body, b.ShiftCompleted):
            return f"Recorded {body.hours:g} h on {where}."
        over = int(str(found["filled"])) > int(str(found["slots"]))
        warning = ": more people than slots, the coordinator decides" if over else ""
        return f"You {past} {where}{filled}{warning}."

    return said


def _shift_step(
    name: str, cls: type[b.ShiftSignedUp] | type[b.ShiftWithdrawn], past: str, help_: str
) -> None:
    """Add ``shift NAME SHIFT_ID``: signing up and withdrawing differ only in the body."""

    @shift.command(name, help=help_)
    @click.argument("shift_id", metavar="SHIFT_ID")
    @json_option
    def step(shift_id: str, as_json: bool) -> None:
        id_, text = act_on(lambda id_: cls(shift=id_), shift_id, SHIFT_TYPES, _shift_said(past))
        created(cls.TYPE, id_, text, as_json)


_shift_step("signup", b.ShiftSignedUp, "signed up for", "Sign up for a shift; prints the id.")
_shift_step("withdraw", b.ShiftWithdrawn, "withdrew from", "Withdraw from a shift; prints the id.")


@shift.command("complete")
@click.argument("shift_id", metavar="SHIFT_ID")
@click.option("--hours", type=HOURS, required=True)
@json_option
def shift_complete(shift_id: str, hours: float, as_json: bool) -> None:
    """Report the hours you worked on a shift."""
    id_, text = act_on(
        lambda id_: b.ShiftCompleted(shift=id_, hours=hours),
        shift_id,
        SHIFT_TYPES,
        _shift_said("worked on"),
    )
    created("shift.completed", id_, text, as_json)


@click.command()
@json_option
@click.option("--week", metavar="YYYY-Www", default=None, help="Only this ISO week.")
def roster(as_json: bool, week: str | None) -> None:
    """Shifts with open slots, roles, and hours per person per week."""
    if week is not None:
        try:
            datetime.date.fromisoformat(week + "-1")
        except ValueError:
            raise click.BadParameter(
                f"'{week}' is not an ISO week like 2026-W48", param_hint="--week"
            ) from None

    show(functools.partial(views.roster, week=week), render.roster, as_json)


COMMANDS = (role, shift, roster)
