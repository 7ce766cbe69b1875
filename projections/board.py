"""The board: open offers and needs, their claims, and the over-claims offline work made.

Entity: one offer or need with all its claims (``board:<id hex>``), because whether a
claim is covered depends on every other claim on the same target.

Conflict rule (docs/events.md §claims): the holder (author of the offer or need) has the
last word. Until they decide, claims are ranked provisionally: confirmed and fulfilled
claims first, then pending ones, each by (hlc, author). Claims beyond the quantity in
that order are flagged ``over``; when the target is over-claimed, its pending claims are
flagged ``needs-decision`` so the holder sees whom to confirm and whom to decline.

Claim steps: confirm/decline by the holder; release by the claimant; fulfil by either.
From ``pending`` any step applies; from ``confirmed`` only release or fulfil; declined,
released and fulfilled are final. A step that breaks these rules is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from node import body as b
from projections.fold import Causality, Event, Lookup, Row, State, Table, fold_by_apply, ref_key

ACTIVE = ("pending", "confirmed", "fulfilled")
_STEP_STATUS = {
    "claim.confirmed": "confirmed",
    "claim.declined": "declined",
    "claim.released": "released",
    "claim.fulfilled": "fulfilled",
}
ALLOWED_FROM = {
    "confirmed": ("pending",),
    "declined": ("pending",),
    "released": ("pending", "confirmed"),
    "fulfilled": ("pending", "confirmed"),
}


def entity_of(target: bytes) -> str:
    return "board:" + target.hex()


class Board:
    NAME = "board"
    VERSION = 1
    TYPES: frozenset[str] = frozenset({
        "offer.posted", "offer.withdrawn", "need.posted", "need.withdrawn", "claim.made",
        *_STEP_STATUS,
    })
    TABLES: tuple[Table, ...] = (
        Table("board_entries", (
            ("id", "BLOB"), ("kind", "TEXT"), ("author", "BLOB"), ("hlc", "INTEGER"),
            ("title", "TEXT"), ("category", "TEXT"), ("item", "TEXT"), ("quantity", "INTEGER"),
            ("location", "TEXT"), ("until", "TEXT"), ("urgency", "TEXT"),
            ("status", "TEXT"), ("claimed", "INTEGER"), ("remaining", "INTEGER"),
            ("flags", "TEXT"),
        ), ("id",), "id"),
        Table("board_claims", (
            ("id", "BLOB"), ("target", "BLOB"), ("claimant", "BLOB"), ("quantity", "INTEGER"),
            ("hlc", "INTEGER"), ("status", "TEXT"), ("rank", "INTEGER"), ("flags", "TEXT"),
        ), ("id",), "target"),
    )

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        body = event.body
        if isinstance(body, (b.OfferPosted, b.NeedPosted)):
            return [entity_of(event.hash)]
        if isinstance(body, b.OfferWithdrawn):
            return [entity_of(body.offer)]
        if isinstance(body, b.NeedWithdrawn):
            return [entity_of(body.need)]
        if isinstance(body, b.ClaimMade):
            return [entity_of(body.target)]
        if isinstance(body, b.ClaimStep):
            # The claim is in this step's causal past, so the log always has it.
            claim = lookup(body.claim)
            if claim is not None and isinstance(claim.body, b.ClaimMade):
                return [entity_of(claim.body.target)]
            return []
        return []

    def apply(self, entity: str, state: State | None, event: Event,
              causality: Causality) -> State | None:
        s: State = state if state is not None else {"post": None, "withdrawn": False,
                                                    "claims": {}}
        body = event.body
        post = s["post"]
        claims = s["claims"]
        assert isinstance(claims, dict)
        if isinstance(body, (b.OfferPosted, b.NeedPosted)):
            s["post"] = _post(event, body)
        elif isinstance(body, (b.OfferWithdrawn, b.NeedWithdrawn)):
            if isinstance(post, dict) and post["author"] == event.author:
                s["withdrawn"] = True
        elif isinstance(body, b.ClaimMade):
            claims[event.hash.hex()] = {"id": event.hash, "claimant": event.author,
                                        "quantity": body.quantity, "ref": event.ref,
                                        "status": "pending"}
        elif isinstance(body, b.ClaimStep):
            claim = claims.get(body.claim.hex())
            if isinstance(claim, dict):
                _step(claim, event.body.TYPE, event.author,
                      post["author"] if isinstance(post, dict) else None)
        return s

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        return fold_by_apply(self, entity, events, causality)

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        post = state["post"]
        claims = state["claims"]
        assert isinstance(claims, dict)
        if not isinstance(post, dict):
            return {}  # claims on something this node has not seen posted (yet)
        quantity = post["quantity"]
        ranked = sorted(
            (c for c in claims.values() if c["status"] in ACTIVE),
            key=lambda c: (c["status"] == "pending", ref_key(c["ref"])),
        )
        claimed = sum(int(c["quantity"]) for c in ranked)
        over = isinstance(quantity, int) and claimed > quantity
        flags_of: dict[bytes, list[str]] = {}
        rank_of: dict[bytes, int] = {}
        running = 0
        for rank, claim in enumerate(ranked, start=1):
            running += int(claim["quantity"])
            flags = []
            if isinstance(quantity, int) and running > quantity:
                flags.append("over")
            if over and claim["status"] == "pending":
                flags.append("needs-decision")
            rank_of[claim["id"]] = rank
            flags_of[claim["id"]] = flags
        claim_rows: list[Row] = [
            (claim["id"], post["id"], claim["claimant"], claim["quantity"],
             ref_key(claim["ref"])[0], claim["status"], rank_of.get(claim["id"]),
             ",".join(flags_of.get(claim["id"], [])))
            for claim in sorted(claims.values(), key=lambda c: ref_key(c["ref"]))
        ]
        remaining = quantity - claimed if isinstance(quantity, int) else None
        entry: Row = (
            post["id"], post["kind"], post["author"], post["hlc"], post["title"],
            post["category"], post["item"], quantity, post["location"], post["until"],
            post["urgency"], "withdrawn" if state["withdrawn"] else "open", claimed,
            remaining, "over-claimed" if over else "",
        )
        return {"board_entries": [entry], "board_claims": claim_rows}


def _post(event: Event, body: b.OfferPosted | b.NeedPosted) -> State:
    offer = isinstance(body, b.OfferPosted)
    return {
        "id": event.hash, "kind": "offer" if offer else "need", "author": event.author,
        "hlc": event.hlc, "title": body.title, "category": body.category,
        "item": body.item if isinstance(body, b.OfferPosted) else None,
        "quantity": body.quantity, "location": body.location,
        "until": body.until if isinstance(body, b.OfferPosted) else body.by,
        "urgency": None if isinstance(body, b.OfferPosted) else body.urgency,
    }


def _step(claim: dict[str, object], type_: str, actor: bytes, holder: object) -> None:
    new = _STEP_STATUS[type_]
    if claim["status"] not in ALLOWED_FROM[new]:
        return
    by_holder = actor == holder
    by_claimant = actor == claim["claimant"]
    allowed = {
        "confirmed": by_holder, "declined": by_holder, "released": by_claimant,
        "fulfilled": by_holder or by_claimant,
    }[new]
    if allowed:
        claim["status"] = new
