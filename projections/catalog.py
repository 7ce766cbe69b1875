"""The catalog: members, items and locations, the names people choose and read.

Entities: ``member:<author hex>``, ``item:<slug>``, ``location:<slug>``. The row shows
the last definition in canonical order (hlc, author, seq), but two people who define
the same slug differently while apart are not overruled by the clock: the row is
flagged ``conflicting-definitions`` and keeps both versions until someone defines it
again after seeing both (docs/events.md §definitions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventlog import body as b
from projections.fold import (
    Causality,
    Event,
    Lookup,
    Row,
    State,
    Table,
    define,
    fold_by_apply,
    versions_text,
)

_DEFINITION = (("flags", "TEXT"), ("versions", "TEXT"))
"""Columns of every defined thing: ``conflicting-definitions`` or '', and the
versions that disagree (``fold.versions_text``)."""


class Catalog:
    NAME = "catalog"
    VERSION = 2  # 2: concurrent definitions are flagged, not overruled
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
                *_DEFINITION,
            ),
            ("slug",),
            "slug",
        ),
        Table(
            "locations",
            (("slug", "TEXT"), ("name", "TEXT"), ("kind", "TEXT"), *_DEFINITION),
            ("slug",),
            "slug",
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
        table = entity.split(":", 1)[0] + "s"
        if isinstance(body, b.MemberJoined):
            earlier = state["row"] if state else None
            joined = earlier[3] if isinstance(earlier, list) else event.hlc
            row = [event.author, body.name, ",".join(body.languages or ()), joined]
            return {"table": table, "row": row}
        fields: list[object]
        if isinstance(body, b.ItemDefined):
            fields = [body.name, body.unit, body.category, body.storage]
        elif isinstance(body, b.LocationDefined):
            fields = [body.name, body.kind]
        else:
            return state
        heads = state["heads"] if state else []
        assert isinstance(heads, list)
        return {
            "table": table,
            "row": [body.slug, *fields],
            "heads": define(heads, event, fields, causality),
        }

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        return fold_by_apply(self, entity, events, causality)

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        row = state["row"]
        assert isinstance(row, list)
        heads = state.get("heads")
        if isinstance(heads, list):
            versions = versions_text(heads)
            row = [*row, "conflicting-definitions" if versions else "", versions]
        return {str(state["table"]): [tuple(row)]}
