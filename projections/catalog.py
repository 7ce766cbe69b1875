"""The catalog: members, items and locations, the names people choose and read.

Entities: ``member:<author hex>``, ``item:<slug>``, ``location:<slug>``. Each is
last-writer-wins in canonical order (hlc, author, seq): two people who define the same
slug while apart both see the later definition everywhere once they meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventlog import body as b
from projections.fold import Causality, Event, Lookup, Row, State, Table, fold_by_apply


class Catalog:
    NAME = "catalog"
    VERSION = 1
    TYPES: frozenset[str] = frozenset({"member.joined", "item.defined", "location.defined"})
    TABLES: tuple[Table, ...] = (
        Table(
            "members",
            (("author", "BLOB"), ("name", "TEXT"), ("languages", "TEXT"), ("joined", "INTEGER")),
            ("author",),
            "author",
        ),
        Table(
            "items",
            (
                ("slug", "TEXT"),
                ("name", "TEXT"),
                ("unit", "TEXT"),
                ("category", "TEXT"),
                ("storage", "TEXT"),
            ),
            ("slug",),
            "slug",
        ),
        Table(
            "locations", (("slug", "TEXT"), ("name", "TEXT"), ("kind", "TEXT")), ("slug",), "slug"
        ),
    )

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        body = event.body
        if isinstance(body, b.MemberJoined):
            return ["member:" + event.author.hex()]
        if isinstance(body, b.ItemDefined):
            return ["item:" + body.slug]
        if isinstance(body, b.LocationDefined):
            return ["location:" + body.slug]
        return []

    def apply(
        self, entity: str, state: State | None, event: Event, causality: Causality
    ) -> State | None:
        body = event.body
        row: Row
        if isinstance(body, b.MemberJoined):
            earlier = state["row"] if state else None
            joined = earlier[3] if isinstance(earlier, list) else event.hlc
            row = (event.author, body.name, ",".join(body.languages or ()), joined)
        elif isinstance(body, b.ItemDefined):
            row = (body.slug, body.name, body.unit, body.category, body.storage)
        elif isinstance(body, b.LocationDefined):
            row = (body.slug, body.name, body.kind)
        else:
            return state
        return {"table": entity.split(":", 1)[0] + "s", "row": list(row)}

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        return fold_by_apply(self, entity, events, causality)

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        row = state["row"]
        assert isinstance(row, list)
        return {str(state["table"]): [tuple(row)]}
