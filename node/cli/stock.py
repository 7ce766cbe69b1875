"""What is kept where: ``location``, ``item``, ``stock`` and the ``inventory`` they add up to."""

from __future__ import annotations

import datetime

import click

from eventlog import body as b
from node.cli import render
from node.cli.common import created, json_option, post, print_json, with_node
from projections import views


@click.group()
def location() -> None:
    """Places where things are kept: pantries, fridges, kitchens, homes."""


@location.command("add")
@click.argument("slug")
@click.argument("name")
@click.option("--kind", type=click.Choice(b.LOCATION_KINDS), default="other", show_default=True)
@json_option
def location_add(slug: str, name: str, kind: str, as_json: bool) -> None:
    """Define a location (SLUG is a short name like 'church-pantry')."""
    post(b.LocationDefined(slug=slug, name=name, kind=kind))  # type: ignore[arg-type]
    created("location", slug, f"Location {slug} ({name}) saved.", as_json)


@click.group()
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
    post(b.ItemDefined(slug=slug, name=name, unit=unit, category=category, storage=storage))  # type: ignore[arg-type]
    created("item", slug, f"Item {slug} ({name}, per {unit}) saved.", as_json)


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
    env = post(
        b.StockAdjusted(
            item=item_slug,
            location=location_slug,
            delta=delta,
            reason=chosen,  # type: ignore[arg-type]
            expires=expires,
        )
    )
    created(
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
    env = post(b.StockCounted(item=item_slug, location=location_slug, count=count))
    created("stock.counted", env, f"Counted {count} of {item_slug} at {location_slug}.", as_json)


@click.command()
@json_option
def inventory(as_json: bool) -> None:
    """Stock on hand per item and location."""
    today = datetime.date.today()
    data = with_node(lambda node: node.store.read(lambda db: views.inventory(db, today)))
    if as_json:
        print_json(data)
        return
    render.inventory(data)


COMMANDS = (location, item, stock, inventory)
