"""The ``potluck`` command: every action a volunteer takes, from a terminal.

Contract (docs/cli.md): a command that creates something prints its id alone on the last
line of stdout; ids are accepted back as any unique prefix of at least 6 hex characters;
``--json`` prints one JSON document with a documented schema; an error is one line on
stderr, the exit code is non-zero, and nothing is written (each write is one
transaction, taken only after every argument was checked).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
import segno
from rich.console import Console
from rich.table import Table

from eventlog import body as b
from eventlog.errors import InvalidBody, PotluckError, UsageError
from eventlog.identity import Group
from node.app import Node, default_data_dir
from projections import views
from projections.views import hlc_time
from sync.bundle import export_bundle, import_bundle, read_vector_file, write_vector_file
from sync.invite import invite_length

if TYPE_CHECKING:
    from node.web.server import UiServer

T = TypeVar("T")
EXIT_USAGE = 2
EXIT_FAILED = 1

_console = Console(highlight=False, soft_wrap=True)
OFFER_TYPES = ("offer.posted",)
NEED_TYPES = ("need.posted",)
TARGET_TYPES = ("offer.posted", "need.posted")
CLAIM_TYPES = ("claim.made",)
SHIFT_TYPES = ("shift.scheduled",)


def _data_dir() -> Path:
    ctx = click.get_current_context()
    root = ctx.find_root()
    value = root.params.get("data_dir")
    return Path(value) if value else default_data_dir()


def _with_node(action: Callable[[Node], Awaitable[T]]) -> T:
    """Open the node of ``--data-dir``, run ``action``, close it."""

    async def run() -> T:
        node = await Node.open(_data_dir())
        try:
            return await action(node)
        finally:
            await node.close()

    return asyncio.run(run())


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _created(what: str, id_: str, summary: str, as_json: bool) -> None:
    if as_json:
        _print_json({"id": id_, "type": what})
        return
    click.echo(summary)
    click.echo(id_)


def _short(hex_id: str) -> str:
    return hex_id[:8]


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="POTLUCK_HOME",
    help="Where this node keeps its key and log (default: $POTLUCK_HOME or the "
    "user's data directory).",
)
@click.version_option(package_name="potluck")
def cli(data_dir: Path | None) -> None:
    """Potluck: offers, needs, stock and shifts for a mutual-aid network, offline-first."""


# -- identity ------------------------------------------------------------------------


@cli.command()
@click.option("--name", required=True, help="Your name, as others will see it.")
@click.option("--new-group", "group_name", default=None, help="Start a new group with this name.")
@click.option(
    "--join",
    "code",
    default=None,
    metavar="CODE",
    help="Join the group of an invite code (from 'potluck invite').",
)
@json_option
def init(name: str, group_name: str | None, code: str | None, as_json: bool) -> None:
    """Create this node: start a new group, or join one with an invite code."""
    if (group_name is None) == (code is None):
        raise click.UsageError("give either --new-group NAME or --join CODE")

    async def run() -> dict[str, str]:
        if code is not None:
            node = await Node.join(_data_dir(), name, code)
        else:
            assert group_name is not None
            node = await Node.init(_data_dir(), name, Group.new(group_name))
        try:
            return {
                "name": name,
                "key": node.author.hex(),
                "group": node.group.name,
                "group_id": node.group.id.hex(),
                "data_dir": str(node.data_dir),
            }
        finally:
            await node.close()

    info = asyncio.run(run())
    if as_json:
        _print_json(info)
        return
    if code is not None:
        click.echo(
            f"Joined group '{info['group']}' as {name}. Run 'potluck serve' to catch "
            "up with the group (it dials the addresses in the invite)."
        )
    else:
        click.echo(f"Created group '{info['group']}' with you, {name}, as its first member.")
    click.echo(f"Your node lives in {info['data_dir']}.")
    click.echo(info["key"])


@cli.command()
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="HOST:PORT",
    help="Where others can reach this node (default: this machine's addresses "
    "and the port 'potluck serve' listens on).",
)
@click.option(
    "--expires-in",
    "expires_in",
    default=None,
    metavar="DURATION",
    help="Stop the code working after this long: 30m, 12h, 7d.",
)
@click.option("--qr", is_flag=True, help="Also print the code as a QR code.")
@click.option(
    "--qr-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the QR code as an image (.png or .svg).",
)
@json_option
def invite(
    addresses: tuple[str, ...],
    expires_in: str | None,
    qr: bool,
    qr_file: Path | None,
    as_json: bool,
) -> None:
    """Print an invite code for a new neighbour (it holds the group's secret)."""
    valid_for = _duration(expires_in) if expires_in else None
    code = _with_node(lambda node: node.invite(addresses, valid_for=valid_for))
    symbol = segno.make(code.upper(), error="m") if (qr or qr_file) else None
    if symbol is not None and qr_file is not None:
        try:
            symbol.save(str(qr_file), scale=8, border=4)
        except OSError as exc:
            raise UsageError(f"cannot write {qr_file}: {exc.strerror or exc}") from None
    if as_json:
        _print_json(
            {
                "code": code,
                "length": invite_length(code),
                "expires_in_seconds": valid_for,
                "qr_file": str(qr_file) if qr_file else None,
            }
        )
        return
    click.echo(
        "Anyone with this code can join the group and read everything in it: share it in person."
    )
    if symbol is not None and qr:
        symbol.terminal(compact=True)
    click.echo(code)


def _duration(text: str) -> float:
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1])
        unit = units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise click.BadParameter(
            f"'{text}' is not a duration like 30m, 12h or 7d", param_hint="--expires-in"
        ) from None
    if value <= 0:
        raise click.BadParameter("must be positive", param_hint="--expires-in")
    return value * unit


@cli.command()
@json_option
def whoami(as_json: bool) -> None:
    """Who this node is, and in which group."""

    async def run(node: Node) -> dict[str, object]:
        members = await node.store.read(views.members)
        me = next((m for m in members if m["key"] == node.author.hex()), None)
        return {
            "name": me["name"] if me else None,
            "key": node.author.hex(),
            "group": node.group.name,
            "group_id": node.group.id.hex(),
            "members": len(members),
            "events": await node.store.count(),
            "data_dir": str(node.data_dir),
            "forks": await node.forks(),
        }

    info = _with_node(run)
    if as_json:
        _print_json(info)
        return
    click.echo(
        f"{info['name']} ({_short(str(info['key']))}) in group '{info['group']}': "
        f"{info['members']} members, {info['events']} events"
    )
    click.echo(f"data: {info['data_dir']}")
    forks = info["forks"]
    assert isinstance(forks, list)
    for fork in forks:
        click.echo(
            f"warning: {fork['name'] or fork['key'][:8]} wrote {fork['versions']} "
            f"different events as #{fork['seq']}; their events from there on are "
            "left out of the board until this is sorted out"
        )


# -- catalog -------------------------------------------------------------------------


@cli.group()
def location() -> None:
    """Places where things are kept: pantries, fridges, kitchens, homes."""


@location.command("add")
@click.argument("slug")
@click.argument("name")
@click.option("--kind", type=click.Choice(b.LOCATION_KINDS), default="other", show_default=True)
@json_option
def location_add(slug: str, name: str, kind: str, as_json: bool) -> None:
    """Define a location (SLUG is a short name like 'church-pantry')."""
    _post(b.LocationDefined(slug=slug, name=name, kind=kind))  # type: ignore[arg-type]
    _created("location", slug, f"Location {slug} ({name}) saved.", as_json)


@cli.group()
def item() -> None:
    """Kinds of things that are stocked: beans, nappies, blankets."""


@item.command("add")
@click.argument("slug")
@click.argument("name")
@click.option("--unit", required=True, help="What one of it is: can, kg, pack.")
@click.option("--category", default="general", show_default=True)
@click.option("--storage", type=click.Choice(b.STORAGES), default="ambient", show_default=True)
@json_option
def item_add(slug: str, name: str, unit: str, category: str, storage: str, as_json: bool) -> None:
    """Define an item."""
    _post(b.ItemDefined(slug=slug, name=name, unit=unit, category=category, storage=storage))  # type: ignore[arg-type]
    _created("item", slug, f"Item {slug} ({name}, per {unit}) saved.", as_json)


# -- stock ---------------------------------------------------------------------------


@cli.group()
def stock() -> None:
    """Stock changes and physical counts."""


@stock.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("item_slug", metavar="ITEM")
@click.argument("location_slug", metavar="LOCATION")
@click.argument("delta", type=int)
@click.option(
    "--reason",
    type=click.Choice(b.STOCK_REASONS),
    default=None,
    help="Default: donation when DELTA > 0, distribution when < 0.",
)
@click.option("--expires", metavar="YYYY-MM-DD", default=None)
@json_option
def stock_adjust(
    item_slug: str,
    location_slug: str,
    delta: int,
    reason: str | None,
    expires: str | None,
    as_json: bool,
) -> None:
    """Add (DELTA > 0) or take away (DELTA < 0) stock of ITEM at LOCATION."""
    chosen = reason or ("donation" if delta > 0 else "distribution")
    env = _post(
        b.StockAdjusted(
            item=item_slug,
            location=location_slug,
            delta=delta,
            reason=chosen,  # type: ignore[arg-type]
            expires=expires,
        )
    )
    _created(
        "stock.adjusted",
        env,
        f"Stock of {item_slug} at {location_slug}: {delta:+d} ({chosen}).",
        as_json,
    )


@stock.command("count", context_settings={"ignore_unknown_options": True})
@click.argument("item_slug", metavar="ITEM")
@click.argument("location_slug", metavar="LOCATION")
@click.argument("count", type=int)
@json_option
def stock_count(item_slug: str, location_slug: str, count: int, as_json: bool) -> None:
    """Record a physical count of ITEM at LOCATION."""
    env = _post(b.StockCounted(item=item_slug, location=location_slug, count=count))
    _created("stock.counted", env, f"Counted {count} of {item_slug} at {location_slug}.", as_json)


# -- offers, needs, claims -----------------------------------------------------------


@cli.group()
def offer() -> None:
    """Things people can give."""


@offer.command("post")
@click.argument("title")
@click.option("--category", default="general", show_default=True)
@click.option("--item", "item_slug", default=None, help="The item, if it is stocked.")
@click.option("--quantity", type=int, default=None)
@click.option("--location", "location_slug", default=None)
@click.option("--until", metavar="YYYY-MM-DD", default=None)
@json_option
def offer_post(
    title: str,
    category: str,
    item_slug: str | None,
    quantity: int | None,
    location_slug: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Post an offer; prints its id."""
    env = _post(
        b.OfferPosted(
            title=title,
            category=category,
            item=item_slug,
            quantity=quantity,
            location=location_slug,
            until=until,
        )
    )
    _created(
        "offer", env, f"Offer posted: {title}" + (f" ({quantity})" if quantity else ""), as_json
    )


@offer.command("withdraw")
@click.argument("offer_id", metavar="ID")
@json_option
def offer_withdraw(offer_id: str, as_json: bool) -> None:
    """Take an offer off the board."""
    env = _post_ref(lambda id_: b.OfferWithdrawn(offer=id_), offer_id, OFFER_TYPES)
    _created("offer.withdrawn", env, f"Offer {offer_id} withdrawn.", as_json)


@cli.group()
def need() -> None:
    """Things people need."""


@need.command("post")
@click.argument("title")
@click.option("--category", default="general", show_default=True)
@click.option("--quantity", type=int, default=None)
@click.option("--urgency", type=click.Choice(b.URGENCIES), default="normal", show_default=True)
@click.option("--location", "location_slug", default=None)
@click.option("--by", "by_date", metavar="YYYY-MM-DD", default=None)
@json_option
def need_post(
    title: str,
    category: str,
    quantity: int | None,
    urgency: str,
    location_slug: str | None,
    by_date: str | None,
    as_json: bool,
) -> None:
    """Post a need; prints its id."""
    env = _post(
        b.NeedPosted(
            title=title,
            category=category,
            quantity=quantity,
            urgency=urgency,  # type: ignore[arg-type]
            location=location_slug,
            by=by_date,
        )
    )
    _created("need", env, f"Need posted: {title} ({urgency})", as_json)


@need.command("withdraw")
@click.argument("need_id", metavar="ID")
@json_option
def need_withdraw(need_id: str, as_json: bool) -> None:
    """Take a need off the board."""
    env = _post_ref(lambda id_: b.NeedWithdrawn(need=id_), need_id, NEED_TYPES)
    _created("need.withdrawn", env, f"Need {need_id} withdrawn.", as_json)


@cli.group()
def claim() -> None:
    """Claims on offers and needs."""


@claim.command("make")
@click.argument("target_id", metavar="TARGET_ID")
@click.option("--quantity", type=int, default=1, show_default=True)
@json_option
def claim_make(target_id: str, quantity: int, as_json: bool) -> None:
    """Claim QUANTITY of an offer (or pledge to a need); prints the claim's id."""
    env = _post_ref(lambda id_: b.ClaimMade(target=id_, quantity=quantity), target_id, TARGET_TYPES)
    _created("claim", env, f"Claimed {quantity} of {target_id}.", as_json)


def _claim_step(name: str, cls: type[b.ClaimStep], past: str) -> None:
    @claim.command(name)
    @click.argument("claim_id", metavar="CLAIM_ID")
    @json_option
    def step(claim_id: str, as_json: bool) -> None:
        env = _post_ref(lambda id_: cls(claim=id_), claim_id, CLAIM_TYPES)
        _created(cls.TYPE, env, f"Claim {claim_id} {past}.", as_json)

    step.__doc__ = f"Mark a claim {past}."


_claim_step("confirm", b.ClaimConfirmed, "confirmed")
_claim_step("decline", b.ClaimDeclined, "declined")
_claim_step("release", b.ClaimReleased, "released")
_claim_step("fulfil", b.ClaimFulfilled, "fulfilled")


# -- roles and shifts ----------------------------------------------------------------


@cli.group()
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
    _post(b.RoleDefined(slug=slug, name=name, description=description, weekly_hours=weekly_hours))
    _created("role", slug, f"Role {slug} ({name}, {weekly_hours:g} h/week) saved.", as_json)


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

    id_ = _with_node(run)
    _created("role.assigned", id_, f"{member} now holds {role_slug}.", as_json)


@cli.group()
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
    env = _post(
        b.ShiftScheduled(role=role_slug, location=location_slug, start=start, end=end, slots=slots)
    )
    _created(
        "shift",
        env,
        f"Shift {role_slug} at {location_slug}, {start} to {end}, {slots} slots.",
        as_json,
    )


def _shift_step(name: str, cls: type[b.ShiftSignedUp] | type[b.ShiftWithdrawn], past: str) -> None:
    @shift.command(name)
    @click.argument("shift_id", metavar="SHIFT_ID")
    @json_option
    def step(shift_id: str, as_json: bool) -> None:
        env = _post_ref(lambda id_: cls(shift=id_), shift_id, SHIFT_TYPES)
        _created(cls.TYPE, env, f"You {past} shift {shift_id}.", as_json)

    step.__doc__ = f"You {past} a shift."


_shift_step("signup", b.ShiftSignedUp, "signed up for")
_shift_step("withdraw", b.ShiftWithdrawn, "withdrew from")


@shift.command("complete")
@click.argument("shift_id", metavar="SHIFT_ID")
@click.option("--hours", type=float, required=True)
@json_option
def shift_complete(shift_id: str, hours: float, as_json: bool) -> None:
    """Report the hours you worked on a shift."""
    env = _post_ref(lambda id_: b.ShiftCompleted(shift=id_, hours=hours), shift_id, SHIFT_TYPES)
    _created("shift.completed", env, f"Recorded {hours:g} h on shift {shift_id}.", as_json)


# -- reading -------------------------------------------------------------------------


@cli.command()
@json_option
def board(as_json: bool) -> None:
    """Open offers and needs, with claims and over-claims."""
    data = _with_node(lambda node: node.store.read(views.board))
    if as_json:
        _print_json(data)
        return
    for kind in ("offers", "needs"):
        table = Table(title=kind.capitalize(), title_justify="left")
        for column in ("id", "title", "qty", "claimed", "left", "flags"):
            table.add_column(column)
        for entry in data[kind]:
            table.add_row(
                _short(str(entry["id"])),
                str(entry["title"]),
                _text(entry["quantity"]),
                str(entry["claimed"]),
                _text(entry["remaining"]),
                _flag_text(entry["flags"]),
            )
            claims = entry["claims"]
            assert isinstance(claims, list)
            for c in claims:
                table.add_row(
                    "  " + _short(c["id"]),
                    f"  claim by {c['claimant_name']}",
                    str(c["quantity"]),
                    c["status"],
                    "",
                    _flag_text(c["flags"]),
                )
        _console.print(table)


@cli.command()
@json_option
def inventory(as_json: bool) -> None:
    """Stock on hand per item and location."""
    today = datetime.date.today()
    data = _with_node(lambda node: node.store.read(lambda db: views.inventory(db, today)))
    if as_json:
        _print_json(data)
        return
    table = Table(title="Inventory", title_justify="left")
    for column in ("location", "item", "on hand", "expires", "flags"):
        table.add_column(column)
    for row in data["rows"]:
        table.add_row(
            str(row["location"]),
            str(row["item"]),
            str(row["on_hand"]),
            _text(row["expires"]),
            _flag_text(row["flags"]),
        )
    _console.print(table)


@cli.command()
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
    data = _with_node(lambda node: node.store.read(lambda db: views.roster(db, week)))
    if as_json:
        _print_json(data)
        return
    table = Table(title="Shifts", title_justify="left")
    for column in ("id", "role", "where", "start", "end", "filled", "people", "flags"):
        table.add_column(column)
    for s in data["shifts"]:
        members = s["members"]
        assert isinstance(members, list)
        table.add_row(
            _short(str(s["id"])),
            str(s["role"]),
            str(s["location"]),
            str(s["start"]),
            str(s["end"]),
            f"{s['filled']}/{s['slots']}",
            ", ".join(str(m["name"]) for m in members),
            _flag_text(s["flags"]),
        )
    _console.print(table)
    hours = Table(title="Hours", title_justify="left")
    for column in ("week", "who", "hours"):
        hours.add_column(column)
    for h in data["hours"]:
        hours.add_row(str(h["week"]), str(h["name"]), f"{h['hours']:g}")
    _console.print(hours)


@cli.command()
@json_option
@click.option("--type", "type_", default=None, help="Only events of this type.")
@click.option("--author", default=None, help="Only events by this member (name or key).")
def log(as_json: bool, type_: str | None, author: str | None) -> None:
    """The events in this node's log, in canonical order."""

    async def run(node: Node) -> list[dict[str, object]]:
        who = await node.resolve_member(author) if author else None
        names = dict(
            (bytes.fromhex(m["key"]), m["name"]) for m in await node.store.read(views.members)
        )
        return [
            {
                "id": e.hash.hex(),
                "author": e.author.hex(),
                "author_name": names.get(e.author),
                "seq": e.seq,
                "hlc": e.hlc,
                "time": hlc_time(e.hlc),
                "type": e.type,
                "body": _jsonable(e.body),
            }
            async for e in node.iter_log(type_=type_, author=who)
        ]

    entries = _with_node(run)
    if as_json:
        _print_json({"events": entries})
        return
    for e in entries:
        click.echo(
            f"{e['time']}  {_short(str(e['id']))}  {e['author_name']}#{e['seq']}  {e['type']}"
        )


@cli.command()
@json_option
def rebuild(as_json: bool) -> None:
    """Fold every event again into fresh projections."""

    async def run(node: Node) -> tuple[int, str]:
        count = await node.store.write(node.runner.rebuild)
        return count, await node.store.read(node.runner.digest)

    count, digest = _with_node(run)
    if as_json:
        _print_json({"events": count, "digest": digest})
    else:
        click.echo(f"Rebuilt projections from {count} events.")
        click.echo(digest)


@cli.command()
@json_option
def digest(as_json: bool) -> None:
    """The projection digest: equal on every node holding the same events."""
    value = _with_node(lambda node: node.store.read(node.runner.digest))
    _print_json({"digest": value}) if as_json else click.echo(value)


@cli.command()
@click.option(
    "--repair",
    "fix",
    is_flag=True,
    help="Rebuild projections, set aside events that do not verify, salvage a "
    "damaged file into a fresh one (stop 'potluck serve' first).",
)
@json_option
def doctor(fix: bool, as_json: bool) -> None:
    """Check the database in plain words; exit 1 while problems remain."""
    from node import doctor as checkup  # the node is not opened: it may be damaged

    run = checkup.repair if fix else checkup.examine
    report = asyncio.run(run(_data_dir()))
    if as_json:
        _print_json(report.to_json())
    else:
        for line in checkup.render(report, repaired=fix):
            click.echo(line)
    if not report.healthy:
        sys.exit(EXIT_FAILED)


# -- sync --------------------------------------------------------------------------


@cli.command()
@click.option(
    "--listen",
    default="0.0.0.0:7717",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to accept other nodes.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="A node to keep in sync with (repeatable).",
)
@click.option(
    "--ui",
    "ui",
    default="127.0.0.1:7718",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to show the web page. Another host than 127.0.0.1 prints a "
    "login link with a new access token (valid until serve stops).",
)
@click.option("--no-ui", is_flag=True, help="Do not show the web page.")
@click.option(
    "--no-discovery",
    is_flag=True,
    help="Neither advertise this node nor look for the group's nodes on the local network (mDNS).",
)
def serve(listen: str, peers: tuple[str, ...], ui: str, no_ui: bool, no_discovery: bool) -> None:
    """Run this node: accept peers, dial known ones, push and relay events live."""

    def say(line: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        click.echo(f"{stamp} {line}")

    async def run(node: Node) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signame in ("SIGINT", "SIGTERM"):
            loop.add_signal_handler(getattr(signal, signame), stop.set)
        page = None if no_ui else _web_server(node, ui, say)
        page_task = asyncio.create_task(page.serve()) if page is not None else None
        try:
            await node.serve(
                listen=listen, peers=peers, stop=stop, say=say, discover=not no_discovery
            )
        finally:
            if page is not None and page_task is not None:
                page.should_exit = True
                await page_task
        say("stopped")

    _with_node(run)


def _web_server(node: Node, address: str, say: Callable[[str], None]) -> UiServer:
    from node.web import create_server, new_token
    from node.web.server import is_loopback, parse_address

    host, port = parse_address(address)
    token = None if is_loopback(host) else new_token()
    page = create_server(node, host, port, token=token, peer_vectors=node.peer_vectors)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if token is None:
        say(f"web page on http://{shown}:{port}/")
    else:
        say(
            f"web page on http://{shown}:{port}/ : log in once per device with "
            f"http://{shown}:{port}/?token={token}"
        )
    return page


@cli.group()
def bundle() -> None:
    """Carry the log on a USB stick when there is no network between two places."""


@bundle.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--since",
    "since_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="VECTOR_FILE",
    help="Only what the other node lacks (its 'potluck bundle have' file).",
)
@json_option
def bundle_export(file: Path, since_file: Path | None, as_json: bool) -> None:
    """Write this node's events (encrypted for the group) to FILE."""
    since = read_vector_file(since_file) if since_file else None
    info = _with_node(lambda node: export_bundle(node.store, file, since=since))
    if as_json:
        _print_json(
            {
                "file": str(file),
                "events": info.events,
                "bytes": info.bytes,
                "authors": info.authors,
                "evidence": info.evidence,
            }
        )
    else:
        click.echo(
            f"Wrote {info.events} events from {info.authors} members to {file} "
            f"({info.bytes:,} bytes)."
        )
        if info.evidence:
            click.echo(
                f"It also carries the proof that {info.evidence} member(s) wrote two "
                "versions of one event: whoever imports it leaves their later events "
                "out too."
            )


@bundle.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def bundle_import(file: Path, as_json: bool) -> None:
    """Add the events of a bundle FILE to this node (checked like any peer's)."""
    result = _with_node(lambda node: import_bundle(node.store, file))
    if as_json:
        _print_json(
            {
                "file": str(file),
                "stored": result.stored,
                "duplicates": result.duplicates,
                "held": result.held,
                "rejected": result.rejected,
                "reasons": result.reasons,
                "forks": [[a.hex(), seq] for a, seq in result.forks],
                "evidence": result.evidence,
            }
        )
        return
    click.echo(
        f"Imported {result.stored} new events ({result.duplicates} already here"
        + (f", {result.rejected} refused" if result.rejected else "")
        + (f", {result.held} waiting for earlier events" if result.held else "")
        + ")."
    )
    if result.evidence:
        click.echo(
            f"It proved that {result.evidence} member(s) wrote two versions of one "
            "event: their events from there on are left out until people sort it out."
        )
    for reason in result.reasons:
        click.echo(f"  refused: {reason}")


@bundle.command("have")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def bundle_have(file: Path) -> None:
    """Write what this node has (a vector file) for the other side's --since."""
    vector = _with_node(lambda node: write_vector_file(node.store, file))
    click.echo(f"Wrote what this node has ({len(vector)} members' logs) to {file}.")


@cli.command("sync")
@click.argument("address", metavar="HOST:PORT")
@json_option
def sync_command(address: str, as_json: bool) -> None:
    """Catch up both ways with one node, then exit."""
    report = _with_node(lambda node: node.sync_once(address))
    if as_json:
        _print_json(report)
        return
    who = report["peer_name"] or _short(str(report["peer"]))
    click.echo(
        f"Synced with {who} at {report['address']}: received {report['received']} "
        f"events, sent {report['sent']}."
    )
    if report["held_future"]:
        click.echo(
            f"Held {report['held_future']} events stamped more than 24 hours ahead of "
            "this computer's clock: they wait for their time, unapplied. Check both "
            "clocks; 'potluck doctor' lists them."
        )
    if report["evidence_in"] or report["evidence_out"]:
        click.echo(
            f"Proof that a member wrote two versions of one event: received "
            f"{report['evidence_in']}, sent {report['evidence_out']}. Their events "
            "from there on are left out of the board; 'potluck whoami' names them."
        )


@cli.command()
@json_option
def peers(as_json: bool) -> None:
    """Known and connected peers, when each was last seen, and how far behind."""
    rows = _with_node(lambda node: node.peers())
    if as_json:
        _print_json({"peers": rows})
        return
    table = Table(title="Peers", title_justify="left")
    for column in ("who", "address", "found", "connected", "last seen", "behind", "ahead"):
        table.add_column(column)
    for r in rows:
        who = r["name"] or (_short(str(r["key"])) if r["key"] else "")
        table.add_row(
            str(who),
            str(r["address"]),
            str(r["found"]),
            "yes" if r["connected"] else "no",
            _text(r["last_seen"]),
            _text(r["behind"]),
            _text(r["ahead"]),
        )
    _console.print(table)


@cli.command()
@json_option
def demo(as_json: bool) -> None:
    """Two volunteers, an outage and the last 10 cans: see a conflict shown, not lost.

    Creates two nodes (ana/ and bo/) under --data-dir, makes them disagree offline,
    syncs them over 127.0.0.1 and prints what both now show.
    """
    from node.demo import run_demo

    lines: list[str] = []
    say = lines.append if as_json else click.echo
    report = asyncio.run(run_demo(_data_dir(), say))
    if as_json:
        _print_json({**report, "story": lines})
    else:
        click.echo(f"Look around: potluck --data-dir {report['nodes'][0]} board")  # type: ignore[index]


# -- helpers -------------------------------------------------------------------------


def _post(body: b.BaseBody) -> str:
    """Append ``body`` as this node's next event; return the new event's id (hex)."""

    async def run(node: Node) -> str:
        return (await node.post(body)).hash.hex()

    return _with_node(run)


def _post_ref(build: Callable[[bytes], b.BaseBody], prefix: str, types: Sequence[str]) -> str:
    """Resolve ``prefix`` to an entity id, build the body with it and append it."""

    async def run(node: Node) -> str:
        target = await node.resolve(prefix, types)
        return (await node.post(build(target))).hash.hex()

    return _with_node(run)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _flag_text(flags: object) -> str:
    return ", ".join(flags) if isinstance(flags, list) else ""


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="potluck",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("potluck: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        message = exc.format_message().replace("\n", " ")
        click.echo(f"potluck: {message}", err=True)
        sys.exit(exc.exit_code)
    except InvalidBody as exc:
        click.echo(
            f"potluck: {exc.field.replace('_', ' ')}: {str(exc).split(': ', 1)[1]}", err=True
        )
        sys.exit(EXIT_USAGE)
    except UsageError as exc:
        click.echo(f"potluck: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except PotluckError as exc:
        click.echo(f"potluck: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"potluck: {exc.strerror or exc}{where}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("potluck: interrupted", err=True)
        sys.exit(130)
