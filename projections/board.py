"""The board: offers and needs, their claims, and the conflicts offline work made.

Entity: one offer or need with all its claims (``board:<id hex>``), because whether a
claim is covered depends on every other claim on the same target.

Conflict rule (docs/events.md §claims): the holder (author of the offer or need) has the
last word. Until they decide, claims are ranked provisionally: confirmed and fulfilled
claims first, then pending ones, each by (hlc, author). Claims beyond the quantity in
that order are flagged ``over``; when the target is over-claimed, its pending claims are
flagged ``needs-decision`` so the holder sees whom to confirm and whom to decline.

Claim steps: confirm/decline by the holder; release by the claimant; fulfil by either.
From ``pending`` any step applies; from ``confirmed`` only release or fulfil; declined,
released and fulfilled are final. A step that breaks these rules is ignored, but for one
case: a release and a fulfilment made apart (neither had seen the other). A fulfilment
is a fact about goods that changed hands, so the claim counts as fulfilled, whichever
sorts first, and is flagged ``disputed`` with both steps kept.

A claim still pending or confirmed when its target is withdrawn is flagged
``target-withdrawn``, so its claimant is told. A need whose fulfilled claims cover its
quantity (or, without a quantity, that has a fulfilled claim and none pending or
confirmed) is ``met``: off the open board, still in its history.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from eventlog import body as b
from projections.fold import (
    Causality,
    Event,
    Key,
    Lookup,
    Row,
    State,
    Table,
    fold_by_apply,
    ref_key,
)

ACTIVE = ("pending", "confirmed", "fulfilled")

# The state of an entity: {"post": [kind, author, hlc, title, category, item, quantity,
# location, until, urgency] or None, "withdrawn": bool, "claims": {claim id: [claimant,
# quantity, hlc, seq, status, step, disputed]}}, where step is the step that set the
# status and disputed the step made apart that it overruled, each [status, hlc, actor,
# seq] or None (VERSION 3). Lists, not maps of field names: a busy commit rewrites
# the states of hundreds of posts, and with names and hex ids they took twice the
# pages (VERSION 2). The post's id is the entity's; a claim's author is its claimant.
KIND, AUTHOR, HLC, TITLE, CATEGORY, ITEM, QUANTITY, LOCATION, UNTIL, URGENCY = range(10)
CLAIMANT, AMOUNT, MADE_HLC, MADE_SEQ, STATUS, STEP, DISPUTED = range(7)
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


_PREFIX = "board:"


def entity_of(target: bytes) -> str:
    return _PREFIX + target.hex()


class Board:
    NAME = "board"
    VERSION = 3  # 2: compact states; 3: disputed, target-withdrawn, met
    TYPES: frozenset[str] = frozenset(
        {
            "offer.posted",
            "offer.withdrawn",
            "need.posted",
            "need.withdrawn",
            "claim.made",
            *_STEP_STATUS,
        }
    )
    TABLES: tuple[Table, ...] = (
        Table(
            "board_entries",
            (
                ("id", "BLOB"),
                ("kind", "TEXT"),
                ("author", "BLOB"),
                ("hlc", "INTEGER"),
                ("title", "TEXT"),
                ("category", "TEXT"),
                ("item", "TEXT"),
                ("quantity", "INTEGER"),
                ("location", "TEXT"),
                ("until", "TEXT"),
                ("urgency", "TEXT"),
                ("status", "TEXT"),
                ("claimed", "INTEGER"),
                ("remaining", "INTEGER"),
                ("flags", "TEXT"),
            ),
            ("id",),
            "id",
        ),
        Table(
            "board_claims",
            (
                ("id", "BLOB"),
                ("target", "BLOB"),
                ("claimant", "BLOB"),
                ("quantity", "INTEGER"),
                ("hlc", "INTEGER"),
                ("status", "TEXT"),
                ("rank", "INTEGER"),
                ("flags", "TEXT"),
                ("steps", "TEXT"),
            ),
            ("id",),
            "target",
        ),
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

    def apply(
        self, entity: str, state: State | None, event: Event, causality: Causality
    ) -> State | None:
        s: State = state if state is not None else {"post": None, "withdrawn": False, "claims": {}}
        body = event.body
        post = s["post"]
        claims = s["claims"]
        assert isinstance(claims, dict)
        if isinstance(body, (b.OfferPosted, b.NeedPosted)):
            s["post"] = _post(event, body)
        elif isinstance(body, (b.OfferWithdrawn, b.NeedWithdrawn)):
            if isinstance(post, list) and post[AUTHOR] == event.author:
                s["withdrawn"] = True
        elif isinstance(body, b.ClaimMade):
            claims[event.hash] = [
                event.author,
                body.quantity,
                event.hlc,
                event.seq,
                "pending",
                None,
                None,
            ]
        elif isinstance(body, b.ClaimStep):
            claim = claims.get(body.claim)
            if isinstance(claim, list):
                _step(claim, event, post[AUTHOR] if isinstance(post, list) else None, causality)
        return s

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        return fold_by_apply(self, entity, events, causality)

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        post = state["post"]
        claims = state["claims"]
        assert isinstance(claims, dict)
        if not isinstance(post, list):
            return {}  # claims on something this node has not seen posted (yet)
        quantity = post[QUANTITY]
        in_order = sorted(claims.items(), key=_made)
        ranked = sorted(
            (item for item in in_order if item[1][STATUS] in ACTIVE),
            key=lambda item: item[1][STATUS] == "pending",
        )  # stable: by made
        claimed = sum(int(claim[AMOUNT]) for _, claim in ranked)
        over = isinstance(quantity, int) and claimed > quantity
        withdrawn = bool(state["withdrawn"])
        flags_of: dict[bytes, list[str]] = {}
        rank_of: dict[bytes, int] = {}
        running = 0
        for rank, (id_, claim) in enumerate(ranked, start=1):
            running += int(claim[AMOUNT])
            flags = []
            if isinstance(quantity, int) and running > quantity:
                flags.append("over")
            if over and claim[STATUS] == "pending":
                flags.append("needs-decision")
            if claim[DISPUTED] is not None:
                flags.append("disputed")
            if withdrawn and claim[STATUS] != "fulfilled":
                flags.append("target-withdrawn")
            rank_of[id_] = rank
            flags_of[id_] = flags
        post_id = bytes.fromhex(entity[len(_PREFIX) :])
        claim_rows: list[Row] = [
            (
                id_,
                post_id,
                claim[CLAIMANT],
                claim[AMOUNT],
                claim[MADE_HLC],
                claim[STATUS],
                rank_of.get(id_),
                ",".join(flags_of.get(id_, [])),
                _steps_text(claim),
            )
            for id_, claim in in_order
        ]
        remaining = quantity - claimed if isinstance(quantity, int) else None
        entry: Row = (
            post_id,
            post[KIND],
            post[AUTHOR],
            post[HLC],
            post[TITLE],
            post[CATEGORY],
            post[ITEM],
            quantity,
            post[LOCATION],
            post[UNTIL],
            post[URGENCY],
            "withdrawn" if withdrawn else "met" if _met(post, in_order) else "open",
            claimed,
            remaining,
            ",".join(
                flag
                for flag, on in (
                    ("over-claimed", over),
                    ("disputed", any(c[DISPUTED] is not None for _, c in in_order)),
                )
                if on
            ),
        )
        return {"board_entries": [entry], "board_claims": claim_rows}


def _made(item: tuple[bytes, list[object]]) -> Key:
    """A claim's canonical key: it was made by its claimant."""
    _, claim = item
    return ref_key((claim[MADE_HLC], claim[CLAIMANT], claim[MADE_SEQ]))


def _post(event: Event, body: b.OfferPosted | b.NeedPosted) -> list[object]:
    offer = isinstance(body, b.OfferPosted)
    return [
        "offer" if offer else "need",
        event.author,
        event.hlc,
        body.title,
        body.category,
        body.item if isinstance(body, b.OfferPosted) else None,
        body.quantity,
        body.location,
        body.until if isinstance(body, b.OfferPosted) else body.by,
        None if isinstance(body, b.OfferPosted) else body.urgency,
    ]


def _met(post: list[object], claims: Sequence[tuple[bytes, list[object]]]) -> bool:
    """A need is met when fulfilled claims cover its quantity; one without a quantity,
    when a claim was fulfilled and none is still pending or confirmed."""
    if post[KIND] != "need":
        return False
    quantity = post[QUANTITY]
    statuses = [claim[STATUS] for _, claim in claims]
    if isinstance(quantity, int):
        amounts = [c[AMOUNT] for _, c in claims if c[STATUS] == "fulfilled"]
        return sum(a for a in amounts if isinstance(a, int)) >= quantity
    return "fulfilled" in statuses and not {"pending", "confirmed"} & set(statuses)


def _step(claim: list[object], event: Event, holder: object, causality: Causality) -> None:
    new = _STEP_STATUS[event.body.TYPE]
    actor = event.author
    by_holder = actor == holder
    by_claimant = actor == claim[CLAIMANT]
    allowed = {
        "confirmed": by_holder,
        "declined": by_holder,
        "released": by_claimant,
        "fulfilled": by_holder or by_claimant,
    }[new]
    if not allowed:
        return
    step = [new, event.hlc, actor, event.seq]
    if claim[STATUS] in ALLOWED_FROM[new]:
        claim[STATUS], claim[STEP] = new, step
        return
    last = claim[STEP]
    if (
        {claim[STATUS], new} == {"released", "fulfilled"}
        and claim[DISPUTED] is None
        and isinstance(last, list)
        and not causality.happened_before(last[1:], event.ref)
    ):  # a release and a fulfilment made apart: the fulfilment stands
        if new == "fulfilled":
            claim[STATUS], claim[STEP], claim[DISPUTED] = new, step, last
        else:
            claim[DISPUTED] = step


def _steps_text(claim: list[object]) -> str:
    """The step that set the claim's status, and the one it overruled when disputed, as
    JSON [status, actor hex, hlc] in canonical order; '' for a pending claim."""
    steps = sorted(
        (step for step in (claim[STEP], claim[DISPUTED]) if isinstance(step, list)),
        key=lambda step: ref_key(step[1:]),
    )
    if not steps:
        return ""
    listed = []
    for status, hlc, actor, _ in steps:
        assert isinstance(actor, bytes)
        listed.append([status, actor.hex(), hlc])
    return json.dumps(listed, separators=(",", ":"))
