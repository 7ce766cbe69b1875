"""Inventory: what is on hand of each item at each location.

Entity: one item at one location (``stock:<item>@<location>``).

How counts and deltas combine (docs/events.md §stock, decision 0004). Of the entity's
events in canonical order, the *standing* count W is the last ``stock.counted``:

- on-hand is W's number plus every delta W had not seen (not in its causal past),
  wherever that delta sorts: after W, or before it (late, or concurrent with earlier
  counts too). A delta W had seen is inside its number. Without a count, on-hand is the
  sum of the deltas.
- ``recount`` is flagged while something is concurrent with W: a delta or another
  count that W had not seen, or a later delta whose author had not seen W. A count that
  had seen every earlier event of the entity clears it.

Why only W matters: each count is a fresh physical number, so whatever an earlier count
did with a delta is replaced; judging a delta against the count before (as version 1
did) added a delta concurrent with two counts by the first and dropped it by the second.

The state is what a later count needs without the events, and stays small: per author,
one run (first, last, sum) of the deltas W had not seen, a suffix of that author's
deltas because seeing an event means seeing its author's earlier ones; and per author
the last count W had not seen. A new count that had seen W decides from the ends of each
run: it saw the last, so the whole run; or not the first, so none of it. A count that
saw part of a run, or had not seen W (two counts concurrent), needs the events: ``apply``
returns None and ``fold`` decides from each author's deltas.

Expiry: positive deltas with ``expires`` form lots; stock leaves first-expired-first-out,
and lots never exceed what is on hand. The earliest remaining expiry is kept in the row;
"expiring within 3 days" is decided when the row is read, because folds never read the
clock. Negative stock is flagged ``negative``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventlog import body as b
from projections.fold import Causality, Event, Lookup, Row, State, Table


def entity_of(item: str, location: str) -> str:
    return f"stock:{item}@{location}"


class Inventory:
    NAME = "inventory"
    VERSION = 2  # 2: deltas are judged against the standing count only
    TYPES: frozenset[str] = frozenset({"stock.adjusted", "stock.counted"})
    TABLES: tuple[Table, ...] = (
        Table(
            "inventory",
            (
                ("entity", "TEXT"),
                ("item", "TEXT"),
                ("location", "TEXT"),
                ("on_hand", "INTEGER"),
                ("expires", "TEXT"),
                ("flags", "TEXT"),
            ),
            ("entity",),
            "entity",
        ),
    )

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        body = event.body
        if isinstance(body, (b.StockAdjusted, b.StockCounted)):
            return [entity_of(body.item, body.location)]
        return []

    def apply(
        self, entity: str, state: State | None, event: Event, causality: Causality
    ) -> State | None:
        body = event.body
        if isinstance(body, b.StockAdjusted):
            s = state if state is not None else _empty(body)
            _add_delta(s, event, body, causality)
            return s
        if isinstance(body, b.StockCounted):
            s = state if state is not None else _empty(body)
            return s if _count_from_summary(s, event, body, causality) else None
        return state

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        s: State | None = None
        past = _Past()
        for event in events:
            body = event.body
            if isinstance(body, b.StockAdjusted):
                if s is None:
                    s = _empty(body)
                _add_delta(s, event, body, causality)
                past.add_delta(event, body.delta)
            elif isinstance(body, b.StockCounted):
                if s is None:
                    s = _empty(body)
                if not _count_from_summary(s, event, body, causality):
                    _count_from_past(s, event, body, past, causality)
                past.counts[event.author] = event.ref
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
        return {
            "inventory": [
                (entity, state["item"], state["location"], on_hand, expires, ",".join(flags))
            ]
        }


def _empty(body: b.StockAdjusted | b.StockCounted) -> State:
    # count: ref of the standing count W. since: author hex -> [author, first seq, first
    # hlc, last seq, last hlc, sum] of that author's deltas W had not seen (all of them
    # while there is no count). rivals: author hex -> ref of that author's last count W
    # had not seen.
    return {
        "item": body.item,
        "location": body.location,
        "on_hand": 0,
        "lots": [],
        "count": None,
        "recount": False,
        "since": {},
        "rivals": {},
    }


class _Past:
    """What ``fold`` has seen so far, for the counts the state cannot decide: each
    author's deltas in seq order as [hlc, seq, running sum], and each author's last
    count."""

    __slots__ = ("counts", "deltas")

    def __init__(self) -> None:
        self.deltas: dict[bytes, list[tuple[int, int, int]]] = {}
        self.counts: dict[bytes, list[object]] = {}

    def add_delta(self, event: Event, delta: int) -> None:
        mine = self.deltas.setdefault(event.author, [])
        mine.append((event.hlc, event.seq, (mine[-1][2] if mine else 0) + delta))


def _count_from_summary(s: State, event: Event, body: b.StockCounted, causality: Causality) -> bool:
    """Make ``event`` the standing count from the state alone; False (state untouched)
    when the state cannot tell which deltas it had seen."""
    standing = s["count"]
    if isinstance(standing, list) and not causality.happened_before(standing, event.ref):
        return False  # concurrent counts: this one may lack deltas inside the other
    since = s["since"]
    rivals = s["rivals"]
    assert isinstance(since, dict) and isinstance(rivals, dict)
    unseen: dict[str, list[object]] = {}
    missed = 0
    for key, run in since.items():
        author, first_seq, first_hlc, last_seq, last_hlc, total = run
        if causality.happened_before([last_hlc, author, last_seq], event.ref):
            continue  # saw the whole run
        if causality.happened_before([first_hlc, author, first_seq], event.ref):
            return False  # saw part of it: which part needs the deltas themselves
        unseen[key] = run
        missed += total
    # Counts this one had not seen: only among those W had not seen, as it had seen W.
    others = {
        key: ref for key, ref in rivals.items() if not causality.happened_before(ref, event.ref)
    }
    _set_count(s, event, body.count + missed, unseen, others)
    return True


def _count_from_past(
    s: State, event: Event, body: b.StockCounted, past: _Past, causality: Causality
) -> None:
    """Make ``event`` the standing count, deciding from every earlier event."""
    unseen: dict[str, list[object]] = {}
    missed = 0
    for author, deltas in past.deltas.items():
        seen = _seen_prefix(author, deltas, event.ref, causality)
        if seen == len(deltas):
            continue
        first_hlc, first_seq, _ = deltas[seen]
        last_hlc, last_seq, running = deltas[-1]
        total = running - (deltas[seen - 1][2] if seen else 0)
        unseen[author.hex()] = [author, first_seq, first_hlc, last_seq, last_hlc, total]
        missed += total
    others = {
        author.hex(): ref
        for author, ref in past.counts.items()
        if not causality.happened_before(ref, event.ref)
    }
    _set_count(s, event, body.count + missed, unseen, others)


def _seen_prefix(
    author: bytes, deltas: Sequence[tuple[int, int, int]], ref: list[object], causality: Causality
) -> int:
    """How many of ``author``'s deltas the event ``ref`` had seen: always a prefix."""
    hlc, seq, _ = deltas[-1]
    if causality.happened_before([hlc, author, seq], ref):
        return len(deltas)
    low, high = 0, len(deltas) - 1  # deltas[:low] seen, deltas[high:] not
    while low < high:
        middle = (low + high) // 2
        hlc, seq, _ = deltas[middle]
        if causality.happened_before([hlc, author, seq], ref):
            low = middle + 1
        else:
            high = middle
    return low


def _set_count(
    s: State,
    event: Event,
    on_hand: int,
    unseen: dict[str, list[object]],
    rivals: dict[str, list[object]],
) -> None:
    """Every delta or count the new standing count had not seen sorts before it, so is
    concurrent with it: any one of them flags a recount; none clears the flag."""
    s["on_hand"] = on_hand
    s["count"] = event.ref
    s["since"] = unseen
    s["rivals"] = rivals
    s["recount"] = bool(unseen or rivals)
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
    author = event.author.hex()
    run = since.get(author)
    if run is None:
        since[author] = [event.author, event.seq, event.hlc, event.seq, event.hlc, body.delta]
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
    if not lots:  # most stock has no expiry dates
        return
    on_hand = s["on_hand"]
    assert isinstance(lots, list) and isinstance(on_hand, int)
    total = sum(int(lot[1]) for lot in lots)
    if total > max(on_hand, 0):
        _consume(lots, total - max(on_hand, 0))
