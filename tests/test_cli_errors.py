"""Bad arguments through the ``potluck`` command: one line on stderr, non-zero, no change.

The error contract of docs/cli.md: an error is exactly one line on stderr starting with
``potluck:`` (no traceback, no usage block), nothing on stdout, a non-zero exit code,
and nothing written: the projection digest and the number of events in the log are the
same before and after. Every case runs against one node that holds an item, a location,
a role, an offer with a confirmed claim and a shift.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TIMEOUT, potluck, potluck_env

from sync.transport import dial_problem

SHIFT = ("--location", "pantry", "--start", "2026-03-02T09:00", "--end", "2026-03-02T12:00")


def created(data_dir: Path, *args: str) -> str:
    return potluck(data_dir, *args).stdout.splitlines()[-1]


@dataclass(frozen=True)
class State:
    digest: str
    events: int


def state(data_dir: Path) -> State:
    """The output of ``potluck digest`` and the event count of ``potluck log --json``.

    Both commands run through the real entry point, one after the other in one process
    (half the start-up cost of two).
    """
    script = (
        "import sys\nfrom node.cli import main\nd = sys.argv[1]\n"
        "main(['--data-dir', d, 'digest'])\nmain(['--data-dir', d, 'log', '--json'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=potluck_env(),
    )
    assert proc.returncode == 0, proc.stderr
    digest, log = proc.stdout.split("\n", 1)
    return State(digest, len(json.loads(log)["events"]))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, f"exit 0 for {proc.args[3:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{proc.stderr}"
    assert lines[0].startswith("potluck: "), lines[0]
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr
    assert expected.lower() in lines[0].lower(), f"{expected!r} not in {lines[0]!r}"
    assert proc.stdout == "", f"stdout on error: {proc.stdout!r}"


@dataclass(frozen=True)
class Node:
    dir: Path
    ids: dict[str, str]
    before: State
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    d = tmp_path_factory.mktemp("errors") / "node"
    ids = {"key": created(d, "init", "--name", "Ana", "--new-group", "Eastside")}
    created(d, "location", "add", "pantry", "Church pantry", "--kind", "pantry")
    created(d, "item", "add", "beans", "Black beans", "--unit", "can")
    created(d, "role", "add", "cook", "Cook", "--weekly-hours", "4")
    ids["offer"] = created(d, "offer", "post", "Soup", "--quantity", "10")
    ids["claim"] = created(d, "claim", "make", ids["offer"][:6], "--quantity", "2")
    created(d, "claim", "confirm", ids["claim"][:6])
    ids["shift"] = created(d, "shift", "add", "cook", *SHIFT, "--slots", "2")
    files = {name: (d / name).read_bytes() for name in ("device.key", "group.bin")}
    return Node(d, ids, state(d), files)


# (arguments with {offer}/{claim}/{shift} standing for ids, text the error must contain)
CASES: list[tuple[tuple[str, ...], str]] = [
    (("claim", "make", "deadbeef00"), "no offer or need with id deadbeef00"),
    (("claim", "make", "{offer:5}"), "is not an id"),
    (("claim", "make", "zzzzzzzz"), "is not an id"),
    (("offer", "withdraw", "{shift}"), "no offer with id"),
    (("shift", "add", "cook", *SHIFT, "--slots", "-1"), "slots"),
    (("offer", "post", "Rice", "--quantity", "2.5"), "--quantity"),
    (("claim", "make", "{offer:6}", "--quantity", "0"), "quantity"),
    (("stock", "adjust", "beans", "pantry", "three"), "DELTA"),
    (("offer", "post", "Rice", "--until", "2026-02-30"), "until"),
    (("need", "post", "Rice", "--by", "2026-13-01"), "by"),
    (("stock", "adjust", "beans", "pantry", "5", "--expires", "tomorrow"), "expires"),
    (
        (
            "shift",
            "add",
            "cook",
            "--location",
            "pantry",
            "--start",
            "2026-02-30T09:00",
            "--end",
            "2026-03-02T12:00",
            "--slots",
            "1",
        ),
        "start",
    ),
    (("stock", "adjust", "rice", "pantry", "5"), "unknown item 'rice'"),
    (("stock", "adjust", "beans", "attic", "-2"), "unknown location 'attic'"),
    (("shift", "add", "baker", *SHIFT, "--slots", "1"), "unknown role 'baker'"),
    (
        (
            "shift",
            "add",
            "cook",
            "--location",
            "pantry",
            "--start",
            "2026-03-02T12:00",
            "--end",
            "2026-03-02T09:00",
            "--slots",
            "1",
        ),
        "end: must be after start",
    ),
    (("claim", "confirm", "{claim:6}"), "already confirmed"),
    (("role", "assign", "cook", "Nobody"), "no member called 'Nobody'"),
    (("init", "--name", "Ana", "--new-group", "Again"), "already holds a Potluck node"),
    (("offer", "post", "x" * 201), "title: must be at most 200 characters"),
    (("stock", "adjust", "beans", "pantry", "0"), "delta"),
    (("need", "post", "Rice", "--urgency", "extreme"), "--urgency"),
    (("roster", "--week", "2026-W60"), "--week"),
    (("board", "--colour"), "no such option"),
    (("potluck-party",), "no such command"),
]


class _Cut(str):
    """An id that ``format`` can shorten: ``{offer:6}`` is its first 6 characters."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return str(self)[: int(spec)] if spec else str(self)


def _fill(arg: str, ids: dict[str, str]) -> str:
    """``arg`` with ``{name}`` or ``{name:N}`` replaced by that id (or its first N chars)."""
    return arg.format_map({k: _Cut(v) for k, v in ids.items()}) if arg.startswith("{") else arg


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a)[:48] for a, _ in CASES])
def test_bad_arguments_give_one_line_and_change_nothing(
    node: Node, args: tuple[str, ...], expected: str
) -> None:
    proc = potluck(node.dir, *(_fill(a, node.ids) for a in args), ok=False)
    assert_one_line_error(proc, expected)
    assert state(node.dir) == node.before
    assert {n: (node.dir / n).read_bytes() for n in node.files} == node.files


@pytest.mark.parametrize(
    ("args", "exists"),
    [
        (("whoami",), False),
        (("board",), True),
        (("offer", "post", "Soup"), True),
        (("digest",), False),
    ],
)
def test_commands_before_init_say_to_run_potluck_init_and_create_nothing(
    tmp_path: Path, args: tuple[str, ...], exists: bool
) -> None:
    d = tmp_path / "empty"
    if exists:
        d.mkdir()
    proc = potluck(d, *args, ok=False)
    assert_one_line_error(proc, "potluck init")
    assert (list(d.iterdir()) == []) if exists else not d.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--name", "", "--new-group", "Eastside"), "name"),
        (("--name", "n" * 101, "--new-group", "Eastside"), "name"),
        (("--name", "Ana", "--new-group", ""), "group name"),
        (("--name", "Ana"), "--new-group"),
    ],
)
def test_init_with_bad_arguments_creates_no_node(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    d = tmp_path / "new"
    assert_one_line_error(potluck(d, "init", *args, ok=False), expected)
    assert not d.exists()


def test_init_where_the_data_dir_cannot_be_made_gives_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = potluck(blocker / "node", "init", "--name", "Ana", "--new-group", "Eastside", ok=False)
    assert_one_line_error(proc, str(blocker / "node"))


def test_sync_with_nothing_listening_says_what_to_check_and_changes_nothing(node: Node) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = potluck(node.dir, "sync", f"127.0.0.1:{port}", ok=False)
    assert_one_line_error(proc, "is 'potluck serve' running on that computer")
    assert state(node.dir) == node.before


@pytest.mark.parametrize(
    ("problem", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "nothing is listening there"),
        (TimeoutError(), "no answer within"),
        (socket.gaierror(-2, "Name or service not known"), "use the other computer's IP"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to it"),
        (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
)
def test_a_failed_dial_is_told_in_words_to_act_on(problem: OSError, words: str) -> None:
    said = dial_problem(problem)
    assert words in said
    if str(problem):
        assert str(problem) in said  # the system's own words stay, for whoever helps
