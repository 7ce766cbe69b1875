"""What every projection is: a pure fold from events to rows, computed per entity.

Why per entity (docs/architecture.md §projections): an event that arrives late (a node
offline for a week) must not re-fold the whole log. Each projection names the entities
an event touches (an offer and its claims, one item at one location, one shift); the
runner keeps each entity's fold state and the canonical key of the last event applied.
An event whose key sorts after that key is applied incrementally; an event that sorts
before it, or one the projection cannot apply incrementally (``apply`` returns None),
re-folds just that entity from its own events.

Pure: folds never read the clock or the database. Causal questions ("had the author of
this delta seen that count?") go through the ``Causality`` the runner passes in, which
is itself a function of the event set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from eventlog.body import BaseBody

Key = tuple[int, bytes, int]
"""The canonical order of events: (hlc, author, seq)."""

Row = tuple[object, ...]
State = dict[str, object]
"""A fold's state: plain msgpack-able data, stored between batches."""


class Event(NamedTuple):
    """An event as folds see it: its place in the order, its author, its parsed body.

    A named tuple rather than a frozen dataclass: every folded event is one, and a
    frozen dataclass costs three times as much to build.
    """

    hash: bytes
    author: bytes
    seq: int
    hlc: int
    body: BaseBody

    @property
    def key(self) -> Key:
        return (self.hlc, self.author, self.seq)

    @property
    def ref(self) -> list[object]:
        """A compact, storable reference: [hlc, author, seq]."""
        return [self.hlc, self.author, self.seq]


Lookup = Callable[[bytes], "Event | None"]
"""Finds an event of the log by its hash; None when it is not there."""


class Causality(Protocol):
    """Answers whether one event was in the causal past of another."""

    def happened_before(self, earlier: Sequence[object], later: Sequence[object]) -> bool:
        """``earlier`` and ``later`` are refs [hlc, author, seq]."""
        ...


@dataclass(frozen=True, slots=True)
class Table:
    """A materialised table: its name, columns (with SQL types) and primary key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    entity_column: str


class Projection(Protocol):
    NAME: str
    VERSION: int
    TYPES: frozenset[str]
    TABLES: tuple[Table, ...]

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        """The entities this event touches (may be none: e.g. an unknown target).

        ``lookup`` finds an earlier event by hash (a claim step names its claim only).
        """
        ...

    def apply(
        self, entity: str, state: State | None, event: Event, causality: Causality
    ) -> State | None:
        """Fold one event that sorts after every event already folded into ``state``.

        Returns the new state, or None when the entity must be re-folded from all its
        events instead (``fold``).
        """
        ...

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        """Fold all of an entity's events, given in canonical order, from nothing."""
        ...

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        """The rows this entity contributes to each of the projection's tables."""
        ...


def fold_by_apply(
    projection: Projection, entity: str, events: Sequence[Event], causality: Causality
) -> State | None:
    """``fold`` for projections whose ``apply`` never asks for a re-fold."""
    state: State | None = None
    for event in events:
        state = projection.apply(entity, state, event, causality)
        if state is None:
            raise AssertionError(f"{projection.NAME}.apply asked for a re-fold inside fold")
    return state


def ref_key(ref: Sequence[object]) -> Key:
    hlc, author, seq = ref
    assert isinstance(hlc, int) and isinstance(author, bytes) and isinstance(seq, int)
    return (hlc, author, seq)


Head = list[object]
"""One standing definition: [ref, fields] (``define``)."""


def define(
    heads: list[Head], event: Event, fields: list[object], causality: Causality
) -> list[Head]:
    """The definitions of one slug that stand after ``event`` defines it: a definition
    replaces those it had seen; those it had not (made apart) stand beside it, so the
    conflict is shown rather than settled by the clock (docs/events.md §definitions).
    Folded in canonical order, no later definition is in an earlier one's past."""
    kept = []
    for head in heads:
        ref = head[0]
        assert isinstance(ref, list)
        if not causality.happened_before(ref, event.ref):
            kept.append(head)
    kept.append([event.ref, fields])
    return kept


def conflicting(heads: Sequence[Head]) -> bool:
    """True when the standing definitions disagree: the same fields defined apart twice
    are no conflict."""
    return len({repr(head[1]) for head in heads}) > 1


def versions_text(heads: Sequence[Head]) -> str:
    """The disagreeing definitions as the rows keep them: JSON [author hex, hlc, *fields]
    in canonical order, or '' when they agree."""
    if not conflicting(heads):
        return ""
    listed = []
    for ref, fields in heads:
        assert isinstance(ref, list) and isinstance(fields, list)
        hlc, author = ref[0], ref[1]
        assert isinstance(author, bytes)
        listed.append([author.hex(), hlc, *fields])
    return json.dumps(listed, separators=(",", ":"), ensure_ascii=False)
