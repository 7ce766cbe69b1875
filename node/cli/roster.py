"""Who does which work when: ``role``, ``shift`` and the ``roster`` they add up to."""

from __future__ import annotations

import datetime

import click

from eventlog import body as b
from node.app import Node
from node.cli import render
from node.cli.common import created, json_option, post, post_ref, print_json, with_node
from projections import views

SHIFT_TYPES = ("shift.scheduled",)


@click.group()
def role() -> None:
    """Roles people hold, with the hours they ask for."""


@role.command("add")
@click.argument("slug")
@click.argument("name")
@click.option("--weekly-hours", type=float, required=True)
@click.option("--description", default="", help="What the role involves.")
@json_option
def role_add(slug: str, name: str, weekly_hours: float, description: str, as_json: bool) -> None:
    """Define a role."""
    post(b.RoleDefined(slug=slug, name=name, description=description, weekly_hours=weekly_hours))
    created("role", slug, f"Role {slug} ({name}, {weekly_hours:g} h/week) saved.", as_json)


@role.command("assign")
@click.argument("role_slug", metavar="ROLE")
@click.argument("member", metavar="MEMBER")
@click.option("--until", metavar="YYYY-MM-DD", default=None)
@json_option
def role_assign(role_slug: str, member: str, until: str | None, as_json: bool) -> None:
    """Give ROLE to MEMBER (a name or a key prefix)."""

    async def run(node: Node) -> str:
        key = await node.resolve_member(member)
        env = await node.post(b.RoleAssigned(role=role_slug, member=key, until=until))
        return env.hash.hex()

    id_ = with_node(run)
    created("role.assigned", id_, f"{member} now holds {role_slug}.", as_json)


@click.group()
def shift() -> None:
    """Shifts that need people."""


@shift.command("add")
@click.argument("role_slug", metavar="ROLE")
@click.option("--location", "location_slug", required=True)
@click.option("--start", required=True, metavar="ISO", help="e.g. 2026-12-01T09:00")
@click.option("--end", required=True, metavar="ISO")
@click.option("--slots", type=int, required=True)
@json_option
def shift_add(
    role_slug: str, location_slug: str, start: str, end: str, slots: int, as_json: bool
) -> None:
    """Schedule a shift; prints its id."""
    env = post(
        b.ShiftScheduled(role=role_slug, location=location_slug, start=start, end=end, slots=slots)
    )
    created(
        "shift",
        env,
        f"Shift {role_slug} at {location_slug}, {start} to {end}, {slots} slots.",
        as_json,
    )


def _shift_step(name: str, cls: type[b.ShiftSignedUp] | type[b.ShiftWithdrawn], past: str) -> None:
    """Add ``shift NAME SHIFT_ID``: signing up and withdrawing differ only in the body."""

    @shift.command(name)
    @click.argument("shift_id", metavar="SHIFT_ID")
    @json_option
    def step(shift_id: str, as_json: bool) -> None:
        env = post_ref(lambda id_: cls(shift=id_), shift_id, SHIFT_TYPES)
        created(cls.TYPE, env, f"You {past} shift {shift_id}.", as_json)

    step.__doc__ = f"You {past} a shift."


_shift_step("signup", b.ShiftSignedUp, "signed up for")
_shift_step("withdraw", b.ShiftWithdrawn, "withdrew from")


@shift.command("complete")
@click.argument("shift_id", metavar="SHIFT_ID")
@click.option("--hours", type=float, required=True)
@json_option
def shift_complete(shift_id: str, hours: float, as_json: bool) -> None:
    """Report the hours you worked on a shift."""
    env = post_ref(lambda id_: b.ShiftCompleted(shift=id_, hours=hours), shift_id, SHIFT_TYPES)
    created("shift.completed", env, f"Recorded {hours:g} h on shift {shift_id}.", as_json)


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
    data = with_node(lambda node: node.store.read(lambda db: views.roster(db, week)))
    if as_json:
        print_json(data)
        return
    render.roster(data)


COMMANDS = (role, shift, roster)
