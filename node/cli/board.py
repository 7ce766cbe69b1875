"""The board of offers and needs and the claims on them: ``offer``, ``need``, ``claim``,
``board``."""

from __future__ import annotations

import sqlite3

import click

from eventlog import body as b
from node.cli import phrase, render
from node.cli.argument import DATE
from node.cli.common import act, act_on, created, json_option, show
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
@click.option("--until", metavar="YYYY-MM-DD", type=DATE, default=None)
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
    body = b.OfferPosted(
        title=title,
        category=category,
        item=item_slug,
        quantity=quantity,
        location=location_slug,
        until=until,
    )
    id_, text = act(body, _posted)
    created("offer", id_, text, as_json)


@offer.command("withdraw")
@click.argument("offer_id", metavar="ID")
@json_option
def offer_withdraw(offer_id: str, as_json: bool) -> None:
    """Take an offer off the board."""
    id_, text = act_on(lambda id_: b.OfferWithdrawn(offer=id_), offer_id, OFFER_TYPES, _withdrawn)
    created("offer.withdrawn", id_, text, as_json)


@click.group()
def need() -> None:
    """Things people need."""


@need.command("post")
@click.argument("title")
@click.option("--category", default="general", show_default=True)
@click.option("--quantity", type=int, default=None)
@click.option("--urgency", type=click.Choice(b.URGENCIES), default="normal", show_default=True)
@click.option("--location", "location_slug", default=None)
@click.option("--by", "by_date", metavar="YYYY-MM-DD", type=DATE, default=None)
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
    body = b.NeedPosted(
        title=title,
        category=category,
        quantity=quantity,
        urgency=urgency,  # type: ignore[arg-type]
        location=location_slug,
        by=by_date,
    )
    id_, text = act(body, _posted)
    created("need", id_, text, as_json)


def _posted(db: sqlite3.Connection, body: b.BaseBody) -> str:
    """``You posted an offer of 10 "Vegetable soup" at Church pantry, until 2026-12-12.``"""
    assert isinstance(body, (b.OfferPosted, b.NeedPosted))
    offer = isinstance(body, b.OfferPosted)
    what = "an offer"
    if isinstance(body, b.NeedPosted):
        what = f"a{'n' if body.urgency == 'urgent' else ''} {body.urgency} need"
    if isinstance(body, b.OfferPosted) and body.item and body.quantity:
        thing = f"{phrase.amount(db, body.item, body.quantity)} ({phrase.quoted(body.title)})"
    else:
        thing = (f"{body.quantity} " if body.quantity else "") + phrase.quoted(body.title)
    where = f" at {phrase.name_of(db, 'locations', body.location)}" if body.location else ""
    date = body.until if isinstance(body, b.OfferPosted) else body.by
    until = f", {'until' if offer else 'by'} {date}" if date else ""
    return f"You posted {what} {'of' if offer else 'for'} {thing}{where}{until}."


@need.command("withdraw")
@click.argument("need_id", metavar="ID")
@json_option
def need_withdraw(need_id: str, as_json: bool) -> None:
    """Take a need off the board."""
    id_, text = act_on(lambda id_: b.NeedWithdrawn(need=id_), need_id, NEED_TYPES, _withdrawn)
    created("need.withdrawn", id_, text, as_json)


def _withdrawn(db: sqlite3.Connection, body: b.BaseBody) -> str:
    assert isinstance(body, (b.OfferWithdrawn, b.NeedWithdrawn))
    target = body.offer if isinstance(body, b.OfferWithdrawn) else body.need
    found = phrase.entry(db, target.hex())
    title = phrase.quoted(found["title"]) if found else target.hex()
    kind = "offer" if isinstance(body, b.OfferWithdrawn) else "need"
    return f"You withdrew your {kind} {title}: it is off the board."


@click.group()
def claim() -> None:
    """Claims on offers and needs."""


@claim.command("make")
@click.argument("target_id", metavar="TARGET_ID")
@click.option("--quantity", type=int, default=1, show_default=True)
@json_option
def claim_make(target_id: str, quantity: int, as_json: bool) -> None:
    """Claim QUANTITY of an offer (or pledge to a need); prints the claim's id."""
    id_, text = act_on(
        lambda id_: b.ClaimMade(target=id_, quantity=quantity), target_id, TARGET_TYPES, _claimed
    )
    created("claim", id_, text, as_json)


def _claimed(db: sqlite3.Connection, body: b.BaseBody) -> str:
    """``You claimed 4 of "Canned beans" from Ana.`` or ``You pledged 2 to "Nappies",
    a need of Bo's.``, with what is left or an over-claim said."""
    assert isinstance(body, b.ClaimMade)
    found = phrase.entry(db, body.target.hex())
    if found is None:
        return f"You claimed {body.quantity} of {body.target.hex()}."
    title = phrase.quoted(found["title"])
    if found["kind"] == "offer":
        text = f"You claimed {body.quantity} of {title} from {found['author_name']}."
    else:
        text = f"You pledged {body.quantity} to {title}, a need of {found['author_name']}'s."
    left = db.execute("SELECT remaining FROM board_entries WHERE id = ?", (body.target,)).fetchone()
    if left is not None and left[0] is not None and left[0] < 0:
        text += (
            f" That is {-left[0]} more than "
            + ("is offered" if found["kind"] == "offer" else "asked for")
            + ":"
            f" {found['author_name']} decides who gets it."
        )
    return text


def _claim_step(name: str, cls: type[b.ClaimStep], past: str) -> None:
    """Add ``claim NAME CLAIM_ID``: one step a claim goes through, all alike but the body."""

    @claim.command(name, help=f"Mark a claim {past}; prints the step's id.")
    @click.argument("claim_id", metavar="CLAIM_ID")
    @json_option
    def step(claim_id: str, as_json: bool) -> None:
        def said(db: sqlite3.Connection, body: b.BaseBody) -> str:
            assert isinstance(body, b.ClaimStep)
            found = phrase.claim(db, body.claim.hex())
            if found is None:
                return f"Claim {claim_id} {past}."
            made, on = found
            return (
                f"{made['claimant_name']}'s claim of {made['quantity']} on "
                f"{phrase.quoted(on['title'])} ({on['author_name']}'s {on['kind']}) is {past}."
            )

        id_, text = act_on(lambda id_: cls(claim=id_), claim_id, CLAIM_TYPES, said)
        created(cls.TYPE, id_, text, as_json)


_claim_step("confirm", b.ClaimConfirmed, "confirmed")
_claim_step("decline", b.ClaimDeclined, "declined")
_claim_step("release", b.ClaimReleased, "released")
_claim_step("fulfil", b.ClaimFulfilled, "fulfilled")


@click.command()
@json_option
def board(as_json: bool) -> None:
    """Open offers and needs, with claims and over-claims."""

    show(views.board, render.board, as_json)


COMMANDS = (offer, need, claim, board)
