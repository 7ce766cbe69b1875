"""Everyday use at the command line (issue 19, items 5-12), end to end through real
``potluck`` processes: what a sync changed, a sync with itself, names in replies,
tables that fit 80 columns, forgiving input, changing a definition, a second node's
ports, and progress for long steps."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import POTLUCK, TIMEOUT, potluck
from helpers import potluck_env as clean_env
from test_cli import HEX64, as_json, last_line, new_id

from node.app import LOG_FILE

START = "2026-12-12 09:00"  # as people type it: a space, not a T
END = "2026-12-12 12:00"
WIDE_NAME = "Saint Bartholomew's community church pantry and kitchen"


def failed(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail with usage (exit 2): its one line of stderr."""
    proc = potluck(data_dir, *args, env=env, ok=False)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("potluck: "), proc.stderr
    return lines[0]


class Serve:
    """A ``potluck serve`` subprocess; its status lines are read as they come."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        command = [*POTLUCK, "--data-dir", str(data_dir), "serve", "--no-discovery", *args]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str) -> str:
        assert self.proc.stdout is not None
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            found = re.search(pattern, line)
            if found:
                return found.group(1)
        raise AssertionError(f"no '{pattern}' from serve: {self.lines}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@dataclass
class Pair:
    ana: Path
    bo: Path
    address: str  # where Ana's serve listens
    offer: str = ""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Ana serving with an urgent need posted; Bo joined with an offer of his own."""
    root = tmp_path_factory.mktemp("pair")
    ana, bo = root / "ana", root / "bo"
    potluck(ana, "init", "--name", "Ana", "--new-group", "Eastside")
    new_id(ana, "need", "post", "Nappies size 4", "--urgency", "urgent", "--quantity", "3")
    serving = Serve(ana, "--listen", "127.0.0.1:0", "--no-ui")
    try:
        address = serving.wait_for(r"listening on (\S+)")
        code = last_line(potluck(ana, "invite", "--address", address))
        potluck(bo, "init", "--name", "Bo", "--join", code)
        p = Pair(ana, bo, address)
        p.offer = new_id(bo, "offer", "post", "Canned beans", "--quantity", "10")
        yield p
    finally:
        serving.stop()


# -- 5: a sync says what changed ---------------------------------------------------


def test_sync_names_new_posts_and_the_conflicts_that_need_this_member(pair: Pair) -> None:
    report = as_json(pair.bo, "sync", pair.address)
    for field in ("address", "peer", "peer_name", "received", "sent", "held_future"):
        assert field in report  # the fields scripts already read stay
    posts = report["changes"]["new_posts"]
    assert [(p["kind"], p["title"], p["urgency"]) for p in posts] == [
        ("need", "Nappies size 4", "urgent")
    ]

    # Ana claims more than Bo offers (her CLI beside her serve): Bo is the one to decide
    potluck(pair.ana, "claim", "make", pair.offer, "--quantity", "12")
    out = potluck(pair.bo, "sync", pair.address).stdout.splitlines()
    assert re.fullmatch(r"Synced with Ana at \S+: received \d+ events, sent \d+\.", out[0])
    assert 'Needs your decision: the offer "Canned beans": over-claimed.' in out


# -- 6: a node does not sync with itself -------------------------------------------


def test_a_sync_with_its_own_serve_is_refused_and_it_is_not_its_own_peer(pair: Pair) -> None:
    line = failed(pair.ana, "sync", pair.address)
    assert "is this node itself" in line
    me = as_json(pair.ana, "whoami")["key"]
    assert me not in [p["key"] for p in as_json(pair.ana, "peers")["peers"]]


# -- 7 to 10 on one node -------------------------------------------------------------


@pytest.fixture
def pantry(tmp_path: Path) -> Path:
    """A node of its own for each test: a place with a long name and a driver's role."""
    d = tmp_path / "ana"
    potluck(d, "init", "--name", "Ana", "--new-group", "Eastside")
    potluck(d, "location", "add", "pantry", WIDE_NAME, "--kind", "pantry")
    potluck(d, "role", "add", "driver", "Van driver", "--weekly-hours", "4")
    return d


def sentence_and_id(data_dir: Path, *args: str) -> tuple[str, str]:
    lines = potluck(data_dir, *args).stdout.splitlines()
    assert HEX64.fullmatch(lines[-1]), lines
    sentence = " ".join(lines[:-1])
    assert not re.search(r"[0-9a-f]{12}", sentence), f"an id in {sentence!r}"
    return sentence, lines[-1]


def test_replies_say_in_names_what_happened_and_end_with_the_id(pantry: Path) -> None:
    assert last_line(potluck(pantry, "item", "add", "Canned beans", "--unit", "can")) == (
        "canned-beans"
    )
    offer = new_id(pantry, "offer", "post", "Canned beans", "--quantity", "10")
    said, claim = sentence_and_id(pantry, "claim", "make", offer[:8], "--quantity", "4")
    assert said == 'You claimed 4 of "Canned beans" from Ana.'
    said, _ = sentence_and_id(pantry, "claim", "confirm", claim[:8])
    assert said == "Ana's claim of 4 on \"Canned beans\" (Ana's offer) is confirmed."
    said, _ = sentence_and_id(pantry, "stock", "adjust", "canned-beans", "pantry", "12")
    assert said.startswith(f"Added 12 cans of Canned beans at {WIDE_NAME} (donation)")

    said, _ = sentence_and_id(pantry, "role", "assign", "driver", "ana")
    assert said == "Ana now holds the role Van driver (driver)."
    shift = new_id(pantry, "shift", "add", "driver", "--location", "pantry", "--start", START,
                   "--end", END, "--slots", "2")  # fmt: skip
    said, _ = sentence_and_id(pantry, "shift", "signup", shift[:8])
    assert said == (
        f"You signed up for Van driver at {WIDE_NAME}, 2026-12-12 09:00 to 12:00 "
        "(1 of 2 slots filled)."
    )


# -- 8: tables that fit -------------------------------------------------------------


@pytest.fixture
def crowded(pantry: Path) -> Path:
    """Long names everywhere, an urgent need with a place and a date."""
    potluck(pantry, "item", "add", "nappies", "Nappies size 4 (toddler, overnight)",
            "--unit", "pack")  # fmt: skip
    potluck(pantry, "stock", "adjust", "nappies", "pantry", "6", "--expires", "2027-01-31")
    new_id(pantry, "need", "post", "Nappies size 4 for a newborn arriving next week",
           "--urgency", "urgent", "--quantity", "3", "--location", "pantry",
           "--by", "2026-12-24")  # fmt: skip
    potluck(pantry, "role", "add", "sorting", "Food distribution and sorting volunteers",
            "--weekly-hours", "3")  # fmt: skip
    new_id(pantry, "shift", "add", "sorting",
           "--location", "pantry", "--start", "2026-12-19T17:00", "--end", "2026-12-20T01:30",
           "--slots", "3")  # fmt: skip
    new_id(pantry, "shift", "add", "driver", "--location", "pantry",
           "--start", "2026-12-12T09:00", "--end", "2026-12-12T12:00", "--slots", "2")  # fmt: skip
    return pantry


@pytest.mark.parametrize(
    ("command", "whole"),
    [
        ("board", ["2026-12-24", "urgent", "Ana", "Saint", "Nappies size 4 for a"]),
        ("inventory", ["2027-01-31", "6 pack", "Nappies size 4", "(nappies)", "Saint"]),
        ("roster", ["2026-12-19 17:00", "2026-12-20 01:30", "2026-12-12 09:00", "Van driver"]),
        ("peers", ["address", "last seen"]),
    ],
)
def test_every_table_fits_80_columns_without_cutting_a_date(
    crowded: Path, command: str, whole: list[str]
) -> None:
    out = potluck(crowded, command, env=clean_env(COLUMNS="80")).stdout
    for line in out.splitlines():
        assert len(line) <= 80, f"{command}: {len(line)} columns: {line!r}"
    assert "…" not in out
    for text in whole:
        assert text in out, f"{text!r} missing or cut in 'potluck {command}':\n{out}"


@pytest.mark.parametrize("command", ["board", "inventory", "roster", "peers"])
def test_a_narrower_terminal_leaves_out_columns_rather_than_cut_dates(
    crowded: Path, command: str
) -> None:
    out = potluck(crowded, command, env=clean_env(COLUMNS="60")).stdout
    for line in out.splitlines():
        assert len(line) <= 60, f"{command}: {len(line)} columns: {line!r}"
    assert "…" not in out
    dates = re.findall(r"\b\d{4}-\d[\d-]*", out)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dates), dates


# -- 9: forgiving input -------------------------------------------------------------


def test_a_space_for_the_t_and_a_count_with_its_noun_are_taken(pantry: Path) -> None:
    shift = new_id(pantry, "shift", "add", "driver", "--location", "pantry",
                   "--start", "2026-12-13 9:00", "--end", "2026-12-13  11:30",
                   "--slots", "1 slots")  # fmt: skip
    found = [s for s in as_json(pantry, "roster")["shifts"] if s["id"] == shift]
    assert [(s["start"], s["end"], s["slots"]) for s in found] == [
        ("2026-12-13T09:00", "2026-12-13T11:30", 1)
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--start", "2026-12-13", "--end", END, "--slots", "1"), "like '2026-12-13 09:00'"),
        (("--start", START, "--end", END, "--slots", "2 cans"), "give a whole number, like 3"),
        (("--start", "12/13/2026 09:00", "--end", END, "--slots", "1"), "start"),
    ],
)
def test_what_has_two_meanings_is_refused_with_what_would_work(
    pantry: Path, args: tuple[str, ...], words: str
) -> None:
    line = failed(pantry, "shift", "add", "driver", "--location", "pantry", *args)
    assert words in line


def test_a_slug_is_made_from_the_name_and_slug_then_name_still_works(pantry: Path) -> None:
    assert last_line(potluck(pantry, "location", "add", "Crème Fridge #2")) == "creme-fridge-2"
    assert last_line(potluck(pantry, "item", "add", "rice", "Basmati rice", "--unit", "kg")) == (
        "rice"
    )
    names = {i["slug"]: i["name"] for i in _items(pantry)}
    assert names["rice"] == "Basmati rice"
    assert "give one first" in failed(pantry, "item", "add", "!!!", "--unit", "can")


def _items(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / LOG_FILE) as db:
        return [
            {"slug": slug, "name": name, "unit": unit}
            for slug, name, unit in db.execute("SELECT slug, name, unit FROM items")
        ]


# -- 10: adding again changes, and keeps what was not given ---------------------------


def test_adding_a_defined_role_again_says_so_and_keeps_what_was_left_out(pantry: Path) -> None:
    potluck(pantry, "role", "add", "cook", "Cook", "--weekly-hours", "4",
            "--description", "Soup on Fridays")  # fmt: skip
    said = potluck(pantry, "role", "add", "cook", "--weekly-hours", "6").stdout
    assert said.startswith("Changed the existing role cook: weekly hours 4 -> 6")
    [cook] = [r for r in as_json(pantry, "roster")["roles"] if r["slug"] == "cook"]
    assert (cook["name"], cook["weekly_hours"], cook["description"]) == (
        "Cook",
        6,
        "Soup on Fridays",
    )
    potluck(pantry, "item", "add", "rice", "Basmati rice", "--unit", "kg")
    potluck(pantry, "item", "add", "rice", "--unit", "bag")
    assert {"slug": "rice", "name": "Basmati rice", "unit": "bag"} in _items(pantry)
    assert "needs --weekly-hours" in failed(pantry, "role", "add", "greeter", "Greeter")


# -- 11: a second node's ports --------------------------------------------------------


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_web_page_port_gives_way_to_the_next_free_one(pantry: Path, taken: int) -> None:
    serving = Serve(pantry, "--listen", "127.0.0.1:0", "--ui", f"127.0.0.1:{taken}")
    try:
        moved = serving.wait_for(rf"port {taken} is taken .*: using (\d+)")
        assert serving.wait_for(r"web page on (\S+)") == f"http://127.0.0.1:{moved}/"
        serving.wait_for(r"(listening) on")
        assert serving.proc.poll() is None
    finally:
        serving.stop()


def test_a_taken_sync_port_that_was_asked_for_is_one_line(pantry: Path, taken: int) -> None:
    line = failed(pantry, "serve", "--no-discovery", "--no-ui", "--listen", f"127.0.0.1:{taken}")
    assert f"port {taken} is taken" in line


# -- 12: progress for long steps ------------------------------------------------------

NOW = clean_env(POTLUCK_PROGRESS_AFTER="0")  # any step counts as long: no timing in tests


def test_a_rebuild_after_an_upgrade_says_so_on_stderr(tmp_path: Path) -> None:
    d = tmp_path / "ana"
    potluck(d, "init", "--name", "Ana", "--new-group", "Eastside")
    with sqlite3.connect(d / LOG_FILE) as db:  # as if a new version changed the board
        db.execute("UPDATE proj_meta SET version = version + 1 WHERE name = 'board'")
    proc = potluck(d, "board", "--json", env=NOW, ok=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["offers"] == []  # stdout stays the one document
    assert "Rebuilding the tables after an upgrade" in proc.stderr


def test_bundle_import_and_doctor_show_progress_on_stderr(pantry: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "all.potluck"
    potluck(pantry, "bundle", "export", str(bundle))
    proc = potluck(pantry, "bundle", "import", str(bundle), "--json", env=NOW, ok=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["stored"] == 0
    assert "Importing all.potluck" in proc.stderr
    proc = potluck(pantry, "doctor", env=NOW, ok=False)
    assert "Checking the database" in proc.stderr
