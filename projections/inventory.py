"""Inventory: what is on hand of each item at each location.

Entity: one item at one location (``stock:<item>@<location>``).

How a count combines with deltas (docs/events.md §stock): a ``stock.counted`` sets the
quantity to what a person physically counted. Deltas the counter had already seen
(causally before the count) are inside that number and are dropped. Deltas made after
seeing the count add to it. Deltas *concurrent* with the count (made on a node that had
not seen it, by someone the counter had not heard from) may or may not be in the
physical number: they are added, and the row is flagged ``recount`` so that somebody
counts again. Two concurrent counts also flag ``recount``; the later in canonical order
wins. A later count that has seen everything clears the flag.

Expiry: positive deltas with ``expires`` form lots; stock leaves first-expired-first-out,
and lots never exceed what is on hand. The earliest remaining expiry is kept in the row;
"expiring within 3 days" is decided when the row is read, because folds never read the
clock. Negative stock is flagged ``negative``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from node import body as b
from projections.fold import Causality, Event, Lookup, Row, State, Table


def entity_of(item: str, location: str) -> str:
    return f"stock:{item}@{location}"


class Inventory:
    NAME = "inventory"
    VERSION = 1
    TYPES: frozenset[str] = frozenset({"stock.adjusted", "stock.counted"})
    TABLES: tuple[Table, ...] = (
        Table("inventory", (
            ("entity", "TEXT"), ("item", "TEXT"), ("location", "TEXT"),
            ("on_hand", "INTEGER"), ("expires", "TEXT"), ("flags", "TEXT"),
        ), ("entity",), "entity"),
    )

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        body = event.body
        if isinstance(body, (b.StockAdjusted, b.StockCounted)):
            return [entity_of(body.item, body.location)]
        return []

    def apply(self, entity: str, state: State | None, event: Event,
              causality: Causality) -> State | None:
        body = event.body
        if isinstance(body, b.StockCounted):
            if state is None:
                state = _empty(body)
            # Which deltas since the last count did the counter see? Decided per author
            # from the summary kept in the state; only a count that saw part of one
            # author's run needs the entity's events (re-fold).
            return state if _count_from_summary(state, event, body, causality) else None
        if not isinstance(body, b.StockAdjusted):
            return state
        s = state if state is not None else _empty(body)
        _add_delta(s, event, body, causality)
        return s

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        s: State | None = None
        since_count: list[tuple[Event, b.StockAdjusted]] = []
        for event in events:
            body = event.body
            if not isinstance(body, (b.StockAdjusted, b.StockCounted)):
                continue
            if s is None:
                s = _empty(body)
            if isinstance(body, b.StockCounted):
                _apply_count(s, event, body, since_count, causality)
                since_count = []
            else:
                _add_delta(s, event, body, causality)
                since_count.append((event, body))
        return s

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        on_hand = state["on_hand"]
        assert isinstance(on_hand, int)
        lots = state["lots"]
        assert isinstance(lots, list)
        flags = []
        if on_hand < 0:
            flags.append("negative")
        if state["recount"]:
            flags.append("recount")
        expires = min((lot[0] for lot in lots), default=None)
        return {"inventory": [(entity, state["item"], state["location"], on_hand, expires,
                               ",".join(flags))]}


def _empty(body: b.StockAdjusted | b.StockCounted) -> State:
    # since: author hex -> [author, first seq, first hlc, last seq, last hlc, sum] of the
    # deltas since the last count, so a new count can tell what it saw without them.
    return {"item": body.item, "location": body.location, "on_hand": 0, "lots": [],
            "count": None, "recount": False, "since": {}}


def _count_from_summary(s: State, event: Event, body: b.StockCounted,
                        causality: Causality) -> bool:
    """Apply a count using the per-author summary; False when it cannot decide."""
    since = s["since"]
    assert isinstance(since, dict)
    missed = 0
    concurrent = False
    for author, first_seq, first_hlc, last_seq, last_hlc, total in since.values():
        if causality.happened_before([last_hlc, author, last_seq], event.ref):
            continue  # the counter saw all of this author's deltas
        if causality.happened_before([first_hlc, author, first_seq], event.ref):
            return False  # saw some, not all: needs the events themselves
        missed += total
        concurrent = True
    previous = s["count"]
    recount = isinstance(previous, list) and not causality.happened_before(previous, event.ref)
    _set_count(s, event, body.count + missed, recount or concurrent)
    return True


def _set_count(s: State, event: Event, on_hand: int, recount: bool) -> None:
    s["on_hand"] = on_hand
    s["count"] = event.ref
    s["recount"] = recount
    s["since"] = {}
    _trim(s)


def _add_delta(s: State, event: Event, body: b.StockAdjusted, causality: Causality) -> None:
    count = s["count"]
    if isinstance(count, list) and not causality.happened_before(count, event.ref):
        s["recount"] = True  # concurrent with the count: may or may not be in it
    on_hand = s["on_hand"]
    assert isinstance(on_hand, int)
    s["on_hand"] = on_hand + body.delta
    since = s["since"]
    assert isinstance(since, dict)
    run = since.get(event.author.hex())
    if run is None:
        since[event.author.hex()] = [event.author, event.seq, event.hlc, event.seq, event.hlc,
                                     body.delta]
    else:
        run[3], run[4], run[5] = event.seq, event.hlc, run[5] + body.delta
    lots = s["lots"]
    assert isinstance(lots, list)
    if body.delta > 0 and body.expires is not None:
        lots.append([body.expires, body.delta])
        lots.sort()
    elif body.delta < 0:
        _consume(lots, -body.delta)
    _trim(s)


def _apply_count(
    s: State, event: Event, body: b.StockCounted,
    since_count: Sequence[tuple[Event, b.StockAdjusted]], causality: Causality,
) -> None:
    """Set on-hand to the count plus the deltas since the last count that it missed."""
    previous = s["count"]
    recount = isinstance(previous, list) and not causality.happened_before(previous, event.ref)
    missed = 0
    for delta_event, delta in since_count:
        if not causality.happened_before(delta_event.ref, event.ref):
            missed += delta.delta
            recount = True
    _set_count(s, event, body.count + missed, recount)


def _consume(lots: list[list[object]], amount: int) -> None:
    """Take ``amount`` out of the lots, first expiring first."""
    while amount > 0 and lots:
        size = lots[0][1]
        assert isinstance(size, int)
        if size <= amount:
            amount -= size
            lots.pop(0)
        else:
            lots[0][1] = size - amount
            amount = 0


def _trim(s: State) -> None:
    """Lots never hold more than is on hand."""
    lots = s["lots"]
    on_hand = s["on_hand"]
    assert isinstance(lots, list) and isinstance(on_hand, int)
    total = sum(int(lot[1]) for lot in lots)
    if total > max(on_hand, 0):
        _consume(lots, total - max(on_hand, 0))
