"""What the commands print for people (not ``--json``): the tables and multi-line reports.

The one module that knows rich, so that the look of the output is decided in one place and
the commands only fetch and hand over the same data their ``--json`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sync.bundle import BundleInfo, ImportResult

_console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
"""markup=False: a title such as ``closing [/bold] tag`` is text, not a style to close."""
Rows = list[dict[str, object]]

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Characters a terminal acts on instead of showing: the C0 and C1 controls (ESC starts
every escape sequence; a newline and a tab stay) and the bidirectional controls that
reorder what follows (a right-to-left override can make 'exe.txt' read 'txt.exe')."""


def plain(value: object) -> str:
    """``value`` as text a terminal shows as it is: every character of ``_UNSAFE`` is
    written as its escape (``\\x1b``, ``\\u202e``). Everything printed that came from an
    event (a title, a name, a reason) passes through here (security review, finding 4)."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def echo(text: object = "", *, err: bool = False) -> None:
    """Print one line of output for people, made ``plain``."""
    click.echo(plain(text), err=err)


def json_text(data: object) -> str:
    """``data`` as indented JSON whose non-ASCII text stays readable, but with the
    characters of ``_UNSAFE`` escaped (json escapes the C0 controls itself; the
    bidirectional controls would still reorder a terminal's line)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _add(table: Table, *cells: object) -> None:
    table.add_row(*(plain(cell) for cell in cells))


def short(hex_id: str) -> str:
    """The first 8 hex characters: enough to tell ids apart, and accepted back as a prefix."""
    return hex_id[:8]


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _flag_text(flags: object) -> str:
    """One flag a line: a narrow column wraps between flags, never inside one."""
    return "\n".join(flags) if isinstance(flags, list) else ""


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table that fits the terminal (or $COLUMNS, else 80): no frame at the sides,
    columns of dates, times, ids and numbers never cut (``no_wrap``), text wrapped at
    spaces instead (issue 19, item 8)."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in columns:
        fixed = column in _FIXED
        table.add_column(
            column,
            no_wrap=fixed,
            overflow="fold",
            min_width=_FIXED.get(column),
            justify="right" if column in _NUMBERS else "left",
        )
    return table


_FIXED = {
    "id": 8,
    "until": 10,
    "by": 10,
    "expires": 10,
    "when": 16,
    "week": 8,
    "last seen": 20,
    "urgency": 6,
    "days": 4,
    "filled": 6,
    "claimed": 7,
    "left": 4,
    "hours": 5,
    "on hand": 7,
}
"""Columns cut by nothing: their least width (a date's ten characters) is kept."""
_TEXT_WIDTH = {"flags": 14}
"""The least width a wrapped column is given when choosing columns ("needs-decision")."""
_TEXT_LEAST = 12


class _Fitted:
    """A table with the columns that fit the width: ``optional`` ones (least needed
    first) are left out, in turn, while the rest would not fit; a row is given
    every column's cell and keeps those of the columns kept."""

    def __init__(self, title: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()):
        kept = list(columns)
        for column in optional:
            if _least(kept) <= _console.width:
                break
            kept.remove(column)
        self.columns = columns
        self.kept = frozenset(kept)
        self.table = _table(title, tuple(kept))

    def add(self, *cells: object) -> None:
        _add(
            self.table,
            *(cell for name, cell in zip(self.columns, cells, strict=True) if name in self.kept),
        )


def _least(columns: list[str]) -> int:
    """The width ``columns`` need at least: fixed ones whole, text ones a few words."""
    return sum(_FIXED.get(c, _TEXT_WIDTH.get(c, _TEXT_LEAST)) for c in columns) + 2 * (
        len(columns) - 1
    )


_NUMBERS = frozenset({"claimed", "left", "days", "filled", "hours", "behind", "ahead"})


def _named(names: dict[str, dict[str, dict[str, object]]], table: str, slug: object) -> str:
    """The name people gave a slug, else the slug."""
    if slug is None:
        return ""
    found = names.get(table, {}).get(str(slug))
    return str(found["name"]) if found and found.get("name") else str(slug)


def _posted_by(entry: dict[str, object], names: dict[str, dict[str, dict[str, object]]]) -> str:
    """``Ana, at Church pantry``: who posted it and where, the line under its title."""
    who = str(entry.get("author_name") or short(str(entry.get("author", ""))))
    where = entry.get("location")
    return who + (f", at {_named(names, 'locations', where)}" if where else "")


def _amounts(entry: dict[str, object]) -> str:
    """``3/10`` claimed of the quantity, or the claimed count alone."""
    quantity = entry.get("quantity")
    return f"{entry['claimed']}/{quantity}" if quantity is not None else str(entry["claimed"])


def whoami(info: dict[str, object]) -> None:
    echo(
        f"{info['name']} ({short(str(info['key']))}) in group '{info['group']}': "
        f"{info['members']} members, {info['events']} events"
    )
    echo(f"data: {info['data_dir']}")
    forks = info["forks"]
    assert isinstance(forks, list)
    for fork in forks:
        echo(
            f"warning: {fork['name'] or fork['key'][:8]} wrote {fork['versions']} "
            f"different events as #{fork['seq']}; their events from there on are "
            "left out of the board until this is sorted out"
        )


def board(data: dict[str, Rows], names: dict[str, dict[str, dict[str, object]]]) -> None:
    """Offers, then needs (most urgent first): title with who posted it and where, the
    date it is good until or needed by, urgency, claimed of quantity, what is left, the
    days it has been open; under each post one row per claim, indented. Then the
    withdrawn posts that still hold claims (flagged ``target-withdrawn``), if any."""
    for kind in ("offers", "needs", "withdrawn"):
        if kind == "withdrawn" and not data.get(kind):
            continue
        offers = kind != "needs"
        columns: tuple[str, ...] = ("id", "post" if kind == "withdrawn" else kind[:-1])
        columns += ("until" if offers else "by",) + (() if offers else ("urgency",))
        columns += ("claimed", "left", "days", "flags")
        optional = ("days", "claimed", "until" if offers else "by")
        fitted = _Fitted(kind.capitalize(), columns, optional)
        for entry in data[kind]:
            date = entry.get("until") or entry.get("by")
            urgency = () if offers else (str(entry.get("urgency", "")),)
            fitted.add(
                short(str(entry["id"])),
                f"{entry['title']}\n  {_posted_by(entry, names)}",
                _text(date),
                *urgency,
                _amounts(entry),
                _text(entry["remaining"]),
                _text(entry.get("days_open")),
                _flag_text(entry["flags"]),
            )
            claims = entry["claims"]
            assert isinstance(claims, list)
            for c in claims:
                fitted.add(
                    short(c["id"]),
                    f"  {c['claimant_name']} {'pledges' if kind == 'needs' else 'claims'} "
                    f"{c['quantity']}: {c['status']}",
                    "",
                    *(("",) if not offers else ()),
                    "",
                    "",
                    "",
                    _flag_text(c["flags"]),
                )
        _console.print(fitted.table)


def inventory(data: dict[str, Rows], names: dict[str, dict[str, dict[str, object]]]) -> None:
    """Stock per place and item, by name (the slug, which commands take, in brackets),
    with its unit."""
    table = _table("Inventory", ("where", "item", "on hand", "expires", "flags"))
    for row in data["rows"]:
        item = names.get("items", {}).get(str(row["item"]))
        unit = f" {item['unit']}" if item else ""
        _add(
            table,
            f"{_named(names, 'locations', row['location'])} ({row['location']})",
            f"{_named(names, 'items', row['item'])} ({row['item']})",
            f"{row['on_hand']}{unit}",
            _text(row["expires"]),
            _flag_text(row["flags"]),
        )
    _console.print(table)


def _when(start: str, end: str) -> str:
    """``2026-03-02 09:00`` over ``to 12:00`` (the end's date only when it differs)."""
    first = start.replace("T", " ", 1)
    last = end[11:] if end[:10] == start[:10] else end.replace("T", " ", 1)
    return f"{first}\nto {last}"


def roster(data: dict[str, Rows], names: dict[str, dict[str, dict[str, object]]]) -> None:
    """The shifts with who fills them, then the hours per person per week."""
    fitted = _Fitted("Shifts", ("id", "shift", "when", "filled", "people", "flags"), ("filled",))
    for s in data["shifts"]:
        members = s["members"]
        assert isinstance(members, list)
        fitted.add(
            short(str(s["id"])),
            f"{_named(names, 'roles', s['role'])}\n  at "
            + _named(names, "locations", s["location"]),
            _when(str(s["start"]), str(s["end"])),
            f"{s['filled']}/{s['slots']}",
            "\n".join(str(m["name"]) for m in members),
            _flag_text(s["flags"]),
        )
    _console.print(fitted.table)
    hours = _table("Hours", ("week", "who", "hours"))
    for h in data["hours"]:
        _add(hours, str(h["week"]), str(h["name"]), f"{h['hours']:g}")
    _console.print(hours)


def log(entries: Rows) -> None:
    """One line per event: time, short id, author#seq, type."""
    for e in entries:
        echo(f"{e['time']}  {short(str(e['id']))}  {e['author_name']}#{e['seq']}  {e['type']}")


def peers(rows: Rows) -> None:
    fitted = _Fitted(
        "Peers",
        ("who", "address", "found", "connected", "last seen", "behind", "ahead"),
        ("found", "ahead", "behind"),
    )
    for r in rows:
        who = r["name"] or (short(str(r["key"])) if r["key"] else "")
        fitted.add(
            str(who),
            str(r["address"]),
            str(r["found"]),
            "yes" if r["connected"] else "no",
            _text(r["last_seen"]),
            _text(r["behind"]),
            _text(r["ahead"]),
        )
    _console.print(fitted.table)


def synced(report: dict[str, object]) -> None:
    """What one ``potluck sync`` exchanged, and what in it needs a person's attention."""
    who = report["peer_name"] or short(str(report["peer"]))
    echo(
        f"Synced with {who} at {report['address']}: received {report['received']} "
        f"events, sent {report['sent']}."
    )
    changes = report.get("changes")
    if isinstance(changes, dict):
        changed(changes)
    if report["held_future"]:
        echo(
            f"Held {report['held_future']} events stamped more than 24 hours ahead of "
            "this computer's clock: they wait for their time, unapplied. Check both "
            "clocks; 'potluck doctor' lists them."
        )
    if report["evidence_in"] or report["evidence_out"]:
        echo(
            f"Proof that a member wrote two versions of one event: received "
            f"{report['evidence_in']}, sent {report['evidence_out']}. Their events "
            "from there on are left out of the board; 'potluck whoami' names them."
        )


def changed(changes: dict[str, Rows]) -> None:
    """What a sync brought, this member's decisions first (``Needs your decision: the
    offer "Canned beans": over-claimed.``), one line per thing with all its new flags,
    then the other new flags, the posts new on the board and those that left it."""
    flags = changes.get("new_flags", [])
    grouped: dict[tuple[object, object, object], list[str]] = {}
    for f in flags:  # one line per thing, with all its new flags
        grouped.setdefault((f["what"], f["id"], f["title"]), []).append(str(f["flag"]))
    yours = {(f["what"], f["id"], f["title"]) for f in flags if f["yours"]}
    for mine in (True, False):
        for key, names in grouped.items():
            if (key in yours) == mine:
                what, _, title = key
                said = _flagged(what, title, names)
                echo(f"Needs your decision: {said}" if mine else f"New on the board: {said}")
    for post in changes.get("new_posts", []):
        urgency = f"{post['urgency']} " if post.get("urgency") not in (None, "normal") else ""
        amount = f"{post['quantity']} " if post.get("quantity") else ""
        echo(f'New {urgency}{post["kind"]}: {amount}"{post["title"]}" from {post["author_name"]}.')
    for post in changes.get("closed_posts", []):
        echo(f'Off the board now: {post["kind"]} "{post["title"]}" from {post["author_name"]}.')
    if not flags and not changes.get("new_posts") and not changes.get("closed_posts"):
        echo("Nothing new on the board, roster or inventory.")


def _flagged(what: object, title: object, flags: list[str]) -> str:
    """``the offer "Canned beans": over-claimed.``"""
    quoted = f'"{title}"' if what in ("offer", "need") else str(title)
    return f"{'the ' + str(what) + ' ' if what != 'claim' else ''}{quoted}: {', '.join(flags)}."


def bundle_exported(file: Path, info: BundleInfo) -> None:
    echo(
        f"Wrote {info.events} events from {info.authors} members to {file} ({info.bytes:,} bytes)."
    )
    if info.evidence:
        echo(
            f"It also carries the proof that {info.evidence} member(s) wrote two "
            "versions of one event: whoever imports it leaves their later events "
            "out too."
        )


def bundle_imported(result: ImportResult) -> None:
    echo(
        f"Imported {result.stored} new events ({result.duplicates} already here"
        + (f", {result.rejected} refused" if result.rejected else "")
        + (f", {result.held} waiting for earlier events" if result.held else "")
        + ")."
    )
    if result.evidence:
        echo(
            f"It proved that {result.evidence} member(s) wrote two versions of one "
            "event: their events from there on are left out until people sort it out."
        )
    for reason in result.reasons:
        echo(f"  refused: {reason}")


PROGRESS_AFTER = "POTLUCK_PROGRESS_AFTER"
"""Seconds a step runs before its progress is shown (default 2): quick steps stay quiet."""
LINE_EVERY = 5.0
"""Seconds between progress lines when standard error is no terminal (a log)."""
Poll = Callable[[], tuple[int, int | None]]
"""How far a step is: (done, total or None when not known)."""


@contextlib.asynccontextmanager
async def busy(what: str, poll: Poll | None = None, unit: str = "events") -> AsyncIterator[None]:
    """Show that ``what`` is under way once it has taken PROGRESS_AFTER seconds, on
    standard error (standard output stays the command's result): a progress bar on a
    terminal, else a line every LINE_EVERY seconds and one when it ends (issue 19,
    item 12). ``poll`` gives how far it is; without it only the time is shown."""
    after = float(os.environ.get(PROGRESS_AFTER) or 2)
    started = time.monotonic()
    shown: list[bool] = []
    ticker = asyncio.create_task(_tick(what, poll, unit, after, shown))
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        if shown and not sys.stderr.isatty():
            echo(f"{what}: done in {time.monotonic() - started:.0f} s.", err=True)


async def _tick(what: str, poll: Poll | None, unit: str, after: float, shown: list[bool]) -> None:
    await asyncio.sleep(after)
    shown.append(True)
    started = time.monotonic() - after
    if not sys.stderr.isatty():
        while True:
            done, total = poll() if poll else (0, None)
            so_far = (
                f"{done:,} of {total:,} {unit}, "
                if total
                else (f"{done:,} {unit} so far, " if poll else "")
            )
            echo(f"{what}: {so_far}{time.monotonic() - started:.0f} s", err=True)
            await asyncio.sleep(LINE_EVERY)
    bar = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed:,.0f}" + (f" {unit}" if poll else "")),
        TimeElapsedColumn(),
        console=Console(stderr=True, markup=False, emoji=False, highlight=False),
        transient=True,
    )
    with bar:
        task = bar.add_task(plain(what), total=None)
        while True:
            done, total = poll() if poll else (0, None)
            bar.update(task, completed=done, total=total)
            await asyncio.sleep(0.2)
