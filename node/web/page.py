"""What each page shows: the read models of projections/views.py, shaped for people.

Contract: each ``*_view`` function reads the node once (one ``store.read``, so one
page is one consistent look at the log) and returns plain values for its template,
with every word already in the reader's language. Nothing here decides anything about
the data: the projections did (who is over a quantity, what is expiring); this module
only names it, sorts it for reading and says which buttons this member may press.
"""

from __future__ import annotations

import datetime
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.app import Node
from node.web.form import Known
from node.web.i18n import EN, Message, Translator
from projections import views
from projections.board import ALLOWED_FROM
from projections.roster import iso_week

Row = dict[str, Any]
"""One shaped record for a template (Any: templates read whatever the page put in)."""


@dataclass(slots=True)
class FormState:
    """One form as the page shows it: what was typed and what is wrong, per field."""

    name: str
    values: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[str, Message] = field(default_factory=dict)

    def id(self, field_name: str) -> str:
        return f"{self.name}-{field_name}"

    def value(self, field_name: str, default: object = "") -> str:
        if field_name in self.values:
            return self.values[field_name]
        return "" if default is None else str(default)

    def label_key(self, field_name: str) -> str | None:
        """The catalog key of the field's label, for the error summary (None if none)."""
        key = _LABELS.get((self.name, field_name), f"field.{field_name}")
        return key if key in EN else None

    @property
    def first_error(self) -> str | None:
        return next((name for name in self.errors if name), None)

    @property
    def submitted(self) -> bool:
        return bool(self.values) or bool(self.errors)


_LABELS = {("assign", "until"): "field.role_until"}
"""Fields whose label is not ``field.<name>``."""


# -- reads the views do not have yet ----------------------------------------------


def _rows(view: dict[str, list[dict[str, object]]]) -> dict[str, list[Row]]:
    """A view's lists of rows, as the templates take them (values of any type)."""
    return {name: list(rows) for name, rows in view.items()}


last_id = views.folded_through
"""How far the projections the pages show are folded, as the log's arrival counter:
what the live feed compares (node/web/feed.py). Not the log's newest event: during a
large sync the projector folds behind the log, and a page redrawn when an event was
stored but not yet folded would wait for the next event to show it."""


async def known(node: Node) -> Known:
    slugs, members = await node.store.read(views.together(views.known_slugs, views.members))
    return Known(
        items=frozenset(slugs["items"]),
        locations=frozenset(slugs["locations"]),
        roles=frozenset(slugs["roles"]),
        members=frozenset(m["key"] for m in members),
    )


def current_week(today: datetime.date) -> str:
    return iso_week(today.isoformat() + "T00:00")


def parse_week(text: str | None, today: datetime.date) -> str:
    """'2026-W48' when it is a real ISO week, else this week."""
    if text:
        try:
            year, week = text.split("-W")
            datetime.date.fromisocalendar(int(year), int(week), 1)
            return f"{int(year):04d}-W{int(week):02d}"
        except ValueError:
            pass
    return current_week(today)


def _names(rows: list[Row]) -> dict[str, str]:
    return {str(r["slug"]): str(r["name"]) for r in rows}


def _who(t: Translator, key: object, name: object, me: str) -> str:
    if key == me:
        return f"{name} ({t('board.you')})" if name else t("board.you")
    return str(name) if name else t("board.unknown_member")


# -- board -------------------------------------------------------------------------


async def board_view(node: Node, t: Translator, now: datetime.datetime) -> dict[str, Any]:
    today = now.astimezone(datetime.UTC).date()
    read = views.together(last_id, functools.partial(views.board, today=today), views.catalog)

    live_id, view, catalog = await node.store.read(read)
    data, cat = _rows(view), _rows(catalog)
    me = node.author.hex()
    places = _names(cat["locations"])
    today = now.astimezone().date()
    needs = [_entry(t, e, "need", me, places, now, today) for e in data["needs"]]
    offers = [_entry(t, e, "offer", me, places, now, today) for e in data["offers"]]
    withdrawn = [_entry(t, e, str(e["kind"]), me, places, now, today) for e in data["withdrawn"]]
    return {
        "live_id": live_id,
        "needs": needs,
        "offers": offers,
        "withdrawn": withdrawn,
        "items": cat["items"],
        "locations": cat["locations"],
    }


def _entry(
    t: Translator,
    e: Row,
    kind: str,
    me: str,
    places: dict[str, str],
    now: datetime.datetime,
    today: datetime.date,
) -> Row:
    mine = e["author"] == me
    holder = _who(t, e["author"], e["author_name"], me)
    posted = datetime.datetime.fromisoformat(str(e["posted"]).replace("Z", "+00:00"))
    quantity, claimed, remaining = e["quantity"], e["claimed"], e["remaining"]
    if quantity is None:
        numbers = t(f"board.no_quantity_{kind}", claimed=claimed)
    else:
        numbers = t(
            f"board.{kind}_numbers",
            quantity=quantity,
            claimed=claimed,
            remaining=max(int(remaining), 0),
        )
    over = "over-claimed" in e["flags"]
    date = e.get("until") if kind == "offer" else e.get("by")
    claims = [_claim(t, c, e["author"], me) for c in e["claims"]]
    return {
        "id": e["id"],
        "kind": kind,
        "title": e["title"],
        "category": e["category"],
        "urgency": e.get("urgency"),
        "mine": mine,
        "holder": holder,
        "posted": t("board.posted_by", name=holder, when=t.ago(posted, now)),
        "posted_iso": e["posted"],
        "where": t("board.where", place=places.get(str(e["location"]), e["location"]))
        if e["location"]
        else None,
        "date": t(
            "board.until" if kind == "offer" else "board.need_by",
            date=t.date_text(str(date), today),
        )
        if date
        else None,
        "numbers": numbers,
        "remaining": remaining,
        "over": t(f"board.over_{kind}", claimed=claimed, quantity=quantity) if over else None,
        "decides": (t("board.decides_you") if mine else t("board.decides_other", name=holder))
        if over
        else None,
        "claims": claims,
        "active_claims": [c for c in claims if c["active"]],
        "can_claim": not mine,
        "open_for": t.plural("board.days_open", int(e["days_open"]))
        if e.get("days_open") is not None
        else None,
        "flags": [t(f"board.flag.{f}") for f in e["flags"] if f != "over-claimed"],
    }


def _claim(t: Translator, c: Row, holder: object, me: str) -> Row:
    status = str(c["status"])
    is_holder = holder == me
    is_claimant = c["claimant"] == me
    actions = []
    if is_holder and status in ALLOWED_FROM["confirmed"]:
        actions += ["confirm", "decline"]
    if is_claimant and status in ALLOWED_FROM["released"]:
        actions.append("release")
    if (is_holder or is_claimant) and status == "confirmed":  # pending: decide first
        actions.append("fulfil")
    return {
        "id": c["id"],
        "who": _who(t, c["claimant"], c["claimant_name"], me),
        "quantity": c["quantity"],
        "status": status,
        "status_label": t(f"claim.status.{status}"),
        "flags": [t(f"claim.flag.{f}") for f in c["flags"]],
        "steps": [
            t(
                "claim.step_by",
                step=t(f"claim.status.{s['step']}"),
                name=_who(t, s["by"], s["by_name"], me),
            )
            for s in c["steps"]
        ]
        if "disputed" in c["flags"]
        else [],
        "needs_decision": "needs-decision" in c["flags"],
        "active": status in ("pending", "confirmed", "fulfilled"),
        "actions": actions,
    }


# -- inventory -----------------------------------------------------------------------


async def inventory_view(node: Node, t: Translator, today: datetime.date) -> dict[str, Any]:
    read = views.together(last_id, functools.partial(views.inventory, today=today), views.catalog)

    live_id, view, catalog = await node.store.read(read)
    data, cat = _rows(view), _rows(catalog)
    items = {str(i["slug"]): i for i in cat["items"]}
    places = _names(cat["locations"])
    groups: dict[str, list[Row]] = {}
    counts = {"expiring": 0, "negative": 0, "recount": 0}
    for row in data["rows"]:
        flags = list(row["flags"])
        for flag in flags:
            if flag in ("expiring", "expired"):
                counts["expiring"] += 1
            elif flag in counts:
                counts[flag] += 1
        item = items.get(str(row["item"]))
        groups.setdefault(str(row["location"]), []).append(
            {
                "item": row["item"],
                "name": item["name"] if item else row["item"],
                "on_hand": row["on_hand"],
                "amount": t(
                    "inventory.amount", n=row["on_hand"], unit=item["unit"] if item else ""
                ),
                "expires": t.date_text(row["expires"], today) if row["expires"] else "",
                "flags": [{"flag": f, "label": t(f"flag.{f}")} for f in flags],
                "versions": _versions_text(t, row["versions"]),
                "warn": bool(flags),
            }
        )
    locations: list[Row] = [
        {
            "slug": slug,
            "name": places.get(slug, slug),
            "rows": sorted(rows, key=lambda r: str(r["name"]).lower()),
        }
        for slug, rows in groups.items()
    ]
    locations.sort(key=lambda loc: str(loc["name"]).lower())
    summary = [t.plural(f"inventory.{key}", n) for key, n in counts.items() if n]
    return {
        "live_id": live_id,
        "locations": locations,
        "summary": summary,
        "items": cat["items"],
        "all_locations": cat["locations"],
        "expiring_days": views.EXPIRING_DAYS,
    }


def _versions_text(t: Translator, versions: dict[str, list[Row]]) -> str | None:
    """The definitions made apart of a stock row's item and location, in a sentence."""
    listed = [
        ", ".join(str(v[f]) for f in ("name", "unit", "kind") if f in v) + f" ({v['by_name']})"
        for kind in ("item", "location")
        for v in versions.get(kind, [])
    ]
    return t("definition.versions", versions="; ".join(listed)) if listed else None


# -- roster --------------------------------------------------------------------------


async def roster_view(node: Node, t: Translator, week: str, today: datetime.date) -> dict[str, Any]:
    read = views.together(last_id, functools.partial(views.roster, week=week), views.catalog)

    live_id, view, catalog = await node.store.read(read)
    data, cat = _rows(view), _rows(catalog)
    me = node.author.hex()
    places = _names(cat["locations"])
    roles = {str(r["slug"]): str(r["name"]) for r in data["roles"]}
    conflicting = {str(r["slug"]) for r in data["roles"] if r["flags"]}
    year, number = (int(part) for part in week.split("-W"))
    monday = datetime.date.fromisocalendar(year, number, 1)
    days: list[Row] = [
        {"date": monday + datetime.timedelta(days=i), "shifts": []} for i in range(7)
    ]
    for s in data["shifts"]:
        start = datetime.datetime.fromisoformat(str(s["start"]))
        end = datetime.datetime.fromisoformat(str(s["end"]))
        members = [
            {
                "name": _who(t, m["key"], m["name"], me),
                "me": m["key"] == me,
                "extra": "over" in m["flags"],
            }
            for m in s["members"]
        ]
        signed_up = any(m["me"] for m in members)
        open_ = int(s["open"])
        filled, slots = int(s["filled"]), int(s["slots"])
        end_text = end.strftime("%H:%M")
        if end.date() != start.date():
            end_text = f"{t.day(end.date())} {end_text}"
        shift = {
            "id": s["id"],
            "role": roles.get(str(s["role"]), s["role"]),
            "role_flag": t("flag.conflicting-definitions")
            if str(s["role"]) in conflicting
            else None,
            "where": places.get(str(s["location"]), s["location"]),
            "time": t("roster.time", start=start.strftime("%H:%M"), end=end_text),
            "filled": t("roster.filled", filled=filled, slots=slots),
            "needs": t.plural("roster.needs", open_) if open_ else None,
            "over": t("roster.over_filled", filled=filled, slots=slots)
            if "over-filled" in s["flags"]
            else None,
            "members": members,
            "signed_up": signed_up,
        }
        index = (start.date() - monday).days
        if 0 <= index < 7:
            days[index]["shifts"].append(shift)
    for day in days:
        day["label"] = t.day(day["date"])
        day["today"] = day["date"] == today
    hours = sorted(
        (
            {"name": _who(t, h["member"], h["name"], me), "hours": f"{h['hours']:g}"}
            for h in data["hours"]
        ),
        key=lambda h: str(h["name"]).lower(),
    )
    return {
        "live_id": live_id,
        "week": week,
        "week_number": number,
        "days": days,
        "hours": hours,
        "heading": t(
            "roster.week",
            week=number,
            start=t.day(monday),
            end=t.day(monday + datetime.timedelta(days=6)),
        ),
        "prev": current_week(monday - datetime.timedelta(days=7)),
        "next": current_week(monday + datetime.timedelta(days=7)),
        "this_week": current_week(today),
        "roles": data["roles"],
        "locations": cat["locations"],
        "default_date": (today if current_week(today) == week else monday).isoformat(),
    }


# -- people --------------------------------------------------------------------------


async def people_view(node: Node, t: Translator, today: datetime.date) -> dict[str, Any]:
    week = current_week(today)

    read = views.together(last_id, views.members, functools.partial(views.roster, week=week))

    live_id, members, roster_view = await node.store.read(read)
    roster = _rows(roster_view)
    me = node.author.hex()
    held: dict[str, list[str]] = {}
    roles = []
    for role in roster["roles"]:
        holders = []
        for m in role["members"]:
            name = _who(t, m["key"], m["name"], me)
            holders.append(
                t("people.until", name=name, date=t.date_text(m["until"], today))
                if m["until"]
                else name
            )
            held.setdefault(str(m["key"]), []).append(str(role["name"]))
        roles.append(
            {
                "slug": role["slug"],
                "name": role["name"],
                "description": role["description"],
                "weekly": t("people.weekly", hours=f"{role['weekly_hours']:g}"),
                "holders": t("people.holders", names=", ".join(holders))
                if holders
                else t("people.nobody"),
            }
        )
    hours = {str(h["member"]): float(h["hours"]) for h in roster["hours"]}
    people = [
        {
            "key": m["key"],
            "short": m["key"][:8],
            "name": m["name"],
            "me": m["key"] == me,
            "languages": t("people.languages", languages=", ".join(m["languages"]))
            if m["languages"]
            else None,
            "roles": t("people.holds", roles=", ".join(held[m["key"]]))
            if m["key"] in held
            else None,
            "hours": t("people.hours_week", hours=f"{hours[m['key']]:g}")
            if m["key"] in hours
            else None,
        }
        for m in members
    ]
    people.sort(key=lambda p: (not p["me"], str(p["name"]).lower()))
    return {"live_id": live_id, "members": people, "roles": roles, "role_choices": roster["roles"]}


# -- sync ----------------------------------------------------------------------------


async def sync_view(node: Node, t: Translator, now: datetime.datetime) -> dict[str, Any]:
    read = views.together(last_id, views.members)

    live_id, members = await node.store.read(read)
    me = next((m for m in members if m["key"] == node.author.hex()), None)
    peers = await peers_of(node)
    return {
        "live_id": live_id,
        "name": me["name"] if me else "",
        "key": node.author.hex(),
        "group": node.group.name,
        "events": await node.store.count(),
        "peers": None if peers is None else [_peer(t, p, now) for p in peers],
    }


async def peers_of(node: Node) -> list[Mapping[str, object]] | None:
    """``node.peers()`` (the schema of ``potluck peers --json``); None if it cannot sync."""
    method = getattr(node, "peers", None)
    if not callable(method):
        return None
    result = method()
    if inspect.isawaitable(result):
        result = await result
    return [p for p in (result or ()) if isinstance(p, Mapping)]


def _peer(t: Translator, p: Mapping[str, object], now: datetime.datetime) -> Row:
    key = str(p.get("key") or "")
    seen = p.get("last_seen")
    when = None
    if isinstance(seen, str):
        try:
            when = t.ago(datetime.datetime.fromisoformat(seen.replace("Z", "+00:00")), now)
        except ValueError:
            when = seen
    behind, ahead = p.get("behind"), p.get("ahead")
    return {
        "name": p.get("name") or (key[:8] if key else t("sync.unknown_peer")),
        "address": p.get("address") or "",
        "found": t(f"sync.found.{p.get('found')}")
        if f"sync.found.{p.get('found')}" in _FOUND_KEYS
        else str(p.get("found") or ""),
        "connected": bool(p.get("connected")),
        "state": t("sync.connected") if p.get("connected") else t("sync.not_connected"),
        "last_seen": t("sync.last_seen", when=when) if when else t("sync.never_seen"),
        "lag": t("sync.lag", behind=behind, ahead=ahead)
        if isinstance(behind, int) and isinstance(ahead, int)
        else None,
        "error": p.get("last_error") or None,
    }


_FOUND_KEYS = frozenset(
    f"sync.found.{how}" for how in ("manual", "invite", "mdns", "bundle", "inbound")
)


async def me_of(node: Node) -> str:
    members = await node.store.read(views.members)
    return next((m["name"] for m in members if m["key"] == node.author.hex()), "")
