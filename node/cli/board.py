"""The board of offers and needs and the claims on them: ``offer``, ``need``, ``claim``,
``board``."""

from __future__ import annotations

import click

from eventlog import body as b
from node.cli import render
from node.cli.common import created, json_option, post, post_ref, print_json, with_node
from projections import views

OFFER_TYPES = ("offer.posted",)
NEED_TYPES = ("need.posted",)
TARGET_TYPES = ("offer.posted", "need.posted")
CLAIM_TYPES = ("claim.made",)


@click.group()
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
    env = post(
        b.OfferPosted(
            title=title,
            category=category,
            item=item_slug,
            quantity=quantity,
            location=location_slug,
            until=until,
        )
    )
    created(
        "offer", env, f"Offer posted: {title}" + (f" ({quantity})" if quantity else ""), as_json
    )


@offer.command("withdraw")
@click.argument("offer_id", metavar="ID")
@json_option
def offer_withdraw(offer_id: str, as_json: bool) -> None:
    """Take an offer off the board."""
    env = post_ref(lambda id_: b.OfferWithdrawn(offer=id_), offer_id, OFFER_TYPES)
    created("offer.withdrawn", env, f"Offer {offer_id} withdrawn.", as_json)


@click.group()
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
    env = post(
        b.NeedPosted(
            title=title,
            category=category,
            quantity=quantity,
            urgency=urgency,  # type: ignore[arg-type]
            location=location_slug,
            by=by_date,
        )
    )
    created("need", env, f"Need posted: {title} ({urgency})", as_json)


@need.command("withdraw")
@click.argument("need_id", metavar="ID")
@json_option
def need_withdraw(need_id: str, as_json: bool) -> None:
    """Take a need off the board."""
    env = post_ref(lambda id_: b.NeedWithdrawn(need=id_), need_id, NEED_TYPES)
    created("need.withdrawn", env, f"Need {need_id} withdrawn.", as_json)


@click.group()
def claim() -> None:
    """Claims on offers and needs."""


@claim.command("make")
@click.argument("target_id", metavar="TARGET_ID")
@click.option("--quantity", type=int, default=1, show_default=True)
@json_option
def claim_make(target_id: str, quantity: int, as_json: bool) -> None:
    """Claim QUANTITY of an offer (or pledge to a need); prints the claim's id."""
    env = post_ref(lambda id_: b.ClaimMade(target=id_, quantity=quantity), target_id, TARGET_TYPES)
    created("claim", env, f"Claimed {quantity} of {target_id}.", as_json)


def _claim_step(name: str, cls: type[b.ClaimStep], past: str) -> None:
    """Add ``claim NAME CLAIM_ID``: one step a claim goes through, all alike but the body."""

    @claim.command(name)
    @click.argument("claim_id", metavar="CLAIM_ID")
    @json_option
    def step(claim_id: str, as_json: bool) -> None:
        env = post_ref(lambda id_: cls(claim=id_), claim_id, CLAIM_TYPES)
        created(cls.TYPE, env, f"Claim {claim_id} {past}.", as_json)

    step.__doc__ = f"Mark a claim {past}."


_claim_step("confirm", b.ClaimConfirmed, "confirmed")
_claim_step("decline", b.ClaimDeclined, "declined")
_claim_step("release", b.ClaimReleased, "released")
_claim_step("fulfil", b.ClaimFulfilled, "fulfilled")


@click.command()
@json_option
def board(as_json: bool) -> None:
    """Open offers and needs, with claims and over-claims."""
    data = with_node(lambda node: node.store.read(views.board))
    if as_json:
        print_json(data)
        return
    render.board(data)


COMMANDS = (offer, need, claim, board)
