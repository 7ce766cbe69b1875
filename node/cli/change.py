"""What a sync changed, in the terms a member acts on (issue 19, item 5): posts new on
the board, posts that left it, and flags that appeared (an over-claim, an over-filled
shift, a negative count), marked ``yours`` when this member is the one to decide.

Two snapshots of the projections, one before the sync and one after, are compared;
whatever the projections flag, this reports when it appears, so a flag added to them
later is reported without a change here."""

from __future__ import annotations

import datetime
import sqlite3
from typing import TypedDict

from node.cli import phrase
from projections import views

Row = dict[str, object]


class Snapshot(TypedDict):
    posts: dict[str, Row]  # id -> board entry (kind added)
    flagged: dict[tuple[str, str], Row]  # (what, id) -> thing with its flags


def snapshot(db: sqlite3.Connection, me: bytes) -> Snapshot:
    """The board, roster and inventory as this member sees them now."""
    board = views.board(db)
    posts: dict[str, Row] = {}
    flagged: dict[tuple[str, str], Row] = {}
    for kind, entries in (("offer", board["offers"]), ("need", board["needs"])):
        for entry in entries:
            mine = entry["author"] == me.hex()
            posts[str(entry["id"])] = {**entry, "kind": kind}
            flagged[(kind, str(entry["id"]))] = _thing(kind, entry, str(entry["title"]), mine)
            claims = entry["claims"]
            assert isinstance(claims, list)
            for c in claims:
                theirs = mine or c["claimant"] == me.hex()
                title = f'{c["claimant_name"]}\'s claim on "{entry["title"]}"'
                flagged[("claim", str(c["id"]))] = _thing("claim", c, title, theirs)
    for s in views.roster(db, None)["shifts"]:
        members = s["members"]
        assert isinstance(members, list)
        mine = any(m["key"] == me.hex() for m in members)
        title = phrase.shift_words(
            db, str(s["role"]), str(s["location"]), str(s["start"]), str(s["end"])
        )
        flagged[("shift", str(s["id"]))] = _thing("shift", s, title, mine)
    for r in views.inventory(db, datetime.date.today())["rows"]:
        key = f"{r['item']}@{r['location']}"
        title = (
            f"{phrase.name_of(db, 'items', str(r['item']))} at "
            f"{phrase.name_of(db, 'locations', str(r['location']))}"
        )
        flagged[("stock", key)] = _thing("stock", r, title, False)
    return {"posts": posts, "flagged": flagged}


def _thing(what: str, row: Row, title: str, yours: bool) -> Row:
    flags = row.get("flags")
    return {
        "what": what,
        "id": row.get("id"),
        "title": title,
        "flags": list(flags) if isinstance(flags, list) else [],
        "yours": yours,
    }


def compare(before: Snapshot, after: Snapshot) -> dict[str, list[Row]]:
    """The ``changes`` of ``potluck sync --json``: ``new_posts``, ``closed_posts``
    (withdrawn, met or otherwise off the open board) and ``new_flags``."""
    new_posts = [
        _post(entry) for id_, entry in after["posts"].items() if id_ not in before["posts"]
    ]
    closed = [_post(entry) for id_, entry in before["posts"].items() if id_ not in after["posts"]]
    new_flags: list[Row] = []
    for key, thing in after["flagged"].items():
        had = before["flagged"].get(key)
        old = set(had["flags"]) if had and isinstance(had["flags"], list) else set()
        flags = thing["flags"]
        assert isinstance(flags, list)
        for flag in flags:
            if flag not in old:
                new_flags.append({**{k: v for k, v in thing.items() if k != "flags"}, "flag": flag})
    new_flags.sort(key=lambda f: not f["yours"])  # this member's decisions first
    return {"new_posts": new_posts, "closed_posts": closed, "new_flags": new_flags}


def _post(entry: Row) -> Row:
    return {
        "kind": entry["kind"],
        "id": entry["id"],
        "title": entry["title"],
        "author_name": entry.get("author_name"),
        "urgency": entry.get("urgency"),
        "quantity": entry.get("quantity"),
    }
