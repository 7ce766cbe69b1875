"""Ids and slugs turned into the words people use ("Canned beans" from Ana, Driver at the
church pantry on 2026-12-12 09:00), for the sentence a writing command prints above the
id (issue 19, item 7). Each function reads the projections in one read transaction; what
is not found falls back to the id or slug, never to an error: the event is already
written when the sentence is made."""

from __future__ import annotations

import sqlite3

from projections import views

Row = dict[str, object]

_DEFINITIONS = {
    "items": ("slug", "name", "unit", "category", "storage"),
    "locations": ("slug", "name", "kind"),
    "roles": ("slug", "name", "description", "weekly_hours"),
}


def definition(db: sqlite3.Connection, table: str, slug: str) -> Row | None:
    """The current definition of the item, location or role ``slug`` (``table`` is
    ``items``, ``locations`` or ``roles``), or None when it was never defined."""
    columns = _DEFINITIONS[table]
    row = db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE slug = ?", (slug,)).fetchone()
    return None if row is None else dict(zip(columns, row, strict=True))


def name_of(db: sqlite3.Connection, table: str, slug: str | None) -> str:
    """The name people gave the slug, or the slug itself."""
    if slug is None:
        return ""
    found = definition(db, table, slug)
    return str(found["name"]) if found and found["name"] else slug


def quoted(title: object) -> str:
    return f'"{title}"'


def entry(db: sqlite3.Connection, id_hex: str) -> Row | None:
    """The offer or need ``id_hex``, open or not: kind, title, quantity, author's name."""
    row = db.execute(
        "SELECT kind, title, quantity, author FROM board_entries WHERE id = ?",
        (bytes.fromhex(id_hex),),
    ).fetchone()
    if row is None:
        return None
    kind, title, quantity, author = row
    return {
        "kind": kind,
        "title": title,
        "quantity": quantity,
        "author": author,
        "author_name": member_name(db, author),
    }


def claim(db: sqlite3.Connection, id_hex: str) -> tuple[Row, Row] | None:
    """The claim ``id_hex`` (quantity, status, claimant's name) and what it is on."""
    row = db.execute(
        "SELECT target, claimant, quantity, status FROM board_claims WHERE id = ?",
        (bytes.fromhex(id_hex),),
    ).fetchone()
    if row is None:
        return None
    target, claimant, quantity, status = row
    on = entry(db, target.hex())
    if on is None:
        return None
    made = {
        "claimant": claimant,
        "claimant_name": member_name(db, claimant),
        "quantity": quantity,
        "status": status,
    }
    return made, on


def member_name(db: sqlite3.Connection, key: bytes) -> str:
    row = db.execute("SELECT name FROM members WHERE author = ?", (key,)).fetchone()
    return str(row[0]) if row else key.hex()[:8]


def shift(db: sqlite3.Connection, id_hex: str) -> Row | None:
    for found in views.roster(db, None)["shifts"]:
        if found["id"] == id_hex:
            return found
    return None


def when(start: str, end: str | None = None) -> str:
    """``2026-12-12T09:00`` as ``2026-12-12 09:00``; with an end on the same day,
    ``2026-12-12 09:00 to 12:00``."""
    text = start.replace("T", " ", 1)
    if end is None:
        return text
    same_day = end[:10] == start[:10]
    return f"{text} to {end[11:] if same_day else end.replace('T', ' ', 1)}"


def shift_words(db: sqlite3.Connection, role: str, location: str, start: str, end: str) -> str:
    """``Driver at Church pantry, 2026-12-12 09:00 to 12:00``."""
    return (
        f"{name_of(db, 'roles', role)} at {name_of(db, 'locations', location)}, {when(start, end)}"
    )


def amount(db: sqlite3.Connection, item: str, count: int) -> str:
    """``12 cans of Black beans``: the item's unit, plural when count is not 1."""
    found = definition(db, "items", item)
    if found is None:
        return f"{count} of {item}"
    unit = str(found["unit"])
    if abs(count) != 1 and not unit.endswith("s") and unit.isalpha() and len(unit) > 2:
        unit += "s"
    return f"{count} {unit} of {found['name']}"


Names = dict[str, dict[str, Row]]
"""Every definition by table then slug: what a table for people shows beside a slug."""


def names(db: sqlite3.Connection) -> Names:
    found: Names = {}
    for table, columns in _DEFINITIONS.items():
        found[table] = {
            str(row[0]): dict(zip(columns, row, strict=True))
            for row in db.execute(f"SELECT {', '.join(columns)} FROM {table}")
        }
    return found
