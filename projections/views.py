"""The read side: projection rows shaped into the documents people and programs read.

Every function takes a database connection (run through ``Store.read``) and returns
plain JSON-able data; the schemas are the ``--json`` schemas of docs/cli.md, so the CLI
and the web UI show the same thing. Flags that depend on today's date (``expiring``)
are added here, at read time, because folds never read the clock.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Callable
from typing import TypedDict, TypeVar, overload

from eventlog import body as b
from eventlog.clock import wall_ms
from projections.board import entity_of
from projections.roster import iso_week
from projections.runner import (
    ENTITY_COLUMN,
    NUMBER_OF,
    number_of,
    stored_event,
)
from projections.runner import (
    folded_through as folded_through,  # re-exported: how far the pages are folded
)

EXPIRING_DAYS = 3
_URGENCY_RANK = {"urgent": 0, "normal": 1, "low": 2}


class Member(TypedDict):
    key: str
    name: str
    languages: list[str]


def _flags(text: str | None) -> list[str]:
    return [f for f in (text or "").split(",") if f]


def hlc_time(hlc: int) -> str:
    """The wall-clock part of an hlc as ISO 8601 UTC, to the second."""
    return ms_time(wall_ms(hlc))


def ms_time(ms: int) -> str:
    """Unix milliseconds as ISO 8601 UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def members(db: sqlite3.Connection) -> list[Member]:
    return [
        Member(key=author.hex(), name=name, languages=_flags(languages))
        for author, name, languages in db.execute(
            "SELECT author, name, languages FROM members ORDER BY joined, author"
        )
    ]


def _names(db: sqlite3.Connection) -> dict[bytes, str]:
    return dict(db.execute("SELECT author, name FROM members").fetchall())


def known_slugs(db: sqlite3.Connection) -> dict[str, set[str]]:
    return {
        table: {row[0] for row in db.execute(f"SELECT slug FROM {table}")}
        for table in ("items", "locations", "roles")
    }


def catalog(db: sqlite3.Connection) -> dict[str, list[dict[str, object]]]:
    """Items and locations with their names, by name: what pages show beside the
    slugs the other views list (node/web/page.py)."""
    items: list[dict[str, object]] = [
        {"slug": slug, "name": name, "unit": unit, "category": category, "storage": storage}
        for slug, name, unit, category, storage in db.execute(
            "SELECT slug, name, unit, category, storage FROM items ORDER BY name, slug"
        )
    ]
    locations: list[dict[str, object]] = [
        {"slug": slug, "name": name, "kind": kind}
        for slug, name, kind in db.execute(
            "SELECT slug, name, kind FROM locations ORDER BY name, slug"
        )
    ]
    return {"items": items, "locations": locations}


_DEFINED_FIELDS = {
    "items": ("name", "unit", "category", "storage"),
    "locations": ("name", "kind"),
    "roles": ("name", "description", "weekly_hours"),
}


def _versions(text: str | None, table: str, names: dict[bytes, str]) -> list[dict[str, object]]:
    """The definitions made apart that disagree (``fold.versions_text``), each with its
    fields, who defined it and when; [] when there is no conflict."""
    listed: list[dict[str, object]] = []
    for author, hlc, *fields in json.loads(text or "[]"):
        version: dict[str, object] = dict(zip(_DEFINED_FIELDS[table], fields, strict=True))
        version.update(by=author, by_name=names.get(bytes.fromhex(author)), defined=hlc_time(hlc))
        listed.append(version)
    return listed


def definitions(db: sqlite3.Connection, table: str) -> dict[str, dict[str, object]]:
    """Per slug of ``table`` (items, locations or roles): its ``flags``
    (``conflicting-definitions``) and the ``versions`` that disagree."""
    names = _names(db)
    return {
        slug: {"flags": _flags(flags), "versions": _versions(versions, table, names)}
        for slug, flags, versions in db.execute(f"SELECT slug, flags, versions FROM {table}")
    }


def board_entry(db: sqlite3.Connection, id_: bytes) -> dict[str, object] | None:
    """The offer or need ``id_``: found through its entity, the rows' primary key."""
    row = db.execute(
        "SELECT kind, status, author FROM board_entries "
        f"WHERE {ENTITY_COLUMN} = {NUMBER_OF} AND id = ?",
        (*number_of(entity_of(id_)), id_),
    ).fetchone()
    return None if row is None else {"kind": row[0], "status": row[1], "author": row[2]}


def claim(db: sqlite3.Connection, id_: bytes) -> dict[str, object] | None:
    """The claim ``id_`` with its target's holder and kind. A claim's row belongs to
    its target's entity, and the claim event in the log names the target."""
    made = stored_event(db, id_)
    if made is None or not isinstance(made.body, b.ClaimMade):
        return None
    row = db.execute(
        "SELECT c.status, c.claimant, e.author, e.kind FROM board_claims c "
        f"JOIN board_entries e ON e.{ENTITY_COLUMN} = c.{ENTITY_COLUMN} AND e.id = c.target "
        f"WHERE c.{ENTITY_COLUMN} = {NUMBER_OF} AND c.id = ?",
        (*number_of(entity_of(made.body.target)), id_),
    ).fetchone()
    if row is None:
        return None
    return {"status": row[0], "claimant": row[1], "holder": row[2], "kind": row[3]}


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _steps(text: str | None, names: dict[bytes, str]) -> list[dict[str, object]]:
    """A claim's deciding steps (``board._steps_text``) as documents."""
    return [
        {
            "step": step,
            "by": actor,
            "by_name": names.get(bytes.fromhex(actor)),
            "at": hlc_time(hlc),
        }
        for step, actor, hlc in json.loads(text or "[]")
    ]


def _days_open(hlc: int, today: datetime.date) -> int:
    posted = datetime.datetime.fromtimestamp(wall_ms(hlc) / 1000, tz=datetime.UTC).date()
    return max((today - posted).days, 0)


def board(
    db: sqlite3.Connection, today: datetime.date | None = None
) -> dict[str, list[dict[str, object]]]:
    """Offers and needs with their claims: the schema of ``potluck board --json``.

    ``offers`` and ``needs`` are the open ones; ``met`` the needs their fulfilled claims
    cover; ``withdrawn`` the withdrawn posts that still hold claims not fulfilled
    (flagged ``target-withdrawn``), so their claimants see them. ``days_open`` and
    ``overdue`` depend on ``today`` (UTC by default), so they are decided here."""
    today = today or _today()
    names = _names(db)
    claims: dict[bytes, list[dict[str, object]]] = {}
    for cid, target, claimant, quantity, hlc, status, rank, flags, steps in db.execute(
        "SELECT id, target, claimant, quantity, hlc, status, rank, flags, steps "
        "FROM board_claims ORDER BY hlc, claimant"
    ):
        claims.setdefault(target, []).append(
            {
                "id": cid.hex(),
                "claimant": claimant.hex(),
                "claimant_name": names.get(claimant),
                "quantity": quantity,
                "status": status,
                "rank": rank,
                "made": hlc_time(hlc),
                "flags": _flags(flags),
                "steps": _steps(steps, names),
            }
        )
    lists: dict[str, list[dict[str, object]]] = {
        "offers": [],
        "needs": [],
        "met": [],
        "withdrawn": [],
    }
    for (
        id_,
        kind,
        author,
        hlc,
        title,
        category,
        item,
        quantity,
        location,
        until,
        urgency,
        status,
        claimed,
        remaining,
        flags,
    ) in db.execute(
        "SELECT id, kind, author, hlc, title, category, item, quantity, location, "
        "until, urgency, status, claimed, remaining, flags FROM board_entries "
        "WHERE status != 'withdrawn' OR id IN (SELECT target FROM board_claims "
        "WHERE flags LIKE '%target-withdrawn%') ORDER BY hlc DESC, id"
    ):
        entry: dict[str, object] = {
            "id": id_.hex(),
            "title": title,
            "category": category,
            "quantity": quantity,
            "claimed": claimed,
            "remaining": remaining,
            "flags": _flags(flags),
            "location": location,
            "author": author.hex(),
            "author_name": names.get(author),
            "posted": hlc_time(hlc),
            "claims": claims.get(id_, []),
            "kind": kind,
            "status": status,
        }
        if status == "open":
            entry["days_open"] = _days_open(hlc, today)
        if kind == "offer":
            entry.update(item=item, until=until)
        else:
            entry.update(urgency=urgency, by=until)
            if status == "open" and until is not None and until < today.isoformat():
                entry["flags"] = [*_flags(flags), "overdue"]
        if status != "open":
            lists[str(status)].append(entry)
        else:
            lists["offers" if kind == "offer" else "needs"].append(entry)
    lists["needs"].sort(key=lambda n: _URGENCY_RANK.get(str(n["urgency"]), 1))  # stable
    return lists


def inventory(db: sqlite3.Connection, today: datetime.date) -> dict[str, list[dict[str, object]]]:
    """Stock per item and location: the schema of ``potluck inventory --json``."""
    horizon = (today + datetime.timedelta(days=EXPIRING_DAYS)).isoformat()
    items, locations = definitions(db, "items"), definitions(db, "locations")
    rows: list[dict[str, object]] = []
    for item, location, on_hand, expires, flags in db.execute(
        "SELECT i.item, i.location, i.on_hand, i.expires, i.flags FROM inventory i "
        "ORDER BY i.location, i.item"
    ):
        all_flags = _flags(flags)
        if expires is not None and on_hand > 0 and expires <= horizon:
            all_flags.append("expired" if expires < today.isoformat() else "expiring")
        versions = {
            "item": items.get(item, {}).get("versions", []),
            "location": locations.get(location, {}).get("versions", []),
        }
        if any(versions.values()):
            all_flags.append("conflicting-definitions")
        rows.append(
            {
                "item": item,
                "location": location,
                "on_hand": on_hand,
                "expires": expires,
                "flags": all_flags,
                "versions": versions,
            }
        )
    return {"rows": rows}


def roster(db: sqlite3.Connection, week: str | None) -> dict[str, list[dict[str, object]]]:
    """Shifts, hours per member per ISO week, and roles: ``potluck roster --json``."""
    names = _names(db)
    members_of: dict[bytes, list[dict[str, object]]] = {}
    for shift, member, rank, flags in db.execute(
        "SELECT shift, member, rank, flags FROM roster_signups ORDER BY shift, rank"
    ):
        members_of.setdefault(shift, []).append(
            {"key": member.hex(), "name": names.get(member), "rank": rank, "flags": _flags(flags)}
        )
    shifts: list[dict[str, object]] = []
    for id_, role, location, start, end, slots, filled, open_, flags in db.execute(
        'SELECT id, role, location, start, "end", slots, filled, open, flags '
        "FROM roster_shifts ORDER BY start, id"
    ):
        if week is not None and iso_week(start) != week:
            continue
        shifts.append(
            {
                "id": id_.hex(),
                "role": role,
                "location": location,
                "start": start,
                "end": end,
                "slots": slots,
                "filled": filled,
                "open": open_,
                "members": members_of.get(id_, []),
                "flags": _flags(flags),
            }
        )
    hours: list[dict[str, object]] = []
    sql = "SELECT member, week, sum(hours) FROM roster_hours"
    params: tuple[object, ...] = ()
    if week is not None:
        sql += " WHERE week = ?"
        params = (week,)
    for member, member_week, total in db.execute(
        sql + " GROUP BY member, week ORDER BY week, member", params
    ):
        hours.append(
            {
                "member": member.hex(),
                "name": names.get(member),
                "week": member_week,
                "hours": round(total, 2),
            }
        )
    roles: list[dict[str, object]] = []
    assigned: dict[str, list[dict[str, object]]] = {}
    for role, member, until in db.execute(
        "SELECT role, member, until FROM role_assignments ORDER BY role, member"
    ):
        assigned.setdefault(role, []).append(
            {"key": member.hex(), "name": names.get(member), "until": until}
        )
    for slug, name, description, weekly_hours, flags, versions in db.execute(
        "SELECT slug, name, description, weekly_hours, flags, versions FROM roles ORDER BY slug"
    ):
        roles.append(
            {
                "slug": slug,
                "name": name,
                "description": description,
                "weekly_hours": weekly_hours,
                "members": assigned.get(slug, []),
                "flags": _flags(flags),
                "versions": _versions(versions, "roles", names),
            }
        )
    return {"shifts": shifts, "hours": hours, "roles": roles}


A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
View = Callable[[sqlite3.Connection], A]
"""A read of the projections: what ``Store.read`` runs on the database thread."""


@overload
def together(first: View[A], second: View[B], /) -> View[tuple[A, B]]: ...
@overload
def together(first: View[A], second: View[B], third: View[C], /) -> View[tuple[A, B, C]]: ...
def together(*views: View[object]) -> View[tuple[object, ...]]:
    """One read of several views, in one transaction: a page shows them from the same
    moment of the log. Callers hand the result to ``Store.read``; they never hold the
    connection (docs/architecture.md §house)."""

    def read(db: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(view(db) for view in views)

    return read
