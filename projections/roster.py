"""The roster: shifts with their slots and volunteers, roles and who holds them, hours.

Entities: one shift with its sign-ups and completions (``shift:<id hex>``); one role with
its assignments (``role:<slug>``).

Conflict rules (docs/events.md §shifts): two volunteers who take the last slot while
apart both stay signed up; the shift is flagged ``over-filled`` and sign-ups beyond the
slots, ranked by (hlc, author) of the sign-up, are flagged ``over``. A member who
withdraws and signs up again goes to the back. Hours are what the member reported with
``shift.completed`` (the last report counts), booked to the ISO week of the shift's start.
A role's definition shows the last in canonical order, flagged ``conflicting-definitions``
with both versions while two made apart disagree (docs/events.md §definitions); each
assignment is last-writer-wins in canonical order.
"""

from __future__ import annotations

import datetime
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
    ref_key,
    versions_text,
)


def shift_entity(shift: bytes) -> str:
    return "shift:" + shift.hex()


def role_entity(slug: str) -> str:
    return "role:" + slug


def iso_week(start: str) -> str:
    """'2026-11-27T09:00' -> '2026-W48'."""
    year, week, _ = datetime.datetime.fromisoformat(start).isocalendar()
    return f"{year}-W{week:02d}"


class Roster:
    NAME = "roster"
    VERSION = 2  # 2: concurrent role definitions are flagged, not overruled
    TYPES: frozenset[str] = frozenset(
        {
            "shift.scheduled",
            "shift.signed_up",
            "shift.withdrawn",
            "shift.completed",
            "role.defined",
            "role.assigned",
        }
    )
    TABLES: tuple[Table, ...] = (
        Table(
            "roster_shifts",
            (
                ("id", "BLOB"),
                ("role", "TEXT"),
                ("location", "TEXT"),
                ("start", "TEXT"),
                ("end", "TEXT"),
                ("slots", "INTEGER"),
                ("filled", "INTEGER"),
                ("open", "INTEGER"),
                ("author", "BLOB"),
                ("hlc", "INTEGER"),
                ("flags", "TEXT"),
            ),
            ("id",),
            "id",
        ),
        Table(
            "roster_signups",
            (
                ("shift", "BLOB"),
                ("member", "BLOB"),
                ("rank", "INTEGER"),
                ("flags", "TEXT"),
            ),
            ("shift", "member"),
            "shift",
        ),
        Table(
            "roster_hours",
            (
                ("shift", "BLOB"),
                ("member", "BLOB"),
                ("week", "TEXT"),
                ("hours", "REAL"),
            ),
            ("shift", "member"),
            "shift",
        ),
        Table(
            "roles",
            (
                ("slug", "TEXT"),
                ("name", "TEXT"),
                ("description", "TEXT"),
                ("weekly_hours", "REAL"),
                ("flags", "TEXT"),
                ("versions", "TEXT"),
            ),
            ("slug",),
            "slug",
        ),
        Table(
            "role_assignments",
            (
                ("role", "TEXT"),
                ("member", "BLOB"),
                ("until", "TEXT"),
            ),
            ("role", "member"),
            "role",
        ),
    )

    def entities(self, event: Event, lookup: Lookup) -> Iterable[str]:
        body = event.body
        if isinstance(body, b.ShiftScheduled):
            return [shift_entity(event.hash)]
        if isinstance(body, (b.ShiftSignedUp, b.ShiftWithdrawn, b.ShiftCompleted)):
            return [shift_entity(body.shift)]
        if isinstance(body, b.RoleDefined):
            return [role_entity(body.slug)]
        if isinstance(body, b.RoleAssigned):
            return [role_entity(body.role)]
        return []

    def apply(
        self, entity: str, state: State | None, event: Event, causality: Causality
    ) -> State | None:
        body = event.body
        if entity.startswith("role:"):
            r: State = (
                state
                if state is not None
                else {"slug": entity[5:], "def": None, "heads": [], "assigned": {}}
            )
            if isinstance(body, b.RoleDefined):
                fields: list[object] = [body.name, body.description, body.weekly_hours]
                heads = r["heads"]
                assert isinstance(heads, list)
                r["def"] = fields
                r["heads"] = define(heads, event, fields, causality)
            elif isinstance(body, b.RoleAssigned):
                assigned = r["assigned"]
                assert isinstance(assigned, dict)
                assigned[body.member.hex()] = [body.member, body.until]
            return r
        s: State = state if state is not None else {"shift": None, "signups": {}, "hours": {}}
        signups = s["signups"]
        hours = s["hours"]
        assert isinstance(signups, dict) and isinstance(hours, dict)
        member = event.author.hex()
        if isinstance(body, b.ShiftScheduled):
            s["shift"] = {
                "id": event.hash,
                "role": body.role,
                "location": body.location,
                "start": body.start,
                "end": body.end,
                "slots": body.slots,
                "author": event.author,
                "hlc": event.hlc,
            }
        elif isinstance(body, b.ShiftSignedUp):
            if member not in signups:
                signups[member] = [event.author, event.ref]
        elif isinstance(body, b.ShiftWithdrawn):
            signups.pop(member, None)
        elif isinstance(body, b.ShiftCompleted):
            hours[member] = [event.author, body.hours]
        return s

    def fold(self, entity: str, events: Sequence[Event], causality: Causality) -> State | None:
        return fold_by_apply(self, entity, events, causality)

    def rows(self, entity: str, state: State) -> dict[str, list[Row]]:
        if entity.startswith("role:"):
            return _role_rows(state)
        shift = state["shift"]
        signups = state["signups"]
        hours = state["hours"]
        assert isinstance(signups, dict) and isinstance(hours, dict)
        if not isinstance(shift, dict):
            return {}
        slots = shift["slots"]
        assert isinstance(slots, int)
        ranked = sorted(signups.values(), key=lambda s: ref_key(s[1]))
        filled = len(ranked)
        signup_rows: list[Row] = [
            (shift["id"], member, rank, "over" if rank > slots else "")
            for rank, (member, _ref) in enumerate(ranked, start=1)
        ]
        week = iso_week(str(shift["start"]))
        hour_rows: list[Row] = [
            (shift["id"], member, week, h) for member, h in sorted(hours.values())
        ]
        shift_row: Row = (
            shift["id"],
            shift["role"],
            shift["location"],
            shift["start"],
            shift["end"],
            slots,
            filled,
            max(slots - filled, 0),
            shift["author"],
            shift["hlc"],
            "over-filled" if filled > slots else "",
        )
        return {
            "roster_shifts": [shift_row],
            "roster_signups": signup_rows,
            "roster_hours": hour_rows,
        }


def _role_rows(state: State) -> dict[str, list[Row]]:
    slug = state["slug"]
    definition = state["def"]
    assigned = state["assigned"]
    assert isinstance(assigned, dict)
    rows: dict[str, list[Row]] = {
        "role_assignments": [(slug, member, until) for member, until in sorted(assigned.values())],
    }
    if isinstance(definition, list):
        heads = state["heads"]
        assert isinstance(heads, list)
        versions = versions_text(heads)
        flags = "conflicting-definitions" if versions else ""
        rows["roles"] = [(slug, *definition, flags, versions)]
    return rows
