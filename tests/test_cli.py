"""End to end through the ``potluck`` command, one subprocess per call (docs/cli.md).

One node walks through the README's day at a pantry (module fixture ``walk``); the tests
then read it back through ``--json`` and check the documented schemas. Each call is a
real process started with the installed package, so argument parsing, exit codes and
stdout are exactly what a volunteer or an outside script sees.
"""

from __future__ import annotations

import datetime
import json
import re
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import potluck, potluck_env

from node.app import LOG_FILE

HEX64 = re.compile(r"[0-9a-f]{64}")

SHIFT_START = "2026-03-02T09:00"  # ISO week 2026-W10
SHIFT_END = "2026-03-02T12:00"
LATER_START = "2026-03-10T17:00"  # ISO week 2026-W11
LATER_END = "2026-03-10T19:30"


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stdout.splitlines()
    assert lines, f"no output from {proc.args}"
    return lines[-1]


def new_id(data_dir: Path, *args: str) -> str:
    """Run a creating command and return the full id it printed alone on its last line."""
    id_ = last_line(potluck(data_dir, *args))
    assert HEX64.fullmatch(id_), f"{args}: last line {id_!r} is not a 64-hex id"
    return id_


def as_json(data_dir: Path, *args: str) -> Any:
    """The one JSON document ``potluck ARGS --json`` prints (an object)."""
    data = json.loads(potluck(data_dir, *args, "--json").stdout)
    assert isinstance(data, dict)
    return data


@dataclass
class Walk:
    """A node after the walkthrough, and what each step printed."""

    dir: Path
    key: str = ""
    expires: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    slugs: dict[str, str] = field(default_factory=dict)
    created_json: dict[str, Any] = field(default_factory=dict)
    writes: int = 0  # events written, member.joined included


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    d = tmp_path_factory.mktemp("walk") / "ana"
    w = Walk(d)
    w.expires = (datetime.date.today() + datetime.timedelta(days=2)).isoformat()

    w.key = new_id(d, "init", "--name", "Ana", "--new-group", "Eastside Mutual Aid")
    w.slugs["location"] = last_line(
        potluck(d, "location", "add", "pantry", "Church pantry", "--kind", "pantry")
    )
    w.slugs["item"] = last_line(
        potluck(d, "item", "add", "beans", "Black beans", "--unit", "can", "--category", "food")
    )

    # Stock: 12 in (expiring soon), a count of 10, then 3 out: on hand 7.
    w.ids["stock_in"] = new_id(
        d, "stock", "adjust", "beans", "pantry", "12", "--expires", w.expires
    )
    w.ids["count"] = new_id(d, "stock", "count", "beans", "pantry", "10")
    w.ids["stock_out"] = new_id(d, "stock", "adjust", "beans", "pantry", "-3")

    # An offer with one claim confirmed then fulfilled; an urgent need with one released.
    w.ids["soup"] = new_id(
        d,
        "offer",
        "post",
        "Vegetable soup",
        "--category",
        "food",
        "--item",
        "beans",
        "--quantity",
        "10",
        "--location",
        "pantry",
        "--until",
        "2026-12-31",
    )
    w.ids["nappies"] = new_id(
        d,
        "need",
        "post",
        "Nappies size 4",
        "--urgency",
        "urgent",
        "--quantity",
        "3",
        "--by",
        "2026-12-24",
    )
    w.ids["soup_claim"] = new_id(d, "claim", "make", w.ids["soup"][:6], "--quantity", "4")
    new_id(d, "claim", "confirm", w.ids["soup_claim"][:6])
    new_id(d, "claim", "fulfil", w.ids["soup_claim"][:8])
    w.ids["nappies_claim"] = new_id(d, "claim", "make", w.ids["nappies"][:6])
    new_id(d, "claim", "release", w.ids["nappies_claim"])

    # Over-claim: 10 loaves, two claims of 6 each.
    w.ids["bread"] = new_id(d, "offer", "post", "Bread", "--quantity", "10")
    w.ids["bread_claim_1"] = new_id(d, "claim", "make", w.ids["bread"][:6], "--quantity", "6")
    w.ids["bread_claim_2"] = new_id(d, "claim", "make", w.ids["bread"][:6], "--quantity", "6")

    # Withdrawn things leave the board; --json on a creating command.
    w.ids["blankets"] = new_id(d, "offer", "post", "Spare blankets")
    new_id(d, "offer", "withdraw", w.ids["blankets"])
    w.created_json = as_json(d, "need", "post", "Bus fare")
    w.ids["fare"] = str(w.created_json["id"])
    new_id(d, "need", "withdraw", w.ids["fare"][:7])

    # Roles and shifts.
    w.slugs["role"] = last_line(
        potluck(
            d,
            "role",
            "add",
            "cook",
            "Community cook",
            "--weekly-hours",
            "4",
            "--description",
            "Cooks the Friday meal",
        )
    )
    new_id(d, "role", "assign", "cook", "Ana")
    w.ids["shift"] = new_id(
        d,
        "shift",
        "add",
        "cook",
        "--location",
        "pantry",
        "--start",
        SHIFT_START,
        "--end",
        SHIFT_END,
        "--slots",
        "2",
    )
    w.ids["later_shift"] = new_id(
        d,
        "shift",
        "add",
        "cook",
        "--location",
        "pantry",
        "--start",
        LATER_START,
        "--end",
        LATER_END,
        "--slots",
        "1",
    )
    short = w.ids["shift"][:6]
    new_id(d, "shift", "signup", short)
    new_id(d, "shift", "withdraw", short)
    new_id(d, "shift", "signup", short)
    new_id(d, "shift", "complete", short, "--hours", "2.5")
    w.writes = 28  # one event per command above, init included
    return w


def by_id(entries: Any, id_: str) -> Any:
    assert isinstance(entries, list)
    found = [e for e in entries if e["id"] == id_]
    assert len(found) == 1, f"{id_[:8]} appears {len(found)} times"
    return found[0]


def test_creating_commands_print_the_new_id_or_slug_alone_on_the_last_line(walk: Walk) -> None:
    assert HEX64.fullmatch(walk.key)
    assert walk.slugs == {"location": "pantry", "item": "beans", "role": "cook"}
    assert len(set(walk.ids.values())) == len(walk.ids)
    assert all(HEX64.fullmatch(id_) for id_ in walk.ids.values())


def test_json_of_a_creating_command_is_its_id_and_type(walk: Walk) -> None:
    assert walk.created_json == {"id": walk.ids["fare"], "type": "need"}


def test_board_json_has_the_documented_schema_and_claim_states(walk: Walk) -> None:
    data = as_json(walk.dir, "board")
    assert set(data) == {"offers", "needs", "met", "withdrawn"}
    assert (data["met"], data["withdrawn"]) == ([], [])
    for entry in [*data["offers"], *data["needs"]]:
        assert entry["status"] == "open" and isinstance(entry["days_open"], int)
        for key, kind in (
            ("id", str),
            ("title", str),
            ("claimed", int),
            ("flags", list),
            ("claims", list),
        ):
            assert isinstance(entry[key], kind), (key, entry)
        assert HEX64.fullmatch(entry["id"])
        assert entry["quantity"] is None or isinstance(entry["quantity"], int)
        for c in entry["claims"]:
            assert {"id", "claimant", "quantity", "status", "flags"} <= set(c)

    soup = by_id(data["offers"], walk.ids["soup"])
    assert (soup["title"], soup["quantity"], soup["claimed"], soup["remaining"]) == (
        "Vegetable soup",
        10,
        4,
        6,
    )
    assert soup["flags"] == []
    assert (soup["item"], soup["location"], soup["until"]) == ("beans", "pantry", "2026-12-31")
    [soup_claim] = soup["claims"]
    assert (soup_claim["id"], soup_claim["status"], soup_claim["quantity"]) == (
        walk.ids["soup_claim"],
        "fulfilled",
        4,
    )
    assert soup_claim["claimant"] == walk.key

    nappies = by_id(data["needs"], walk.ids["nappies"])
    assert (nappies["urgency"], nappies["by"], nappies["quantity"]) == ("urgent", "2026-12-24", 3)
    assert (nappies["claimed"], nappies["remaining"]) == (0, 3)  # a released claim counts 0
    [nappies_claim] = nappies["claims"]
    assert nappies_claim["status"] == "released"


def test_board_json_shows_an_over_claimed_offer_with_negative_remaining(walk: Walk) -> None:
    bread = by_id(as_json(walk.dir, "board")["offers"], walk.ids["bread"])
    assert (bread["quantity"], bread["claimed"], bread["remaining"]) == (10, 12, -2)
    assert "over-claimed" in bread["flags"]
    claims = bread["claims"]
    assert isinstance(claims, list)
    assert [c["id"] for c in claims] == [walk.ids["bread_claim_1"], walk.ids["bread_claim_2"]]
    assert [c["status"] for c in claims] == ["pending", "pending"]
    assert [c["rank"] for c in claims] == [1, 2]
    assert "over" in claims[1]["flags"]


def test_board_json_leaves_out_withdrawn_offers_and_needs(walk: Walk) -> None:
    data = as_json(walk.dir, "board")
    ids = {e["id"] for e in [*data["offers"], *data["needs"]]}
    assert ids == {walk.ids["soup"], walk.ids["bread"], walk.ids["nappies"]}


def test_inventory_json_adds_a_negative_delta_after_a_count_and_flags_expiry(walk: Walk) -> None:
    data = as_json(walk.dir, "inventory")
    assert data == {
        "rows": [
            {
                "item": "beans",
                "location": "pantry",
                "on_hand": 7,
                "expires": walk.expires,
                "flags": ["expiring"],
                "versions": {"item": [], "location": []},
            }
        ]
    }


def test_roster_json_shows_shifts_members_roles_and_hours(walk: Walk) -> None:
    data = as_json(walk.dir, "roster")
    assert {"shifts", "hours"} <= set(data)
    shift = by_id(data["shifts"], walk.ids["shift"])
    assert {k: shift[k] for k in ("role", "location", "start", "end", "slots", "filled")} == {
        "role": "cook",
        "location": "pantry",
        "start": SHIFT_START,
        "end": SHIFT_END,
        "slots": 2,
        "filled": 1,
    }
    members = shift["members"]
    assert isinstance(members, list)
    assert [(m["key"], m["name"]) for m in members] == [(walk.key, "Ana")]
    assert shift["flags"] == []
    later = by_id(data["shifts"], walk.ids["later_shift"])
    assert (later["filled"], later["members"]) == (0, [])
    assert data["hours"] == [{"member": walk.key, "name": "Ana", "week": "2026-W10", "hours": 2.5}]
    roles = data["roles"]
    assert isinstance(roles, list)
    [cook] = roles
    assert (cook["slug"], cook["weekly_hours"], [m["name"] for m in cook["members"]]) == (
        "cook",
        4.0,
        ["Ana"],
    )


def test_roster_week_keeps_only_shifts_and_hours_of_that_iso_week(walk: Walk) -> None:
    data = as_json(walk.dir, "roster", "--week", "2026-W11")
    assert [s["id"] for s in data["shifts"]] == [walk.ids["later_shift"]]
    assert data["hours"] == []


def test_log_json_lists_every_event_in_canonical_order(walk: Walk) -> None:
    events = as_json(walk.dir, "log")["events"]
    assert isinstance(events, list)
    assert len(events) == walk.writes
    assert [e["seq"] for e in events] == list(range(1, walk.writes + 1))
    assert events[0]["type"] == "member.joined"
    assert {e["author"] for e in events} == {walk.key}
    for e in events:
        assert {"id", "author", "author_name", "seq", "hlc", "time", "type", "body"} <= set(e)
        assert HEX64.fullmatch(e["id"])
    ids = {e["id"] for e in events}
    assert set(walk.ids.values()) <= ids
    out = next(e for e in events if e["id"] == walk.ids["stock_out"])
    assert out["type"] == "stock.adjusted"
    assert out["body"] == {
        "item": "beans",
        "location": "pantry",
        "delta": -3,
        "reason": "distribution",
    }


def test_log_filters_by_type_and_by_author(walk: Walk) -> None:
    claims = as_json(walk.dir, "log", "--type", "claim.made")["events"]
    assert isinstance(claims, list)
    assert [e["id"] for e in claims] == [
        walk.ids[k] for k in ("soup_claim", "nappies_claim", "bread_claim_1", "bread_claim_2")
    ]
    assert all(
        e["body"]["target"] in (walk.ids["soup"], walk.ids["nappies"], walk.ids["bread"])
        for e in claims
    )
    by_name = as_json(walk.dir, "log", "--author", "ana")["events"]
    assert isinstance(by_name, list)
    assert len(by_name) == walk.writes


def test_rebuild_gives_the_same_digest(walk: Walk) -> None:
    before = potluck(walk.dir, "digest").stdout.strip()
    assert HEX64.fullmatch(before)
    rebuilt = potluck(walk.dir, "rebuild")
    assert last_line(rebuilt) == before
    assert potluck(walk.dir, "digest").stdout.strip() == before


def test_whoami_json_names_the_member_group_and_counts(walk: Walk) -> None:
    info = as_json(walk.dir, "whoami")
    assert info["name"] == "Ana"
    assert info["key"] == walk.key
    assert info["group"] == "Eastside Mutual Aid"
    assert HEX64.fullmatch(str(info["group_id"]))
    assert (info["members"], info["events"]) == (1, walk.writes)
    assert Path(str(info["data_dir"])) == walk.dir


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("board",), ["Vegetable soup", "Bread", "Nappies size 4", "over-claimed"]),
        (("inventory",), ["beans", "pantry", "expiring"]),
        (("roster",), ["cook", "Ana", "2026-W10"]),
        (("whoami",), ["Ana", "Eastside Mutual Aid"]),
    ],
)
def test_read_commands_print_tables_for_people(
    walk: Walk, command: tuple[str, ...], expected: list[str]
) -> None:
    out = potluck(walk.dir, *command).stdout
    for text in expected:
        assert text in out, f"{text!r} missing from 'potluck {' '.join(command)}'"


def test_potluck_home_chooses_the_data_dir_when_no_option_is_given(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = potluck_env(POTLUCK_HOME=str(home))
    key = last_line(potluck(None, "init", "--name", "Bo", "--new-group", "Westside", env=env))
    assert (home / "device.key").exists()
    offer = last_line(potluck(None, "offer", "post", "Tomatoes", env=env))
    assert HEX64.fullmatch(offer)
    info = json.loads(potluck(None, "whoami", "--json", env=env).stdout)
    assert (info["key"], info["events"], Path(info["data_dir"])) == (key, 2, home)


def test_reading_commands_do_not_wait_for_a_writer_holding_the_log(walk: Walk) -> None:
    """A ``potluck serve`` storing a large sync holds SQLite's write lock for a while;
    commands that only read must not queue behind it (they used to take the lock just to
    find the tables already there, and waited up to the 10 s busy timeout)."""
    writer = sqlite3.connect(walk.dir / LOG_FILE, isolation_level=None, timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")  # held for the whole test
        for command in ("board", "inventory", "roster", "whoami"):
            assert as_json(walk.dir, command)  # else "the database is busy" after 10 s
        writer.execute("ROLLBACK")
    finally:
        writer.close()
