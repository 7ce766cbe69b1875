"""What is kept where: ``location``, ``item``, ``stock`` and the ``inventory`` they add up to."""

from __future__ import annotations

import datetime
import functools
import sqlite3

import click

from eventlog import body as b
from node.cli import phrase, render
from node.cli.argument import DATE, slug_and_name
from node.cli.common import act, created, define, json_option, show
from projections import views


@click.group()
def location() -> None:
    """Places where things are kept: pantries, fridges, kitchens, homes."""


@location.command("add")
@click.argument("slug")
@click.argument("name", required=False)
@click.option("--kind", type=click.Choice(b.LOCATION_KINDS), default=None, help="Default: other.")
@json_option
def location_add(slug: str, name: str | None, kind: str | None, as_json: bool) -> None:
    """Define a location: 'location add "Church pantry"', or with a slug of your own,
    'location add pantry "Church pantry"'. Again for a defined one changes what is given."""
    slug, name, named = slug_and_name(slug, name, "location")
    text = define(
        "location",
        slug,
        {"name": name if named else None, "kind": kind},
        {"name": name, "kind": "other"},
        lambda f: b.LocationDefined(slug=slug, **f),  # type: ignore[arg-type]
    )
    created("location", slug, text, as_json)


@click.group()
def item() -> None:
    """Kinds of things that are stocked: beans, nappies, blankets."""


@item.command("add")
@click.argument("slug")
@click.argument("name", required=False)
@click.option("--unit", default=None, help="What one of it is: can, kg, pack.")
@click.option("--category", default=None, help="Default: general.")
@click.option("--storage", type=click.Choice(b.STORAGES), default=None, help="Default: ambient.")
@json_option
def item_add(
    slug: str,
    name: str | None,
    unit: str | None,
    category: str | None,
    storage: str | None,
    as_json: bool,
) -> None:
    """Define an item: 'item add "Canned beans" --unit can' (its slug: canned-beans), or
    'item add beans "Black beans" --unit can'. Again for a defined one changes what is
    given and keeps the rest."""
    slug, name, named = slug_and_name(slug, name, "item")
    text = define(
        "item",
        slug,
        {"name": name if named else None, "unit": unit, "category": category, "storage": storage},
        {"name": name, "category": "general", "storage": "ambient"},
        lambda f: b.ItemDefined(slug=slug, **f),  # type: ignore[arg-type]
    )
    created("item", slug, text, as_json)


@click.group()
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
@click.option("--expires", metavar="YYYY-MM-DD", type=DATE, default=None)
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
    body = b.StockAdjusted(
        item=item_slug,
        location=location_slug,
        delta=delta,
        reason=chosen,  # type: ignore[arg-type]
        expires=expires,
    )
    id_, text = act(body, _adjusted)
    created("stock.adjusted", id_, text, as_json)


def _adjusted(db: sqlite3.Connection, body: b.BaseBody) -> str:
    """``Added 12 cans of Black beans at Church pantry (donation); 19 on hand.``"""
    assert isinstance(body, b.StockAdjusted)
    verb = "Added" if body.delta > 0 else "Took away"
    lot = f", good until {body.expires}" if body.expires else ""
    return (
        f"{verb} {phrase.amount(db, body.item, abs(body.delta))} at "
        f"{phrase.name_of(db, 'locations', body.location)} ({body.reason}{lot})"
        f"{_on_hand(db, body.item, body.location)}."
    )


def _on_hand(db: sqlite3.Connection, item_slug: str, location_slug: str) -> str:
    row = db.execute(
        "SELECT on_hand FROM inventory WHERE item = ? AND location = ?",
        (item_slug, location_slug),
    ).fetchone()
    return "" if row is None else f"; {row[0]} on hand"


@stock.command("count", context_settings={"ignore_unknown_options": True})
@click.argument("item_slug", metavar="ITEM")
@click.argument("location_slug", metavar="LOCATION")
@click.argument("count", type=int)
@json_option
def stock_count(item_slug: str, location_slug: str, count: int, as_json: bool) -> None:
    """Record a physical count of ITEM at LOCATION."""
    id_, text = act(b.StockCounted(item=item_slug, location=location_slug, count=count), _counted)
    created("stock.counted", id_, text, as_json)


def _counted(db: sqlite3.Connection, body: b.BaseBody) -> str:
    assert isinstance(body, b.StockCounted)
    return (
        f"Counted {phrase.amount(db, body.item, body.count)} at "
        f"{phrase.name_of(db, 'locations', body.location)}"
        f"{_on_hand(db, body.item, body.location)}."
    )


@click.command()
@json_option
def inventory(as_json: bool) -> None:
    """Stock on hand per item and location."""
    show(functools.partial(views.inventory, today=datetime.date.today()), render.inventory, as_json)


COMMANDS = (location, item, stock, inventory)
